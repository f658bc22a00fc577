"""score_records beyond the fixtures: deviations on solver answers, batching, and the CLI."""

import json
import sys
from pathlib import Path

import pytest

from azr_jax import cli
from azr_jax.azr.buffers import identity_induction, identity_triplet
from azr_jax.azr.scoring import score_records
from azr_jax.config import load_config
from azr_jax.sandbox import Sandbox
from azr_jax.sandbox.isolation import Plan
from azr_jax.sandbox.jobs import JobResult

OVERRIDES = ["sandbox.timeout_s=4"]
TASK = {"program": "def f(a, k):\n    return sorted(a)[k]", "input": "[5, 3, 9], 2", "output": "9", "imports": []}


def answer(body):
    return f" thinking </think> <answer>{body}</answer>"


def solve(task, problem, body, rid="x"):
    return {"id": rid, "role": "solve", "task": task, "response": answer(body), "problem": problem}


def propose(task, body, problem=None, solver_responses=None, rid="p"):
    rec = {"id": rid, "role": "propose", "task": task, "response": answer(body), "problem": problem}
    if solver_responses is not None:
        rec["solver_responses"] = solver_responses
    return rec


class CountingSandbox:
    """Delegates to a real Sandbox and counts the calls made on it."""

    def __init__(self, sb):
        self.sb, self.runs, self.compares = sb, 0, 0

    def run(self, jobs):
        self.runs += 1
        return self.sb.run(jobs)

    def compare(self, pairs):
        self.compares += 1
        return self.sb.compare(pairs)


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, OVERRIDES)


@pytest.fixture(scope="module")
def sb(cfg):
    with Sandbox(cfg.sandbox) as sandbox:
        yield sandbox


def one(rec, cfg, sb):
    return score_records([rec], cfg, sb)[0]


@pytest.mark.parametrize(
    "body, accuracy",
    [
        ("```input\n[1, 9], 1\n```", 1.0),
        ("```input\n[\n  9,\n  1,\n], 1\n```", 1.0),  # multi-line answers are fine (reference: 0)
        ("```input\n[0], 0) or (True\n```", 0.0),  # injection (reference: 1)
        ("```input\nsorted([9, 1]), 1\n```", 0.0),  # expressions are not evaluated (reference: 1)
        ("```input\na=[9], k=0\n```", 1.0),  # keyword arguments with literal values
    ],
)
def test_abduction_answers(cfg, sb, body, accuracy):
    out = one(solve("abduction", TASK, body), cfg, sb)
    assert out["valid"] and out["accuracy"] == accuracy
    assert out["reward"] == (1.0 if accuracy else -0.5)


@pytest.mark.parametrize(
    "body, accuracy",
    [
        ("```output\n9.0\n```", 1.0),  # value equality, as Python's == on plain values
        ("```python\n9\n```", 0.0),  # wrong fence: the whole answer text is not a value
        ("```output\ntype('E', (), {'__eq__': lambda s, o: True})()\n```", 0.0),
    ],
)
def test_deduction_answers(cfg, sb, body, accuracy):
    assert one(solve("deduction", TASK, body), cfg, sb)["accuracy"] == accuracy


def test_solve_reward_rows(cfg, sb):
    bad_format = {"id": "b", "role": "solve", "task": "deduction", "response": "no tags 9", "problem": TASK}
    assert one(bad_format, cfg, sb) == {"id": "b", "format_ok": False, "valid": False, "reason": "no_answer",
                                         "problem": None, "accuracy": 0.0, "reward": -1.0}
    ind = identity_induction()
    no_code = one(solve("induction", ind, "It returns its input."), cfg, sb)
    assert no_code["format_ok"] and not no_code["valid"] and no_code["reward"] == -1.0
    right = one(solve("induction", ind, "```python\ndef f(x):\n    return x\n```"), cfg, sb)
    assert right["accuracy"] == 1.0 and right["reward"] == 1.0


def test_induction_solver_code_blocks_and_stored_imports(cfg, sb):
    """The code is the last Python (or untagged) block; without one, the last block of another
    tag that is not input/output/message (the reference takes any tag; `py3` and `code` scored
    -1 here). The task's imports are added unless the code runs them itself: a comment naming
    `import math` kept them out, and the right answer failed with a NameError."""
    task = {"program": "import math\ndef f(x):\n    return math.floor(x / 2)", "inputs": ["3", "8", "5", "9"],
            "outputs": ["1", "4", "2", "4"], "message": "halve", "visible": 2, "imports": ["import math"]}
    code = "def f(x):\n    return math.floor(x / 2)"
    for body, accuracy in [(f"```py3\n{code}\n```", 1.0), (f"```code\n{code}\n```", 1.0),
                           (f"```python\n{code}\n```\n```output\n4\n```", 1.0),  # not the trailing block
                           (f"```python\n# no need to import math again\n{code}\n```", 1.0),
                           (f"```python\ndef g():\n    import math\n{code}\n```", 1.0),
                           (f"```python\nimport mathx_missing_module_name\n{code}\n```", 0.0),
                           ("```output\n4\n```", None)]:  # no code at all
        out = one(solve("induction", task, body), cfg, sb)
        if accuracy is None:
            assert not out["valid"] and out["reward"] == -1.0, out
        else:
            assert out["valid"] and out["accuracy"] == accuracy, (body, out)


