"""Helpers for tests that start several processes of one `jax.distributed` job on this machine."""

from __future__ import annotations

import random
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on right now (for the job's coordinator). Drawn below the
    kernel's ephemeral range where there is room: a port from `bind(0)` comes from that range,
    which every outgoing connection also draws from, so one could take it before the
    coordinator binds it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    candidates = random.sample(range(10000, low), min(50, low - 10000)) if low > 10050 else []
    for port in [*candidates, 0]:
        with socket.socket() as s:
            try:
                s.bind(("localhost", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free TCP port")


def communicate_all(procs: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    """(stdout, stderr) of every process; on a timeout all are killed (one stuck process would
    otherwise leave the others waiting in a collective) and the timeout is raised."""
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return outs
