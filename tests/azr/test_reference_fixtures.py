"""Fidelity: `score_records` against the reference's verdicts on 150 hand-made cases.

Untagged rows must agree with the reference on `valid`, `format_ok`, the gold output(s) (as
Python values), `accuracy` and `reward` (with `boundary_reward=-0.5`, as the reference). Rows
with a `ref_quirk` tag are checked against OUR documented behaviour (docs/deviations.md): the
table below says, per quirk code, whether we match the reference or what we do instead.
"""

import ast
import json
from pathlib import Path

import pytest

from azr_jax.azr.scoring import score_records
from azr_jax.config import load_config
from azr_jax.sandbox import Sandbox

FIXTURES = Path(__file__).parent.parent / "fixtures" / "reference_scoring"
FIELDS = ("valid", "format_ok", "accuracy", "reward")

INVALID = {"valid": False, "problem": None, "accuracy": None, "reward": -1.0}
ZERO = {"accuracy": 0.0, "reward": -0.5}

# quirk code -> (what we do, field overrides applied to the reference's row; None = same as reference)
QUIRKS = {
    "boundary_reward": ("match: a config choice, and the test runs with boundary_reward=-0.5", None),
    "kwargs_input": ("match: keyword arguments with literal values are accepted", None),
    "gold_imports_prepended": ("match: induction answers run with the task's imports prepended", None),
    "banned_word_outside_import": ("match: comments and identifiers are not module uses", None),
    "dotted_banned_word": ("deviate: dotted entries are resolved through imports/attributes and refused",
                           {**INVALID, "reason": "banned_import"}),
    "import_call_bypass": ("deviate: __import__ and importlib are refused statically", {**INVALID}),
    "empty_gold_exception": ("deviate: any exception (StopIteration, SystemExit, ...) makes the task invalid",
                             {**INVALID}),
    "empty_gold_nondeterminism": ("deviate: a determinism failure makes the task invalid", {**INVALID}),
    "nondeterminism_undetected": ("deviate: repeats run in fresh processes with different hash seeds and "
                                  "address layouts, which exposes these", {**INVALID, "reason": "nondeterministic"}),
    "truncated_gold": ("deviate: the gold output is never truncated (max_output_chars=0)", None),
    "code_block_order": ("deviate: the code block is the first ```python``` (or untagged) block, wherever it is",
                         {"valid": True, "reason": None, "accuracy": None, "reward": None}),
    "second_def_rejected": ("deviate: reject_multiple_functions counts top-level functions only",
                            {"valid": True, "reason": None, "accuracy": None, "reward": None}),
    "input_substring_ban": ("deviate: only a real call of the builtin input() is refused", None),
    "answer_expression_eval": ("deviate: answers must be literals, never evaluated", ZERO),
    "always_equal_hack": ("deviate: outputs are compared as plain values; custom __eq__ cannot exist", ZERO),
    "solver_ban_not_checked": ("deviate: solver code passes the same AST policy", {**ZERO, "reason": "banned_import"}),
}

# Per-row results where the reference has no value to override (it called these tasks invalid).
ROWS = {
    "pd-0081": {"gold": "11.0469"},
    "pa-0081": {"gold": "True"},
    "pa-0100": {"gold": "9"},
    "pd-0101": {"gold": "[2, 4, 6]"},
    "pa-0127": {"valid": True, "reason": None, "gold": "['x']", "accuracy": None, "reward": None},
    "pd-0128": {"valid": True, "reason": None, "gold": "'hi'", "accuracy": 0.0, "reward": -0.5},
    "pa-0128": {"valid": True, "reason": None, "gold": "1", "accuracy": 1.0, "reward": -0.5},
    "pf-0065": {"valid": True, "reason": None, "accuracy": None, "reward": None},
}


# Programs whose result follows object addresses (a set of instances): two processes lay the
# heap out differently in almost every run, but not in every one (ASLR moves whole pages, not
# the offsets within them), so here the verdict is `nondeterministic` or, rarely, the reference's.
ADDRESS_DEPENDENT = {"pd-0123", "pa-0123"}


def value(text):
    return ast.literal_eval(text)  # test-only: fixture texts and sandbox reprs


def golds(problem):
    if problem is None:
        return None
    return [problem["output"]] if "output" in problem else list(problem["outputs"])


RAW_FAILURES: list = []  # (program, job error, per-call errors) of every sandbox job that did not succeed