def test_a_right_answer_in_a_broken_format_is_checked_and_still_penalised(cfg, sb):
    """`accuracy` says whether the answer is right even when the format fails (the reference
    reports 0 without checking); the reward keeps the format penalty."""
    rec = {"id": "u", "role": "solve", "task": "deduction", "problem": TASK,
           "response": " no think close <answer>```output\n9\n```</answer>"}
    out = one(rec, cfg, sb)
    assert (out["format_ok"], out["accuracy"], out["reward"]) == (False, 1.0, -1.0)


def test_seed_tasks_validate_to_their_stored_outputs(cfg, sb):
    t = identity_triplet()
    rec = propose("deduction", f"```python\n{t['program']}\n```\n```input\n{t['input']}\n```")
    out = one(rec, cfg, sb)
    assert out["valid"] and out["problem"] == t
    ind = identity_induction()
    inputs = "".join(f"```input\n{i}\n```\n" for i in ind["inputs"])
    cfg6 = load_config(None, OVERRIDES + ["azr.num_inputs=6"])
    out = one(propose("induction", inputs + "```message\nhint\n```", problem={"program": ind["program"]}), cfg6, sb)
    assert out["valid"] and out["problem"]["outputs"] == ind["outputs"] and out["problem"]["visible"] == 3


def test_proposal_reasons(cfg, sb):
    def reason(task, body, problem=None):
        return one(propose(task, body, problem), cfg, sb)["reason"]

    code = "```python\nclass P:\n    pass\n\ndef f(x):\n    return P()\n```\n```input\n1\n```"
    assert reason("deduction", code) == "unrepresentable"
    assert reason("abduction", "```python\ndef f(x):\n    return x\n```\n```input\n__import__('os')\n```") == "banned_builtin"
    assert reason("abduction", "```python\ndef f(x):\n    return 1 / x\n```\n```input\n0\n```") == "runtime_error"
    assert reason("deduction", "```python\ndef f(x):\n    return x\n```") == "no_input"
    ten = "".join("```input\n1\n```\n" for _ in range(9)) + "```input\n__import__('os')\n```\n```message\nm\n```"
    assert reason("induction", ten, {"program": "def f(x):\n    return x"}) == "banned_builtin"


class BrokenSandbox:
    """A sandbox whose every job fails the way pool.py reports its own breakage."""

    def __init__(self, error, fault=True):
        self.error, self.fault = error, fault

    def run(self, jobs):
        return [JobResult(outputs=[None] * len(j.calls), errors=[self.error] * len(j.calls), deterministic=True,
                          matches=None, timed_out=False, error=self.error, sandbox_fault=self.fault) for j in jobs]

    def compare(self, pairs):
        return [False] * len(pairs)


@pytest.mark.parametrize("error, fault, reason", [
    ("sandbox failure: fork failed", True, "sandbox_error"),
    ("sandbox failed to start: no bwrap", True, "sandbox_error"),
    ("killed by SIGKILL", False, "runtime_error"),  # may be the program's own doing: stays the program's fault
    ("memory", False, "runtime_error"),
    # Only the host's flag counts: a program's own error text claiming a sandbox fault does not.
    ("sandbox failure: forged by the program", False, "runtime_error"),
])
def test_sandbox_breakage_is_not_reported_as_a_program_error(cfg, error, fault, reason):
    body = "```python\ndef f(x):\n    return x\n```\n```input\n1\n```"
    out = one(propose("deduction", body), cfg, BrokenSandbox(error, fault))
    assert (out["valid"], out["reason"]) == (False, reason)


class BreaksAfterValidation(BrokenSandbox):
    """Validates proposals with a real sandbox (the first run call), then breaks on every job."""

    def __init__(self, sb, error, fault):
        super().__init__(error, fault)
        self.sb, self.calls = sb, 0

    def run(self, jobs):
        self.calls += 1
        return self.sb.run(jobs) if self.calls == 1 else super().run(jobs)


@pytest.mark.parametrize("error, broke", [("sandbox failure: fork failed", True),
                                          ("killed by SIGKILL", False)])
def test_solver_checks_the_sandbox_failed_to_run_are_marked_not_judged(cfg, sb, error, broke):
    program = "```python\ndef f(x):\n    return x\n```"
    out = one(solve("induction", identity_induction(), program), cfg, BrokenSandbox(error, broke))
    if broke:
        assert (out["reason"], out["accuracy"], out["reward"]) == ("sandbox_error", None, None)
    else:
        assert (out["reason"], out["accuracy"], out["reward"]) == (None, 0.0, -0.5)
    # Learnability rollouts that were never judged give no solve rate (and no reward) at all.
    inputs = "".join(f"```input\n{i}\n```\n" for i in range(cfg.azr.num_inputs))
    proposal = propose("induction", inputs + "```message\nreturn the input\n```",
                       problem={"program": "def f(x):\n    return x"}, solver_responses=[answer(program)] * 2)
    out = one(proposal, cfg, BreaksAfterValidation(sb, error, broke))
    assert out["valid"] is True
    if broke:
        assert (out["reason"], out["accuracy"], out["reward"]) == ("sandbox_error", None, None)
    else:
        assert (out["reason"], out["accuracy"], out["reward"]) == (None, 0.0, -0.5)


