"""Benchmark scoring of hand-made responses with the training scorer, the summary fields, plots."""

import json
import subprocess
import sys

import pytest

from azr_jax.config import load_config
from azr_jax.eval.evaluate import score_items
from azr_jax.eval.summary import (decoding_description, format_solve_rate_table, gain_stderr, macro_mean_stderr,
                                  solve_rate_stderr, solve_rate_summary)
from azr_jax.nano.benchmark import nano_benchmark
from azr_jax.plots import PANELS, heldout_mean_band, heldout_points, plot_metrics
from tests.azr.test_azr_scoring import BrokenSandbox


def _answer(tag, text):
    return f" reasoning </think> <answer>\n```{tag}\n{text}\n```\n</answer>"


def _right(item):
    p = item["problem"]
    if item["task"] == "deduction":
        return _answer("output", p["output"])
    if item["task"] == "abduction":
        return _answer("input", p["input"])
    return _answer("python", p["program"])


def _wrong(item):
    if item["task"] == "deduction":
        return _answer("output", "'certainly not this'")
    if item["task"] == "abduction":
        return _answer("input", "object()")
    return _answer("python", "def f(x):\n    return None")


@pytest.fixture(scope="module")
def sandbox():
    from azr_jax.sandbox import Sandbox

    cfg = load_config("configs/nano.py")
    with Sandbox(cfg.sandbox) as sb:
        yield sb


def test_scoring_hand_made_responses(sandbox):
    cfg = load_config("configs/nano.py")
    items = nano_benchmark(4)
    # per type: 2 right, 1 wrong, 1 right answer in <answer> tags but without `</think>`: the
    # training scorer finds it right, and the evaluation counts it wrong as the reference's
    # validation does (format failed)
    responses = []
    for it in items:
        k = int(it["id"].rsplit("/", 1)[1])
        responses.append(_right(it) if k < 2 else _wrong(it) if k == 2 else _right(it).replace("</think>", ""))
    result = score_items(items, responses, cfg, sandbox)
    assert result["n_items"] == 12
    for task in ("deduction", "abduction", "induction"):
        got = [r["accuracy"] for r in result["items"] if r["id"].startswith(f"nano/{task}/")]
        assert got == [1.0, 1.0, 0.0, 0.0], (task, got)
        assert [r["format_ok"] for r in result["items"] if r["id"].startswith(f"nano/{task}/")][3] is False
    assert result["format_rate"] == pytest.approx(9 / 12)
    assert result["solve_rate"] == pytest.approx(sum(result["per_task"].values()) / 3)
    assert [r["task"] for r in result["items"]] == [it["task"] for it in items]
    # each type: accuracies 1, 1, 0, 0 -> sample variance 1/3 over 4 items; three equal types
    assert result["solve_rate_stderr"] == pytest.approx((3 * (1 / 3) / 4) ** 0.5 / 3)


def test_scoring_several_samples_per_item_gives_mean_accuracy_and_pass_at_k(sandbox):
    cfg = load_config("configs/nano.py")
    items = nano_benchmark(2)  # two items per task type
    responses = []
    for it in items:  # first item of each type: one right of two; second: none right
        first = it["id"].endswith("/0")
        responses += [_right(it) if first else _wrong(it), _wrong(it)]
    result = score_items(items, responses, cfg, sandbox, samples=2)
    for task in ("deduction", "abduction", "induction"):
        assert result["per_task"][task] == pytest.approx(0.25)  # (0.5 + 0) / 2
        assert result["pass_at_k"]["per_task"][task] == pytest.approx(0.5)
    assert result["pass_at_k"]["k"] == 2 and result["pass_at_k"]["solve_rate"] == pytest.approx(0.5)
    assert [r["accuracies"] for r in result["items"][:2]] == [[1.0, 0.0], [0.0, 0.0]]
    assert [r["accuracy"] for r in result["items"][:2]] == [0.5, 0.0]  # the mean of its samples
    # pass@k counts an item when any sample is right, not only the first
    swapped = [r for pair in zip(responses[1::2], responses[0::2]) for r in pair]
    assert score_items(items, swapped, cfg, sandbox, samples=2)["pass_at_k"]["solve_rate"] == pytest.approx(0.5)
    # the format rate is over every sample, not each item's first
    unformatted = [r if i % 2 == 0 else r.replace("</think>", "") for i, r in enumerate(responses)]
    half = score_items(items, unformatted, cfg, sandbox, samples=2)
    assert half["format_rate"] == pytest.approx(0.5)
    assert [r["format_ok"] for r in half["items"]] == [True] * len(items)  # an item's flag is its first sample's
    with pytest.raises(ValueError, match="responses"):
        score_items(items, responses[:-1], cfg, sandbox, samples=2)


def test_the_solve_rate_is_the_mean_over_task_types_not_over_items(sandbox):
    cfg = load_config("configs/nano.py")
    deduction = [it for it in nano_benchmark(3) if it["task"] == "deduction"]
    abduction = [it for it in nano_benchmark(1) if it["task"] == "abduction"]
    result = score_items(deduction + abduction, [_right(it) for it in deduction] + [_wrong(abduction[0])], cfg, sandbox)
    assert result["per_task"] == {"deduction": 1.0, "abduction": 0.0}
    assert result["solve_rate"] == 0.5  # not 3 of 4 items


def test_answers_the_sandbox_never_checked_are_counted_per_item():
    cfg = load_config("configs/nano.py")
    items = [it for it in nano_benchmark(3) if it["task"] == "induction"]
    broken = BrokenSandbox("sandbox failure: fork failed")  # every job fails as the sandbox's own fault
    result = score_items(items, [_right(it) for it in items for _ in range(2)], cfg, broken, samples=2)
    assert result["sandbox_errors"] == 6
    assert [it["sandbox_errors"] for it in result["items"]] == [2, 2, 2]
    assert result["solve_rate"] == 0.0  # counted as wrong: a lower bound


# Hand-made CRUXEval-format lines: a literal input, an input written as a call (CRUXEval has 10
# such, e.g. `dict(did=0)`, `range(100, 120)`) and one that passes a lambda (2 in CRUXEval).
CRUX_LINES = [
    {"code": "def f(xs):\n    return sorted(xs)[::-1]", "input": "[3, 1, 2]", "output": "[3, 2, 1]", "id": "lit"},
    {"code": "def f(d):\n    return sorted(d)", "input": "dict(b=1, a=2)", "output": "['a', 'b']", "id": "call"},
    {"code": "def f(xs, keep):\n    return [x for x in xs if keep(x)]", "input": "[1, 2, 3], lambda x: x > 1",
     "output": "[2, 3]", "id": "lambda"},
]


def _crux_file(tmp_path):
    path = tmp_path / "crux.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in CRUX_LINES))
    return path


