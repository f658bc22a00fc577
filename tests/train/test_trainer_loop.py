"""The trainer's bookkeeping around the step, without a model: `_run`'s schedule (evaluations,
audits, checkpoints, stopping, resuming) with the step, the checkpoints, the sandbox and the
evaluation stubbed, and `SelfPlay.step`/`seed_buffers` with scripted generation and scoring.
The end-to-end runs (test_train_e2e.py) check the same with a real policy, in minutes."""

from __future__ import annotations

import json
import signal
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from azr_jax import trainer
from azr_jax.config import Config, apply_overrides
from azr_jax.metrics import read_metrics
from azr_jax.nano import BASE_DIR
from azr_jax.sandbox.isolation import Plan
from azr_jax.stopping import StopFlag


# ----------------------------------------------------------------------------------------------
# _run: the step loop with everything around the step stubbed
# ----------------------------------------------------------------------------------------------


class _Checkpoints:
    """In-memory stand-in for `Checkpoints`, shared between a run and its resume."""

    def __init__(self):
        self.saved: dict[int, tuple] = {}
        self.log: list = []

    def __call__(self, directory, *, keep, writer):  # the trainer constructs it
        return self

    def latest_step(self):
        return max(self.saved) if self.saved else None

    def all_steps(self):
        return sorted(self.saved)

    def pending_rollback(self):
        return None

    def restore(self, step, target):
        tree, host = self.saved[step]
        return tree, json.loads(json.dumps(host))

    def delete_after(self, step):
        dropped = [s for s in self.saved if s > step]
        for s in dropped:
            del self.saved[s]
        return dropped

    def check(self):
        self.log.append("check")

    def save(self, step, tree, host):
        self.log.append(("save", step))
        self.saved[step] = (tree, json.loads(json.dumps(host)))

    def close(self):
        self.log.append("close")


class _Harness:
    """Runs `trainer._run` with stubs; records the steps, evaluations, seeding and closes."""

    def __init__(self, monkeypatch, tmp_path):
        self.tmp_path, self.ckpts = tmp_path, _Checkpoints()
        self.calls: list = []
        self.stop_after: set[int] = set()
        self.fail_at: int | None = None
        self.stop = None
        h = self

        class Policy:
            params = "loaded weights"
            config = SimpleNamespace(max_position_embeddings=1 << 20)
            mesh = rules = None

            def init_state(self, cfg, abstract=False):
                return SimpleNamespace(params={"w": jnp.ones(2)})

            def checkpoint_tree(self, state):
                return {"params": state.params}

            def state_from_tree(self, tree):
                return SimpleNamespace(params=tree["params"])

        class Loop:
            def __init__(self, cfg, policy, sandbox, buffers, *, generate_fn):
                self.buffers, self.base_key = buffers, jax.random.key(cfg.train.seed)
                h.loop = self

            def step(self, state, step):
                h.calls.append(("step", step))
                self.buffers["deduction"].add({"program": f"def f(x):\n    return x + {step}", "input": "1",
                                               "output": str(1 + step), "imports": []}, step)
                if step == h.fail_at:
                    h.stop.immediate = True  # as a second signal sets it
                    raise KeyboardInterrupt
                if step in h.stop_after:
                    h.stop.requested = True  # a SIGTERM during the step
                return (SimpleNamespace(params={"w": state.params["w"] + 1}), {"step": step, "reward/mean": step / 10},
                        [{"id": f"{step}/propose/deduction/0"}])

            def close(self, cancel=False):
                h.calls.append(("close loop", cancel))

        class Sandbox:
            plan = Plan(mode="bwrap", python=sys.executable, as_root=True)

            def __init__(self, section):
                pass

            def close(self, cancel=False):
                h.calls.append(("close sandbox", cancel))

        def evaluate(cfg, policy, params, sandbox, workdir, name, primary, step):
            h.calls.append(("eval", name, step))
            result = {"solve_rate": step / 100, "per_task": {"deduction": step / 100}, "step": step}
            (workdir / "eval").mkdir(parents=True, exist_ok=True)
            (workdir / "eval" / f"{name}.json").write_text(json.dumps(result))
            return result

        monkeypatch.setattr(trainer, "load_policy", lambda cfg: Policy())
        monkeypatch.setattr(trainer, "Checkpoints", self.ckpts)
        monkeypatch.setattr(trainer, "SelfPlay", Loop)
        monkeypatch.setattr(trainer, "_evaluate", evaluate)
        monkeypatch.setattr(trainer, "_seed", lambda cfg, loop, params, workdir, primary: h.calls.append(("seed",)))
        monkeypatch.setattr("azr_jax.sandbox.Sandbox", Sandbox)
        monkeypatch.setattr("azr_jax.eval.benchmarks.load_benchmark", lambda section: None)
        monkeypatch.setattr("azr_jax.plots.plot_metrics", lambda path, out: h.calls.append(("plots",)))

    def run(self, *items, workdir="run", seeded=None, resume_step=None):
        cfg = apply_overrides(Config(), ["azr.seed_size=4", "train.log_every=1000", *items])
        self.calls.clear()
        self.ckpts.log.clear()
        self.stop = StopFlag(stepping=False)  # as train() makes it; _run sets stepping before step 1
        wd = self.tmp_path / workdir
        wd.mkdir(exist_ok=True)
        return trainer._run(cfg, wd, self.stop, seeded, True, resume_step=resume_step, progress=False,
                          generate_fn=object())

    def of(self, kind):
        return [c[1:] for c in self.calls if c[0] == kind]


@pytest.fixture
def harness(monkeypatch, tmp_path):
    return _Harness(monkeypatch, tmp_path)


