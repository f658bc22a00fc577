"""`score_records`: the one code path from completions to verdicts and rewards (DESIGN §3.3).

Both `azr-jax score` and the trainer call it. All sandbox work of a call is batched: one
`Sandbox.run` for every proposal's validation, then one `Sandbox.compare` plus one
`Sandbox.run` for every solver answer (solve records and the learnability rollouts of valid
proposals together), with identical checks run once.

Output record (one per input record, same order):
`{"id", "format_ok", "valid", "reason", "problem", "accuracy", "reward"}`; a record that does not
follow the schema gets `valid: false, reason: "bad_record", reward: null` and an `"error"`
message instead of stopping the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from azr_jax.azr import rewards
from azr_jax.azr.parsing import format_ok as check_format
from azr_jax.azr.validation import (
    ParsedProposal,
    SolverAnswer,
    failure_reason,
    job_accuracy,
    judge_proposal,
    parse_proposal,
    parse_solver_answer,
    proposal_job,
)

ROLES = ("propose", "solve")
TASKS = ("deduction", "abduction", "induction")
# Every field `record_error` and `score_records` read (docs/scoring.md): of a record, and of a task.
INPUT_FIELDS = ("id", "role", "task", "response", "problem", "solver_responses")
TASK_FIELDS = ("program", "imports", "input", "output", "inputs", "outputs", "message", "visible")


def _is_str_list(x) -> bool:
    return isinstance(x, list) and all(isinstance(s, str) for s in x)


def record_error(rec) -> str | None:
    """Why `rec` does not follow the input schema (None if it does)."""
    if not isinstance(rec, dict):
        return "record is not a JSON object"
    for key in ("id", "role", "task", "response"):
        if key not in rec:
            return f"missing field '{key}'"
    if rec["role"] not in ROLES:
        return f"role must be one of {list(ROLES)}, got {rec['role']!r}"
    if rec["task"] not in TASKS:
        return f"task must be one of {list(TASKS)}, got {rec['task']!r}"
    if not isinstance(rec["response"], str):
        return "field 'response' must be a string"
    sr = rec.get("solver_responses")
    if sr is not None and not _is_str_list(sr):
        return "field 'solver_responses' must be a list of strings"
    problem = rec.get("problem")
    if rec["role"] == "propose":
        if rec["task"] == "induction":
            if not isinstance(problem, dict) or not isinstance(problem.get("program"), str):
                return "an induction proposal needs 'problem': {'program': str, 'imports'?: [str]}"
            if problem.get("imports") is not None and not _is_str_list(problem["imports"]):
                return "field 'problem.imports' must be a list of strings"
        return None
    if not isinstance(problem, dict):
        return "a solve record needs a 'problem' object"
    if not isinstance(problem.get("program"), str):
        return "field 'problem.program' must be a string"
    if problem.get("imports") is not None and not _is_str_list(problem["imports"]):
        return "field 'problem.imports' must be a list of strings"
    if rec["task"] == "induction":
        for key in ("inputs", "outputs"):
            if not _is_str_list(problem.get(key)):
                return f"field 'problem.{key}' must be a list of strings"
        if len(problem["inputs"]) != len(problem["outputs"]) or not problem["inputs"]:
            return "'problem.inputs' and 'problem.outputs' must be non-empty and of equal length"
        visible = problem.get("visible")  # absent: the default half; null is no count (the solver crashed on it)
        if "visible" in problem and (not isinstance(visible, int) or isinstance(visible, bool) or not 0 <= visible <= len(problem["inputs"])):
            return "field 'problem.visible' must be an int between 0 and the number of pairs"
        return None
    for key in ("input", "output"):
        if not isinstance(problem.get(key), str):
            return f"field 'problem.{key}' must be a string"
    return None


def error_record(rec, message: str) -> dict:
    rid = rec.get("id") if isinstance(rec, dict) else None
    return {"id": rid, "format_ok": False, "valid": False, "reason": "bad_record", "problem": None,
            "accuracy": None, "reward": None, "error": message}


@dataclass
class _Pending:
    """One record on its way through the batch."""

    rec: dict
    format_ok: bool
    parsed: ParsedProposal | None = None
    reason: str | None = None
    problem: dict | None = None
    answers: list = field(default_factory=list)  # SolverAnswer per solver response / solve record


def _check_key(check: tuple) -> tuple:
    if check[0] == "compare":
        return check
    job = check[1]
    return ("job", job.program, tuple(job.calls), job.args_mode, tuple(job.expected or ()), job.repeats,
            job.calls_per_input)


def _run_checks(answers: list[SolverAnswer], sandbox) -> dict:
    """Accuracy of every distinct pending check, in one compare and one run call; None for a
    check whose job the sandbox itself failed to run (it was never judged)."""
    compares, jobs = {}, {}
    for a in answers:
        if a.check is None:
            continue
        key = _check_key(a.check)
        (compares if a.check[0] == "compare" else jobs).setdefault(key, a.check)
    results = {}
    if compares:
        verdicts = sandbox.compare([(c[1], c[2]) for c in compares.values()])
        results.update({k: 1.0 if v else 0.0 for k, v in zip(compares, verdicts)})
    if jobs:
        outcomes = sandbox.run([c[1] for c in jobs.values()])
        results.update({k: None if failure_reason(r) == "sandbox_error" else job_accuracy(r)
                        for k, r in zip(jobs, outcomes)})
    return results


def _accuracy(answer: SolverAnswer, results: dict) -> float | None:
    return 0.0 if answer.check is None else results[_check_key(answer.check)]


def score_records(records: list, cfg, sandbox) -> list[dict]:
    """Score completions (DESIGN §3.3 input records) with `sandbox` (an open `Sandbox`)."""
    azr = cfg.azr
    out: list[dict | None] = [None] * len(records)
    pending: list[tuple[int, _Pending]] = []
    for i, rec in enumerate(records):
        problem_err = record_error(rec)
        if problem_err:
            out[i] = error_record(rec, problem_err)
            continue
        p = _Pending(rec=rec, format_ok=check_format(rec["response"]))
        if rec["role"] == "propose":
            parsed = parse_proposal(rec["task"], rec["response"], rec.get("problem"), azr)
            if isinstance(parsed, str):
                p.reason = parsed
            else:
                p.parsed = parsed
        else:
            p.answers = [parse_solver_answer(rec["task"], rec["problem"], rec["response"], azr)]
        pending.append((i, p))

    # 1. validate every parsed proposal in one batch
    to_run = [p for _, p in pending if p.parsed is not None]
    if to_run:
        for p, result in zip(to_run, sandbox.run([proposal_job(p.parsed) for p in to_run])):
            p.reason, p.problem = judge_proposal(p.parsed, result, azr)
            if p.problem is not None:
                p.answers = [parse_solver_answer(p.rec["task"], p.problem, r, azr) for r in p.rec.get("solver_responses") or []]

    # 2. every solver answer (solve records + learnability rollouts) in one batch
    results = _run_checks([a for _, p in pending for a in p.answers], sandbox)

    for i, p in pending:
        rec = p.rec
        if rec["role"] == "solve":
            answer = p.answers[0]
            accuracy = _accuracy(answer, results)
            formatted = p.format_ok and (answer.found or rec["task"] != "induction")
            # An unchecked answer (`sandbox_error`) has no reward, unless its format already
            # fails: that -1 does not depend on the check.
            judged_or_penalised = accuracy is not None or not formatted
            reward = rewards.solver_reward(formatted, accuracy) if judged_or_penalised else None
            reason = answer.reason if accuracy is not None else "sandbox_error"
            out[i] = {"id": rec["id"], "format_ok": p.format_ok, "valid": answer.found, "reason": reason,
                      "problem": None, "accuracy": accuracy, "reward": reward}
        else:
            valid = p.problem is not None
            judged = [acc for acc in (_accuracy(a, results) for a in p.answers) if acc is not None]
            rate = rewards.mean_solve_rate(judged) if valid else None
            reason = p.reason if not valid else (None if p.format_ok else "bad_format")
            if valid and p.format_ok and p.answers and not judged:
                reason = "sandbox_error"  # rollouts given, none judged: the learnability is unknown
            reward = rewards.proposer_reward(valid, p.format_ok, rate, azr.boundary_reward)
            if reason == "sandbox_error" and p.format_ok:
                reward = None  # validation or rollouts unchecked; a format failure's -1 stands
            out[i] = {"id": rec["id"], "format_ok": p.format_ok, "valid": valid, "reason": reason, "problem": p.problem,
                      "accuracy": rate, "reward": reward}
    return out