def test_cruxeval_items_are_scored_with_literal_answers(sandbox, tmp_path):
    """Abduction answers must be literals (docs/deviations.md, `answer_expression_eval`), CRUXEval's
    gold inputs included: a gold written as a call scores 0 and its literal value 1; a lambda
    argument has no literal form, so that item cannot be solved."""
    from azr_jax.eval.benchmarks import load_cruxeval

    cfg = load_config("configs/nano.py")
    items = load_cruxeval(_crux_file(tmp_path))
    result = score_items(items, [_right(it) for it in items], cfg, sandbox)
    assert [(r["id"], r["accuracy"]) for r in result["items"]] == [
        ("cruxeval-o/lit", 1.0), ("cruxeval-i/lit", 1.0), ("cruxeval-o/call", 1.0), ("cruxeval-i/call", 0.0),
        ("cruxeval-o/lambda", 1.0), ("cruxeval-i/lambda", 0.0)]
    assert result["per_task"] == {"deduction": 1.0, "abduction": pytest.approx(1 / 3)}
    literal = [_answer("input", "{'b': 1, 'a': 2}"), _answer("input", "sorted([3, 2, 1])")]
    again = score_items([items[3], items[1]], literal, cfg, sandbox)
    assert [r["accuracy"] for r in again["items"]] == [1.0, 0.0]  # the literal value; an expression


def test_eval_cli_on_a_cruxeval_file(tmp_path):
    path, out = _crux_file(tmp_path), tmp_path / "eval.json"
    base = [sys.executable, "-m", "azr_jax.cli", "eval", "--config", "configs/nano.py", "--set", "eval.benchmark=cruxeval"]
    r = subprocess.run(base + ["--set", f"eval.data_path={path}", "--set", "eval.max_items=4", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "cruxeval" and result["n_items"] == 4
    assert [i["id"] for i in result["items"]] == ["cruxeval-o/lit", "cruxeval-i/lit", "cruxeval-o/call", "cruxeval-i/call"]
    assert sorted(result["per_task"]) == ["abduction", "deduction"]
    assert all(isinstance(i["response"], str) and i["response"] for i in result["items"])
    assert json.loads(r.stdout.strip().splitlines()[-1])["n_items"] == 4
    missing = subprocess.run(base, capture_output=True, text=True, timeout=600)
    lines = [l for l in missing.stderr.splitlines() if l.strip()]
    assert missing.returncode != 0 and len(lines) == 1 and "needs eval.data_path" in lines[0], missing.stderr[-2000:]


def test_summary_fields():
    base = {"solve_rate": 0.2, "per_task": {"deduction": 0.3, "abduction": 0.2, "induction": 0.1},
            "n_items": 150, "benchmark": "nano"}
    final = {"solve_rate": 0.35, "per_task": {"deduction": 0.5, "abduction": 0.3, "induction": 0.25},
             "n_items": 150, "benchmark": "nano"}
    s = solve_rate_summary(base, final)
    assert s["base_solve_rate"] == 0.2 and s["final_solve_rate"] == 0.35
    assert s["solve_rate_gain"] == pytest.approx(0.15)
    assert solve_rate_summary(final, base)["solve_rate_gain"] == pytest.approx(-0.15)  # a loss is reported as one
    assert s["final_solve_rate/induction"] == 0.25 and s["base_solve_rate/deduction"] == 0.3
    lines = format_solve_rate_table(s).splitlines()
    assert lines[0].split() == ["task", "base", "final", "gain"]
    assert lines[2].split() == ["deduction", "0.300", "0.500", "+0.200"]
    assert lines[-1].split() == ["mean", "0.200", "0.350", "+0.150"]
    assert format_solve_rate_table({"status": "completed"}) == ""


def _eval(per_item: dict[str, list[float]]) -> dict:
    items = [{"id": f"nano/{t}/{i}", "task": t, "accuracy": a} for t, accs in per_item.items() for i, a in enumerate(accs)]
    rates = {t: sum(a) / len(a) for t, a in per_item.items()}
    return {"solve_rate": sum(rates.values()) / len(rates), "per_task": rates, "n_items": len(items), "items": items}


def test_standard_errors_of_the_solve_rate_and_the_paired_gain():
    # One type's standard error is its sample standard deviation over sqrt(n); types weigh 1/T each.
    assert macro_mean_stderr(["a"] * 4, [1, 0, 1, 0]) == pytest.approx((1 / 3) ** 0.5 / 2)
    assert macro_mean_stderr(["a", "a", "b", "b"], [1, 0, 1, 1]) == pytest.approx((0.5 / 2) ** 0.5 / 2)
    assert macro_mean_stderr(["a", "a", "b"], [1, 0, 1]) is None  # one item says nothing of its spread
    base = _eval({"deduction": [1, 0, 0, 0], "abduction": [1, 1, 0, 0]})
    same_items_flipped = _eval({"deduction": [0, 1, 0, 0], "abduction": [1, 0, 1, 0]})
    one_more_right = _eval({"deduction": [1, 1, 0, 0], "abduction": [1, 1, 0, 0]})
    # equal rates with the right answers moved: unpaired errors would call this a tie; the paired
    # error sees items change in both directions
    assert gain_stderr(base, same_items_flipped) > 0
    # one item gained, nothing lost: the paired error is that of the change vector alone
    assert gain_stderr(base, one_more_right) == pytest.approx(macro_mean_stderr(["d"] * 4, [0, 1, 0, 0]) / 2)
    assert gain_stderr(base, base) == 0.0
    assert gain_stderr(base, _eval({"deduction": [1, 0, 0], "abduction": [1, 1, 0]})) is None  # other items
    legacy = base | {"items": [{"id": it["id"], "accuracy": it["accuracy"]} for it in base["items"]]}
    assert solve_rate_stderr(legacy) is None and gain_stderr(legacy, legacy) is None

    s = solve_rate_summary(base, one_more_right)
    assert s["base_solve_rate_stderr"] == pytest.approx(solve_rate_stderr(base))
    assert s["final_solve_rate_stderr"] == pytest.approx(solve_rate_stderr(one_more_right))
    assert s["solve_rate_gain_stderr"] == pytest.approx(gain_stderr(base, one_more_right))
    last = format_solve_rate_table(s).splitlines()[-1].split()
    assert last[:2] == ["std", "error"]
    assert [float(x) for x in last[2:5]] == pytest.approx(
        [s["base_solve_rate_stderr"], s["final_solve_rate_stderr"], s["solve_rate_gain_stderr"]], abs=5e-4)


def _four_steps_of_metrics() -> list[dict]:
    """Metrics rows of steps 1-4 with every panel's keys; learnability is null at step 1."""
    rows = []
    for step in range(1, 5):
        row = {"step": step}
        for task in ("deduction", "abduction", "induction"):
            row[f"propose/{task}/reward"] = -1 + 0.2 * step
            row[f"solve/{task}/reward"] = -0.5 + 0.1 * step
            row[f"propose/{task}/valid_rate"] = 0.2 * step
            row[f"propose/{task}/learnability"] = None if step == 1 else 0.1 * step
            row[f"solve/{task}/accuracy"] = 0.1 * step
        rows.append(row)
    return rows


def test_plots_from_metrics_jsonl(tmp_path):
    rows = _four_steps_of_metrics()
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = plot_metrics(path, tmp_path / "plots")
    assert [p.stem for p in written] == list(PANELS)
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000


def test_a_plot_cut_off_while_drawing_leaves_the_previous_picture(tmp_path, monkeypatch):
    """The plots are redrawn at every evaluation of a running job, where a user may be viewing
    them: a write that stops half-way must leave the previous PNG whole, and nothing beside it."""
    import matplotlib.figure

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _four_steps_of_metrics()))
    first = plot_metrics(path, tmp_path / "plots")[0]
    before = first.read_bytes()

    def cut_off(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(before[:100])
        raise OSError("No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", cut_off)
    with pytest.raises(OSError, match="No space left"):
        plot_metrics(path, tmp_path / "plots")
    assert first.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(f"{stem}.png" for stem in PANELS)


def test_heldout_plot_from_the_runs_evaluations(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "solve/deduction/reward": 0.1}) + "\n"
                                                    for s in (1, 2, 3, 4)))
    (tmp_path / "eval").mkdir()
    for name, rate in (("base", 0.1), ("step_2", 0.2), ("final", 0.3)):
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps(
            {"solve_rate": rate, "per_task": {"deduction": rate + 0.1, "abduction": rate, "induction": rate - 0.1}}
            | ({} if name == "step_2" else {"solve_rate_stderr": rate / 10})))  # step_2: an older file
    series = heldout_points(tmp_path / "eval", last_step=4)
    assert series["mean"] == [(0, 0.1), (2, 0.2), (4, 0.3)]
    assert series["deduction"][-1] == (4, pytest.approx(0.4))
    assert heldout_mean_band(tmp_path / "eval", last_step=4) == [(0, 0.1, 0.01), (4, 0.3, 0.03)]
    written = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots")
    assert written[-1].name == "heldout_solve_rate.png" and written[-1].read_bytes()[:4] == b"\x89PNG"
    # Without evaluations there is no held-out panel.
    assert heldout_points(tmp_path / "nothing", last_step=4) == {}