def test_the_loop_evaluates_audits_and_saves_on_schedule(harness):
    from azr_jax.azr.buffers import TaskBuffers

    seeded = TaskBuffers.seeded(Config().azr)  # what check_inputs read from the seed files
    seeded["deduction"].add({"program": "def f(x):\n    return -x", "input": "1", "output": "-1", "imports": []}, 0)
    summary = harness.run("train.steps=5", "train.eval_every=2", "train.save_every=3", "train.audit_every=2",
                          seeded=seeded)
    wd = harness.tmp_path / "run"
    assert harness.of("step") == [(s,) for s in (1, 2, 3, 4, 5)]
    assert harness.of("seed") == [()]
    # base before step 1, every 2nd step, and the final one in place of step 5's
    assert harness.of("eval") == [("base", 0), ("step_2", 2), ("step_4", 4), ("final", 5)]
    records = read_metrics(wd / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r.get("eval/solve_rate") for r in records] == [None, 0.02, None, 0.04, None]
    assert records[1]["eval/solve_rate/deduction"] == 0.02
    # every save_every steps and the last; each step checks for a failed save first
    assert [x for x in harness.ckpts.log if x != "check"] == [("save", 3), ("save", 5), "close"]
    assert harness.ckpts.log.count("check") == 5
    # audit files at step 1 and every audit_every steps, each with that step's buffers
    assert sorted(p.name for p in (wd / "rollouts").iterdir()) == ["step_1.jsonl", "step_2.jsonl", "step_4.jsonl"]
    assert sorted(p.name for p in (wd / "buffers").iterdir()) == ["step_1.json", "step_2.json", "step_4.json"]
    step_4 = json.loads((wd / "buffers" / "step_4.json").read_text())
    entries = step_4["deduction"]["entries"]
    assert sum("+ 4" in e["program"] for e in entries) == 1
    assert any("return -x" in e["program"] for e in entries)  # the run started from `seeded`
    assert not any("+ 5" in e["program"] for e in entries)
    assert summary["status"] == "completed" and summary["step"] == 5
    assert summary["base_solve_rate"] == 0.0 and summary["final_solve_rate"] == 0.05
    assert json.loads((wd / "summary.json").read_text())["step"] == 5
    assert harness.of("plots") == [()]
    # the host record of the last save resumes at the next step
    tree, host = harness.ckpts.saved[5]
    assert host["pipeline"]["next_step"] == 6 and host["step"] == 5
    assert host["rng_key"] == np.asarray(jax.random.key_data(jax.random.key(0))).tolist()
    assert ("close loop", False) in harness.calls and ("close sandbox", False) in harness.calls


def test_eval_every_zero_evaluates_at_the_ends_only_and_minus_one_never(harness):
    harness.run("train.steps=3", "train.eval_every=0", "train.audit_every=0")
    assert harness.of("eval") == [("base", 0), ("final", 3)]
    assert not (harness.tmp_path / "run" / "rollouts").exists()  # audit_every=0: no audit files
    summary = harness.run("train.steps=2", "train.eval_every=-1", workdir="never")
    assert harness.of("eval") == [] and "final_solve_rate" not in summary
    assert summary["status"] == "completed"


def test_a_stop_signal_saves_that_step_and_ends_without_the_final_evaluation(harness):
    harness.stop_after = {2}
    summary = harness.run("train.steps=5", "train.save_every=10", "train.eval_every=1")
    assert harness.of("step") == [(1,), (2,)]
    assert [x for x in harness.ckpts.log if x != "check"] == [("save", 2), "close"]
    assert harness.of("eval") == [("base", 0), ("step_1", 1), ("step_2", 2)]
    assert summary["status"] == "stopped" and summary["step"] == 2
    assert not (harness.tmp_path / "run" / "summary.json").exists()  # the run is not complete
    assert harness.of("plots") == []


def test_a_stop_signal_says_what_it_waits_for(harness, monkeypatch, caplog):
    """A SIGTERM during the final evaluation said "stopping after this step", then the evaluation
    finished and the run completed; one during the base evaluation waits for step 1."""
    import signal

    evaluate = trainer._evaluate

    def signalled(cfg, policy, params, sandbox, workdir, name, primary, step):
        harness.stop._handle(signal.SIGTERM, None)
        harness.stop.requested = False  # heard; the run goes on as the test's own
        return evaluate(cfg, policy, params, sandbox, workdir, name, primary, step)

    monkeypatch.setattr(trainer, "_evaluate", signalled)
    with caplog.at_level("WARNING", logger="azr_jax.trainer"):
        summary = harness.run("train.steps=2", "train.eval_every=1")
    said = [r.getMessage() for r in caplog.records if "received SIGTERM" in r.getMessage()]
    assert said == [f"received SIGTERM: stopping after {what} (send it again to stop at once)"
                    for what in ("step 1", "this step", "the final evaluation")]
    assert summary["status"] == "completed"


def test_a_workdir_the_sandboxs_jobs_can_read_is_warned_about(harness, monkeypatch, caplog):
    """Its buffers, rollouts and checkpoints hold every gold output (a root trainer's none or
    unshare jobs run as uids that read what others may); the warning names the workdir."""
    asked = []
    monkeypatch.setattr("azr_jax.sandbox.isolation.readable_by_jobs",
                        lambda plan, path: asked.append((plan.mode, path)) or True)
    with caplog.at_level("WARNING", logger="azr_jax.trainer"):
        harness.run("train.steps=1", "train.eval_every=-1")
    workdir = harness.tmp_path / "run"
    assert asked == [("bwrap", workdir)]
    said = [r.getMessage() for r in caplog.records if "gold outputs" in r.getMessage()]
    assert len(said) == 1 and f"can read {workdir}," in said[0] and f"chmod o-rwx {workdir}" in said[0]