def test_a_format_failure_keeps_its_penalty_when_the_sandbox_breaks(cfg, sb):
    # The -1 of a badly formatted response does not depend on the sandbox, so an unchecked answer
    # or rollout does not turn it into `reward: null` (which the update would mask).
    broken = BrokenSandbox("sandbox failure: fork failed", True)
    program = "```python\ndef f(x):\n    return x\n```"
    unformatted = solve("induction", identity_induction(), program)
    unformatted["response"] = f"<answer>{program}</answer>"  # no </think>
    for sandbox, accuracy in ((sb, 1.0), (broken, None)):
        out = one(unformatted, cfg, sandbox)
        assert (out["format_ok"], out["accuracy"], out["reward"]) == (False, accuracy, -1.0)
    assert one(unformatted, cfg, broken)["reason"] == "sandbox_error"  # still counted as unchecked
    inputs = "".join(f"```input\n{i}\n```\n" for i in range(cfg.azr.num_inputs))
    proposal = propose("induction", inputs + "```message\nreturn the input\n```",
                       problem={"program": "def f(x):\n    return x"}, solver_responses=[answer(program)] * 2)
    proposal["response"] = proposal["response"].replace(" thinking </think>", "")
    out = one(proposal, cfg, BreaksAfterValidation(sb, "sandbox failure: fork failed", True))
    assert (out["valid"], out["reason"], out["accuracy"], out["reward"]) == (True, "bad_format", None, -1.0)
    # A well-formatted proposal whose validation broke has no reward (the trainer masks it).
    good = "```python\ndef f(x):\n    return x\n```\n```input\n1\n```"
    out = one(propose("deduction", good), cfg, broken)
    assert (out["valid"], out["reason"], out["reward"]) == (False, "sandbox_error", None)
    unformatted_proposal = propose("deduction", good)
    unformatted_proposal["response"] = unformatted_proposal["response"].replace(" thinking </think>", "")
    assert one(unformatted_proposal, cfg, broken)["reward"] == -1.0


def test_max_output_chars_reproduces_reference_truncation(sb):
    cfg400 = load_config(None, OVERRIDES + ["azr.max_output_chars=400"])
    out = one(propose("deduction", "```python\ndef f(n):\n    return 'a' * n\n```\n```input\n500\n```"), cfg400, sb)
    gold = out["problem"]["output"]
    assert len(gold) == 403 and gold == "'" + "a" * 199 + "..." + "a" * 199 + "'"


def test_batch_uses_few_sandbox_calls(cfg, sb):
    counting = CountingSandbox(sb)
    good = "```python\ndef f(a, k):\n    return sorted(a)[k]\n```\n```input\n[5, 3, 9], 2\n```"
    solvers = [answer("```output\n9\n```"), answer("```output\n3\n```"), answer("```output\n9\n```")]
    records = [
        propose("deduction", good, solver_responses=solvers, rid="p1"),
        propose("abduction", good, solver_responses=[answer("```input\n[9], 0\n```")] * 4, rid="p2"),
        solve("deduction", TASK, "```output\n9\n```", rid="s1"),
        solve("abduction", TASK, "```input\n[1, 9], 1\n```", rid="s2"),
        solve("induction", identity_induction(), "```python\ndef f(x):\n    return x\n```", rid="s3"),
        {"id": "bad", "role": "judge"},
    ]
    out = score_records(records, cfg, counting)
    assert counting.runs == 2 and counting.compares == 1
    assert [o["id"] for o in out] == ["p1", "p2", "s1", "s2", "s3", "bad"]
    assert out[0]["accuracy"] == pytest.approx(2 / 3) and out[0]["reward"] == pytest.approx(1 / 3)
    assert out[1]["accuracy"] == 1.0 and out[1]["reward"] == -0.5  # boundary: always solved
    assert [o["accuracy"] for o in out[2:5]] == [1.0, 1.0, 1.0]
    assert out[5]["reason"] == "bad_record" and out[5]["reward"] is None and "missing field" in out[5]["error"]