def test_a_damaged_evaluation_file_costs_its_point_not_the_plots(tmp_path, caplog):
    """A cut-off eval/step_2.json, or one without a solve rate, made a finished run exit 1 with
    a traceback after its last step, drawing no plots."""
    import logging

    from azr_jax.errors import UserError

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "base.json").write_text(json.dumps({"solve_rate": 0.1, "per_task": {"deduction": 0.1}}))
    (tmp_path / "eval" / "step_2.json").write_text('{"solve_rate": 0.')
    (tmp_path / "eval" / "step_3.json").write_text('{"per_task": {}}')
    with caplog.at_level(logging.WARNING, logger="azr_jax.eval"):
        assert heldout_points(tmp_path / "eval", last_step=4)["mean"] == [(0, 0.1)]
        written = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots")
    assert written[-1].name == "heldout_solve_rate.png"
    skipped = {r.getMessage().split(":")[0] for r in caplog.records}
    assert skipped == {f"skipping {tmp_path / 'eval' / name}" for name in ("step_2.json", "step_3.json")}
    # a metrics row that is not a step's object is one clean error, not a KeyError
    for bad in ('{"x": 1}', "[1, 2]", '{"step": "3"}'):
        (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n' + bad + "\n")
        with pytest.raises(UserError, match="line 2: not a metrics row"):
            plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots")


class _BreaksFirst:
    """The real sandbox, except that its first `broken_calls` run calls fail the way the pool
    reports its own breakage (every job: `sandbox failure: ...`)."""

    def __init__(self, sb, broken_calls):
        self.sb, self.left = sb, broken_calls

    def run(self, jobs):
        from azr_jax.sandbox import JobResult

        if self.left <= 0:
            return self.sb.run(jobs)
        self.left -= 1
        err = "sandbox failure: fork failed"
        return [JobResult(outputs=[None] * len(j.calls), errors=[err] * len(j.calls), deterministic=True,
                          matches=None, timed_out=False, error=err, sandbox_fault=True) for j in jobs]

    def compare(self, pairs):
        return self.sb.compare(pairs)


def test_answers_the_sandbox_failed_to_check_are_retried_then_reported(sandbox, caplog):
    cfg = load_config("configs/nano.py")
    items = nano_benchmark(2)
    responses = [_right(it) for it in items]
    # broken once: the retry checks them, nothing is lost
    once = score_items(items, responses, cfg, _BreaksFirst(sandbox, 1))
    assert once["sandbox_errors"] == 0 and once["solve_rate"] == 1.0
    assert not any("sandbox_errors" in r for r in once["items"])
    # broken for good: counted as wrong, but counted and flagged, with a warning
    with caplog.at_level("WARNING"):
        never = score_items(items, responses, cfg, _BreaksFirst(sandbox, 10**6))
    flagged = [r for r in never["items"] if r.get("sandbox_errors")]
    assert never["sandbox_errors"] == len(flagged) > 0
    assert all(r["accuracy"] == 0.0 for r in flagged)
    assert "lower bound" in caplog.text


def test_decoding_is_described_as_it_was_done():
    # The report and the held-out plot's title say "greedy" only for a greedy evaluation.
    assert decoding_description(0.0, 1) == "greedy"
    assert decoding_description(1.0, 8) == "mean of 8 samples at temperature 1"
    assert decoding_description(0.7, 1) == "mean of 1 sample at temperature 0.7"


@pytest.mark.parametrize("max_items,programs", [(1, 1), (3, 1), (4, 2), (7, 3), (0, 3)])
def test_a_cut_cruxeval_keeps_both_items_of_each_program(tmp_path, max_items, programs):
    from azr_jax.config import EvalSection
    from azr_jax.eval.benchmarks import load_benchmark

    items = load_benchmark(EvalSection(benchmark="cruxeval", data_path=str(_crux_file(tmp_path)), max_items=max_items))
    assert [i["task"] for i in items] == ["deduction", "abduction"] * programs


def test_an_empty_benchmark_is_refused_not_scored_as_zero(tmp_path, sandbox):
    """An empty CRUXEval file reported {"solve_rate": 0.0, "n_items": 0}, exit 0 (and the
    trainer would have put 0.0 into summary.json as the base and final rates)."""
    from azr_jax.config import EvalSection
    from azr_jax.errors import UserError
    from azr_jax.eval.benchmarks import load_benchmark

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="holds no items"):
        load_benchmark(EvalSection(benchmark="cruxeval", data_path=str(empty)))
    with pytest.raises(UserError, match="holds no items"):
        score_items([], [], load_config("configs/nano.py"), sandbox)
    # evaluate(items=[]) is an empty benchmark too, not a cue to load the configured one
    from types import SimpleNamespace

    from azr_jax.eval.evaluate import evaluate

    policy = SimpleNamespace(config=SimpleNamespace(), stop_ids=[0], tokenizer=None)
    with pytest.raises(UserError, match="holds no items"):
        evaluate(None, policy, load_config("configs/nano.py"), sandbox, items=[], generate_fn=lambda *a, **k: 1 / 0)


