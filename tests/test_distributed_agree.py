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
from cpu_flags import xla_flags

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
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1),
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
import time
from pathlib import Path
import jax
from azr_jax import distributed
port, pid, marker = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
jax.devices()  # the backend's start-up lines the processes up too: before the sleep, so only the barrier waits
if pid == 1:
    time.sleep(3)
    marker.write_text("here")
distributed.barrier("marker written")
print("after the barrier", marker.exists())
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
def test_the_barrier_waits_and_scoring_shares_in_item_order_and_a_failure_on_one_process_stops_every_process(tmp_path):
    # The evaluations' scoring (eval.evaluate.score_items): before, process 0 waited in the gather
    # for process 1's share until the coordination service timed out. First `barrier`: process 1
    # writes a file 3 s late and then reaches it, so process 0 sees the file only if it waited
    # (and a deadline given in seconds where JAX takes milliseconds would have run out).
    marker = str(tmp_path / "marker")
    for lines in _run_two(SHARE_WORKER, (marker, marker)):
        assert lines == ["after the barrier True", "shared [0, 10, 20, 30, 40]", "error host-side scoring failed on process 1: ValueError: bad answer"]


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "localhost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "must be host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     r"JAX_PROCESS_ID must be in \[0, JAX_NUM_PROCESSES=2\), got 2"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
      "AZR_COORDINATOR_TIMEOUT_S": "5m"}, "AZR_COORDINATOR_TIMEOUT_S must be a whole number"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
      "AZR_COORDINATOR_TIMEOUT_S": "\u00b2"}, "AZR_COORDINATOR_TIMEOUT_S must be a whole number"),  # int() raised
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:\u0661\u0662", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     "must be host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "-1"},
     r"JAX_PROCESS_ID must be in \[0, JAX_NUM_PROCESSES=2\), got -1"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:http", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     "must be host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "must be host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES / JAX_PROCESS_ID must be integers"),
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


def test_a_partial_cluster_environment_names_the_missing_variables(monkeypatch):
    """Only some of the three JAX_* variables set is one error listing the missing ones, before
    JAX starts (not an int(None) TypeError, and not a silent single-process run)."""
    from azr_jax import distributed
    from azr_jax.errors import UserError

    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
    monkeypatch.delenv("AZR_TPU_MULTIHOST", raising=False)
    monkeypatch.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: pytest.fail("reached JAX"))
    with pytest.raises(UserError, match=r"missing \['JAX_PROCESS_ID'\]$"):
        distributed.initialize_from_env()


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": ":1234"}, "must be host:port"),
    ({"AZR_COORDINATOR_TIMEOUT_S": "0"}, "AZR_COORDINATOR_TIMEOUT_S must be a whole number of seconds >= 1, got '0'"),
])
def test_an_address_without_a_host_or_a_zero_timeout_is_refused(monkeypatch, env, message):
    """The edges of the checks: an empty host and a timeout of 0 s never reach JAX."""
    import re

    from azr_jax import distributed
    from azr_jax.errors import UserError

    for key, value in {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
                       "JAX_PROCESS_ID": "1", **env}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: pytest.fail("reached JAX"))
    with pytest.raises(UserError, match=re.escape(message)):
        distributed.initialize_from_env()


def test_a_well_formed_environment_reaches_jax_with_its_address_and_the_default_timeout(monkeypatch):
    """The address goes to JAX as given (an IPv6 host keeps its colons: split at the last one),
    with JAX's own 300 s start-up wait unless AZR_COORDINATOR_TIMEOUT_S says otherwise; a TPU
    slice (AZR_TPU_MULTIHOST=1, no JAX_* variables) lets JAX discover everything; with none of
    them set JAX is not started; and a second call does not start it again."""
    from azr_jax import distributed

    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.delenv("AZR_COORDINATOR_TIMEOUT_S", raising=False)
    monkeypatch.delenv("AZR_TPU_MULTIHOST", raising=False)
    for key, value in {"JAX_COORDINATOR_ADDRESS": "[::1]:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}.items():
        monkeypatch.setenv(key, value)
    assert distributed.initialize_from_env() is False  # the fake JAX start left one process
    assert calls == [{"coordinator_address": "[::1]:1234", "num_processes": 2, "process_id": 1,
                      "initialization_timeout": 300}]
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(key)
    calls.clear()
    distributed.initialize_from_env()
    assert calls == []  # a single-process run
    monkeypatch.setenv("AZR_TPU_MULTIHOST", "0")
    distributed.initialize_from_env()
    assert calls == []  # only "1" asks JAX to discover a TPU slice
    monkeypatch.setenv("AZR_TPU_MULTIHOST", "1")
    distributed.initialize_from_env()
    assert calls == [{}]
    monkeypatch.setattr(distributed.jax.distributed, "is_initialized", lambda: True)
    calls.clear()
    assert distributed.initialize_from_env() is False and calls == []  # already started: one process here


def test_the_collectives_of_a_single_process_run_are_local():
    """One process (every test and laptop run): the barrier returns at once, agree and together
    hand back this process's value, share_results is fn over all items in order (and not called
    for none), and merge_shares puts strided shares back in item order."""
    import jax

    from azr_jax import distributed

    assert jax.process_count() == 1
    distributed.barrier("alone")  # no coordination service to wait on
    assert distributed.allgather_json({"a": [1]}) == [{"a": [1]}]
    assert distributed.agree(7, "the checkpoint step") == 7
    assert distributed.together(lambda: "seeds", "loading the seed tasks") == "seeds"
    assert distributed.share_results([1, 2, 3], lambda share: [x * 10 for x in share]) == [10, 20, 30]
    assert distributed.share_results([], lambda share: pytest.fail("called for no items")) == []
    assert distributed.merge_shares([[0, 3, 6], [1, 4], [2, 5]], 7) == [0, 1, 2, 3, 4, 5, 6]


TOGETHER_WORKER = """
import sys
import jax
from azr_jax import distributed
from azr_jax.errors import UserError
port, pid = sys.argv[1], int(sys.argv[2])
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)

def attempt(failing, exc=UserError, undo=None):
    def fn():
        if pid in failing:
            raise exc(f"no seed file on {pid}")
        return f"seeds of {pid}"
    try:
        print("together", distributed.together(fn, "loading the seed tasks", undo))
    except Exception as e:
        print(type(e).__name__, e)

attempt(())
attempt((1,), undo=lambda value: print("undone", value))
attempt((0, 1))
attempt((1,), exc=ValueError)
"""


@pytest.mark.slow
def test_a_start_up_step_that_fails_on_one_process_fails_on_every_process_with_one_error():
    """`together`: each process's own result where it worked everywhere; else one UserError on
    every process naming each failed process (a UserError by its own text, a bug by its type),
    the succeeded process's result released by `undo`, and a bug raised as itself where it
    happened."""
    what = "UserError loading the seed tasks failed on"
    zero, one = _run_two(TOGETHER_WORKER)
    assert zero == ["together seeds of 0", "undone seeds of 0", f"{what} process 1: no seed file on 1",
                    f"{what} process 0: no seed file on 0; process 1: no seed file on 1",
                    f"{what} process 1: ValueError: no seed file on 1"]
    assert one == ["together seeds of 1", f"{what} process 1: no seed file on 1",
                   f"{what} process 0: no seed file on 0; process 1: no seed file on 1",
                   "ValueError no seed file on 1"]