def test_a_resume_goes_on_from_the_step_after_the_checkpoint(harness):
    harness.stop_after = {2}
    harness.run("train.steps=4", "train.save_every=10", "train.eval_every=-1")
    harness.stop_after = set()
    summary = harness.run("train.steps=4", "train.save_every=10", "train.eval_every=-1")
    assert harness.of("step") == [(3,), (4,)]
    assert harness.of("seed") == []  # the buffers come from the checkpoint
    assert summary["status"] == "completed" and summary["step"] == 4
    # the buffers continue: step 1 and 2's tasks came back with the checkpoint
    programs = [e["program"] for e in harness.loop.buffers["deduction"].entries]
    assert [sum(f"+ {s}" in p for p in programs) for s in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert [r["step"] for r in read_metrics(harness.tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_seed_size_zero_runs_no_seeding_phase(harness):
    harness.run("train.steps=1", "train.eval_every=-1", "azr.seed_size=0")
    assert harness.of("seed") == [] and harness.of("step") == [(1,)]


def test_a_finished_run_given_more_steps_with_eval_every_zero_gets_no_eval_metrics(harness):
    # eval_every=0 evaluates at the ends only: an uninterrupted run logs no eval/* at step 2
    harness.run("train.steps=2", "train.eval_every=0")
    harness.run("train.steps=3", "train.eval_every=0")
    assert harness.of("eval") == [("final", 3)]
    records = read_metrics(harness.tmp_path / "run" / "metrics.jsonl")
    assert [r.get("eval/solve_rate") for r in records] == [None, None, None]


def test_resume_step_goes_back_to_that_checkpoint_and_deletes_the_newer_ones(harness):
    harness.run("train.steps=3", "train.save_every=1", "train.eval_every=-1")
    harness.stop_after = {2}
    summary = harness.run("train.steps=3", "train.save_every=1", "train.eval_every=-1", resume_step=1)
    assert harness.of("step") == [(2,)] and summary["status"] == "stopped"
    # step 3's checkpoint belonged to the abandoned continuation: deleted, not left to a later resume
    assert sorted(harness.ckpts.saved) == [1, 2]
    # step 1's buffers came back: the abandoned continuation's tasks of steps 2 and 3 are gone
    programs = [e["program"] for e in harness.loop.buffers["deduction"].entries]
    assert [sum(f"+ {s}" in p for p in programs) for s in (1, 2, 3)] == [1, 1, 0]


def test_an_interrupted_rollback_is_finished_and_said(harness, monkeypatch, caplog):
    harness.run("train.steps=2", "train.save_every=1", "train.eval_every=-1")
    # an earlier --resume-step 1 was killed while deleting step 2: latest_step() returns 1
    monkeypatch.setattr(harness.ckpts, "pending_rollback", lambda: 1)
    monkeypatch.setattr(harness.ckpts, "latest_step", lambda: 1)
    with caplog.at_level("WARNING", logger="azr_jax.trainer"):
        harness.run("train.steps=2", "train.save_every=1", "train.eval_every=-1")
    assert harness.of("step") == [(2,)]
    assert any("--resume-step 1 was interrupted" in r.getMessage() for r in caplog.records)


def test_a_stop_signal_on_another_process_stops_this_one_after_the_step(harness, monkeypatch, caplog):
    gather = trainer.distributed.allgather_json  # the stop flag is the one bool gathered
    monkeypatch.setattr(trainer.distributed, "allgather_json",
                        lambda value: [value, True] if isinstance(value, bool) else gather(value))
    with caplog.at_level("WARNING", logger="azr_jax.trainer"):
        summary = harness.run("train.steps=3", "train.save_every=10", "train.eval_every=-1")
    assert harness.of("step") == [(1,)] and summary["status"] == "stopped"
    assert [x for x in harness.ckpts.log if x != "check"] == [("save", 1), "close"]
    assert any("another process received a stop signal" in r.getMessage() for r in caplog.records)
    caplog.clear()
    harness.ckpts.saved.clear()  # a fresh run
    harness.stop_after = {1}  # its own signal too: nothing said of another process
    with caplog.at_level("WARNING", logger="azr_jax.trainer"):
        harness.run("train.steps=3", "train.save_every=10", "train.eval_every=-1", workdir="own")
    assert harness.of("step") == [(1,)]
    assert not any("another process" in r.getMessage() for r in caplog.records)


def test_a_resume_with_another_seed_is_refused(harness):
    from azr_jax.errors import UserError

    harness.run("train.steps=1", "train.eval_every=-1")
    with pytest.raises(UserError, match="another train.seed"):
        harness.run("train.steps=2", "train.eval_every=-1", "train.seed=1")


def test_a_finished_run_given_more_steps_gets_its_last_evaluation_as_that_steps_metrics(harness):
    harness.run("train.steps=2", "train.eval_every=2")
    assert harness.of("eval") == [("base", 0), ("final", 2)]
    harness.run("train.steps=4", "train.eval_every=2")
    assert harness.of("eval") == [("final", 4)]  # no base evaluation on a resume
    records = read_metrics(harness.tmp_path / "run" / "metrics.jsonl")
    # step 2 is on the eval_every=2 schedule: an uninterrupted run would have evaluated there
    assert [r.get("eval/solve_rate") for r in records] == [None, 0.02, None, None]


def test_a_finished_run_given_more_steps_off_the_eval_schedule_gets_no_eval_metrics(harness):
    harness.run("train.steps=2", "train.eval_every=2")
    harness.run("train.steps=6", "train.eval_every=3")
    assert harness.of("eval") == [("step_3", 3), ("final", 6)]
    records = read_metrics(harness.tmp_path / "run" / "metrics.jsonl")
    assert [r.get("eval/solve_rate") for r in records] == [None, None, 0.03, None, None, None]


def test_a_run_stopped_at_its_last_step_and_given_more_steps_evaluates_that_step(harness):
    """Step 4 was the 4-step run's last, so its evaluation was left to the final one, which a
    SIGTERM there skipped; a 6-step continuation evaluated only at 6, so step 4 of the
    eval_every=2 schedule had no evaluation at all."""
    harness.stop_after = {4}
    harness.run("train.steps=4", "train.eval_every=2")
    assert harness.of("eval") == [("base", 0), ("step_2", 2)]
    harness.stop_after = set()
    harness.run("train.steps=6", "train.eval_every=2")
    assert harness.of("eval") == [("step_4", 4), ("final", 6)]
    records = read_metrics(harness.tmp_path / "run" / "metrics.jsonl")
    assert [r.get("eval/solve_rate") for r in records] == [None, 0.02, None, 0.04, None, None]
    # a mid-run stop on the schedule evaluated before it saved: not evaluated again
    harness.ckpts.saved.clear()  # a fresh run
    harness.stop_after = {2}
    harness.run("train.steps=4", "train.eval_every=2", workdir="mid")
    harness.stop_after = set()
    harness.run("train.steps=4", "train.eval_every=2", workdir="mid")
    assert harness.of("eval") == [("final", 4)]


def test_a_second_signal_cancels_the_host_work_and_still_closes_everything(harness):
    harness.fail_at = 2
    with pytest.raises(KeyboardInterrupt):
        harness.run("train.steps=3", "train.eval_every=-1", "train.save_every=1")
    assert harness.of("close loop") == [(True,)] and harness.of("close sandbox") == [(True,)]
    assert harness.ckpts.log[-1] == "close" and ("save", 1) in harness.ckpts.log


def test_close_all_runs_every_closer_then_raises_the_first_failure():
    ran = []

    def fails(e):
        def close():
            ran.append(str(e))
            raise e
        return close

    with pytest.raises(ValueError, match="first"):
        trainer._close_all(fails(ValueError("first")), lambda: ran.append("ok"), fails(OSError("second")))
    assert ran == ["first", "ok", "second"]
    trainer._close_all(lambda: ran.append("again"))  # nothing failed: nothing raised
    assert ran[-1] == "again"


def test_train_puts_back_the_signal_handlers_when_the_start_up_fails(tmp_path):
    from azr_jax.errors import UserError

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(UserError, match="seed file not found"):
        trainer.train(apply_overrides(Config(), [f"model.tokenizer={BASE_DIR}", f"azr.seed_file={tmp_path / 'missing.jsonl'}"]),
                      tmp_path / "run", progress=False)
    assert signal.getsignal(signal.SIGTERM) is previous


# ----------------------------------------------------------------------------------------------
# SelfPlay.step and seed_buffers: scripted generation and scoring, no model, no sandbox
# ----------------------------------------------------------------------------------------------

MAX_PROMPT = 64


def _encode(text):
    # solver prompts of programs marked LONG are one token over sampling.max_prompt_len, EDGE exactly at it
    return [1] * (MAX_PROMPT + 1 if "LONG" in text else MAX_PROMPT if "EDGE" in text else 8)


class _Scripted:
    """A generate_fn and a scorer: every proposal is valid, with its own program (marked LONG or
    EDGE when asked); learnability rollout j of a task is right for j == 0, wrong for j == 1 and
    unjudged (sandbox_error) for j == 2 of the first proposal (all of them for one marked UNJUDGED)."""

    def __init__(self, marks=None):
        self.calls: list[dict] = []
        self.scored: list[list[dict]] = []
        self.configs: list = []
        self.marks = marks or {}
        self.duplicate = None  # a problem every second proposal repeats
        self.solver_reward = 1.0

    def generate(self, params, config, prompt_ids, key, settings, *, n_samples=1, **kwargs):
        c = len(self.calls)
        rows = len(prompt_ids) * n_samples
        self.calls.append({"rows": rows, "n_samples": n_samples, "key": tuple(np.asarray(jax.random.key_data(key))),
                           "temperature": settings.temperature})
        return SimpleNamespace(texts=[f"c{c}r{r}" for r in range(rows)], lengths=np.full(rows, c + 1))

    def score(self, submitted):
        records, cfg = submitted
        self.configs.append(cfg)
        out = []
        for rec in records:
            step, role, task, *rest = rec["id"].split("/")
            if role == "propose":
                mark = self.marks.get((task, int(rest[0])), "")
                tag = f"{rec['id']} {rec['response']}"  # in the code: the buffers' dedup ignores comments
                program = f"def f(x):\n    # {mark}\n    return x + len({tag!r})"
                if task == "induction":
                    problem = {"program": program, "inputs": ["1", "2"], "outputs": ["2", "3"], "message": "m",
                               "imports": []}
                elif self.duplicate is not None and rec["response"].endswith("r1"):
                    problem = dict(self.duplicate)
                else:
                    problem = {"program": program, "input": "1", "output": "2", "imports": []}
                bad_format = "BADFMT" in mark  # a valid program in a badly formatted answer
                out.append({"id": rec["id"], "valid": True, "format_ok": not bad_format, "problem": problem,
                            "reason": "bad_format" if bad_format else None, "accuracy": None, "reward": None})
            elif role == "learn":
                i, j = int(rest[0]), int(rest[1])
                if (j == 2 and i == 0) or "UNJUDGED" in self.marks.get((task, i), ""):
                    out.append({"id": rec["id"], "valid": False, "format_ok": True, "reason": "sandbox_error",
                                "accuracy": None, "reward": None, "response": rec["response"]})
                else:
                    out.append({"id": rec["id"], "valid": True, "format_ok": True, "reason": None,
                                "accuracy": float(j == 0), "reward": float(j == 0), "response": rec["response"]})
            else:
                out.append({"id": rec["id"], "valid": True, "format_ok": True, "reason": None, "accuracy": 1.0,
                            "reward": self.solver_reward, "problem": rec["problem"]})
        self.scored.append(out)
        return out


def _self_play(monkeypatch, *items, marks=None):
    """A real `SelfPlay` on a stub policy: generation, scoring and the update scripted."""
    from azr_jax.azr.buffers import TaskBuffers

    cfg = apply_overrides(Config(), ['azr.task_types=["abduction", "deduction"]', "azr.batch_size=2",
                                     "azr.n_solver_samples=3", "azr.n_references=2",
                                     f"sampling.max_prompt_len={MAX_PROMPT}", "sampling.length_buckets=[16, 32]",
                                     "rl.kl_coef=0",
                                     "azr.learnability_temperature=0.7", *items])
    built = {}
    monkeypatch.setattr("azr_jax.rl.update.make_train_step", lambda *a, **kw: built.update(kw) or "step")
    monkeypatch.setattr("azr_jax.rl.bucketed.make_bucketed_train_step",
                        lambda *a, **kw: built.update(kw, bucketed=True) or "step")
    clock = iter(range(10**6))
    monkeypatch.setattr(trainer, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    policy = SimpleNamespace(stop_ids=[0], mesh=None, rules=None, compute_dtype=None, config=SimpleNamespace(
        flops_per_token=lambda n: 2), params="weights", put_batch=None, pad_id=0, peak_flops=4.0,
        tokenizer=SimpleNamespace(encode=_encode), decode_all=lambda comp: list(comp.texts))
    script = _Scripted(marks)
    buffers = TaskBuffers.seeded(cfg.azr)
    for n in range(4):  # the same triplets in both buffers, as a seed file gives them
        for task in ("abduction", "deduction"):
            buffers[task].add({"program": f"def f(x):\n    return x * {n + 2}", "input": "1", "output": str(n + 2),
                               "imports": []}, 0)
    loop = trainer.SelfPlay(cfg, policy, None, buffers, generate_fn=script.generate)
    loop.jobs = {}
    build = loop.build_batch

    def build_batch(role, task, step, stream):
        loop.jobs[(role, task, step)] = rb = build(role, task, step, stream)
        return rb

    loop.build_batch = build_batch
    loop.built = built
    loop._submit = lambda records, cfg=None: (records, cfg)
    loop._collect = lambda submitted, n: script.score(submitted)
    loop.trained = []

    def update(state, batches):
        loop.trained.append([(rb.role, rb.task, len(rb.rewards), rb.n_samples) for rb in batches])
        loop._add_time("update_s", 2.0)
        return {"_state": SimpleNamespace(params=f"{state.params}+"), "_row_lengths": np.array([3, 5]), "loss": 0.5}

    loop._update = update
    return loop, script


def test_a_step_samples_each_batch_with_its_own_key_and_trains_every_batch(monkeypatch, caplog):
    loop, script = _self_play(monkeypatch)
    try:
        with caplog.at_level("WARNING", logger="azr_jax.trainer"):
            state, record, rollouts = loop.step(SimpleNamespace(params="p"), 1)
    finally:
        loop.close()
    assert state.params == "p+"
    # four batches in reference order, then one learnability generation per task at its own temperature
    assert [(c["rows"], c["n_samples"]) for c in script.calls] == [(2, 1), (2, 1), (2, 1), (2, 1), (6, 3), (6, 3)]
    temperatures = [c["temperature"] for c in script.calls]
    assert temperatures == [1.0] * 4 + [loop.cfg.azr.learnability_temperature] * 2
    assert loop.cfg.azr.learnability_temperature != loop.cfg.sampling.temperature
    assert len({c["key"] for c in script.calls}) == 6  # no two generations share sampling noise
    assert loop.trained == [[("propose", "abduction", 2, 1), ("solve", "abduction", 2, 1),
                             ("propose", "deduction", 2, 1), ("solve", "deduction", 2, 1)]]
    # solver tasks lag a step: at step 1 they are the seed's, not this step's proposals
    solve_problems = [r["problem"]["program"] for r in rollouts if r["role"] == "solve"]
    assert solve_problems and all("# " not in p for p in solve_problems)
    # the valid proposals joined their buffers at this step
    assert record["buffer/abduction"] == record["buffer/deduction"] == 7
    assert [e["step"] for e in loop.buffers["deduction"].entries] == [0] * 5 + [1, 1]
    # proposer rewards: learnability of the judged rollouts (1 right of 2 judged, then 1 of 3)
    propose = [r for r in rollouts if r["role"] == "propose"]
    assert [r["id"] for r in propose] == ["1/propose/abduction/0", "1/propose/abduction/1", "1/propose/deduction/0",
                                          "1/propose/deduction/1"]
    assert [r["scored"]["accuracy"] for r in propose] == pytest.approx([0.5, 1 / 3] * 2)
    assert [r["scored"]["reward"] for r in propose] == pytest.approx([0.5, 2 / 3] * 2)
    # each proposal's audit record carries its own rollouts' texts and the references it was shown
    assert [r["solver_responses"] for r in propose[:2]] == [["c4r0", "c4r1", "c4r2"], ["c4r3", "c4r4", "c4r5"]]
    for task, rows in (("abduction", propose[:2]), ("deduction", propose[2:])):
        shown = [[trainer._task_record(e) for e in job["references"]] for job in loop.jobs[("propose", task, 1)].jobs]
        assert [r["references"] for r in rows] == shown and len(shown[0]) == 2
    # each batch draws from its own stream: the two buffers hold the same seed, the draws differ
    assert propose[0]["references"] != propose[2]["references"] or propose[1]["references"] != propose[3]["references"]
    learn = [s for batch in script.scored for s in batch if "/learn/" in s["id"]]
    assert [s["response"] for s in learn[:6]] == [f"c4r{r}" for r in range(6)]
    assert record["sandbox_errors"] == 2  # one unjudged learnability rollout per task
    assert any("step 1: 2 response(s) not judged" in r.getMessage() for r in caplog.records)
    # azr.answer_diversity_coef=0 (the default): no diversity figures at all
    assert not any("diversity" in k for k in record) and not any("diversity_bonus" in r["scored"] for r in propose)
    # timers from the fake clock: each generation counts one second
    assert record["generate_s"] == 6.0
    assert record["generate_tokens_per_s"] == (2 * (1 + 2 + 3 + 4) + 6 * (5 + 6)) / 6.0
    assert record["update/loss"] == 0.5 and "update/_row_lengths" not in record
    # 2 FLOPs per token over rows of 3 and 5 tokens, in the 2 s the update took
    assert record["update_flops_per_s"] == 8.0 and record["update_mfu_per_s"] == 8.0 / 4.0


def documented_metric_names() -> tuple[set[str], set[str]]:
    """docs/training.md's `metrics.jsonl` keys: the per-(role, task) suffixes (`/reward`) and the
    other names (`reward/mean`, `buffer/<task>`, the timing fields)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text(encoding="utf-8")
    listed = text[text.index("`metrics.jsonl` keys:"):text.index("## Seed buffers and the seeding phase")]
    names = {n for n in re.findall(r"`([a-z_/<>]+)`", listed) if not n.startswith("_")}  # not "end in `_s`"
    return {n for n in names if n.startswith("/")}, {n for n in names if not n.startswith("/")}


def test_every_step_metric_is_one_docs_training_md_lists(monkeypatch):
    """The trainer's own keys of a step record (the update's come from the stubbed step here) are
    the ones docs/training.md lists, and each listed per-(role, task) key is written."""
    loop, _ = _self_play(monkeypatch, "azr.answer_diversity_coef=0.5")
    try:
        _, record, _ = loop.step(SimpleNamespace(params="p"), 1)
    finally:
        loop.close()
    suffixes, names = documented_metric_names()
    assert {"/reward", "/learnability"} <= suffixes and {"reward/mean", "buffer/<task>", "generate_s"} <= names
    every_task, tasks = ("abduction", "deduction", "induction"), loop.cfg.azr.task_types  # a buffer each
    documented = {n.replace("<task>", t) for n in names for t in every_task}
    documented |= {f"{role}/{t}{s}" for role in ("propose", "solve") for t in every_task for s in suffixes}
    assert sorted(k for k in record if not k.startswith("update/") and k not in documented) == []
    proposer_only = {"/learnability", "/answer_diversity"}
    written = {f"propose/{t}{s}" for t in tasks for s in suffixes} | {
        f"solve/{t}{s}" for t in tasks for s in suffixes - proposer_only}
    assert sorted(written - set(record)) == []


def test_the_answer_diversity_bonus_reaches_the_reward_and_the_audit_record(monkeypatch):
    loop, script = _self_play(monkeypatch, "azr.answer_diversity_coef=0.5", "azr.answer_diversity_max=0.3")
    try:
        _, record, rollouts = loop.step(SimpleNamespace(params="p"), 1)
    finally:
        loop.close()
    propose = [r for r in rollouts if r["role"] == "propose"]
    bonus = [r["scored"]["diversity_bonus"] for r in propose]
    assert all(b > 0 for b in bonus)  # every proposal is learnable here (solve rate 1/2 or 1/3)
    assert [r["scored"]["reward"] for r in propose] == pytest.approx([a + b for a, b in zip([0.5, 2 / 3] * 2, bonus)])
    # deduction's answers are outputs: the 5 in the buffer before this step (one of them "2") and the
    # two proposals' "2" (the proposals join the buffer after their bonus): 1 - 3/7
    assert record["propose/deduction/answer_diversity"] == pytest.approx(4 / 7)
    # the audit record keeps the task each valid proposal became, as it joined the buffer
    assert [r["scored"]["problem"] for r in propose[2:]] == [
        trainer._task_record(e) for e in loop.buffers["deduction"].entries[-2:]]
    # a proposal whose solver prompt is too long is no answer among this step's: 1 - 2/6 for the other
    loop, script = _self_play(monkeypatch, "azr.answer_diversity_coef=0.5", marks={("deduction", 0): "LONG"})
    try:
        _, record, rollouts = loop.step(SimpleNamespace(params="p"), 1)
    finally:
        loop.close()
    assert record["propose/deduction/answer_diversity"] == pytest.approx(2 / 3)
    long = next(r for r in rollouts if r["id"] == "1/propose/deduction/0")
    assert "diversity_bonus" not in long["scored"] and long["scored"]["reward"] == -0.5


def test_the_next_step_starts_its_counters_afresh(monkeypatch):
    loop, script = _self_play(monkeypatch)
    try:
        _, first, _ = loop.step(SimpleNamespace(params="p"), 1)
        _, second, _ = loop.step(SimpleNamespace(params="p+"), 2)
    finally:
        loop.close()
    assert second["generate_s"] == first["generate_s"] == 6.0
    assert second["sandbox_errors"] == first["sandbox_errors"] == 2
    tokens = sum(c["rows"] * (k + 7) for k, c in enumerate(script.calls[6:]))  # lengths 7..12 at step 2
    assert second["generate_tokens_per_s"] == tokens / 6.0
    assert second["buffer/deduction"] == 9
    # each step folds its number into the key: no generation of step 2 repeats step 1's noise
    assert len(script.calls) == 12 and len({c["key"] for c in script.calls}) == 12


def test_solver_options_change_what_is_sampled_and_trained(monkeypatch):
    loop, script = _self_play(monkeypatch, "azr.solver_samples=2", "azr.train_learnability_rollouts=true",
                              "azr.learnability_temperature=1.0")
    try:
        _, record, rollouts = loop.step(SimpleNamespace(params="p"), 1)
    finally:
        loop.close()
    # the learnability rollouts are trained on, but solve/<task>'s figures stay the solver batch's
    assert record["solve/abduction/reward"] == 1.0 and record["solve/abduction/response_len"] == 2.0
    assert [c["n_samples"] for c in script.calls] == [1, 2, 1, 2, 3, 3]
    assert loop.trained == [[("propose", "abduction", 2, 1), ("solve", "abduction", 4, 2),
                             ("propose", "deduction", 2, 1), ("solve", "deduction", 4, 2),
                             ("solve", "abduction", 6, 3), ("solve", "deduction", 6, 3)]]
    assert [r["id"] for r in rollouts if r["role"] == "solve"][:4] == [
        "1/solve/abduction/0/0", "1/solve/abduction/0/1", "1/solve/abduction/1/0", "1/solve/abduction/1/1"]

    loop, script = _self_play(monkeypatch, "azr.train_propose=false")
    try:
        loop.step(SimpleNamespace(params="p"), 1)
    finally:
        loop.close()
    assert loop.trained == [[("solve", "abduction", 2, 1), ("solve", "deduction", 2, 1)]]

    loop, script = _self_play(monkeypatch, "azr.propose=false")
    try:
        _, record, _ = loop.step(SimpleNamespace(params="p"), 1)
    finally:
        loop.close()
    assert [c["rows"] for c in script.calls] == [2, 2]
    assert loop.trained == [[("solve", "abduction", 2, 1), ("solve", "deduction", 2, 1)]]
    assert "propose/deduction/reward" not in record


def test_without_the_task_lag_the_solver_trains_on_this_steps_proposals(monkeypatch):
    loop, script = _self_play(monkeypatch, "azr.solver_task_lag=false")
    try:
        _, _, rollouts = loop.step(SimpleNamespace(params="p"), 1)
    finally:
        loop.close()
    # proposals validated (and rolled out) before their task's solver batch is drawn
    assert [c["rows"] for c in script.calls] == [2, 6, 2, 2, 6, 2]
    solve_problems = [r["problem"]["program"] for r in rollouts if r["role"] == "solve"]
    assert all("/propose/" in p for p in solve_problems)


def test_a_solver_prompt_over_max_prompt_len_gets_no_rollouts_and_stays_out_of_the_buffer(monkeypatch):
    loop, script = _self_play(monkeypatch, marks={("deduction", 0): "LONG", ("deduction", 1): "EDGE"})
    try:
        _, record, rollouts = loop.step(SimpleNamespace(params="p"), 1)
    finally:
        loop.close()
    assert [c["rows"] for c in script.calls] == [2, 2, 2, 2, 6, 3]  # deduction: only the EDGE one rolled out
    long, edge = [r for r in rollouts if r["role"] == "propose" and r["task"] == "deduction"]
    assert long["scored"]["solver_prompt_too_long"] is True and long["scored"]["accuracy"] == 0.0
    assert long["scored"]["reward"] == -0.5  # solve rate 0: azr.boundary_reward
    assert "solver_prompt_too_long" not in edge["scored"] and edge["scored"]["accuracy"] == pytest.approx(1 / 3)
    programs = [e["program"] for e in loop.buffers["deduction"].entries]
    assert not any("LONG" in p for p in programs) and sum("EDGE" in p for p in programs) == 1
    assert record["buffer/deduction"] == 6


def test_seeding_fills_each_buffer_to_seed_size_and_no_further(monkeypatch):
    from azr_jax.azr.buffers import TaskBuffers

    loop, script = _self_play(monkeypatch, "azr.seed_size=4",
                              'azr.task_types=["abduction", "deduction", "induction"]')
    loop.buffers = TaskBuffers.seeded(loop.cfg.azr)  # the identity triplet (and its induction task) only
    script.duplicate = trainer._task_record(loop.buffers["deduction"].entries[0])
    try:
        report = loop.seed_buffers("params", triplets=True, induction=True)
    finally:
        loop.close()
    # round 1: two new triplets (an abduction and a deduction proposal) and two repeats of the seed;
    # round 2: the abduction proposal fills both buffers to 4, the deduction one is left out
    assert report["triplets"] == {"rounds": 2, "proposals": 8, "valid": 8, "added": 3, "size": 4,
                                  "seconds": report["triplets"]["seconds"]}
    assert len(loop.buffers["deduction"]) == len(loop.buffers["abduction"]) == 4
    assert [e["program"] for e in loop.buffers["deduction"].entries] == [
        e["program"] for e in loop.buffers["abduction"].entries]
    assert report["induction"]["size"] == len(loop.buffers["induction"]) == 4
    assert all(e["step"] == 0 for t in ("abduction", "deduction", "induction") for e in loop.buffers[t].entries)
    # every generation has its own key; none is a step's (steps fold in 1, 2, ...; seeding 0)
    keys = [c["key"] for c in script.calls]
    assert len(set(keys)) == len(keys)
    seeding = jax.random.fold_in(jax.random.key(loop.cfg.train.seed), 0)
    first = jax.random.fold_in(jax.random.fold_in(seeding, 0), 0)
    assert keys[0] == tuple(np.asarray(jax.random.key_data(first)))
    # seed programs are scored with azr.clean_programs on, whatever the run's setting
    assert not loop.cfg.azr.clean_programs and all(c.azr.clean_programs for c in script.configs)


def test_seeding_stops_after_seed_max_rounds(monkeypatch, caplog):
    loop, script = _self_play(monkeypatch, "azr.seed_size=20", "azr.seed_max_rounds=2")
    try:
        with caplog.at_level("WARNING", logger="azr_jax.trainer"):
            report = loop.seed_buffers("params", triplets=True, induction=False)
    finally:
        loop.close()
    assert report["triplets"]["rounds"] == 2 and len(script.calls) == 4
    assert report["triplets"]["size"] == len(loop.buffers["deduction"]) == 5 + 8
    assert len({c["key"] for c in script.calls}) == 4
    assert any("seed_max_rounds=2" in r.getMessage() for r in caplog.records)
    assert "induction" not in report


def test_seed_files_hold_the_seeded_tasks_without_their_step(tmp_path):
    from azr_jax.azr.buffers import TaskBuffers

    cfg = apply_overrides(Config(), ["azr.seed_size=2"])
    buffers = TaskBuffers.seeded(cfg.azr)
    asked = []

    class Loop:
        def seed_buffers(self, params, *, triplets, induction):
            asked.append((triplets, induction))
            return {name: {"size": 1, "seconds": 0.0} for name, on in (("triplets", triplets),
                                                                        ("induction", induction)) if on}

    loop = Loop()
    loop.buffers = buffers
    trainer._seed(cfg, loop, None, tmp_path, True)
    assert asked == [(True, True)]
    lines = (tmp_path / "seed" / "seed_triplets.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [trainer._task_record(e) for e in buffers["deduction"].entries]
    assert all("step" not in json.loads(line) for line in lines)
    report = json.loads((tmp_path / "seed" / "seeding.json").read_text())
    assert report["triplets"]["file"] == "seed_triplets.jsonl" and report["induction"]["file"] == "seed_induction.jsonl"
    # a seed file given, or a run without induction: that phase is not run
    seed_file = tmp_path / "triplets.jsonl"
    seed_file.write_text("")
    trainer._seed(apply_overrides(Config(), ["azr.seed_size=2", f"azr.seed_file={seed_file}"]), loop, None,
                  tmp_path / "a", True)
    trainer._seed(apply_overrides(Config(), ["azr.seed_size=2", 'azr.task_types=["deduction"]']), loop, None,
                  tmp_path / "b", True)
    assert asked[1:] == [(False, True), (True, False)]
    # another process of a multi-host run seeds its buffers alike but writes no files
    trainer._seed(cfg, loop, None, tmp_path / "c", False)
    assert asked[3:] == [(True, True)] and not (tmp_path / "c").exists()


def test_records_name_each_row_and_carry_the_task_the_scorer_needs():
    from azr_jax.trainer import RoleBatch

    induction = RoleBatch("propose", "induction", [[1]], [{"program": {"program": "def f(x):\n    return x",
                                                                       "imports": ["import math"], "step": 2}}],
                          texts=["a"])
    (rec,) = trainer.SelfPlay._records(None, induction, 3)
    assert rec == {"id": "3/propose/induction/0", "role": "propose", "task": "induction", "response": "a",
                   "problem": {"program": "def f(x):\n    return x", "imports": ["import math"]}}
    problem = {"program": "def f(x):\n    return x", "input": "1", "output": "1", "imports": [], "step": 4}
    solve = RoleBatch("solve", "deduction", [[1], [2]], [{"problem": problem}, {"problem": dict(problem, input="2")}],
                      texts=["a", "b", "c", "d"], n_samples=2)
    recs = trainer.SelfPlay._records(None, solve, 5)
    assert [r["id"] for r in recs] == ["5/solve/deduction/0/0", "5/solve/deduction/0/1", "5/solve/deduction/1/0",
                                       "5/solve/deduction/1/1"]
    assert [r["problem"]["input"] for r in recs] == ["1", "1", "2", "2"] and "step" not in recs[0]["problem"]
    assert [r["response"] for r in recs] == ["a", "b", "c", "d"]


def test_host_time_adds_up_over_the_step():
    import concurrent.futures

    loop = trainer.SelfPlay.__new__(trainer.SelfPlay)
    loop.timers = {}
    for result, seconds in ((["a"], 2.5), (["b", "c"], 1.0)):
        future = concurrent.futures.Future()
        future.set_result((result, seconds))
        assert loop._collect(future, len(result)) == result
    assert loop.timers["execute_s"] == 3.5 and loop.timers["host_idle_s"] >= 0


def test_the_policy_options_reach_the_update_step(monkeypatch):
    loop, _ = _self_play(monkeypatch, "rl.pack_by_length=true", "sampling.max_response_len=100")
    loop.close()
    assert loop.built["bucketed"] and loop.built["length_buckets"] == [16, 32, 64 + 100]
    assert loop.ref_params is None  # rl.kl_coef=0: no reference policy
    assert loop.base_key is not None and tuple(np.asarray(jax.random.key_data(loop.base_key))) == tuple(
        np.asarray(jax.random.key_data(jax.random.key(0))))
    loop, _ = _self_play(monkeypatch, "rl.kl_coef=0.01", "rl.pack_by_length=false")
    loop.close()
    assert loop.ref_params == "weights" and "bucketed" not in loop.built
    # the KL reference's forward pass counts in the update's FLOPs: a third more
    loop.timers = {"update_s": 2.0}
    record = loop._step_record(1, [], {"_row_lengths": np.array([3, 5])}, 1.0)
    assert record["update_flops_per_s"] == (16 + 16 // 3) / 2.0
    loop.timers = {}  # nothing timed: no rates (not a division by zero, not 0)
    record = loop._step_record(1, [], {"_row_lengths": np.array([3, 5])}, 1.0)
    assert record["generate_tokens_per_s"] is None and record["update_flops_per_s"] is None
    assert "update_mfu_per_s" not in record


def test_an_evaluation_file_names_the_step_it_evaluated(tmp_path, monkeypatch):
    monkeypatch.setattr("azr_jax.eval.evaluate.evaluate",
                        lambda params, policy, cfg, sandbox: {"solve_rate": 0.5, "per_task": {"deduction": 0.5}})
    result = trainer._evaluate(Config(), None, None, None, tmp_path, "step_7", True, 7)
    assert result["step"] == 7
    assert json.loads((tmp_path / "eval" / "step_7.json").read_text())["step"] == 7


def test_rollout_metrics_average_the_answer_diversity_of_the_proposals_that_have_one():
    ok = {"valid": True, "format_ok": True}
    propose = SimpleNamespace(role="propose", task="deduction", rewards=[0.5, 0.5, -1.0], solve_rates=[0.5, 0.5, None],
                              scored=[dict(ok, answer_diversity=0.2), dict(ok, answer_diversity=0.6),
                                      {"valid": False, "format_ok": False}],
                              completions=SimpleNamespace(lengths=[1, 2, 3]))
    rec = trainer.rollout_metrics([propose])
    assert rec["propose/deduction/answer_diversity"] == pytest.approx(0.4)
    del propose.scored[0]["answer_diversity"], propose.scored[1]["answer_diversity"]
    assert "propose/deduction/answer_diversity" not in trainer.rollout_metrics([propose])


@pytest.mark.parametrize("pack", [True, False], ids=["pack_by_length", "padded"])
def test_the_update_gets_the_kl_reference_and_counts_prompt_and_response_tokens(pack):
    import dataclasses

    from azr_jax.config import RLSection
    from azr_jax.sampling import Completions

    loop = trainer.SelfPlay.__new__(trainer.SelfPlay)
    loop.cfg = dataclasses.replace(Config(), rl=RLSection(micro_batch_size=2, pack_by_length=pack, kl_coef=0.1))
    loop.policy = SimpleNamespace(pad_id=0, advantages_fn=lambda r, m, g: np.zeros(np.shape(m), np.float32),
                                  put_batch=lambda x: x, put_replicated=lambda x: x)
    loop.ref_params, loop.timers = "reference", {}
    loop.__dict__["_reference_logprobs"] = lambda params, batch: f"logprobs of the {params}"
    calls = []

    def train_step(state, batch, **kwargs):
        calls.append((batch, kwargs))
        return "new state", {"loss": np.float32(1.5)}

    loop.train_step = train_step
    comp = Completions(tokens=np.array([[5, 6], [5, 0]], np.int32), logprobs=np.zeros((2, 2), np.float32),
                       lengths=np.array([2, 1], np.int32), finished=np.ones(2, bool))
    rb = trainer.RoleBatch("solve", "deduction", [[7, 8, 9], [7]], [{}, {}], completions=comp, scored=[{}, {}],
                           rewards=[1.0, 0.0])
    out = loop._update("state", [rb])
    assert out["_state"] == "new state" and out["loss"] == 1.5
    np.testing.assert_array_equal(out["_row_lengths"], [5, 2])  # prompt + response: the FLOPs count both
    assert "update_s" in loop.timers
    ((batch, kwargs),) = calls
    if pack:  # the bucketed step runs the reference itself
        assert kwargs == {"ref_params": "reference"} and "ref_logprobs" not in batch
    else:
        assert kwargs == {} and batch["ref_logprobs"] == "logprobs of the reference"


def test_a_stop_during_the_checkpoint_deletion_in_the_loop_waits_for_the_step():
    # Only at start-up (stepping False) does a stop arriving during the deletion end the run at once.
    stop = StopFlag(stepping=True)

    class Checkpoints:
        def delete_after(self, step):
            stop.requested = True
            return [step + 1]

    try:
        assert trainer._delete_newer_checkpoints(Checkpoints(), 3, stop) == [4]
    except KeyboardInterrupt:
        pytest.fail("a stop in the loop interrupted the run at once")
    assert stop.stepping and stop.requested
    stop = StopFlag(stepping=False)
    with pytest.raises(KeyboardInterrupt):
        trainer._delete_newer_checkpoints(Checkpoints(), 3, stop)
    assert not stop.stepping


def test_a_stop_during_the_checkpoint_deletion_at_start_up_says_it_waits_for_the_deletion(caplog):
    """It said "stopping after this step", then stopped at once when the deletion was done."""
    import signal

    stop = StopFlag(stepping=False)

    class Checkpoints:
        def delete_after(self, step):
            stop._handle(signal.SIGINT, None)
            return [step + 1]

    with caplog.at_level("WARNING", logger="azr_jax.trainer"), pytest.raises(KeyboardInterrupt):
        trainer._delete_newer_checkpoints(Checkpoints(), 3, stop)
    assert caplog.records[0].getMessage() == ("received SIGINT: stopping after the newer checkpoints are deleted "
                                              "(send it again to stop at once)")
    assert stop.after == "this step"


def test_a_proposal_without_judged_rollouts_is_a_sandbox_error_only_if_its_format_was_right(monkeypatch):
    loop, script = _self_play(monkeypatch, marks={("deduction", 0): "UNJUDGED", ("deduction", 1): "UNJUDGED BADFMT"})
    try:
        _, record, rollouts = loop.step(SimpleNamespace(params="p"), 1)
    finally:
        loop.close()
    unknown, bad_format = [r for r in rollouts if r["role"] == "propose" and r["task"] == "deduction"]
    # its learnability is unknown: masked out of the update, counted as the sandbox's failure
    assert unknown["scored"]["reason"] == "sandbox_error" and unknown["scored"]["reward"] is None
    # a format failure is the policy's own: its -1 stands and its reason stays
    assert bad_format["scored"]["reason"] == "bad_format" and bad_format["scored"]["reward"] == -1.0
    assert record["sandbox_errors"] == 1 + 6 + 1  # abduction's one rollout, deduction's six, `unknown`


def test_a_solver_verdict_without_a_reward_or_a_reason_stops_the_step(monkeypatch):
    # A scorer that leaves a judged row without a reward is a bug: training it on 0 would hide it.
    loop, script = _self_play(monkeypatch)
    script.solver_reward = None
    try:
        with pytest.raises(ValueError, match="would not mask"):
            loop.step(SimpleNamespace(params="p"), 1)
    finally:
        loop.close()