def test_cli_scores_every_line_and_reports_malformed_ones(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    dst = tmp_path / "out.jsonl"
    lines = [
        json.dumps(solve("deduction", TASK, "```output\n9\n```", rid="ok")),
        "{not json",
        json.dumps({"id": "r", "role": "critic", "task": "deduction", "response": "", "problem": TASK}),
        "",
        json.dumps([1, 2]),
        json.dumps({"id": "m", "role": "solve", "task": "abduction", "response": "x"}),
    ]
    src.write_text("\n".join(lines) + "\n")
    assert cli.main(["score", "--in", str(src), "--out", str(dst), "--set", "sandbox.timeout_s=4"]) == 0
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert len(rows) == len(lines)
    assert rows[0]["id"] == "ok" and rows[0]["reward"] == 1.0 and "line" not in rows[0]
    for n, row in enumerate(rows[1:], start=2):
        assert row["line"] == n and row["valid"] is False and row["reward"] is None and row["error"]
    assert rows[2]["id"] == "r" and "role must be one of" in rows[2]["error"]
    assert rows[5]["id"] == "m" and "problem" in rows[5]["error"]
    err = capsys.readouterr().err
    assert "6 lines, 5 malformed" in err and "solve/deduction: 1 (1 valid, mean reward +1.000)" in err


def test_cli_splits_records_at_newlines_only_and_survives_any_line(tmp_path, capsys):
    """U+2028 and U+0085 inside a record written with ensure_ascii=False are not line breaks (str.splitlines
    split there); a line nested too deeply for the JSON parser, with an integer over Python's
    digit limit, or not in UTF-8, is one bad record, not a crash with nothing written."""
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    wide = solve("deduction", TASK, "```output\n9\n```", rid="a\u2028b\x85c")
    lines = [json.dumps(wide, ensure_ascii=False), "[" * 100_000 + "]" * 100_000, '{"id": ' + "1" * 5_000 + "}",
             json.dumps(solve("deduction", TASK, "```output\n9\n```", rid="crlf"))]
    latin1 = json.dumps(solve("deduction", TASK, "caf\u00e9", rid="latin-1"), ensure_ascii=False).encode("latin-1")
    src.write_bytes(("\n".join(lines[:3]) + "\n" + lines[3] + "\r\n").encode("utf-8") + latin1 + b"\n")
    assert cli.main(["score", "--in", str(src), "--out", str(dst), "--set", "sandbox.timeout_s=4"]) == 0
    rows = [json.loads(line) for line in dst.read_text(encoding="utf-8").split("\n")[:-1]]
    assert [r["id"] for r in rows] == ["a\u2028b\x85c", None, None, "crlf", None]
    assert rows[0]["reward"] == 1.0 and rows[3]["reward"] == 1.0
    assert rows[1]["reason"] == "bad_record" and "nested too deeply" in rows[1]["error"]
    assert rows[2]["reason"] == "bad_record" and "not valid JSON" in rows[2]["error"]
    # one line that is not UTF-8 is one bad record: the others are still scored
    assert rows[4]["reason"] == "bad_record" and rows[4]["line"] == 5 and "not UTF-8" in rows[4]["error"]
    assert "5 lines, 3 malformed" in capsys.readouterr().err


def test_cli_refuses_nan_ids_and_a_null_visible_count(tmp_path):
    """Python's JSON parser reads NaN, which was echoed back into an output line other readers
    refuse; `"visible": null` passed the record check and crashed the induction solver's scoring
    (a traceback, and an empty output file)."""
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    program = "def f(x):\n    return x"
    null_visible = solve("induction", dict(identity_induction(), visible=None), f"```python\n{program}\n```", rid="v")
    lines = ['{"id": NaN, "role": "solve", "task": "deduction", "response": "x", "problem": {}}',
             '{"id": -1e999, "role": "solve", "task": "deduction", "response": "x", "problem": {}}',
             json.dumps(null_visible),
             json.dumps(solve("induction", identity_induction(), f"```python\n{program}\n```", rid=7))]
    src.write_text("\n".join(lines) + "\n")
    assert cli.main(["score", "--in", str(src), "--out", str(dst), "--set", "sandbox.timeout_s=4"]) == 0
    rows = [json.loads(line, parse_constant=pytest.fail) for line in dst.read_text().splitlines()]  # strict JSON
    assert rows[0]["reason"] == "bad_record" and "NaN is not a JSON value" in rows[0]["error"]
    assert rows[1]["reason"] == "bad_record" and "-1e999 is out of range" in rows[1]["error"]  # read as -inf
    assert rows[2]["id"] == "v" and rows[2]["reason"] == "bad_record" and "problem.visible" in rows[2]["error"]
    assert rows[3]["id"] == 7 and rows[3]["reward"] == 1.0  # a number id is written back as given


def test_seeding_refuses_a_program_too_deep_to_clean(sb):
    """With `azr.clean_programs` (always on while seeding) a proposal `x+1+1…` of 900 terms raised
    RecursionError out of score_records; it is an invalid proposal like any other."""
    cfg = load_config(None, OVERRIDES + ["azr.clean_programs=true"])
    body = "```python\ndef f(x):\n    return x" + "+1" * 900 + "\n```\n```input\n1\n```"
    ok, deep = score_records([propose("deduction", "```python\ndef f(x):\n    return x+1\n```\n```input\n1\n```"),
                              propose("deduction", body)], cfg, sb)
    assert ok["valid"] and ok["problem"]["output"] == "2", ok
    assert not deep["valid"] and deep["reason"] == "syntax_error" and deep["reward"] == -1.0, deep


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert cli.main(["score", "--in", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"azr-jax: error: input file not found: {tmp_path / 'missing.jsonl'}"]


def test_cli_warns_when_the_sandboxs_jobs_can_read_the_input_or_the_output_directory(tmp_path, capsys, monkeypatch):
    """Both hold hidden outputs (a root trainer's none or unshare jobs run as uids that read
    what others may); the warning names each place the jobs can read, and only those."""
    src, dst = tmp_path / "in.jsonl", tmp_path / "out" / "o.jsonl"
    src.write_text("")
    dst.parent.mkdir()
    monkeypatch.setattr("azr_jax.sandbox.isolation.readable_by_jobs", lambda plan, path: path == dst.parent)
    assert cli.main(["score", "--in", str(src), "--out", str(dst)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and f"can read --out's directory {dst.parent}, and" in warned[0], warned
    monkeypatch.setattr("azr_jax.sandbox.isolation.readable_by_jobs", lambda plan, path: False)
    assert cli.main(["score", "--in", str(src), "--out", str(dst)]) == 0
    assert "warning" not in capsys.readouterr().err


STATEFUL_PROGRAM = "seen = set()\ndef f(x):\n    seen.add(x)\n    return len(seen)"


def test_induction_gold_outputs_do_not_depend_on_the_order_of_the_inputs(cfg, sb):
    """Each input runs on the program's fresh module state (AZR_SPEC §1.8: each input is executed
    on the program), so a program that keeps state in its globals gives every input its own
    output, and the gold program itself, run on the hidden inputs alone, solves the task."""
    inputs = "".join(f"```input\n{i}\n```\n" for i in range(10))
    rec = propose("induction", inputs + "```message\ncount distinct\n```", problem={"program": STATEFUL_PROGRAM},
                  solver_responses=[answer(f"```python\n{STATEFUL_PROGRAM}\n```")])
    out = one(rec, cfg, sb)
    assert out["valid"] and out["problem"]["outputs"] == ["1"] * 10, out
    assert out["accuracy"] == 1.0, out


def test_cli_refuses_to_write_its_scores_over_its_input(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 1, "role": "solve", "task": "deduction", "response": "x"}) + "\n")
    before = src.read_text()
    assert cli.main(["score", "--in", str(src), "--out", str(tmp_path / "." / "in.jsonl")]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert src.read_text() == before
    # nor over an input that is the side file --out is written to first (it was emptied, then moved
    # onto --out: the input lost, exit 0)
    side = tmp_path / "out.jsonl.partial"
    side.write_text(before)
    assert cli.main(["score", "--in", str(side), "--out", str(tmp_path / "out.jsonl")]) == 2
    assert "is the file --out" in capsys.readouterr().err
    assert side.read_text() == before and not (tmp_path / "out.jsonl").exists()


def test_a_run_audit_file_finds_its_config_from_inside_rollouts(tmp_path, monkeypatch):
    from azr_jax.azr.score_cli import run_config_of

    (tmp_path / "rollouts").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "rollouts" / "step_1.jsonl").write_text("")
    assert run_config_of(tmp_path / "rollouts" / "step_1.jsonl") == tmp_path / "config.json"
    monkeypatch.chdir(tmp_path / "rollouts")
    assert run_config_of(Path("step_1.jsonl")) == tmp_path / "config.json"
    monkeypatch.chdir(tmp_path)
    assert run_config_of(Path("rollouts") / "step_1.jsonl") == tmp_path / "config.json"
    (tmp_path / "other.jsonl").write_text("")
    assert run_config_of(Path("other.jsonl")) is None
    # Only a run's audit files (step_N.jsonl): another file in a folder called rollouts/ beside
    # some config.json (a Hugging Face one) took that config and failed on its keys.
    (tmp_path / "rollouts" / "my_rollouts.jsonl").write_text("")
    assert run_config_of(tmp_path / "rollouts" / "my_rollouts.jsonl") is None
    assert run_config_of(tmp_path / "rollouts" / "step_1.jsonl.bak") is None
    # a step_N.jsonl outside a rollouts/ folder is not a run's audit file either
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "step_1.jsonl").write_text("")
    assert run_config_of(tmp_path / "other" / "step_1.jsonl") is None


@pytest.mark.parametrize("make, message", [
    (lambda d: "-", "score reads a JSONL file, not stdin"),
    (lambda d: str(d), "is not a regular file"),
])
def test_cli_names_an_input_that_is_not_a_file(tmp_path, capsys, make, message):
    assert cli.main(["score", "--in", make(tmp_path), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert message in capsys.readouterr().err


def test_cli_a_byte_order_mark_is_not_a_bad_record_and_an_all_bad_file_exits_1(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps(solve("deduction", TASK, "```output\n9\n```", rid="bom")).encode()
                    + b"\n")
    assert cli.main(["score", "--in", str(src), "--out", str(dst), "--set", "sandbox.timeout_s=4"]) == 0
    assert json.loads(dst.read_text())["reward"] == 1.0
    capsys.readouterr()
    src.write_text(json.dumps({"a": [1, 2]}, indent=2) + "\n")  # pretty-printed JSON, not JSONL
    # every line still has its bad_record row, but the exit status says nothing was scored
    assert cli.main(["score", "--in", str(src), "--out", str(dst), "--set", "sandbox.timeout_s=4"]) == 1
    assert "none of the 6 lines is a record" in capsys.readouterr().err
    assert [json.loads(line)["reason"] for line in dst.read_text().splitlines()] == ["bad_record"] * 6
    src.write_text("not json\n" + json.dumps(solve("deduction", TASK, "```output\n9\n```", rid="ok")) + "\n")
    assert cli.main(["score", "--in", str(src), "--out", str(dst), "--set", "sandbox.timeout_s=4"]) == 0


def test_cli_stopped_midway_leaves_the_old_out_and_a_partial_file(tmp_path, capsys, monkeypatch):
    """--out was emptied at the start, and a stopped run left a cut file that looked complete."""
    from azr_jax.azr import score_cli

    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(solve("deduction", TASK, "```output\n9\n```", rid=i)) + "\n" for i in range(3)))
    dst.write_text("the previous results\n")
    real_decode = score_cli._decode
    calls = []

    def decode_then_stop(line):
        calls.append(line)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_decode(line)

    monkeypatch.setattr(score_cli, "CHUNK", 2)
    monkeypatch.setattr(score_cli, "_decode", decode_then_stop)
    assert cli.main(["score", "--in", str(src), "--out", str(dst), "--set", "sandbox.timeout_s=4"]) == 130
    assert dst.read_text() == "the previous results\n"
    partial = tmp_path / "out.jsonl.partial"
    assert [json.loads(line)["id"] for line in partial.read_text().splitlines()] == [0, 1]
    assert f"the rows scored so far are in {partial}" in capsys.readouterr().err


def test_cli_names_fields_it_does_not_read_and_suggests_the_close_one(tmp_path, capsys):
    """A misspelt field (`solver_response` for `solver_responses`) was ignored in silence: the
    proposal scored `reward: null` with nothing to say why. The fields of a run's audit file
    (`scored`) are not reported."""
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    body = "```python\ndef f(x):\n    return x + 1\n```\n```input\n1\n```"
    misspelt = dict(propose("deduction", body), solver_response=[answer("```output\n2\n```")])
    audited = dict(solve("deduction", TASK, "```output\n9\n```", rid="a"), scored={"reward": 1.0})
    typo_in_problem = solve("deduction", dict(TASK, ouput="9"), "```output\n9\n```", rid="b")
    src.write_text("".join(json.dumps(r) + "\n" for r in (misspelt, misspelt, audited, typo_in_problem)))
    assert cli.main(["score", "--in", str(src), "--out", str(dst), "--set", "sandbox.timeout_s=4"]) == 0
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert rows[0]["valid"] and rows[0]["reward"] is None and rows[2]["reward"] == 1.0  # scored as before
    warning = [line for line in capsys.readouterr().err.splitlines() if "the schema does not read" in line]
    assert len(warning) == 1, warning
    assert "'solver_response' (2 records; did you mean 'solver_responses'?)" in warning[0]
    assert "'problem.ouput' (1 record; did you mean 'problem.output'?)" in warning[0]
    assert "scored" not in warning[0]


def test_cli_reads_its_input_a_record_at_a_time(tmp_path, monkeypatch):
    """The whole input was read into memory before scoring (300 MB in took 668 MB): lines are now
    streamed, counted first in blocks for the progress line. Checked here through the reader:
    scoring stops after the first chunk, when the reader has read no more than that chunk's lines."""
    from azr_jax.azr import score_cli

    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(solve("deduction", TASK, "```output\n9\n```", rid=i)) + "\n" for i in range(7)))
    pulled = []
    real_read = score_cli._read_lines

    def counting_read(path):
        for line in real_read(path):
            pulled.append(line)
            yield line

    def stop_after_first_chunk(*args, **kwargs):
        if len(pulled) >= 1:
            raise KeyboardInterrupt
        return []

    monkeypatch.setattr(score_cli, "CHUNK", 3)
    monkeypatch.setattr(score_cli, "_read_lines", counting_read)
    monkeypatch.setattr("azr_jax.azr.scoring.score_records", stop_after_first_chunk)
    assert cli.main(["score", "--in", str(src), "--out", str(dst), "--set", "sandbox.timeout_s=4"]) == 130
    assert len(pulled) == 3  # one chunk, of 7 lines
    assert score_cli._count_lines(src) == 7
    src.write_bytes(b"a\n\nb")  # an empty line is a line; a last one without its newline too
    assert score_cli._count_lines(src) == 3 and list(real_read(src)) == ["a", "", "b"]