@pytest.fixture(scope="module")
def scored():
    cfg = load_config(None, ["azr.boundary_reward=-0.5", "azr.reject_multiple_functions=true", "sandbox.timeout_s=4"])
    records = [json.loads(line) for line in (FIXTURES / "input.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (FIXTURES / "expected.jsonl").read_text().splitlines()]
    with Sandbox(cfg.sandbox) as sb:
        run = sb.run

        def recording_run(jobs):
            results = run(jobs)
            RAW_FAILURES.extend((j.program, r.error, r.errors) for j, r in zip(jobs, results) if not r.ok)
            return results

        sb.run = recording_run
        out = score_records(records, cfg, sb)
    return list(zip(records, expected, out))


def raw(rec) -> list:
    """The sandbox's own errors for the jobs of this row (assertion messages only: says WHY a row failed)."""
    text = (rec.get("response") or "") + ((rec.get("problem") or {}).get("program") or "")  # induction: given program
    return [(err, sorted(set(map(str, errs)))) for prog, err, errs in RAW_FAILURES
            if prog.strip().splitlines()[-1].strip() in text]


def test_every_row_answered_in_order(scored):
    assert len(scored) == 150
    assert [o["id"] for _, _, o in scored] == [e["id"] for _, e, _ in scored]
    for _, _, o in scored:
        assert set(o) == {"id", "format_ok", "valid", "reason", "problem", "accuracy", "reward"}


def test_untagged_rows_agree_with_reference(scored):
    agree = 0
    untagged = [(r, e, o) for r, e, o in scored if not e.get("ref_quirk")]
    for r, e, o in untagged:
        for f in FIELDS:
            assert o[f] == e[f], (e["id"], f, o[f], e[f], o.get("reason"), raw(r))
        if e["role"] == "propose":
            assert (o["problem"] is None) == (e["problem"] is None), e["id"]
            if e["problem"] is not None:
                assert [value(g) for g in golds(o["problem"])] == [value(g) for g in golds(e["problem"])], e["id"]
                assert o["problem"]["program"] == e["problem"]["program"], e["id"]
                assert o["problem"]["imports"] == e["problem"]["imports"], e["id"]
        agree += 1
    assert agree == len(untagged) == 101
    print(f"\nreference fixtures: {agree}/{len(untagged)} untagged rows agree")


def test_quirk_rows_follow_documented_behaviour(scored):
    tagged = [(r, e, o) for r, e, o in scored if e.get("ref_quirk")]
    exact = 0
    for rec, e, o in tagged:
        if e["id"] in ADDRESS_DEPENDENT and o["reason"] != "nondeterministic":
            assert all(o[f] == e[f] for f in FIELDS), (e["id"], o, raw(rec))
            continue
        codes = e["ref_quirk"].split(",")
        assert all(c in QUIRKS for c in codes), e["ref_quirk"]
        want = {f: e[f] for f in FIELDS}
        want_gold = golds(e["problem"])
        for code in codes:
            override = QUIRKS[code][1]
            if override:
                want.update({k: v for k, v in override.items() if k in FIELDS})
                if "problem" in override:
                    want_gold = None
                if "reason" in override:
                    assert o["reason"] == override["reason"], e["id"]
        row = ROWS.get(e["id"], {})
        want.update({k: v for k, v in row.items() if k in FIELDS})
        if "gold" in row:
            want_gold = [row["gold"]]
        for f in FIELDS:
            assert o[f] == want[f], (e["id"], f, o[f], want[f], o.get("reason"), raw(rec))
        if "truncated_gold" in codes:
            # the full repr: the reference's text is its first 200 chars + '...' + its last 200
            full = golds(o["problem"])
            ref = golds(e["problem"])
            for ours, theirs in zip(full, ref):
                if len(ours) > 400:
                    assert theirs == ours[:200] + "..." + ours[-200:], e["id"]
                else:
                    assert ours == theirs
            value(full[-1])  # parses as a value
        elif want["valid"] and e["role"] == "propose" and want_gold is not None:
            assert [value(g) for g in golds(o["problem"])] == [value(g) for g in want_gold], e["id"]
        elif not want["valid"]:
            assert o["problem"] is None
        exact += all(o[f] == e[f] for f in FIELDS)
    print(f"reference fixtures: {len(tagged)} quirk rows follow the documented table ({exact} also equal the reference)")


def test_quirk_table_matches_docs():
    doc = (Path(__file__).parents[2] / "docs" / "deviations.md").read_text()
    for code in QUIRKS:
        assert f"`{code}`" in doc, code