def test_evaluation_generates_under_the_sampling_sections_row_cap_and_truncation():
    """The presets bound every generate call's rows (and so the KV cache) with sampling.max_rows;
    evaluation ignored it (and top_p / top_k), decoding 64 x eval.samples rows at once. The
    prefill chunk reaches evaluation too."""
    import numpy as np

    from azr_jax.eval.evaluate import evaluate
    from azr_jax.sampling import Completions

    calls = []

    def recording_generate(params, config, prompt_ids, key, settings, *, n_samples, max_rows, **kw):
        calls.append((len(prompt_ids), n_samples, max_rows, settings.top_p, settings.top_k, kw["prefill_chunk"]))
        rows = len(prompt_ids) * n_samples
        return Completions(tokens=np.zeros((rows, 1), np.int32), lengths=np.zeros(rows, np.int32),
                           logprobs=np.zeros((rows, 1), np.float32), finished=np.arange(rows) % 4 != 3)

    class Tok:
        def encode_batch(self, texts):
            return [[1, 2] for _ in texts]

        def decode(self, ids, skip_special_tokens=True):
            return ""

    class Policy:
        tokenizer, stop_ids, mesh, rules, compute_dtype, pad_id, config = Tok(), (3,), None, None, None, 0, None

    cfg = load_config("configs/nano.py", ["sampling.max_rows=8", "sampling.top_p=0.9", "sampling.top_k=5",
                                          "eval.samples=4", "eval.temperature=1.0", "sampling.prefill_chunk=64"])
    items = nano_benchmark(2)

    class NoSandbox:  # every answer is empty: nothing reaches the sandbox
        pass

    result = evaluate(None, Policy(), cfg, NoSandbox(), items=items, generate_fn=recording_generate)
    assert calls and all(c[1:] == (4, 8, 0.9, 5, 64) for c in calls), calls
    assert result["n_items"] == len(items)
    # One sample in four ran out of tokens: counted, per item too (a budget too small for the
    # answers lowers the solve rate, and said nowhere before).
    assert result["cut_off"] == len(items) and all(it["cut_off"] == 1 for it in result["items"])


def test_prompts_past_the_models_context_are_named_in_a_warning(caplog):
    """A benchmark item whose prompt plus answer budget is longer than the model's positions is
    generated anyway, and said so (it ran silently, and counted as wrong)."""
    import logging
    from types import SimpleNamespace

    import numpy as np

    from azr_jax.eval.evaluate import generate_texts
    from azr_jax.sampling import Completions

    def generate(params, config, prompt_ids, key, settings, *, n_samples, **kw):
        rows = len(prompt_ids) * n_samples
        return Completions(tokens=np.zeros((rows, 1), np.int32), lengths=np.zeros(rows, np.int32),
                           logprobs=np.zeros((rows, 1), np.float32), finished=np.ones(rows, bool))

    class Tok:
        def encode_batch(self, texts):
            return [[1] * len(t) for t in texts]

        def decode(self, ids, skip_special_tokens=True):
            return ""

    policy = SimpleNamespace(tokenizer=Tok(), stop_ids=(3,), mesh=None, rules=None, compute_dtype=None, pad_id=0,
                             config=SimpleNamespace(max_position_embeddings=100))
    with caplog.at_level(logging.WARNING, logger="azr_jax.eval.evaluate"):
        # 80 + 20 fills the 100 positions exactly: only the 90-token prompt runs past them
        generate_texts(None, policy, ["x" * 80, "x" * 90, "x" * 40], max_new_tokens=20, batch_size=2,
                       generate_fn=generate)
    assert [r.getMessage() for r in caplog.records] == [
        "1 of 3 prompts plus the answer budget (20 tokens) run past the model's max_position_embeddings (100): "
        "those answers come from positions it was not trained on"]


def _saved_figures(monkeypatch) -> dict:
    """stem -> the matplotlib Figure that plot_metrics saved under it (kept for inspection)."""
    from pathlib import Path

    from matplotlib.figure import Figure

    figures, real = {}, Figure.savefig

    def savefig(self, path, *args, **kwargs):
        figures[Path(path).name.split(".")[0]] = self  # drawn as STEM.png.tmp, then moved
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def test_each_panel_draws_one_labelled_line_per_metric_over_the_steps_that_have_it(tmp_path, monkeypatch):
    """Every (role, task) metric of a panel is one line, labelled by its role/task, titled as
    PANELS says; a step whose value is null is left out of its line (not drawn as a gap at 0)."""
    figures = _saved_figures(monkeypatch)
    rows = _four_steps_of_metrics()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots")
    tasks = ["deduction", "abduction", "induction"]
    expected = {"reward": [f"{role}/{t}" for role in ("propose", "solve") for t in tasks],
                "valid_rate": [f"propose/{t}" for t in tasks], "learnability": [f"propose/{t}" for t in tasks],
                "solve_rate": [f"solve/{t}" for t in tasks]}
    assert sorted(figures) == sorted(PANELS)
    for stem, labels in expected.items():
        (ax,) = figures[stem].axes
        assert ax.get_title() == PANELS[stem][0]
        assert [line.get_label() for line in ax.lines] == labels, stem
        steps = [2, 3, 4] if stem == "learnability" else [1, 2, 3, 4]
        assert all(list(line.get_xdata()) == steps for line in ax.lines), stem
    (line,) = [l for l in figures["solve_rate"].axes[0].lines if l.get_label() == "solve/abduction"]
    assert list(line.get_ydata()) == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_the_heldout_panel_puts_final_at_the_last_step_and_names_its_decoding(tmp_path, monkeypatch):
    """final.json is drawn at the last metrics step, the title names how the final evaluation
    decoded, the ±1 standard error band is drawn once two evaluations record an error, and the
    y axis reaches 1.5 times the best rate (capped at 1)."""
    figures = _saved_figures(monkeypatch)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)))
    (tmp_path / "eval").mkdir()
    for name, rate, extra in (("base", 0.1, {"solve_rate_stderr": 0.01}), ("step_2", 0.2, {}),
                              ("final", 0.3, {"solve_rate_stderr": 0.03, "samples": 4, "temperature": 1.0})):
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps(
            {"solve_rate": rate, "per_task": {"deduction": rate + 0.1, "abduction": rate}} | extra))
    plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots")
    (ax,) = figures["heldout_solve_rate"].axes
    assert ax.get_title() == "held-out solve rate (mean of 4 samples at temperature 1; step 0 = base model)"
    assert [line.get_label() for line in ax.lines] == ["mean", "deduction", "abduction"]
    assert list(ax.lines[0].get_xdata()) == [0, 2, 4]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.1, 0.2, 0.3])
    (band,) = ax.collections
    assert band.get_label() == "mean ± 1 standard error"
    assert ax.get_ylim() == pytest.approx((0, 0.6))  # 1.5 x the best rate, deduction's 0.4