def test_a_solver_answer_is_checked_with_one_call_of_f(cfg, sb):
    """The reference checks an abduction answer or an induction program with one call per input;
    azr-jax called f twice, so an accumulator in the task's program made a right answer
    "nondeterministic" and wrong (and a slow call had half the time limit)."""
    accumulator = {"program": "def f(x, seen=[]):\n    seen.append(x)\n    return len(seen) + x", "input": "3",
                   "output": "4", "imports": []}
    out = one(solve("abduction", accumulator, "```input\n3\n```"), cfg, sb)
    assert out["accuracy"] == 1.0 and out["reward"] == 1.0, out
    program = accumulator["program"]
    induction = {"program": program, "inputs": ["1", "2", "3", "4"], "outputs": ["2", "3", "4", "5"],
                 "message": "m", "visible": 2, "imports": []}
    out = one(solve("induction", induction, f"```python\n{program}\n```"), cfg, sb)
    assert out["accuracy"] == 1.0, out


def test_answers_with_the_same_code_and_inputs_but_other_golds_are_judged_apart(cfg, sb):
    """One batch runs each distinct check once; two induction tasks whose hidden inputs and
    answer code coincide still differ in their gold outputs, so they are two checks."""
    code = "```python\ndef f(x):\n    return x * 2\n```"
    doubled = {"program": "def f(x):\n    return x * 2", "inputs": ["1", "2", "3", "4"], "outputs": ["2", "4", "6", "8"],
               "message": "m", "imports": []}
    same = dict(doubled, program="def f(x):\n    return x", outputs=["1", "2", "3", "4"])
    out = score_records([solve("induction", doubled, code, "a"), solve("induction", same, code, "b")], cfg, sb)
    assert [o["accuracy"] for o in out] == [1.0, 0.0]


