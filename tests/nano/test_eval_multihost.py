"""Evaluation scoring on two processes: each sandbox checks only its share of the answers, and
both processes return the same result as one process scoring everything."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from process_group import communicate_all, free_port
from cpu_flags import xla_flags


def _run(port: str, pids: tuple[int, ...], tmp_path: Path) -> list[dict]:
    worker = Path(__file__).with_name("multihost_eval_worker.py")
    outs = [tmp_path / f"{port}_{pid}.json" for pid in pids]
    procs = [subprocess.Popen([sys.executable, str(worker), port, str(pid), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid, out in zip(pids, outs)]
    logs = [out for out, _ in communicate_all(procs, timeout=300)]
    for pid, p, log in zip(pids, procs, logs):
        assert p.returncode == 0 and f"process {pid}: ok" in log, log[-3000:]
    return [json.loads(o.read_text()) for o in outs]


@pytest.mark.slow
def test_two_processes_split_the_sandbox_checks_and_agree(tmp_path):
    (alone,) = _run("single", (0,), tmp_path)
    pair = _run(str(free_port()), (0, 1), tmp_path)
    assert pair[0]["result"] == pair[1]["result"] == alone["result"]
    result = alone["result"]
    assert result["n_items"] == 6 and result["sandbox_errors"] == 0
    assert [r["accuracy"] for r in result["items"]] == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    # Each answer is checked once, by one of the two sandboxes: the work is split, not repeated.
    assert pair[0]["checks"] > 0 and pair[1]["checks"] > 0
    assert pair[0]["checks"] + pair[1]["checks"] == alone["checks"]


@pytest.mark.slow
def test_eval_cli_joins_jax_distributed(tmp_path):
    """`azr-jax eval` started on two processes forms one two-process job (it used to run the
    whole benchmark alone on each host), agrees with one process, and writes --out once."""
    import os

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(root))

    def argv(out):
        return [sys.executable, "-m", "azr_jax.cli", "eval", "--config", "configs/nano.py", "--set",
                "eval.max_items=3", "--set", "eval.max_response_len=48", "--set", "sandbox.workers=1", "--out", str(out)]

    alone = subprocess.run(argv(tmp_path / "alone.json"), env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "azr-jax eval: generated 3/3 prompts" in alone.stderr  # progress while it works
    port = str(free_port())
    procs = [subprocess.Popen(argv(tmp_path / "pair.json"), cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                                  JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid)))
             for pid in range(2)]
    outs = communicate_all(procs, timeout=300)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    brief = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    single = json.loads((tmp_path / "alone.json").read_text())
    pair = json.loads((tmp_path / "pair.json").read_text())
    assert brief[0]["processes"] == brief[1]["processes"] == 2 and single["processes"] == 1
    assert brief[0]["solve_rate"] == brief[1]["solve_rate"] == single["solve_rate"] == pair["solve_rate"]
    assert [it["response"] for it in pair["items"]] == [it["response"] for it in single["items"]]
