"""Multi-host helpers: env-driven `jax.distributed` start-up and sharing host-side results.

Every process runs the same trainer. Device work is SPMD over the global mesh; host work
(sandbox execution, scoring) is split: process p handles items p, p+P, p+2P, ... with its own
executor pool, then every process receives every result (`share_results`), so the task buffers
and rewards stay identical on all hosts.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable, Sequence, TypeVar

import jax
import numpy as np

from azr_jax.errors import UserError

T = TypeVar("T")
R = TypeVar("R")

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_from_env() -> bool:
    """Start `jax.distributed` when the environment asks for it; True if running multi-process.

    JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES and JAX_PROCESS_ID configure a GPU
    or CPU cluster; on a Cloud TPU slice with more than one host, AZR_TPU_MULTIHOST=1 lets JAX
    discover all three itself. Safe to call twice.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    given = {k: os.environ.get(k) for k in _ENV}
    if all(given.values()):
        try:
            num, pid = int(given["JAX_NUM_PROCESSES"]), int(given["JAX_PROCESS_ID"])
        except ValueError:
            raise UserError(f"JAX_NUM_PROCESSES / JAX_PROCESS_ID must be integers, got {given}") from None
        if not 0 <= pid < num:
            raise UserError(f"JAX_PROCESS_ID must be in [0, JAX_NUM_PROCESSES={num}), got {pid}")
        host, _, port = given["JAX_COORDINATOR_ADDRESS"].rpartition(":")
        if not host or not (port.isascii() and port.isdigit()):
            raise UserError(f"JAX_COORDINATOR_ADDRESS must be host:port, got {given['JAX_COORDINATOR_ADDRESS']!r}")
        timeout_s = _coordinator_timeout_s()
        # JAX aborts the process (a fatal log and a C++ stack, no exception) when the coordinator
        # does not answer in time: say beforehand what it is waiting for.
        print(f"azr-jax: process {pid} of {num} connecting to the coordinator at {given['JAX_COORDINATOR_ADDRESS']} "
              f"(waits up to {timeout_s} s: AZR_COORDINATOR_TIMEOUT_S)", file=sys.stderr, flush=True)
        jax.distributed.initialize(coordinator_address=given["JAX_COORDINATOR_ADDRESS"], num_processes=num,
                                   process_id=pid, initialization_timeout=timeout_s)
    elif any(given.values()):
        missing = [k for k, v in given.items() if not v]
        raise UserError(f"multi-host run needs all of {list(_ENV)}; missing {missing}")
    elif os.environ.get("AZR_TPU_MULTIHOST") == "1":
        jax.distributed.initialize()
    return jax.process_count() > 1


def _coordinator_timeout_s() -> int:
    """Seconds a process waits for every process to reach the coordinator (JAX's default 300)."""
    text = os.environ.get("AZR_COORDINATOR_TIMEOUT_S", "300")
    if not (text.isascii() and text.isdigit()) or int(text) < 1:  # int('²') raises
        raise UserError(f"AZR_COORDINATOR_TIMEOUT_S must be a whole number of seconds >= 1, got {text!r}")
    return int(text)


def barrier(name: str, timeout_s: float = 1800.0) -> None:
    """Wait until every process gets here (coordination service, no device collective).

    Lining processes up before a step keeps a slow compile on one host from running past the
    CPU collectives' 30 s start-up deadline on another."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed  # the client has no public barrier yet

    jax_distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))


def allgather_json(obj) -> list:
    """Every process's JSON-able `obj`, in process order (a collective: all processes call it)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32)))
    padded = np.zeros((int(lengths.max()),), np.uint8)
    padded[: data.size] = data
    everything = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(everything, lengths.reshape(-1))]


_agreements = 0


def agree(value, what: str, hint: str = "every process must see the same directory (shared storage, listed alike)"):
    """`value` if every process computed the same one (a collective), else a UserError naming
    what each process found: for choices read from a shared filesystem, which every process must
    see alike (a directory that is not shared, or an eventually consistent listing, would let the
    processes restore different states and deadlock later)."""
    global _agreements
    # Line up first: a host still loading weights would miss the collective's start-up deadline.
    # Every process calls agree() equally often, so the barrier names match.
    _agreements += 1
    barrier(f"azr-agree-{_agreements}")
    values = allgather_json(value)
    if any(v != values[0] for v in values):
        raise UserError(f"the processes disagree on {what}: {values} (process order); {hint}")
    return values[0]


def together(fn: Callable[[], R], what: str, undo: Callable[[R], None] | None = None) -> R:
    """`fn()` on every process (a collective): its result where it succeeded everywhere, else on
    every process one UserError naming each process it failed on and why. For start-up steps
    that read each host's own files (a seed file or checkpoint missing on one worker): a process
    that stopped alone would leave the others waiting at the next collective. `undo` releases
    this process's result when another one failed (a started sandbox). A failure that is not a
    UserError (a bug) is raised as itself on its process, with its traceback."""
    if jax.process_count() == 1:
        return fn()
    global _agreements
    try:
        value, error = fn(), None
    except Exception as e:  # noqa: BLE001 - shared with every process, then raised
        value, error = None, e
    _agreements += 1  # counted with agree(): both are called in the same order everywhere
    barrier(f"azr-agree-{_agreements}")
    _, failed = _gather_or_failures(None, error)
    if not failed:
        return value
    if error is None and undo is not None:
        undo(value)
    if error is not None and not isinstance(error, UserError):
        raise error
    raise UserError(f"{what} failed on " + "; ".join(failed)) from error


def local_share(items: Sequence[T]) -> list[T]:
    """This process's strided share of `items`."""
    return list(items[jax.process_index()::jax.process_count()])


def merge_shares(shares: Sequence[Sequence[R]], total: int) -> list[R]:
    """Undo `local_share`: results of every process back in item order."""
    out: list = [None] * total
    count = len(shares)
    for p, share in enumerate(shares):
        for k, result in enumerate(share):
            out[p + k * count] = result
    return out


def _gather_or_failures(payload, error: BaseException | None) -> tuple[list, list[str]]:
    """Every process's `payload` (a collective), and "process i: why" for each process whose
    `error` is set (a UserError's own text, else "Type: message")."""
    why = None if error is None else str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
    gathered = allgather_json({"error": why} if why is not None else {"payload": payload})
    failed = [f"process {i}: {g['error']}" for i, g in enumerate(gathered) if "error" in g]
    return [g.get("payload") for g in gathered], failed


def gather_shares(mine: list, error: BaseException | None, total: int) -> list:
    """Every process's share (`mine`, or the `error` that stopped this process's), merged back in
    item order (a collective). If any process failed, every process raises one RuntimeError
    naming each failed process: a process that raised alone would leave the others waiting in
    the gather for a share that never comes."""
    shares, failed = _gather_or_failures(mine, error)
    if failed:
        raise RuntimeError("host-side scoring failed on " + "; ".join(failed)) from error
    return merge_shares(shares, total)


def share_results(items: Sequence[T], fn: Callable[[list[T]], list[R]]) -> list[R]:
    """fn over this process's share of `items`, then everyone's results in item order; a failure
    of fn on any process raises on every process (`gather_shares`)."""
    if jax.process_count() == 1:
        return list(fn(local_share(items)) if items else [])
    try:
        mine, error = (fn(local_share(items)) if items else []), None
    except Exception as e:  # noqa: BLE001 - shared with every process, then raised
        mine, error = [], e
    return gather_shares(list(mine), error, len(items))