@pytest.mark.parametrize(
    "rec, message",
    [
        (solve("induction", {"program": "p", "inputs": ["1", "2", "3", "4"], "outputs": ["1", "2", "3"]}, "x"),
         "non-empty and of equal length"),
        (solve("deduction", {"program": "p", "input": "1"}, "x"), "'problem.output' must be a string"),
        (propose("deduction", "x", solver_responses="abc"), "'solver_responses' must be a list of strings"),
        (solve("induction", {"program": "p", "inputs": ["1", "2"], "outputs": ["1", "2"], "visible": 3}, "x"),
         "'problem.visible' must be an int"),
        # a bool is an int to Python, but not a count of pairs
        (solve("induction", {"program": "p", "inputs": ["1", "2"], "outputs": ["1", "2"], "visible": True}, "x"),
         "'problem.visible' must be an int"),
        # no pair at all: nothing to show and nothing to check
        (solve("induction", {"program": "p", "inputs": [], "outputs": []}, "x"), "non-empty and of equal length"),
        (propose("induction", "x", problem={"program": "p", "imports": "import math"}),
         "'problem.imports' must be a list of strings"),
        (solve("deduction", {"program": "p", "output": "1"}, "x"), "'problem.input' must be a string"),
        (solve("abduction", {"program": "p", "input": "1", "output": "1", "imports": "import math"}, "x"),
         "'problem.imports' must be a list of strings"),
        (solve("deduction", {"program": None, "input": "1", "output": "1"}, "x"), "'problem.program' must be a string"),
        ({"role": "solve", "task": "deduction", "response": "x", "problem": TASK}, "missing field 'id'"),
        ({"id": "x", "role": "solve", "task": "deduction", "response": ["x"], "problem": TASK},
         "field 'response' must be a string"),
    ],
)
def test_records_outside_the_schema_are_bad_records(rec, message):
    from azr_jax.azr.scoring import record_error

    assert message in record_error(rec)