def test_the_heldout_axis_spans_0_3_to_1_and_an_evaluation_without_decoding_fields_was_greedy(tmp_path, monkeypatch):
    """Low rates keep a 0-0.3 axis (not noise magnified to fill it) and high ones stop at 1; an
    evaluation that records no decoding (an older file) was greedy; a null standard error (too
    few items of a task type) is no band point, and one point is no band; no figure stays open."""
    import matplotlib.pyplot as plt

    figures = _saved_figures(monkeypatch)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    (tmp_path / "eval").mkdir()

    def heldout_panel(base, final, base_stderr, final_stderr):
        for name, rate, stderr in (("base", base, base_stderr), ("final", final, final_stderr)):
            (tmp_path / "eval" / f"{name}.json").write_text(json.dumps(
                {"solve_rate": rate, "per_task": {"deduction": rate}, "solve_rate_stderr": stderr}))
        plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots")
        (ax,) = figures["heldout_solve_rate"].axes
        return ax

    ax = heldout_panel(0.05, 0.1, None, 0.02)
    assert heldout_mean_band(tmp_path / "eval", last_step=2) == [(2, 0.1, 0.02)]
    assert len(ax.collections) == 0 and ax.get_ylim() == pytest.approx((0, 0.3))
    assert ax.get_title() == "held-out solve rate (greedy; step 0 = base model)"
    ax = heldout_panel(0.6, 0.9, 0.01, 0.02)
    assert len(ax.collections) == 1 and ax.get_ylim() == pytest.approx((0, 1.0))
    assert plt.get_fignums() == []


def test_a_finished_run_without_metrics_records_still_gets_its_plots(tmp_path):
    """A finished run rerun after its metrics.jsonl was lost has no records: the panels come out
    empty and the base evaluation is drawn at step 0 (not a max() of no steps)."""
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "base.json").write_text(json.dumps({"solve_rate": 0.1, "per_task": {"deduction": 0.1}}))
    written = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots")
    assert [p.stem for p in written] == [*PANELS, "heldout_solve_rate"]


def test_metrics_rows_read_skip_blank_lines_and_refuse_a_boolean_step_or_a_missing_file(tmp_path):
    """Blank lines are not rows; `"step": true` is not an integer step; a missing file is one
    UserError naming it (not a FileNotFoundError traceback)."""
    from azr_jax.errors import UserError
    from azr_jax.plots import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('\n{"step": 1}\n   \n{"step": 2, "x": 0.5}\n\n')
    assert read_metrics(path) == [{"step": 1}, {"step": 2, "x": 0.5}]
    path.write_text('{"step": 1}\n{"step": true}\n')
    with pytest.raises(UserError, match="line 2: not a metrics row"):
        read_metrics(path)
    path.write_text('{"step": 1}\n{"step": 2, "x"\n')  # a line cut short: one error naming it, not a traceback
    with pytest.raises(UserError, match=r"metrics.jsonl line 2: not valid JSON \("):
        read_metrics(path)
    with pytest.raises(UserError, match="metrics file not found: .*missing.jsonl"):
        read_metrics(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="metrics file .* is a directory; give a metrics.jsonl$"):  # a run dir, say
        read_metrics(tmp_path)


def test_summary_fields_name_each_evaluations_own_figures():
    # Without items (an older evaluation) the standard errors are None; decoding defaults to one
    # greedy sample; the benchmark falls back to the base's; each per-type rate and format rate
    # is its own evaluation's, and a type only one of them scored is None in the other.
    base = {"solve_rate": 0.1, "per_task": {"deduction": 0.2, "abduction": 0.0}, "benchmark": "nano",
            "n_items": 6, "format_rate": 0.5}
    final = {"solve_rate": 0.3, "per_task": {"deduction": 0.3, "induction": 0.3}, "n_items": 4, "format_rate": 0.75}
    s = solve_rate_summary(base, final)
    assert s == {
        "benchmark": "nano", "eval_items": 4, "eval_samples": 1, "eval_temperature": 0.0,
        "base_solve_rate": 0.1, "final_solve_rate": 0.3, "solve_rate_gain": pytest.approx(0.2),
        "base_solve_rate_stderr": None, "final_solve_rate_stderr": None, "solve_rate_gain_stderr": None,
        "base_format_rate": 0.5, "final_format_rate": 0.75,
        "base_solve_rate/abduction": 0.0, "final_solve_rate/abduction": None,
        "base_solve_rate/deduction": 0.2, "final_solve_rate/deduction": 0.3,
        "base_solve_rate/induction": None, "final_solve_rate/induction": 0.3,
    }
    # the table leaves out the rows with one side missing, and has no error row without errors
    assert [line.split()[0] for line in format_solve_rate_table(s).splitlines()] == ["task", "deduction", "mean"]


def test_the_paired_gain_error_needs_the_same_item_ids():
    # Same number of items, other ids (another benchmark file between base and final): no pairing.
    base = _eval({"deduction": [1, 0, 0, 0]})
    other = base | {"items": [it | {"id": it["id"] + "-other"} for it in base["items"]]}
    assert gain_stderr(base, other) is None
    assert gain_stderr(base, base) == 0.0


def test_read_evaluation_returns_a_result_and_skips_what_is_not_one(tmp_path):
    from azr_jax.eval.summary import read_evaluation

    good = {"solve_rate": 0.25, "per_task": {"deduction": 0.25}}
    (tmp_path / "good.json").write_text(json.dumps(good))
    assert read_evaluation(tmp_path / "good.json") == good
    whole = {"solve_rate": 1, "per_task": {"deduction": 1}}  # an int rate (all solved) is a rate
    (tmp_path / "whole.json").write_text(json.dumps(whole))
    assert read_evaluation(tmp_path / "whole.json") == whole
    bad = {"no_per_task.json": b'{"solve_rate": 0.25}', "a_list.json": b"[0.25]", "not_utf8.json": b'{"a": "\xff"}',
           "text_rate.json": b'{"solve_rate": "0.25", "per_task": {}}'}
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        assert read_evaluation(tmp_path / name) is None, name
    assert read_evaluation(tmp_path / "missing.json") is None


