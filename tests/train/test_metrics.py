"""metrics.jsonl / TensorBoard writer, resume truncation, progress line."""

import io
import json
import sys

import pytest

from azr_jax.metrics import MetricsWriter, ProgressLine, is_timing_key, read_metrics, truncate_metrics, without_timings


def _tensorboard_events(path):
    """The events of one TensorBoard file (TFRecord framing: length, its CRC, data, its CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    data, events, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[at + 12:at + 12 + length])
        events.append(event)
        at += 12 + length + 4
    return events


def _scalars(events):
    return [(e.step, v.tag, round(v.simple_value, 6)) for e in events for v in e.summary.value]


def test_writes_one_line_per_step_and_tensorboard_events(tmp_path):
    from tensorboardX.proto import event_pb2

    board = tmp_path / "tensorboard"
    w = MetricsWriter(tmp_path, total_steps=2, progress=False)
    w.write_step({"step": 1, "reward/mean": 0.5, "step_time_s": 1.0, "nan_metric": float("nan"), "ok": True})
    w.write_step({"step": 2, "reward/mean": 0.25, "step_time_s": 2.0, "nan_metric": 1.0})
    w.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["nan_metric"] is None  # JSON has no NaN
    (first,) = board.glob("events.out.tfevents.*")
    # every finite number at its step; NaN and booleans are not scalars TensorBoard can plot
    assert sorted(_scalars(_tensorboard_events(first))) == [
        (1, "reward/mean", 0.5), (1, "step_time_s", 1.0), (2, "nan_metric", 1.0), (2, "reward/mean", 0.25),
        (2, "step_time_s", 2.0)]
    # A resume from step 1 writes a new file whose first event tells TensorBoard to drop the old
    # file's events from step 2 on (the steps redone after the checkpoint).
    w = MetricsWriter(tmp_path, total_steps=2, start_step=1, progress=False)
    w.write_step({"step": 2, "reward/mean": 0.75})
    w.close()
    (second,) = set(board.glob("events.out.tfevents.*")) - {first}
    events = _tensorboard_events(second)
    purge = [e for e in events if e.HasField("session_log")]
    assert [(e.step, e.session_log.status) for e in purge] == [(2, event_pb2.SessionLog.START)]
    assert _scalars(events) == [(2, "reward/mean", 0.75)]
    assert len(_scalars(_tensorboard_events(first))) == 5  # the first file is kept, not replaced


def test_resume_drops_steps_after_the_checkpoint_and_partial_lines(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(1, 6)) + '{"step": 6, "x"')
    truncate_metrics(p, 3)
    assert [r["step"] for r in read_metrics(p)] == [1, 2, 3]
    w = MetricsWriter(tmp_path, total_steps=5, start_step=2, progress=False)
    w.write_step({"step": 3, "x": 30})
    w.close()
    assert [(r["step"], r["x"]) for r in read_metrics(p)] == [(1, 1), (2, 2), (3, 30)]


def test_timing_keys():
    assert is_timing_key("generate_time_s") and is_timing_key("tokens_per_s")
    assert not is_timing_key("reward/mean") and not is_timing_key("steps")
    assert without_timings({"a_s": 1, "a": 2, "b_per_s": 3}) == {"a": 2}


def test_progress_line_without_terminal_prints_one_line_per_update():
    out = io.StringIO()
    p = ProgressLine(total=4, start=0, stream=out)
    p.update(1, {"reward/mean": 0.5})
    p.update(2, {"reward/mean": 0.25})
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "step 2/4" in lines[1] and "reward/mean=0.25" in lines[1]


def test_on_a_terminal_a_log_line_starts_on_a_cleared_line():
    """The progress line ends with no newline on a terminal; a log record written to the same
    stream used to continue it ("...step_time_s=16.8 2026-12-05 ... INFO: evaluating")."""
    import logging

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        p = ProgressLine(total=4, start=0, stream=out)
        p.update(1, {"reward/mean": 0.5})
        logging.getLogger("azr_jax.trainer").warning("evaluating")
        p.update(2, {"reward/mean": 0.25})
        p.close()
        logging.getLogger("azr_jax.trainer").warning("after close")
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    assert "\r\033[KLOG evaluating\n" in text  # the progress line is cleared, then the record
    assert text.endswith("reward/mean=0.25\033[K\nLOG after close\n"), repr(text[-80:])
    assert not handler.filters  # close() takes its filter off


def test_progress_eta_of_a_long_run_is_in_hours_and_minutes():
    """A preset run (500 steps of 5 minutes) showed "eta 149700s"."""
    out = io.StringIO()
    p = ProgressLine(total=500, start=0, stream=out)
    p.update(1, {}, now=0.0)
    p.update(2, {}, now=300.0)
    assert "300.0s/step eta 41h30m " in out.getvalue().splitlines()[-1]
    p.update(495, {}, now=300.0 + 493 * 300.0)
    assert "eta 1500s" in out.getvalue().splitlines()[-1]  # under an hour: seconds, as before


def test_progress_eta_leaves_out_the_slow_first_step():
    """Step 1 also compiles and runs the base evaluation (40 s here, 10 s per later step): the
    estimate must come from the steps after it, not from the mean since the start."""
    out = io.StringIO()
    p = ProgressLine(total=45, start=0, stream=out)
    t0 = 1000.0  # any clock origin
    p.update(1, {}, now=t0 + 40.0)
    for step in range(2, 6):
        p.update(step, {}, now=t0 + 40.0 + 10.0 * (step - 1))
    first, last = out.getvalue().splitlines()[0], out.getvalue().splitlines()[-1]
    assert "eta ?" in first and "s/step" not in first, first  # one update: no estimate yet
    assert "10.0s/step" in last and "eta 400s" in last, last


def test_progress_line_every_log_every_steps_and_at_the_last(tmp_path, capsys):
    w = MetricsWriter(tmp_path, total_steps=5, progress=True, progress_every=2)
    for step in range(1, 6):
        w.write_step({"step": step, "reward/mean": 0.1 * step})
    w.close()
    shown = [line.split("step ")[1].split(" ")[0] for line in capsys.readouterr().err.splitlines() if "step " in line]
    assert shown == ["2/5", "4/5", "5/5"]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_disabled_writer_writes_nothing(tmp_path):
    w = MetricsWriter(tmp_path / "run", total_steps=1, enabled=False)
    w.write_step({"step": 1})
    w.write_rollouts(1, [{"id": "x"}])
    w.close()
    assert not (tmp_path / "run").exists()


def test_sandbox_error_count_counts_only_sandbox_breakage():
    from types import SimpleNamespace

    from azr_jax.trainer import sandbox_error_count

    batches = [SimpleNamespace(scored=[{"reason": "sandbox_error"}, {"reason": "runtime_error"}, {"reason": None}]),
               SimpleNamespace(scored=[{"reason": "sandbox_error"}, {}])]
    assert sandbox_error_count(batches) == 2
    assert sandbox_error_count([SimpleNamespace(scored=[{"reason": "timeout"}])]) == 0


def test_sandbox_error_rows_flag_the_update_rows_the_sandbox_did_not_judge():
    from types import SimpleNamespace

    import numpy as np
    import pytest

    from azr_jax.trainer import sandbox_error_rows

    batches = [SimpleNamespace(role="propose", task="deduction", rewards=[-1.0, 0.5],
                               scored=[{"reason": "sandbox_error"}, {"reason": None}]),
               SimpleNamespace(role="solve", task="deduction", rewards=[0.0, 1.0, 0.0],
                               scored=[{"reason": "runtime_error"}, {}, {"reason": "sandbox_error"}]),
               # unchecked, but its format failed: the scorer's -1 stands and is trained on
               SimpleNamespace(role="solve", task="abduction", rewards=[-1.0],
                               scored=[{"reason": "sandbox_error", "format_ok": False, "reward": -1.0}])]
    np.testing.assert_array_equal(sandbox_error_rows(batches), [True, False, False, False, True, False])
    with pytest.raises(ValueError, match="2 verdicts for 1 rewards"):
        sandbox_error_rows([SimpleNamespace(role="solve", task="abduction", rewards=[0.0], scored=[{}, {}])])


def test_trained_reward_is_a_placeholder_only_for_rows_the_update_masks():
    import pytest

    from azr_jax.trainer import trained_reward

    assert trained_reward({"reward": -0.5, "reason": None}) == -0.5
    assert trained_reward({"reward": 0.0, "reason": None}) == 0.0  # azr.boundary_reward=0: a reward, not a missing one
    assert trained_reward({"reward": -1.0, "reason": "sandbox_error"}) == -1.0  # a format failure keeps its -1
    assert trained_reward({"reward": None, "reason": "sandbox_error"}) == 0.0
    with pytest.raises(ValueError, match="would not mask"):
        trained_reward({"reward": None, "reason": None})


def test_reward_metrics_leave_out_the_placeholders_of_unjudged_rows():
    from types import SimpleNamespace

    from azr_jax.trainer import _judged_rewards

    rb = SimpleNamespace(rewards=[1.0, 0.0, -0.5], scored=[{}, {"reason": "sandbox_error"}, {"reason": "wrong"}])
    assert _judged_rewards(rb) == [1.0, -0.5]
    assert _judged_rewards(SimpleNamespace(rewards=[0.0], scored=[{"reason": "sandbox_error"}])) == []


@pytest.mark.parametrize("level", ["value", "type"])
def test_diversity_bonus_goes_to_positive_proposer_rewards_only(level):
    from types import SimpleNamespace

    from azr_jax.azr.buffers import TaskBuffer
    from azr_jax.config import AZRSection
    from azr_jax.trainer import SelfPlay

    buffer = TaskBuffer("deduction")
    for i, out in enumerate(["0", "0", "1"]):
        buffer.add({"program": f"def f(n):\n    return n % {i + 2}", "input": "4", "output": out, "imports": []}, 0)
    azr = AZRSection(answer_diversity_coef=0.5, answer_diversity_max=0.3, answer_diversity_level=level)
    fake = SimpleNamespace(cfg=SimpleNamespace(azr=azr), buffers={"deduction": buffer})
    problem = lambda out: {"program": "def f(xs):\n    return xs", "input": out, "output": out, "imports": []}  # noqa: E731
    validated = [{"valid": True, "problem": problem("0")}, {"valid": False},
                 {"valid": True, "problem": problem("[1, 2]")}, {"valid": True, "problem": problem("[3]"),
                                                                   "reason": "sandbox_error"}]
    rewards = [-0.5, -1.0, 0.25, None]
    rates = [1.0, None, 0.75, None]
    SelfPlay._add_diversity_bonus(fake, "deduction", validated, rewards, rates, [0, 2, 3])
    if level == "value":  # history 0, 0, 1 + batch 0, [1, 2], [3]: p(0) = 3/6, the others 1/6
        expected = [0.5, 5 / 6, 5 / 6]
    else:  # by type: four ints, two lists in six
        expected = [2 / 6, 4 / 6, 4 / 6]
    assert [validated[i]["answer_diversity"] for i in (0, 2, 3)] == pytest.approx(expected)
    assert "answer_diversity" not in validated[1]
    assert rewards[0] == -0.5 and validated[0]["diversity_bonus"] == 0.0  # boundary: no bonus (reference)
    assert rewards[1] == -1.0  # invalid: no bonus
    assert rewards[2] == pytest.approx(0.25 + min(0.5 * expected[1], 0.3))
    assert rewards[3] is None  # unjudged rows stay unjudged
    # A positive boundary reward (azr.boundary_reward > 0) is still a boundary: no bonus.
    boundary = [dict(validated[0])]
    positive = [0.2]
    SelfPlay._add_diversity_bonus(fake, "deduction", boundary, positive, [0.0], [0])
    assert positive == [0.2] and boundary[0]["diversity_bonus"] == 0.0


def test_sigterm_as_interrupt_raises_keyboard_interrupt_inside_and_puts_the_handler_back():
    import signal
    import threading

    from azr_jax.stopping import raise_interrupt, sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is raise_interrupt
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before
    errors = []

    def off_the_main_thread():  # signal.signal would raise ValueError there: a no-op instead
        try:
            with sigterm_as_interrupt():
                errors.append(signal.getsignal(signal.SIGTERM) is raise_interrupt)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    thread = threading.Thread(target=off_the_main_thread)
    thread.start()
    thread.join()
    assert errors == [False] and signal.getsignal(signal.SIGTERM) is before


def test_a_second_stop_signal_interrupts_at_once(caplog):
    import os
    import signal

    from azr_jax.trainer import StopFlag

    previous = signal.getsignal(signal.SIGTERM)
    stop = StopFlag()
    stop.install()
    try:
        with caplog.at_level("WARNING", logger="azr_jax.trainer"):
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested  # the first one only asks the loop to stop after the step
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored by the second
        # the second one says what it costs: the step in progress is not saved
        assert caplog.records[-1].getMessage() == "received SIGTERM again: stopping now, without a checkpoint"
    finally:
        stop.restore()


def test_a_stop_signal_before_the_first_step_stops_at_once():
    # train() installs its handler before the start-up (on a multi-host run JAX's own handler
    # would otherwise swallow the signal); with nothing to save yet, the first signal stops.
    import os
    import signal

    from azr_jax.trainer import StopFlag

    previous = signal.getsignal(signal.SIGTERM)
    stop = StopFlag(stepping=False)
    stop.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        # Python drops an exception raised in a garbage-collection callback (JAX has one): the
        # start-up checks between its phases raise it again, and the handler stays installed.
        with pytest.raises(KeyboardInterrupt):
            stop.check_startup()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        stop.restore()
        assert signal.getsignal(signal.SIGTERM) is previous
        stop = StopFlag(stepping=False)
        stop.install()
        stop.check_startup()  # no signal: nothing raised
        stop.restore()
        stop = StopFlag(stepping=False)
        stop.install()
        stop.stepping = True  # the loop is about to start: the first signal only asks it to stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    finally:
        stop.restore()


def test_a_dropped_start_up_stop_is_not_reported_as_an_ignored_exception(capfd, report_unraisable):
    """Python reports a KeyboardInterrupt it dropped (raised in a GC callback) with a traceback;
    once the stop is recorded the start-up raises it again, so that report is dropped."""
    import os
    import signal
    import sys

    from azr_jax.trainer import StopFlag

    previous = sys.unraisablehook
    stop = StopFlag(stepping=False)
    stop.install()
    try:
        report_unraisable(KeyboardInterrupt())  # no stop recorded yet: reported as usual
        assert "KeyboardInterrupt" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        report_unraisable(KeyboardInterrupt())
        report_unraisable(ValueError("other"))
        err = capfd.readouterr().err
        assert "KeyboardInterrupt" not in err and "ValueError: other" in err
    finally:
        stop.restore()
    assert sys.unraisablehook is previous


def test_a_ctrl_c_while_the_trainer_imports_jax_stops_the_run(tmp_path, monkeypatch, caplog):
    """`azr-jax train` took over SIGINT only inside train(), after importing JAX: a Ctrl-C in the
    first half second could land in JAX's garbage-collection callback, where Python drops the
    KeyboardInterrupt, and the run went on. Simulated here: the signal arrives inside a GC
    callback while the trainer module is being imported."""
    import gc
    import os
    import signal
    import types

    from azr_jax import cli

    def deliver_in_gc_callback(phase, info):
        if phase == "start":
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # the handler runs at the next bytecode check: in here
                pass

    def trainer_attribute(name):
        gc.callbacks.append(deliver_in_gc_callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(deliver_in_gc_callback)
        return lambda *args, **kwargs: pytest.fail("the run went on after Ctrl-C")

    fake = types.ModuleType("azr_jax.trainer")
    fake.__getattr__ = trainer_attribute
    monkeypatch.setitem(sys.modules, "azr_jax.trainer", fake)
    previous = signal.getsignal(signal.SIGINT)
    with caplog.at_level("WARNING", logger="azr_jax.trainer"):
        assert cli.main(["train", "--config", "configs/nano.py", "--workdir", str(tmp_path / "run")]) == 130
    assert any("received SIGINT before the first step" in r.getMessage() for r in caplog.records)
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_stop_signal_does_not_cut_the_deletion_of_newer_checkpoints_short():
    # --resume-step deletes the abandoned branch's checkpoints; stopped half-way, the next plain
    # resume would pick that branch's newest. The signal is acted on once the deletion is done.
    import os
    import signal

    from azr_jax.trainer import StopFlag, _delete_newer_checkpoints

    class Checkpoints:
        def __init__(self):
            self.steps = [1, 2, 3]

        def delete_after(self, step):
            dropped = []
            for s in [s for s in self.steps if s > step]:
                if not dropped:
                    os.kill(os.getpid(), signal.SIGTERM)  # arrives before the first deletion
                self.steps.remove(s)
                dropped.append(s)
            return dropped

    stop = StopFlag(stepping=False)
    stop.install()
    try:
        ckpts = Checkpoints()
        with pytest.raises(KeyboardInterrupt):
            _delete_newer_checkpoints(ckpts, 1, stop)
        assert ckpts.steps == [1] and not stop.stepping
    finally:
        stop.restore()


def test_the_end_of_run_report_says_how_the_benchmark_was_decoded(tmp_path, capsys):
    from azr_jax.eval.summary import solve_rate_summary
    from azr_jax.train_cli import print_report

    def result(rate, **kw):
        return {"solve_rate": rate, "per_task": {"deduction": rate}, "n_items": 2, "benchmark": "nano", **kw}

    print_report(solve_rate_summary(result(0.1), result(0.2)), tmp_path)
    assert "(nano, 2 items, greedy)" in capsys.readouterr().out
    print_report(solve_rate_summary(result(0.1), result(0.2, samples=4, temperature=1.0)), tmp_path)
    assert "(nano, 2 items, mean of 4 samples at temperature 1)" in capsys.readouterr().out


@pytest.mark.parametrize("loss_agg,pack", [("token-mean-per-micro-batch", True), ("token-mean", False)])
def test_update_rows_line_up_with_rewards_groups_and_unjudged_masks(loss_agg, pack):
    """`SelfPlay._update` pads each (role, task) part to whole blocks (per-micro-batch mean) or the
    whole batch to whole micro-batches (padded layout): every row's reward, group and loss mask
    must still be its own, and exactly the unjudged rows lose their loss tokens."""
    import dataclasses
    from types import SimpleNamespace

    import numpy as np

    from azr_jax.config import Config, RLSection
    from azr_jax.sampling import Completions
    from azr_jax.trainer import RoleBatch, SelfPlay

    def part(role, task, rewards, reasons, n_samples=1):
        rows = len(rewards)
        tokens = np.arange(1, rows * 2 + 1, dtype=np.int32).reshape(rows, 2)
        comp = Completions(tokens=tokens, logprobs=np.zeros(tokens.shape, np.float32),
                           lengths=np.full(rows, 2, np.int32), finished=np.ones(rows, bool))
        return RoleBatch(role, task, [[7, 8]] * (rows // n_samples), [{}] * (rows // n_samples), completions=comp,
                         scored=[{"reason": r} for r in reasons], rewards=rewards, n_samples=n_samples)

    seen = {}

    def advantages_fn(rewards, loss_mask, groups):
        seen.update(rewards=np.asarray(rewards), loss_mask=np.asarray(loss_mask), groups=np.asarray(groups))
        return np.zeros(np.shape(loss_mask), np.float32)

    loop = SelfPlay.__new__(SelfPlay)
    loop.cfg = dataclasses.replace(Config(), rl=RLSection(estimator="grpo", micro_batch_size=4, loss_agg=loss_agg,
                                                          pack_by_length=pack))
    loop.policy = SimpleNamespace(pad_id=0, advantages_fn=advantages_fn, put_batch=lambda x: x,
                                  put_replicated=lambda x: x)
    loop.ref_params, loop.timers = None, {}
    loop.train_step = lambda state, batch: (state, {"loss": 0.0})
    ordered = [part("propose", "deduction", [0.5, -1.0, 1.0], [None, "sandbox_error", None]),
               part("solve", "deduction", [1.0, 0.0, 1.0, 0.0, 0.0, 1.0], [None] * 5 + ["sandbox_error"], n_samples=2)]
    loop._update("state", ordered)
    has_loss = seen["loss_mask"].sum(axis=1) > 0
    if pack:  # parts padded to blocks of 4: 3 + 1 empty, 6 + 2 empty
        rewards = [0.5, -1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
        loss = [1, 0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0]
        groups = [1, 1, 1, 1, 6, 6, 7, 7, 8, 8, 8, 8]
    else:  # one batch of 9 rows padded to 12
        rewards = [0.5, -1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
        loss = [1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
        groups = [1, 1, 1, 6, 6, 7, 7, 8, 8, 8, 8, 8]
    np.testing.assert_array_equal(seen["rewards"], rewards)
    np.testing.assert_array_equal(has_loss, np.array(loss, bool))
    np.testing.assert_array_equal(seen["groups"], groups)


def test_the_audit_records_no_reward_for_a_row_the_update_masks():
    # A proposal whose validation the sandbox could not run: the proposer reward formula says -1
    # (not valid), but the row is masked, so its audit record must not claim it trained on -1.
    from types import SimpleNamespace

    from azr_jax.azr.buffers import TaskBuffers
    from azr_jax.config import AZRSection
    from azr_jax.trainer import RoleBatch, SelfPlay, sandbox_error_rows

    cfg = SimpleNamespace(azr=AZRSection(), sampling=SimpleNamespace(max_prompt_len=6144))
    verdict = {"id": "1/propose/deduction/0", "format_ok": True, "valid": False, "reason": "sandbox_error",
               "problem": None, "accuracy": None, "reward": None}  # as score_records gives it
    stub = SimpleNamespace(cfg=cfg, _collect=lambda future, n: [dict(verdict)], buffers=TaskBuffers.seeded(cfg.azr),
                           _records=lambda rb, step: [{"id": s["id"]} for s in rb.scored])
    rb = RoleBatch("propose", "deduction", [[1]], [{}])
    SelfPlay._finish_proposals(stub, {("propose", "deduction"): rb}, {("propose", "deduction"): None}, 1, None, None,
                               "deduction")
    assert sandbox_error_rows([rb]).tolist() == [True]
    (record,) = SelfPlay._rollouts(stub, [rb], 1)
    assert record["scored"]["reason"] == "sandbox_error" and record["scored"]["reward"] is None


def _finished_run(workdir, *, final_has_step=True):
    """The outputs of a run that completed 30 steps, evaluating and auditing every 10."""
    import json

    for folder in ("eval", "rollouts", "buffers"):
        (workdir / folder).mkdir(parents=True, exist_ok=True)
    for name in ("base", "step_10", "step_20"):
        (workdir / "eval" / f"{name}.json").write_text("{}")
    (workdir / "eval" / "final.json").write_text(json.dumps({"step": 30} if final_has_step else {}))
    for n in (1, 10, 20, 30):
        (workdir / "rollouts" / f"step_{n}.jsonl").write_text("")
        (workdir / "buffers" / f"step_{n}.json").write_text("{}")
    (workdir / "summary.json").write_text(json.dumps({"status": "completed", "step": 30}))
    (workdir / "plots").mkdir(exist_ok=True)
    for name in ("reward", "solve_rate"):
        (workdir / "plots" / f"{name}.png").write_bytes(b"")


def _files(workdir):
    return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())


@pytest.mark.parametrize("final_has_step", [True, False], ids=["final.json names its step", "older final.json"])
def test_resuming_leaves_only_the_outputs_of_the_steps_kept(tmp_path, final_has_step):
    from azr_jax.trainer import _drop_outputs_after

    _finished_run(tmp_path, final_has_step=final_has_step)
    everything = _files(tmp_path)
    _drop_outputs_after(tmp_path, 30, 30)  # the finished run itself, rerun: nothing is stale
    assert _files(tmp_path) == everything
    _drop_outputs_after(tmp_path, 10, 30)  # --resume-step 10: later steps belong to the abandoned branch
    # The plots drew steps 11-30 too: gone (the run draws new ones at its end).
    assert _files(tmp_path) == ["buffers/step_1.json", "buffers/step_10.json", "eval/base.json", "eval/step_10.json",
                                "rollouts/step_1.jsonl", "rollouts/step_10.jsonl"]


def test_resuming_an_older_step_of_a_run_without_evaluations_drops_its_plots(tmp_path):
    """--resume-step 2 of a finished 3-step nano run with train.eval_every=-1 (audit files at step 1
    only) kept plots/*.png drawn from step 3's records, which metrics.jsonl then no longer held:
    a continuation stopped before it completed left plots of the abandoned branch."""
    import json

    from azr_jax.trainer import _drop_outputs_after

    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "reward.png").write_bytes(b"")
    lines = [json.dumps({"step": n, "reward/mean": 0.1}) for n in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    _drop_outputs_after(tmp_path, 3, 3)  # the finished run, rerun: its plots stay
    assert (tmp_path / "plots" / "reward.png").exists()
    _drop_outputs_after(tmp_path, 2, 3)
    assert not (tmp_path / "plots" / "reward.png").exists()


def test_the_final_evaluation_step_is_its_own_else_the_summarys_and_unknown_is_stale(tmp_path):
    import json

    from azr_jax.trainer import _drop_outputs_after, _final_evaluation_step

    final, summary = tmp_path / "final.json", tmp_path / "summary.json"
    final.write_text(json.dumps({"step": 20}))
    summary.write_text(json.dumps({"step": 30}))
    assert _final_evaluation_step(final, summary) == 20  # its own step first
    final.write_text(json.dumps({"step": "20"}))  # not a step number: the summary's
    assert _final_evaluation_step(final, summary) == 30
    summary.unlink()
    assert _final_evaluation_step(final, summary) is None
    # an evaluation of an unknown step belongs to no kept step: dropped on a resume
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "final.json").write_text("{}")
    _drop_outputs_after(tmp_path, 10, 30)
    assert not (tmp_path / "eval" / "final.json").exists()


def test_a_finished_run_given_more_steps_keeps_its_last_evaluation_as_that_steps(tmp_path):
    import json

    from azr_jax.trainer import _drop_outputs_after

    _finished_run(tmp_path)
    result = {"step": 30, "solve_rate": 0.25, "per_task": {"deduction": 0.5, "abduction": 0.0}}
    (tmp_path / "eval" / "final.json").write_text(json.dumps(result))
    kept = _drop_outputs_after(tmp_path, 30, 60)
    assert kept == {"eval/solve_rate": 0.25, "eval/solve_rate/deduction": 0.5, "eval/solve_rate/abduction": 0.0}
    assert json.loads((tmp_path / "eval" / "step_30.json").read_text()) == result
    assert not (tmp_path / "eval" / "final.json").exists()
    assert not (tmp_path / "summary.json").exists()  # the run is not complete any more
    assert (tmp_path / "rollouts" / "step_30.jsonl").exists()
    assert (tmp_path / "plots" / "reward.png").exists()  # they show steps 1-30, all kept


def test_a_file_where_tensorboard_belongs_is_one_line(tmp_path):
    """train --workdir W with a file W/tensorboard ended in a NotADirectoryError traceback (exit 1)."""
    from azr_jax.errors import UserError
    from azr_jax.metrics import MetricsWriter

    (tmp_path / "tensorboard").write_text("")
    with pytest.raises(UserError, match=r"cannot write .*tensorboard.* \(Not a directory\); the run stopped"):
        MetricsWriter(tmp_path, total_steps=3, progress=False)


def test_amending_a_step_rewrites_its_record_and_keeps_appending(tmp_path):
    import json

    from azr_jax.metrics import MetricsWriter, read_metrics

    with_steps = MetricsWriter(tmp_path, total_steps=3, progress=False)
    for step in (1, 2):
        with_steps.write_step({"step": step, "reward/mean": 0.1 * step})
    with_steps.close()
    resumed = MetricsWriter(tmp_path, total_steps=3, start_step=2, progress=False)
    resumed.amend_step(2, {"eval/solve_rate": 0.5})
    resumed.amend_step(7, {"eval/solve_rate": 0.9})  # no such step: nothing changes
    resumed.write_step({"step": 3, "reward/mean": 0.3})
    resumed.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records == [{"step": 1, "reward/mean": 0.1}, {"step": 2, "reward/mean": 0.2, "eval/solve_rate": 0.5},
                       {"step": 3, "reward/mean": 0.3}]
    # nor does TensorBoard get a point for the missing step
    (events,) = (tmp_path / "tensorboard").glob("*.from_step_2")
    assert sorted(_scalars(_tensorboard_events(events))) == [(2, "eval/solve_rate", 0.5), (3, "reward/mean", 0.3)]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])["eval/solve_rate"] == 0.5


def test_a_fresh_start_clears_what_a_failed_start_left(tmp_path):
    from azr_jax.trainer import _drop_outputs_after

    _finished_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    _drop_outputs_after(tmp_path, 0, 30)
    assert _files(tmp_path) == ["metrics.jsonl"]  # metrics.jsonl is the MetricsWriter's to truncate


def test_a_fresh_start_clears_a_failed_starts_seed_files_but_not_those_it_reads(tmp_path):
    """A start killed after its seeding phase, restarted with azr.seed_size=0 (or other seed files),
    kept seed/seeding.json and the seed files of a phase the new run's buffers never came from."""
    from azr_jax.trainer import _drop_outputs_after

    def seeded():
        (tmp_path / "seed").mkdir(exist_ok=True)
        for name in ("seeding.json", "seed_triplets.jsonl", "seed_induction.jsonl"):
            (tmp_path / "seed" / name).write_text("{}\n")

    seeded()
    _drop_outputs_after(tmp_path, 0, 30)
    assert _files(tmp_path) == []
    seeded()
    given = tmp_path / "seed" / "seed_triplets.jsonl"  # reused as azr.seed_file: the start reads it
    _drop_outputs_after(tmp_path, 0, 30, (str(given), None))
    assert _files(tmp_path) == ["seed/seed_triplets.jsonl"]
    given.unlink()
    (tmp_path / "seed" / "seeding.json").write_text("{}\n")
    _drop_outputs_after(tmp_path, 5, 30)  # a resume keeps its run's seeding phase
    assert _files(tmp_path) == ["seed/seeding.json"]


def test_update_flops_count_the_kl_reference_forward_pass():
    from azr_jax.models import ModelConfig
    from azr_jax.trainer import update_flops

    cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16)
    train = cfg.flops_per_token(300) * 300 + cfg.flops_per_token(100) * 100  # 6 FLOPs per weight: fwd 2, bwd 4
    assert update_flops(cfg, [300, 100], with_reference=False) == train
    assert update_flops(cfg, [300, 100], with_reference=True) == train * 4 // 3  # + one forward (2 per weight)
    # Each row's attention over its own length: the short row was charged the long row's.
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim
    assert cfg.flops_per_token(300) * 400 - train == attention * 200 * 100


def test_rollouts_bucket_the_longest_prompt_at_max_prompt_len():
    """The presets' prompts reach 6144 tokens; the default buckets jump from 4096 to 8192."""
    from azr_jax.config import load_config
    from azr_jax.sampling.buckets import bucket_length
    from azr_jax.trainer import rollout_length_buckets

    sampling = load_config("configs/qwen2.5-7b.py").sampling
    assert sampling.max_prompt_len == 6144 and 6144 not in sampling.length_buckets
    buckets = rollout_length_buckets(sampling)
    assert bucket_length(6000, buckets) == 6144 and bucket_length(4000, buckets) == 4096
    assert rollout_length_buckets(load_config("configs/nano.py").sampling) == [128, 256, 384, 512, 640]


class _FullDisk(io.StringIO):
    def write(self, text):
        raise OSError(28, "No space left on device")

    def close(self):
        raise OSError(28, "No space left on device")


def test_a_failed_write_of_the_run_outputs_is_one_line_naming_the_file(tmp_path):
    """A full disk, a file where rollouts/ should be or an immutable metrics.jsonl ended the run
    with OSError tracebacks (checkpoint saves already said one line)."""
    import types

    from azr_jax.errors import UserError

    w = MetricsWriter(tmp_path, total_steps=2, progress=False)
    (tmp_path / "rollouts").write_text("not a directory")
    with pytest.raises(UserError, match=r"cannot write .*rollouts \(File exists\); the run stopped: .* resume"):
        w.write_rollouts(1, [{"id": "x"}])
    real = w._jsonl
    w._jsonl = _FullDisk()
    with pytest.raises(UserError, match=r"cannot write .*metrics.jsonl \(No space left on device\)"):
        w.write_step({"step": 1, "reward/mean": 0.5})
    closed, board = [], w._tb
    w._tb = types.SimpleNamespace(close=lambda: closed.append("tensorboard"))
    with pytest.raises(UserError, match=r"metrics.jsonl \(No space left on device\)"):
        w.close()  # the flush at close fails too; the rest is still closed
    real.close()
    board.close()
    assert closed == ["tensorboard"] and w._tb is None and w._jsonl is None
    w = MetricsWriter(tmp_path / "again", total_steps=1, progress=False)
    board, w._tb = w._tb, _FullDisk()  # the event file's last flush fails: one line too
    with pytest.raises(UserError, match=r"cannot write .*tensorboard \(No space left on device\)"):
        w.close()
    board.close()


def _batch(role, task, rewards, scored, lengths=(4,), solve_rates=()):
    from types import SimpleNamespace

    return SimpleNamespace(role=role, task=task, rewards=list(rewards), scored=list(scored),
                           completions=SimpleNamespace(lengths=list(lengths)), solve_rates=list(solve_rates))


def test_rollout_metrics_by_hand():
    from azr_jax.trainer import rollout_metrics

    ok = {"valid": True, "format_ok": True}
    propose = _batch("propose", "deduction", [0.5, -0.5, 0.0, -1.0],
                     [dict(ok, accuracy=0.5), dict(ok, accuracy=None), dict(ok, accuracy=1.0),
                      {"valid": False, "format_ok": False, "reason": "sandbox_error", "reward": -1.0}],
                     lengths=(2, 4, 6, 8), solve_rates=[0.5, None, 1.0, 0.0])
    solve = _batch("solve", "deduction", [1.0, 1.0, 1.0, 0.0],
                   [dict(ok, accuracy=1.0)] * 3 + [{"valid": False, "format_ok": True, "reason": "sandbox_error"}])
    rec = rollout_metrics([propose, solve], learnability_sandbox_errors=2)
    # accuracy: rows that have one (None is no accuracy, not 0); learnability: 1 - r for 0 < r < 1 only
    assert rec["propose/deduction/accuracy"] == 0.75
    assert rec["propose/deduction/learnability"] == pytest.approx((0.5 + 0.0 + 0.0) / 3)
    # the -1 of a format failure the sandbox did not judge is a reward; the solver's 0.0 placeholder is not
    assert rec["propose/deduction/reward"] == pytest.approx(-0.25)
    assert rec["solve/deduction/reward"] == 1.0
    assert rec["propose/deduction/valid_rate"] == 0.75 and rec["propose/deduction/format_rate"] == 0.75
    # valid and format rates are counted apart: the solver's last row is well formatted, not valid
    assert rec["solve/deduction/valid_rate"] == 0.75 and rec["solve/deduction/format_rate"] == 1.0
    assert rec["propose/deduction/response_len"] == 5.0
    # pooled over the 7 judged rows, not the mean of the two batch means (0.375)
    assert rec["reward/mean"] == pytest.approx((0.5 - 0.5 + 0.0 - 1.0 + 3.0) / 7)
    assert rec["sandbox_errors"] == 2 + 2  # one row in each batch, plus the learnability rollouts
    assert "solve/deduction/learnability" not in rec
    # no proposal with a solve rate (none valid): no learnability figure, not a 0
    invalid = _batch("propose", "deduction", [-1.0], [{"valid": False, "format_ok": True}], solve_rates=[None])
    assert rollout_metrics([invalid])["propose/deduction/learnability"] is None


def test_a_task_record_drops_only_the_buffer_step():
    from azr_jax.trainer import _task_record

    entry = {"program": "import math\ndef f(x):\n    return math.floor(x)", "input": "1.5", "output": "1",
             "imports": ["import math"], "step": 3}
    assert _task_record(entry) == {k: v for k, v in entry.items() if k != "step"}


def test_non_finite_metrics_are_written_as_null(tmp_path):
    w = MetricsWriter(tmp_path, total_steps=1, progress=False)
    w.write_step({"step": 1, "a": float("inf"), "b": float("-inf"), "c": float("nan"), "d": 1.5})
    w.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    assert "Infinity" not in line and "NaN" not in line
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "a": None, "b": None, "c": None, "d": 1.5}]


def test_progress_eta_comes_from_the_last_ten_steps():
    out = io.StringIO()
    p = ProgressLine(total=30, start=0, stream=out)
    now = 0.0
    for step in range(1, 13):
        now += 100.0 if step <= 2 else 10.0  # two slow steps, then ten at 10 s
        p.update(step, {}, now=now)
    assert "10.0s/step eta 180s" in out.getvalue().splitlines()[-1]


def test_read_metrics_of_a_missing_file_is_empty_and_skips_blank_lines(tmp_path):
    """A run that has not finished a step has no metrics.jsonl: no records, not an error; blank
    lines are not records."""
    p = tmp_path / "metrics.jsonl"
    assert read_metrics(p) == []
    p.write_text('{"step": 1}\n\n  \n{"step": 2}\n\n')
    assert read_metrics(p) == [{"step": 1}, {"step": 2}]


def test_step_files_lists_only_numbered_files_in_step_order(tmp_path):
    """`step_N<suffix>` by N as a number (9 before 10), whatever the directory order; names the
    glob also matches but that carry no number (`step_final.json`, `step_.json`) are skipped."""
    from azr_jax.metrics import step_files

    for n in (12, 100, 11, 10, 9, 3, 2, 1):
        (tmp_path / f"step_{n}.json").write_text("{}")
    for name in ("step_final.json", "step_.json", "step_1.jsonl", "base.json", "step_\u00b2.json", "step_\u0663.json"):
        (tmp_path / name).write_text("{}")
    assert step_files(tmp_path) == [(n, tmp_path / f"step_{n}.json") for n in (1, 2, 3, 9, 10, 11, 12, 100)]
    assert step_files(tmp_path, ".jsonl") == [(1, tmp_path / "step_1.jsonl")]


def test_resume_truncation_drops_lines_that_are_not_step_records(tmp_path):
    """Only step records up to the checkpoint are kept: a line that parses but is no record (a
    bare number, a list) or names no step is dropped, not a crash and not kept."""
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n7\n[1, 2]\n{"x": 1}\n{"step": 2}\n{"step": 9}\n')
    truncate_metrics(p, 5)
    assert read_metrics(p) == [{"step": 1}, {"step": 2}]


def test_progress_eta_is_the_mean_of_exactly_the_last_ten_steps():
    """RECENT = 10: the ETA averages the last ten step intervals, so a slow step ten updates ago
    still counts and one eleven updates ago does not."""
    out = io.StringIO()
    p = ProgressLine(total=30, start=0, stream=out)
    times = {1: 0.0, 2: 10.0, 3: 110.0}  # step 3 took 100 s
    for step in range(4, 13):
        times[step] = times[step - 1] + 10.0
    for step, now in times.items():
        p.update(step, {}, now=now)
    # steps 3..12: (100 + 9 * 10) / 10 = 19 s per step, 18 steps left
    assert "19.0s/step eta 342s" in out.getvalue().splitlines()[-1]


def test_progress_line_on_a_terminal_redraws_in_place_with_a_filling_bar():
    """On a terminal each update goes back to the start of the line (\\r) and clears the rest; the
    bar has step/total of its 20 cells filled."""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    p = ProgressLine(total=4, start=0, stream=out)
    p.update(1, {"reward/mean": 0.5}, now=0.0)
    p.update(2, {"reward/mean": 0.25}, now=10.0)
    p.close()
    assert out.getvalue() == ("\r[#####...............] step 1/4 eta ? reward/mean=0.5\033[K"
                              "\r[##########..........] step 2/4 10.0s/step eta 20s reward/mean=0.25\033[K\n")


def test_the_progress_line_shows_reward_buffer_size_and_step_time(tmp_path, capsys):
    """The writer's progress line shows the three headline fields of the record, no others."""
    w = MetricsWriter(tmp_path, total_steps=1, progress=True)
    w.write_step({"step": 1, "reward/mean": 0.5, "buffer/deduction": 12, "step_time_s": 3.25, "loss": 0.1})
    w.close()
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "step 1/1" in line]
    assert line.endswith(" reward/mean=0.5 buffer/deduction=12 step_time_s=3.25"), line


def test_amending_a_step_overrides_nulls_non_finite_values_and_logs_to_tensorboard(tmp_path):
    """`amend_step` values win over the record's own, NaN is written as null (every line parses),
    and the finite ones also go to TensorBoard at that step."""
    w = MetricsWriter(tmp_path, total_steps=2, progress=False)
    w.write_step({"step": 1, "eval/solve_rate": 0.1, "reward/mean": 0.5})
    w.amend_step(1, {"eval/solve_rate": 0.25, "eval/loss": float("nan")})
    w.close()
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()
    assert read_metrics(tmp_path / "metrics.jsonl") == [
        {"step": 1, "eval/solve_rate": 0.25, "eval/loss": None, "reward/mean": 0.5}]
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    assert sorted(_scalars(_tensorboard_events(events))) == [
        (1, "eval/solve_rate", 0.1), (1, "eval/solve_rate", 0.25), (1, "reward/mean", 0.5)]


def test_audit_files_hold_one_json_line_per_rollout_and_the_buffers_of_their_step(tmp_path):
    """rollouts/step_N.jsonl: one sorted-key JSON object per line, each ending in a newline (a
    JSONL file `azr-jax score --in` reads); buffers/step_N.json: the snapshot; a disabled writer
    (a non-primary process) writes neither."""
    w = MetricsWriter(tmp_path, total_steps=3, progress=False)
    w.write_rollouts(3, [{"id": "b", "reward": 1.0}, {"reward": 0.0, "id": "a"}])
    snapshot = {"deduction": [{"program": "def f(x):\n    return x", "input": "1", "output": "1"}]}
    w.write_buffers(3, snapshot)
    w.close()
    assert (tmp_path / "rollouts" / "step_3.jsonl").read_text() == (
        '{"id": "b", "reward": 1.0}\n{"id": "a", "reward": 0.0}\n')
    assert json.loads((tmp_path / "buffers" / "step_3.json").read_text()) == snapshot
    off = MetricsWriter(tmp_path / "off", total_steps=1, enabled=False)
    off.write_buffers(1, snapshot)
    off.write_json("summary.json", {"status": "completed"})
    off.close()
    assert not (tmp_path / "off").exists()


def test_installing_twice_then_restoring_puts_back_the_handlers_found_first(report_unraisable):
    """`azr-jax train` installs its flag and train() installs it again: one restore must put back
    the SIGTERM handler and unraisablehook found by the first install, must not clobber a hook
    someone installed after ours, and a flag restored then installed again takes over afresh."""
    import signal
    import sys

    from azr_jax.trainer import StopFlag

    term, hook = signal.getsignal(signal.SIGTERM), sys.unraisablehook
    stop = StopFlag(stepping=False)
    try:
        stop.install()
        stop.install()
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop.restore()
        assert signal.getsignal(signal.SIGTERM) is term and sys.unraisablehook is hook
        other = lambda signum, frame: None  # noqa: E731  (someone took SIGTERM meanwhile)
        signal.signal(signal.SIGTERM, other)
        stop.install()
        assert sys.unraisablehook == stop._drop_dropped_stop
        stop.restore()
        assert signal.getsignal(signal.SIGTERM) is other and sys.unraisablehook is hook
        stop.install()
        later = lambda unraisable: None  # noqa: E731  (a hook installed after ours)
        sys.unraisablehook = later
        stop.restore()
        assert sys.unraisablehook is later
    finally:
        stop.restore()
        signal.signal(signal.SIGTERM, term)


def test_only_the_second_signal_makes_the_stop_immediate():
    """The first signal in the loop waits for the step (`check_startup` stays quiet, `immediate`
    unset); the second stops at once and sets `immediate`, which cancels the queued host jobs."""
    import os
    import signal

    from azr_jax.trainer import StopFlag

    stop = StopFlag()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and not stop.immediate
        stop.check_startup()  # a stop after the step: nothing raised
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.immediate
        with pytest.raises(KeyboardInterrupt):
            stop.check_startup()
    finally:
        stop.restore()


@pytest.mark.parametrize("status, code", [("completed", 0), ("stopped", 0), ("failed", 1)])
def test_train_hands_its_flags_to_the_trainer_and_exits_by_the_runs_status(status, code, tmp_path, monkeypatch,
                                                                          capsys):
    """`azr-jax train` passes --workdir (default runs/<name>), --resume-step and --no-progress to
    train(); a completed run prints where its outputs are, a stopped one exits 0 without that
    report, any other status exits 1; --resume-step 0 is refused before training starts."""
    import types
    from pathlib import Path

    from azr_jax import cli

    config = str(Path("configs/nano.py").absolute())
    calls = []

    def train(cfg, workdir, *, resume_step, progress, stop):
        calls.append((cfg.name, workdir, resume_step, progress))
        return {"status": status}

    fake = types.ModuleType("azr_jax.trainer")
    fake.train = train
    monkeypatch.setitem(sys.modules, "azr_jax.trainer", fake)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--config", config]) == code
    ((name, workdir, resume_step, progress),) = calls
    assert name and workdir == f"runs/{name}" and resume_step is None and progress is True
    out = capsys.readouterr().out
    report = [f"summary: runs/{name}/summary.json", f"metrics: runs/{name}/metrics.jsonl"]
    assert [line for line in out.splitlines() if line.startswith(("summary:", "metrics:"))] == (
        report if status == "completed" else [])
    calls.clear()
    assert cli.main(["train", "--config", config, "--workdir", str(tmp_path / "w"), "--resume-step", "3",
                     "--no-progress"]) == code
    assert calls == [(name, str(tmp_path / "w"), 3, False)]
    calls.clear()
    assert cli.main(["train", "--config", config, "--workdir", str(tmp_path / "w"), "--resume-step", "0"]) == 2
    assert "--resume-step must be a positive step number, got 0" in capsys.readouterr().err and calls == []


def test_the_end_of_run_report_lists_the_plots(tmp_path, capsys):
    """The report names every PNG under WORKDIR/plots, sorted, and no plots line without any."""
    from azr_jax.train_cli import print_report

    print_report({}, tmp_path)
    assert "plots:" not in capsys.readouterr().out
    (tmp_path / "plots").mkdir()
    for name in ("reward", "heldout_solve_rate"):
        (tmp_path / "plots" / f"{name}.png").write_bytes(b"")
    print_report({}, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"plots:   {tmp_path / 'plots' / 'heldout_solve_rate.png'}, {tmp_path / 'plots' / 'reward.png'}"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_records_after_a_step_count_only_whole_step_records(tmp_path):
    """A resume asks whether metrics.jsonl holds steps past the checkpoint (their plots are stale):
    a line that is no step record (a number, a list, no step, a step that is not a number, a
    line cut short) is passed over, not a crash."""
    from azr_jax.metrics import has_records_after

    p = tmp_path / "metrics.jsonl"
    assert not has_records_after(p, 0)  # no file yet
    p.write_text('{"step": 1}\n7\n[3]\n{"x": 1}\n{"step": "9"}\n{"step": 2}\n{"step": 3, "x"')
    assert has_records_after(p, 1) and not has_records_after(p, 2)


def test_eta_durations_switch_to_hours_at_one_hour_and_round_to_the_minute():
    from azr_jax.metrics import _duration

    assert _duration(3599.4) == "3599s" and _duration(3600) == "1h00m"
    assert _duration(3940) == "1h06m"  # 65.7 minutes: rounded, minutes in two digits


def test_without_progress_the_writer_prints_nothing(tmp_path, capsys):
    """--no-progress: no progress line at all (metrics.jsonl still gets every step)."""
    w = MetricsWriter(tmp_path, total_steps=1, progress=False)
    w.write_step({"step": 1, "reward/mean": 0.5})
    w.close()
    assert capsys.readouterr().err == ""
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "reward/mean": 0.5}]


def test_the_progress_line_leaves_out_a_field_without_a_value(tmp_path, capsys):
    """A step whose rows the sandbox judged none has reward/mean null: the progress line shows
    the other fields (formatting None would stop the run just after its step was written)."""
    w = MetricsWriter(tmp_path, total_steps=1, progress=True)
    w.write_step({"step": 1, "reward/mean": None, "buffer/deduction": 12, "step_time_s": 3.25})
    w.close()
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "step 1/1" in line]
    assert line.endswith(" buffer/deduction=12 step_time_s=3.25") and "reward" not in line, line


def test_closing_the_writer_ends_its_progress_line_on_a_terminal(tmp_path, monkeypatch):
    """On a terminal the progress line has no newline of its own: the writer's close ends it, so
    what the run prints next starts on a line of its own."""
    out = _Terminal()
    monkeypatch.setattr(sys, "stderr", out)
    w = MetricsWriter(tmp_path, total_steps=1)
    w.write_step({"step": 1, "reward/mean": 0.5})
    w.close()
    assert out.getvalue().endswith("step 1/1 eta ? reward/mean=0.5\033[K\n"), repr(out.getvalue())


def test_a_log_record_written_elsewhere_leaves_the_progress_line_alone():
    """Only log handlers that write to the progress line's own terminal clear it first; a record
    that goes to another stream (a log file) must not erase the line on the terminal."""
    import logging

    out, elsewhere = _Terminal(), io.StringIO()
    handler = logging.StreamHandler(elsewhere)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        p = ProgressLine(total=4, start=0, stream=out)
        p.update(1, {"reward/mean": 0.5})
        logging.getLogger("azr_jax.trainer").warning("to the log file")
        p.close()
    finally:
        root.removeHandler(handler)
    assert elsewhere.getvalue() == "to the log file\n"
    assert out.getvalue() == "\r[#####...............] step 1/4 eta ? reward/mean=0.5\033[K\n"


def test_each_step_and_amendment_asks_tensorboard_to_flush(tmp_path):
    """TensorBoard's writer only flushes on its own every 2 minutes: a run watched live or killed
    would miss its recent steps unless each step (and each amendment) flushes them."""
    calls = []

    class Board:
        def add_scalar(self, key, value, step):
            calls.append((key, value, step))

        def flush(self):
            calls.append("flush")

        def close(self):
            calls.append("close")

    w = MetricsWriter(tmp_path, total_steps=2, progress=False)
    real, w._tb = w._tb, Board()
    try:
        w.write_step({"step": 1, "reward/mean": 0.5})
        assert calls == [("reward/mean", 0.5, 1), "flush"]
        w.amend_step(1, {"eval/solve_rate": 0.25})
        assert calls[2:] == [("eval/solve_rate", 0.25, 1), "flush"]
    finally:
        w.close()
        real.close()


def test_a_disabled_writer_leaves_a_shared_metrics_file_alone(tmp_path):
    """On shared storage the other processes see the primary's metrics.jsonl: their (disabled)
    writers must neither rewrite it nor fail on it when the trainer amends a step."""
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n')
    off = MetricsWriter(tmp_path, total_steps=1, enabled=False)
    off.amend_step(1, {"eval/solve_rate": 0.5})
    off.close()
    assert p.read_text() == '{"step": 1}\n'


def test_train_needs_a_config(capsys):
    """No preset would train the library defaults into runs/<default name>."""
    from azr_jax.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "--workdir", "somewhere"])
    assert stop.value.code == 2 and "the following arguments are required: --config" in capsys.readouterr().err


def test_train_logs_its_own_lines_at_info_and_quiets_the_libraries(tmp_path):
    """The run's log (INFO, 'time name level: message') reaches stderr; absl/jax/orbax/etils INFO
    chatter does not."""
    import subprocess

    code = ("import logging, sys, types\n"
            "fake = types.ModuleType('azr_jax.trainer')\n"
            "def train(cfg, workdir, **kw):\n"
            "    for name in ('azr_jax.trainer', 'absl', 'jax', 'orbax', 'etils'):\n"
            "        logging.getLogger(name).info('hello from %s', name)\n"
            "    return {'status': 'stopped'}\n"
            "fake.train = train\nsys.modules['azr_jax.trainer'] = fake\n"
            "from azr_jax.cli import main\n"
            f"sys.exit(main(['train', '--config', 'configs/nano.py', '--workdir', {str(tmp_path / 'run')!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    hellos = [line for line in r.stderr.splitlines() if "hello from" in line]
    assert len(hellos) == 1 and hellos[0].endswith(" azr_jax.trainer INFO: hello from azr_jax.trainer"), r.stderr


def test_a_reader_of_an_audit_file_sees_it_whole_while_the_trainer_writes_it(tmp_path):
    """`azr-jax score --in rollouts/step_N.jsonl` beside a running trainer: the file was written
    in place, so a reader could find it empty or cut short (scored with its last row "malformed",
    the rest missing, exit 0), and one reading when a resumed run rewrote the step went on in the
    new file's bytes. Written beside and renamed, a reader has the old file or the new one."""
    w = MetricsWriter(tmp_path, total_steps=2, progress=False)
    w.write_rollouts(1, [{"id": "old-1", "pad": "x" * 50}, {"id": "old-2"}])
    w.write_buffers(1, {"deduction": ["old"]})
    rollouts, buffers = tmp_path / "rollouts" / "step_1.jsonl", tmp_path / "buffers" / "step_1.json"
    with open(rollouts) as reader, open(buffers) as buffers_reader:
        first = json.loads(reader.readline())
        w.write_rollouts(1, [{"id": "new-1"}, {"id": "new-2", "pad": "y" * 80}])  # the step redone after a resume
        w.write_buffers(1, {"deduction": ["new"]})
        rest = [json.loads(line) for line in reader]
        old_buffers = json.loads(buffers_reader.read())
    w.close()
    assert [first["id"]] + [r["id"] for r in rest] == ["old-1", "old-2"]  # the file it opened, whole
    assert old_buffers == {"deduction": ["old"]}
    assert [json.loads(line)["id"] for line in rollouts.read_text().splitlines()] == ["new-1", "new-2"]
    assert json.loads(buffers.read_text()) == {"deduction": ["new"]}
    assert not list(tmp_path.rglob("*.tmp"))