def test_every_pair_may_be_visible():
    from azr_jax.azr.scoring import record_error

    assert record_error(solve("induction", {"program": "p", "inputs": ["1", "2"], "outputs": ["1", "2"], "visible": 2}, "x")) is None


# ----------------------------------------------------------------------------------------------
# score_cli's own bookkeeping, with the scorer and the sandbox stood in for: line numbers, group
# counts, progress, the summary line, and how main picks its config
# ----------------------------------------------------------------------------------------------


def test_score_file_counts_groups_and_numbers_bad_lines_across_chunks(tmp_path, monkeypatch):
    import io

    from azr_jax.azr import score_cli

    verdicts = {"a": (True, 1.0), "b": (False, 0.0), "c": (True, None), "d": (True, -0.5)}

    def stub_score(records, cfg, sandbox):
        return [{"id": r["id"], "format_ok": True, "valid": verdicts[r["id"]][0], "reason": None, "problem": None,
                 "accuracy": None, "reward": verdicts[r["id"]][1]} for r in records]

    def rec(rid, role="solve", task="deduction", **extra):
        return (json.dumps({"id": rid, "role": role, "task": task, **extra}) + "\n").encode()

    monkeypatch.setattr("azr_jax.azr.scoring.score_records", stub_score)
    monkeypatch.setattr(score_cli, "CHUNK", 2)
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    # a run's audit fields (`scored`, `references`) are read fields; a misspelt one is not
    src.write_bytes(rec("a", scored={"reward": 1.0}, references=[]) + rec("b") + b"{not json\n"
                    + rec("c", "propose", "abduction", solver_respones=[]) + b"  \t\n" + b'{"id": "caf\xe9"}\n'
                    + rec("d"))
    progress = io.StringIO()
    counts = score_cli.score_file(src, dst, None, None, progress=progress)
    assert (counts["lines"], counts["errors"], counts["unread_fields"]) == (7, 3, {"solver_respones": 1})
    # a reward of 0.0 is a reward (in the mean); null is none
    assert counts["groups"] == {"solve/deduction": {"n": 3, "valid": 2, "reward_sum": 0.5, "rewarded": 3},
                                "propose/abduction": {"n": 1, "valid": 1, "reward_sum": 0.0, "rewarded": 0}}
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", None, "c", None, None, "d"]
    # line numbers count from the file's start, not the chunk's
    assert [(r["line"], r["error"].split(":")[0]) for r in rows if "line" in r] == [
        (3, "not valid JSON"), (5, "empty line"), (6, "not UTF-8 text")]
    assert rows[5]["error"] == "not UTF-8 text: invalid continuation byte at byte 11"
    said = progress.getvalue().splitlines()
    assert [line.split(" (")[0] for line in said[:4]] == [f"azr-jax score: {n}/7 lines" for n in (2, 4, 6, 7)]
    assert len(said) == 5 and "'solver_respones' (1 record; did you mean 'solver_responses'?)" in said[4]
    # One chunk: no progress lines; an empty file is not "none of the 0 lines is a record".
    monkeypatch.setattr(score_cli, "CHUNK", 7)
    progress = io.StringIO()
    score_cli.score_file(src, dst, None, None, progress=progress)
    assert "lines (" not in progress.getvalue()
    src.write_text("")
    progress = io.StringIO()
    assert score_cli.score_file(src, dst, None, None, progress=progress)["lines"] == 0
    assert progress.getvalue() == "" and dst.read_text() == ""


def test_the_summary_line_and_the_unread_field_list():
    from collections import Counter

    from azr_jax.azr.score_cli import _summary, _unread_summary

    counts = {"lines": 5, "errors": 1, "groups": {
        "solve/deduction": {"n": 3, "valid": 2, "reward_sum": 0.5, "rewarded": 2},
        "propose/abduction": {"n": 1, "valid": 1, "reward_sum": 0.0, "rewarded": 0}}}
    # groups sorted by name; the mean is over the records that have a reward
    assert _summary(counts) == ("azr-jax score: 5 lines, 1 malformed; propose/abduction: 1 (1 valid, mean reward n/a); "
                                "solve/deduction: 3 (2 valid, mean reward +0.250)")
    # the ten most common fields are named, the rest counted
    unread = Counter({f"field{i:02d}": 20 - i for i in range(12)})
    said = _unread_summary(unread)
    assert said.count("'field") == 10 and "'field09' (11 records)" in said and said.endswith(", and 2 more")
    assert not _unread_summary(Counter({f"field{i:02d}": 1 for i in range(10)})).endswith("more")


@pytest.fixture
def stub_sandbox(monkeypatch):
    """The configs the stand-in sandbox was opened with, and the signal handlers main set."""
    from azr_jax import stopping

    seen = {"sandbox": [], "signals": []}

    class StubSandbox:
        plan = Plan(mode="bwrap", python=sys.executable, as_root=True)

        def __init__(self, cfg):
            seen["sandbox"].append(cfg)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr("azr_jax.sandbox.Sandbox", StubSandbox)
    def record(sig, handler):
        seen["signals"].append((sig, handler))
        return "the handler before"

    monkeypatch.setattr(stopping.signal, "signal", record)
    return seen


