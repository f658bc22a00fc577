"""Evaluation scoring on two processes: each sandbox checks only its share of the answers, and
both processes return the same result as one process scoring everything."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run(port: str, pids: tuple[int, ...], tmp_path: Path) -> list[dict]:
    worker = Path(__file__).with_name("multihost_eval_worker.py")
    outs = [tmp_path / f"{port}_{pid}.json" for pid in pids]
    procs = [subprocess.Popen([sys.executable, str(worker), port, str(pid), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid, out in zip(pids, outs)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for pid, p, log in zip(pids, procs, logs):
        assert p.returncode == 0 and f"process {pid}: ok" in log, log[-3000:]
    return [json.loads(o.read_text()) for o in outs]


@pytest.mark.slow
def test_two_processes_split_the_sandbox_checks_and_agree(tmp_path):
    (alone,) = _run("single", (0,), tmp_path)
    pair = _run(str(_free_port()), (0, 1), tmp_path)
    assert pair[0]["result"] == pair[1]["result"] == alone["result"]
    result = alone["result"]
    assert result["n_items"] == 6 and result["sandbox_errors"] == 0
    assert [r["accuracy"] for r in result["items"]] == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    # Each answer is checked once, by one of the two sandboxes: the work is split, not repeated.
    assert pair[0]["checks"] > 0 and pair[1]["checks"] > 0
    assert pair[0]["checks"] + pair[1]["checks"] == alone["checks"]