@pytest.mark.parametrize("max_items,per_type", [(0, 50), (1, 1), (3, 1), (7, 2), (150, 50), (300, 50)])
def test_a_cut_nano_benchmark_keeps_the_task_types_balanced(max_items, per_type):
    # max_items // 3 items of each type, at least one; 0 = all 50 per type, and so is any larger
    # max_items (300 evaluated 100 per type, draws past the benchmark)
    from azr_jax.config import EvalSection
    from azr_jax.eval.benchmarks import load_benchmark

    items = load_benchmark(EvalSection(max_items=max_items))
    assert [it["task"] for it in items] == [t for t in ("deduction", "abduction", "induction") for _ in range(per_type)]


def test_benchmark_files_and_names_are_checked(tmp_path):
    from azr_jax.config import EvalSection
    from azr_jax.errors import UserError
    from azr_jax.eval.benchmarks import load_benchmark, load_cruxeval

    with pytest.raises(UserError, match="needs eval.data_path"):
        load_benchmark(EvalSection(benchmark="cruxeval"))
    with pytest.raises(UserError, match="unknown eval.benchmark 'humaneval'"):
        load_benchmark(EvalSection(benchmark="humaneval"))
    p = tmp_path / "crux.jsonl"
    row = {"code": "def f(x):\n    return x", "input": "1", "output": "1"}
    for broken in ({**row, "output": 1}, {k: v for k, v in row.items() if k != "code"}, {**row, "input": 1}):
        p.write_text(json.dumps(row) + "\n" + json.dumps(broken) + "\n")
        with pytest.raises(UserError, match="line 2: expected an object with string fields"):
            load_cruxeval(p)
    # an item without an id is named by its line in the file, blank lines counted
    p.write_text("\n" + json.dumps(row) + "\n\n" + json.dumps(row) + "\n")
    assert [it["id"] for it in load_cruxeval(p)] == ["cruxeval-o/line2", "cruxeval-i/line2",
                                                     "cruxeval-o/line4", "cruxeval-i/line4"]