def test_cli_scores_a_runs_audit_file_under_the_runs_config(tmp_path, capsys, stub_sandbox):
    import signal

    from azr_jax import stopping
    from azr_jax.config import to_json

    (tmp_path / "rollouts").mkdir()
    (tmp_path / "config.json").write_text(to_json(load_config(None, ["sandbox.timeout_s=3"])))
    audit = tmp_path / "rollouts" / "step_2.jsonl"
    audit.write_text("")
    # an empty file: nothing to score, but not "no line is a record" (exit 0)
    assert cli.main(["score", "--in", str(audit), "--out", str(tmp_path / "o.jsonl")]) == 0
    assert [c.timeout_s for c in stub_sandbox["sandbox"]] == [3]
    assert f"using {tmp_path / 'config.json'} (the run's config" in capsys.readouterr().err
    # SIGTERM stops it as Ctrl-C does (while it scores; the handler before is put back after)
    assert stub_sandbox["signals"] == [(signal.SIGTERM, stopping.raise_interrupt),
                                       (signal.SIGTERM, "the handler before")]
    with pytest.raises(KeyboardInterrupt):
        stopping.raise_interrupt(signal.SIGTERM, None)
    assert cli.main(["score", "--in", str(audit), "--out", "-"]) == 2
    assert "score writes a JSONL file, not stdout" in capsys.readouterr().err
    # a broken run config is named as the run's; a broken --config as itself
    (tmp_path / "config.json").write_text("[1]")
    assert cli.main(["score", "--in", str(audit), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "the config of the run whose rollouts/ holds --in" in capsys.readouterr().err
    assert cli.main(["score", "--in", str(audit), "--out", str(tmp_path / "o.jsonl"), "--config",
                     str(tmp_path / "config.json")]) == 2
    assert "holds --in" not in capsys.readouterr().err
    # a bad --set over the built-in defaults (--in is no run's audit file) is not blamed on a run
    other = tmp_path / "other.jsonl"
    other.write_text("")
    assert cli.main(["score", "--in", str(other), "--out", str(tmp_path / "o.jsonl"), "--set",
                     "sandbox.workers=-1"]) == 2
    assert capsys.readouterr().err == ("azr-jax: error: config key 'sandbox.workers' must be >= 0 "
                                       "(0 = one per CPU core), got -1\n")


def test_cli_refuses_a_side_file_that_is_a_directory_before_the_sandbox(tmp_path, capsys, stub_sandbox):
    src = tmp_path / "in.jsonl"
    src.write_text("")
    (tmp_path / "out.jsonl.partial").mkdir()
    assert cli.main(["score", "--in", str(src), "--out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "out.jsonl.partial, which is not a regular file; remove it or give another --out" in err
    assert "scored so far" not in err and stub_sandbox["sandbox"] == []


def test_cli_refuses_a_side_file_it_cannot_write_before_the_sandbox(tmp_path, capsys, stub_sandbox, monkeypatch):
    # another user's .partial in a writable folder (simulated: root writes anywhere)
    import os

    src = tmp_path / "in.jsonl"
    src.write_text("")
    side = tmp_path / "out.jsonl.partial"
    side.write_text("")
    monkeypatch.setattr(os, "access", lambda path, mode, real=os.access: Path(path) != side and real(path, mode))
    assert cli.main(["score", "--in", str(src), "--out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "out.jsonl.partial, which is not writable; remove it or give another --out" in err
    assert "scored so far" not in err and stub_sandbox["sandbox"] == []


def test_a_bad_record_is_scored_invalid_unformatted_and_without_a_reward():
    cfg = load_config(None, OVERRIDES)
    out = score_records([{"id": "b", "role": "solve"}, "not a record"], cfg, sandbox=None)  # nothing to run
    assert out[0] == {"id": "b", "format_ok": False, "valid": False, "reason": "bad_record", "problem": None,
                      "accuracy": None, "reward": None, "error": "missing field 'task'"}
    assert out[1]["id"] is None and out[1]["format_ok"] is False and out[1]["reward"] is None


def test_the_configured_boundary_reward_scores_proposals_solved_always_or_never(sb):
    good = "```python\ndef f(a, k):\n    return sorted(a)[k]\n```\n```input\n[5, 3, 9], 2\n```"
    never = propose("deduction", good, solver_responses=[answer("```output\n3\n```")] * 2, rid="never")
    always = propose("deduction", good, solver_responses=[answer("```output\n9\n```")] * 2, rid="always")
    sometimes = propose("deduction", good, solver_responses=[answer("```output\n9\n```"), answer("```output\n3\n```")])
    paper = load_config(None, OVERRIDES + ["azr.boundary_reward=0.0"])
    out = score_records([never, always, sometimes], paper, sb)
    assert [(o["accuracy"], o["reward"]) for o in out] == [(0.0, 0.0), (1.0, 0.0), (0.5, 0.5)]


def test_the_same_deduction_answer_to_tasks_with_other_golds_is_judged_apart(cfg, sb):
    other = dict(TASK, input="[5, 3, 9], 0", output="3")
    out = score_records([solve("deduction", TASK, "```output\n9\n```", "a"), solve("deduction", other, "```output\n9\n```", "b")],
                        cfg, sb)
    assert [o["accuracy"] for o in out] == [1.0, 0.0]
