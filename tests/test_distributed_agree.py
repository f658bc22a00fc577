"""`distributed.agree` on two real processes: the resume step (and `eval --run`'s newest step)
is read from each process's own directory listing, so processes that see the run directory
differently must stop with one clear error instead of restoring different states."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_group import communicate_all, free_port

ROOT = Path(__file__).resolve().parents[1]
WORKER = """
import sys
import jax
from azr_jax import distributed
from azr_jax.errors import UserError
port, pid, mine = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
value = None if mine == "none" else int(mine)
try:
    print("agreed", distributed.agree(value, "the checkpoint step"))
except UserError as e:
    print("error", e)
"""


def _run_two(worker: str, args: tuple = ("", "")) -> list[list[str]]:
    """`worker` as processes 0 and 1 of one jax.distributed group (argv: port, process id, its
    entry of `args`); each one's stdout lines that its prints wrote (not Gloo's)."""
    port = str(free_port())
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", worker, port, str(pid), arg], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for pid, arg in enumerate(args)]
    outs = []
    for p, (out, err) in zip(procs, communicate_all(procs, timeout=120)):
        assert p.returncode == 0, err[-2000:]
        outs.append([line for line in out.splitlines() if not line.startswith("[Gloo]")])
    return outs


def _pair(values: tuple[str, str]) -> list[str]:
    return [lines[-1] for lines in _run_two(WORKER, values)]


@pytest.mark.slow
def test_processes_that_see_the_same_step_agree_and_others_stop_with_one_error():
    assert _pair(("7", "7")) == ["agreed 7", "agreed 7"]
    assert _pair(("none", "none")) == ["agreed None", "agreed None"]
    for line in _pair(("7", "6")):
        assert line.startswith("error the processes disagree on the checkpoint step: [7, 6]"), line


COLLECT_WORKER = """
import sys
from concurrent.futures import Future
from types import SimpleNamespace
import jax
from azr_jax.trainer import SelfPlay
port, pid = sys.argv[1], int(sys.argv[2])
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
loop = SimpleNamespace(_add_time=lambda name, seconds: None)
future = Future()
if pid == 1:
    future.set_exception(ValueError("boom"))
else:
    future.set_result(([{"id": "0"}], 0.1))
try:
    print("collected", SelfPlay._collect(loop, future, 2))
except RuntimeError as e:
    print("error", e)
"""


@pytest.mark.slow
def test_a_host_job_that_fails_on_one_process_fails_on_every_process():
    # Before, the other process waited in the gather for the failed one's share (about 5 minutes,
    # then the coordination service aborted both with a message that did not name the error).
    for lines in _run_two(COLLECT_WORKER):
        assert lines[-1] == "error host-side scoring failed on process 1: ValueError: boom"


SHARE_WORKER = """
import sys
import jax
from azr_jax import distributed
port, pid = sys.argv[1], int(sys.argv[2])
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
print("shared", distributed.share_results(list(range(5)), lambda share: [x * 10 for x in share]))
def score(share):
    if pid == 1:
        raise ValueError("bad answer")
    return share
try:
    print("shared", distributed.share_results(list(range(5)), score))
except RuntimeError as e:
    print("error", e)
"""


@pytest.mark.slow
def test_scoring_shares_in_item_order_and_a_failure_on_one_process_stops_every_process():
    # The evaluations' scoring (eval.evaluate.score_items): before, process 0 waited in the gather
    # for process 1's share until the coordination service timed out.
    for lines in _run_two(SHARE_WORKER):
        assert lines == ["shared [0, 10, 20, 30, 40]", "error host-side scoring failed on process 1: ValueError: bad answer"]


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "localhost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "must be host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     r"JAX_PROCESS_ID must be in \[0, JAX_NUM_PROCESSES=2\), got 2"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
      "AZR_COORDINATOR_TIMEOUT_S": "5m"}, "AZR_COORDINATOR_TIMEOUT_S must be a whole number"),
])
def test_a_malformed_cluster_environment_is_one_error_before_jax_starts(monkeypatch, env, message):
    """They reached jax.distributed.initialize and came back as an IndexError or a ValueError."""
    from azr_jax import distributed
    from azr_jax.errors import UserError

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: pytest.fail("reached JAX"))
    with pytest.raises(UserError, match=message):
        distributed.initialize_from_env()


def test_a_coordinator_that_never_answers_is_named_before_jax_aborts(tmp_path):
    """JAX ends the process with a fatal log and a C++ stack trace when the coordinator does not
    answer within the start-up timeout (300 s): the line before says what it waited for, and the
    wait can be shortened."""
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS="127.0.0.1:1", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1",
               AZR_COORDINATOR_TIMEOUT_S="2", JAX_PLATFORMS="cpu")
    code = "from azr_jax import distributed; distributed.initialize_from_env(); print('connected')"
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode != 0 and "connected" not in r.stdout, r.stdout
    first = r.stderr.splitlines()[0]
    assert first == ("azr-jax: process 1 of 2 connecting to the coordinator at 127.0.0.1:1 (waits up to 2 s: "
                     "AZR_COORDINATOR_TIMEOUT_S)"), r.stderr[-2000:]
    assert time.monotonic() - started < 60  # the shortened wait, not JAX's 300 s