@pytest.mark.parametrize("change, message", [
    ({"code": "def f(x):\n    return ("}, "line 2: 'code' is not valid Python"),
    ({"code": "def g(x):\n    return x"}, "line 2: 'code' defines no function f"),
    ({"input": "'ab"}, "line 2: 'input' .* is not a Python argument list"),
    ({"output": "AB'"}, "line 2: 'output' .* is not a plain Python literal"),
    ({"output": "nan"}, "line 2: 'output' 'nan' is not a plain Python literal"),
    ({"input": None}, r"line 2: expected an object with string fields code, input, output \('input' is NoneType\)"),
    ({"inputs": "1"}, r"\('input' is missing\)"),  # a misspelt field is named as the missing one
])
def test_cruxeval_lines_no_answer_could_solve_are_refused_when_read(tmp_path, change, message):
    """Such a line scored 0 for every model, silently lowering the solve rate; it is refused when the
    file is read, naming the line and the field. Gold inputs written as expressions stay allowed."""
    from azr_jax.errors import UserError
    from azr_jax.eval.benchmarks import load_cruxeval

    row = {"code": "def f(x):\n    return x", "input": "1", "output": "1"}
    p = tmp_path / "crux.jsonl"
    broken = {**row, **change}
    if "inputs" in change:
        del broken["input"]
    p.write_text(json.dumps(row) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(UserError, match=message):
        load_cruxeval(p)
    p.write_text("".join(json.dumps(line) + "\n" for line in CRUX_LINES)  # calls and lambdas as gold inputs
                 + json.dumps({**row, "code": "import math as f", "input": "", "output": "{1, 2.5, 'é'}"}) + "\n")
    assert len(load_cruxeval(p)) == 8


def test_cruxeval_ids_must_be_unique(tmp_path):
    """Two lines with one id gave items --out could not tell apart, and a paired gain's standard
    error (matched by id) went missing without a word; a null id is named by its line."""
    from azr_jax.errors import UserError
    from azr_jax.eval.benchmarks import load_cruxeval

    row = {"code": "def f(x):\n    return x", "input": "1", "output": "1", "id": "sample_0"}
    p = tmp_path / "crux.jsonl"
    p.write_text(json.dumps(row) + "\n\n" + json.dumps({**row, "input": "2", "output": "2"}) + "\n")
    with pytest.raises(UserError, match="line 3: id 'sample_0' repeats line 1"):
        load_cruxeval(p)
    p.write_text(json.dumps({**row, "id": None}) + "\n" + json.dumps({**row, "id": None}) + "\n")
    assert [it["id"] for it in load_cruxeval(p)] == ["cruxeval-o/line1", "cruxeval-i/line1",
                                                     "cruxeval-o/line2", "cruxeval-i/line2"]

# ----------------------------------------------------------------------------------------------
# generate_texts and evaluate with a numbered stand-in for sampling.generate: what reaches the
# sampler, and which completion becomes which item's response
# ----------------------------------------------------------------------------------------------


class _IdsTokenizer:
    """Encodes a prompt as one token per character; decodes a completion as its ids, spaced."""

    def __init__(self):
        self.skip_special = []

    def encode_batch(self, texts):
        return [[1] * len(t) for t in texts]

    def decode(self, ids, skip_special_tokens=False):
        self.skip_special.append(skip_special_tokens)
        return " ".join(map(str, ids))


def _numbered_generate(calls: list, unfinished=()):
    """The completion of global row g (first_row + the row in the call) is the token g then two
    pads (length 1); the rows in `unfinished` are cut off by the budget."""
    import numpy as np

    from azr_jax.sampling import Completions

    def generate(params, config, prompt_ids, key, settings, *, n_samples, first_row, **kw):
        calls.append({"prompts": len(prompt_ids), "key": key, "settings": settings, "first_row": first_row})
        rows = np.arange(first_row, first_row + len(prompt_ids) * n_samples)
        tokens = np.zeros((len(rows), 3), np.int32)
        tokens[:, 0] = rows
        return Completions(tokens=tokens, lengths=np.ones(len(rows), np.int32),
                           logprobs=np.zeros((len(rows), 3), np.float32), finished=~np.isin(rows, unfinished))

    return generate


def _stub_policy():
    from types import SimpleNamespace

    # a config without max_position_embeddings: no context check
    return SimpleNamespace(tokenizer=_IdsTokenizer(), stop_ids=(3, 4), mesh=None, rules=None, compute_dtype=None,
                           pad_id=0, config=SimpleNamespace())


def test_generate_texts_numbers_rows_across_batches_and_decodes_each_completion_to_its_length():
    import jax
    import numpy as np

    from azr_jax.eval.evaluate import generate_texts

    calls, lines = [], []
    policy = _stub_policy()
    texts, cut_off = generate_texts(None, policy, ["a", "b", "c", "d", "e"], max_new_tokens=3, batch_size=2,
                                    n_samples=3, temperature=0.5, seed=7, progress=lines.append,
                                    generate_fn=_numbered_generate(calls, unfinished=(4, 14)))
    assert texts == [str(r) for r in range(15)]  # n consecutive per prompt; the pads after `lengths` dropped
    assert policy.tokenizer.skip_special == [True] * 15
    assert cut_off == [r in (4, 14) for r in range(15)]
    # One key from the seed for every batch, rows numbered across batches: a sample's draws do not
    # depend on batch_size.
    assert [(c["prompts"], c["first_row"]) for c in calls] == [(2, 0), (2, 6), (1, 12)]
    assert all(np.array_equal(jax.random.key_data(c["key"]), jax.random.key_data(jax.random.key(7))) for c in calls)
    settings = calls[0]["settings"]
    assert (settings.temperature, settings.max_new_tokens, tuple(settings.eos_ids)) == (0.5, 3, (3, 4))
    assert [line.split(" (")[0] for line in lines] == [f"generated {n}/5 prompts x 3" for n in (2, 4, 5)]


def test_evaluation_gives_each_item_its_own_responses_and_cut_off_count():
    from azr_jax.eval.evaluate import evaluate

    class NoSandbox:  # answers that are bare numbers never reach the sandbox
        pass

    items = nano_benchmark(1)  # three items
    cfg = load_config("configs/nano.py", ["eval.samples=4", "eval.temperature=1.0", "eval.max_response_len=7"])
    calls, lines = [], []
    result = evaluate(None, _stub_policy(), cfg, NoSandbox(), items=items, progress=lines.append,
                      generate_fn=_numbered_generate(calls, unfinished=(1, 8, 9)))
    assert [it["responses"] for it in result["items"]] == [[str(4 * i + j) for j in range(4)] for i in range(3)]
    assert [it.get("cut_off") for it in result["items"]] == [1, None, 2] and result["cut_off"] == 3
    assert (result["samples"], result["temperature"], result["benchmark"]) == (4, 1.0, cfg.eval.benchmark)
    assert (calls[0]["settings"].temperature, calls[0]["settings"].max_new_tokens) == (1.0, 7)  # eval's, not sampling's
    assert lines[-1] == "checking 12 answers in the sandbox"
    greedy = evaluate(None, _stub_policy(), load_config("configs/nano.py"), NoSandbox(), items=items,
                      generate_fn=_numbered_generate([]))
    assert [it["response"] for it in greedy["items"]] == ["0", "1", "2"] and greedy["temperature"] == 0.0
    assert "responses" not in greedy["items"][0] and "pass_at_k" not in greedy


# ----------------------------------------------------------------------------------------------
# `azr-jax eval` in-process, with the model, the evaluation and the sandbox stood in for (the
# subprocess test above runs the real ones): which model it evaluates, and what it prints/writes
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def eval_main(monkeypatch):
    """(main(*argv), what the stand-ins were given)."""
    import argparse
    from types import SimpleNamespace

    from azr_jax import sandbox, train_setup
    from azr_jax.eval import cli as eval_cli
    from azr_jax.eval import evaluate as evaluate_module

    seen = {"closed": 0}

    class Sandbox:
        def __init__(self, cfg):
            pass

        def close(self):
            seen["closed"] += 1

    def load_policy(cfg, weights=True):
        seen["cfg"], seen["weights"] = cfg, weights
        return SimpleNamespace(params="base params")

    def evaluate(params, policy, cfg, sb, *, progress, items=None):
        seen["params"], seen["items"] = params, items
        progress("working")
        if seen.get("fail"):
            raise RuntimeError("the evaluation failed")
        return {"solve_rate": 0.5, "items": [{"id": "x", "response": "r"}]}

    def run_params(cfg, policy, workdir, step):
        seen["run"] = (workdir, step)
        return "run params", 5 if step is None else step

    monkeypatch.setattr(train_setup, "load_policy", load_policy)
    monkeypatch.setattr(sandbox, "Sandbox", Sandbox)
    monkeypatch.setattr(evaluate_module, "evaluate", evaluate)
    monkeypatch.setattr(evaluate_module, "placed_params", lambda policy: policy.params)
    monkeypatch.setattr(eval_cli, "run_params", run_params)

    def main(*argv):
        parser = argparse.ArgumentParser()
        eval_cli.add_arguments(parser)
        return eval_cli.main(parser.parse_args(list(argv)))

    return main, seen


def test_eval_cli_prints_the_result_without_items_and_writes_it_whole(eval_main, tmp_path, capsys, monkeypatch):
    import jax

    main, seen = eval_main
    out = tmp_path / "out.json"
    assert main("--config", "configs/nano.py", "--out", str(out)) == 0
    assert (seen["weights"], seen["params"], seen["closed"]) == (True, "base params", 1)
    printed = capsys.readouterr()
    brief = json.loads(printed.out.strip().splitlines()[-1])
    assert brief == {"solve_rate": 0.5, "checkpoint": load_config("configs/nano.py").model.hf_dir, "processes": 1}
    assert json.loads(out.read_text()) == dict(brief, items=[{"id": "x", "response": "r"}])
    assert "azr-jax eval: working" in printed.err  # progress, on stderr
    # Process 1 of 2 (multi-host: every process evaluates, and holds the same result) prints it
    # and leaves --out to process 0.
    out.unlink()
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert main("--config", "configs/nano.py", "--out", str(out)) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["processes"] == 2 and not out.exists()
    seen["fail"] = True
    with pytest.raises(RuntimeError):
        main("--config", "configs/nano.py")
    assert seen["closed"] == 3  # the sandbox is closed after a failed evaluation too


def test_eval_cli_checkpoint_replaces_the_configs_model(eval_main, tmp_path):
    """The checkpoint's own config.json and tokenizer define the model: the config's tokenizer and
    random-init overrides would otherwise be refused with hf_dir or load another tokenizer."""
    main, seen = eval_main
    (tmp_path / "ckpt").mkdir()
    assert main("--config", "configs/nano.py", "--checkpoint", str(tmp_path / "ckpt"), "--set",
                f"model.tokenizer={tmp_path / 'tok.json'}", "--set", "model.overrides.num_layers=1") == 0
    model = seen["cfg"].model
    assert (model.hf_dir, model.tokenizer, model.overrides) == (str(tmp_path / "ckpt"), None, {})


def test_eval_cli_run_evaluates_its_checkpoint_under_its_own_config(eval_main, tmp_path, capsys):
    from azr_jax.config import to_json

    main, seen = eval_main
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(to_json(load_config("configs/nano.py", ["eval.max_items=7"])))
    assert main("--run", str(run)) == 0
    # the run's params, not the base weights (never read), under the run's config
    assert (seen["weights"], seen["params"], seen["run"]) == (False, "run params", (run, None))
    assert seen["cfg"].eval.max_items == 7
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checkpoint"] == f"{run} (step 5)"
    assert main("--run", str(run), "--step", "2") == 0
    assert seen["run"] == (run, 2)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checkpoint"] == f"{run} (step 2)"


@pytest.mark.parametrize("argv, message", [
    ((), "give --config"),
    (("--config", "configs/nano.py", "--step", "3"), "--step needs --run"),
    (("--run", "R", "--checkpoint", "C"), "two different models"),
    (("--config", "configs/nano.py", "--step", "0"), "--step needs --run"),
    (("--run", "R", "--step", "0"), "--step must be a positive step number, got 0"),
    (("--run", "R", "--step", "-1"), "--step must be a positive step number, got -1"),
    (("--config", "configs/nano.py", "--out", "configs/nano.py/out.json"), "--out .*does not exist"),
])
def test_eval_cli_refuses_contradictory_arguments_before_loading_anything(eval_main, argv, message):
    from azr_jax.errors import UserError

    main, seen = eval_main
    with pytest.raises(UserError, match=message):
        main(*argv)
    assert "cfg" not in seen



def test_eval_cli_reads_the_benchmark_file_before_the_weights(eval_main, tmp_path):
    """A bad line of eval.data_path was only found after load_policy, which takes minutes for a
    large model; now it stops the command before, and the items read are the ones evaluated."""
    from azr_jax.errors import UserError

    main, seen = eval_main
    p = tmp_path / "crux.jsonl"
    p.write_text(json.dumps({"code": "def f(x):\n    return x", "input": "1", "output": "1"}) + "\n{oops\n")
    crux = ("--set", "eval.benchmark=cruxeval", "--set", f"eval.data_path={p}")
    with pytest.raises(UserError, match="line 2: not valid JSON"):
        main("--config", "configs/nano.py", *crux)
    assert "cfg" not in seen  # no weights were loaded
    p.write_text(p.read_text().splitlines()[0] + "\n")
    assert main("--config", "configs/nano.py", *crux) == 0
    assert [it["id"] for it in seen["items"]] == ["cruxeval-o/line1", "cruxeval-i/line1"]

def test_run_params_restores_only_the_params_of_the_newest_or_the_given_step(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from azr_jax import checkpoint
    from azr_jax.errors import UserError
    from azr_jax.eval.cli import run_params

    log = []

    class Checkpoints:
        steps = [3, 8]

        def __init__(self, directory):
            log.append(("open", directory))

        def latest_step(self):
            return max(self.steps, default=None)

        def restore_part(self, step, target):
            log.append(("restore", step, target))
            return {"params": f"params of step {step}"}

        def close(self):
            log.append("close")

    monkeypatch.setattr(checkpoint, "Checkpoints", Checkpoints)
    policy = SimpleNamespace(init_state=lambda cfg, abstract: SimpleNamespace(params=f"abstract={abstract}"))
    assert run_params(None, policy, tmp_path, None) == ("params of step 8", 8)
    assert log == [("open", tmp_path / "checkpoints"), ("restore", 8, {"params": "abstract=True"}), "close"]
    assert run_params(None, policy, tmp_path, 3) == ("params of step 3", 3)
    Checkpoints.steps = []
    log.clear()
    with pytest.raises(UserError, match="no checkpoint in"):
        run_params(None, policy, tmp_path, None)
    assert log == [("open", tmp_path / "checkpoints"), "close"]


def test_summary_edge_cases_of_the_errors_the_gain_and_the_table():
    # No values at all: no error (not a division by zero); items of which some lack a task type
    # (a partly converted evaluation): no error rather than a KeyError.
    assert macro_mean_stderr([], []) is None
    mixed = _eval({"deduction": [1, 0, 1]})
    mixed["items"][1].pop("task")
    assert solve_rate_stderr(mixed) is None
    # The final evaluation's benchmark names the summary; the gain is the exact difference.
    base = {"solve_rate": 0.1234, "per_task": {}, "benchmark": "nano"}
    final = {"solve_rate": 0.5678, "per_task": {}, "benchmark": "cruxeval"}
    s = solve_rate_summary(base, final)
    assert s["benchmark"] == "cruxeval" and s["solve_rate_gain"] == 0.5678 - 0.1234
    # A summary with the mean rates but no per-type ones still has its table (the mean row).
    assert [line.split()[0] for line in format_solve_rate_table(s).splitlines()] == ["task", "mean"]
    # The error row needs all three errors: a gain error beside a base without one (base items
    # without task types, final items with them) leaves the row out.
    s |= {"base_solve_rate_stderr": None, "final_solve_rate_stderr": 0.1, "solve_rate_gain_stderr": 0.05}
    assert "std error" not in format_solve_rate_table(s)


def test_score_items_refuses_more_responses_than_items_times_samples(sandbox):
    cfg = load_config("configs/nano.py")
    items = nano_benchmark(1)
    with pytest.raises(ValueError, match="4 responses for 3 items x 1 samples"):
        score_items(items, [_right(it) for it in items] + ["extra"], cfg, sandbox)


def test_retried_answers_get_their_own_verdicts_back(sandbox):
    # The first sandbox call breaks; the retry's verdicts go back to the answers they are for.
    cfg = load_config("configs/nano.py")
    items = nano_benchmark(2)
    responses = [(_right if i % 2 else _wrong)(it) for i, it in enumerate(items)]
    once = score_items(items, responses, cfg, _BreaksFirst(sandbox, 1))
    assert once["sandbox_errors"] == 0
    assert [r["accuracy"] for r in once["items"]] == [float(i % 2) for i in range(len(items))]


def test_eval_cli_run_with_a_config_uses_that_config_with_or_without_the_runs_own(eval_main, tmp_path):
    from azr_jax.config import to_json

    main, seen = eval_main
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(to_json(load_config("configs/nano.py", ["eval.max_items=7"])))
    assert main("--run", str(run), "--config", "configs/nano.py", "--set", "eval.max_items=3") == 0
    assert seen["cfg"].eval.max_items == 3 and seen["run"] == (run, None)
    (run / "config.json").unlink()  # --config given: the run directory needs no config.json
    assert main("--run", str(run), "--config", "configs/nano.py", "--set", "eval.max_items=4") == 0
    assert seen["cfg"].eval.max_items == 4
