"""The reward table (AZR_SPEC §3): one scalar per completion, placed on its last token by the trainer.

| role    | condition                                                 | reward            |
|---------|-----------------------------------------------------------|-------------------|
| solve   | format fails (or an induction answer has no code block)   | -1.0              |
| solve   | formatted, accuracy 0 (wrong, unparsable or empty answer) | -0.5              |
| solve   | formatted, accuracy > 0                                   | accuracy          |
| propose | invalid task, or format fails                             | -1.0              |
| propose | valid and formatted, solve rate 0 or 1 (no signal)        | `boundary_reward` |
| propose | valid and formatted, solve rate in (0, 1)                 | 1 - solve rate    |
| propose | valid and formatted, no solver rollouts given             | None (no reward)  |

`boundary_reward` is 0.0 in the paper (Eq. 4) and -0.5 in the reference code (GitHub issue #37).

Optional (off by default, as in the reference): a positive proposer reward gains an answer-diversity
bonus `min(coef * (1 - p(answer)), max)` (AZR_SPEC §3.4), `answer_diversity` below.
"""

from __future__ import annotations

from collections import Counter
import json

from azr_jax.sandbox.literals import parse_literal

FORMAT_PENALTY = -1.0
WRONG_ANSWER_REWARD = -0.5


def solver_reward(answer_formatted: bool, accuracy: float | None) -> float:
    """Reward of one solver completion. `answer_formatted` is the R1 format check, and for
    induction also requires a code block in the answer (the reference counts its absence as a
    format failure). `accuracy` is None for an answer the sandbox did not check, which has a
    reward only when its format fails."""
    if not answer_formatted:
        return FORMAT_PENALTY
    if accuracy <= 0.0:
        return WRONG_ANSWER_REWARD
    return float(accuracy)


def mean_solve_rate(accuracies: list[float]) -> float | None:
    """Mean solver accuracy over the N learnability rollouts; None without rollouts."""
    if not accuracies:
        return None
    return float(sum(accuracies)) / len(accuracies)


def judged_solve_rate(rollouts: list[dict]) -> float | None:
    """Mean accuracy of scored solver rollouts, over those the sandbox judged: a rollout scored
    `reason: sandbox_error` was never checked, so it counts neither as right nor as wrong.
    None when no rollout was judged."""
    return mean_solve_rate([float(r["accuracy"] or 0.0) for r in rollouts if r.get("reason") != "sandbox_error"])


def learnability(solve_rate: float, boundary_reward: float) -> float:
    """`1 - r` for a task solved sometimes; `boundary_reward` when solved always or never."""
    if solve_rate <= 0.0 or solve_rate >= 1.0:
        return float(boundary_reward)
    return 1.0 - solve_rate


def proposer_reward(valid: bool, format_ok: bool, solve_rate: float | None, boundary_reward: float) -> float | None:
    """Reward of one proposer completion (None when a valid task has no rollouts to judge it by)."""
    if not (valid and format_ok):
        return FORMAT_PENALTY
    if solve_rate is None:
        return None
    return learnability(solve_rate, boundary_reward)


def task_answer(task: str, problem: dict) -> list[str]:
    """What the solver of `problem` must produce, as value texts: the output (deduction), the
    input (abduction), or all the outputs (induction: the behaviour to synthesise)."""
    if task == "deduction":
        return [problem["output"]]
    if task == "abduction":
        return [problem["input"]]
    if task == "induction":
        return list(problem["outputs"])
    raise ValueError(f"unknown task type {task!r}")


def answer_key(texts: list[str], level: str, *, arguments: bool = False) -> str:
    """The key answers are counted by. `value`: the canonical texts (the reference's flat table);
    `type`: the Python type names of the values (int, list, str, ...; `other` for a text that is
    not a literal), so that the bonus tracks which kinds of answers dominate the buffer.
    `arguments`: each text is an argument list (an abduction input), keyed by its arguments
    (`1, 2` is two ints, not the tuple `(1, 2)`, one argument)."""
    keys = []
    for text in texts:
        try:
            if arguments:
                args = _argument_tuple(text)
                keys.append(", ".join(type(a).__name__ for a in args) if level == "type" else repr(args))
            else:
                value = parse_literal(text, max_chars=10_000)
                keys.append(type(value).__name__ if level == "type" else repr(value))
        except ValueError:  # NotALiteral, or a value repr() refuses (an int over the digit limit)
            keys.append("other" if level == "type" else " ".join(text.split()))
    if level == "type":
        keys = sorted(set(keys))
    elif level != "value":
        raise ValueError(f"unknown answer-diversity level {level!r}")
    return json.dumps(keys)


def _argument_tuple(args_text: str) -> tuple:
    """The arguments of `f(<args_text>)` as a tuple. The newlines keep a trailing comment off the
    closing parenthesis. The wrapper's own comma makes `1` the tuple `(1,)`; an argument list that
    already ends with a comma (`1,` as in `f(1,)`, maybe followed by a comment, `1,  # one`) is
    then a double comma, so it is read without the wrapper's."""
    try:
        return parse_literal(f"(\n{args_text}\n,)", max_chars=10_000)
    except ValueError:
        args = parse_literal(f"(\n{args_text}\n)", max_chars=10_000)
        if not isinstance(args, tuple) or not args:  # "" or only a comment
            raise ValueError("not an argument list") from None
        return args


def answer_diversity(answers: list[str], history: list[str]) -> list[float]:
    """`1 - p(answer)` for each of `answers`, p = its share of `history + answers` (the buffer's
    answers plus this batch's, so a batch repeating one answer is penalised at once)."""
    counts = Counter(history) + Counter(answers)
    total = len(history) + len(answers)
    return [1.0 - counts[a] / total for a in answers]


def diversity_bonus(diversity: float, coef: float, cap: float) -> float:
    """The reference's clipped intrinsic term: `min(coef * value, max)`."""
    return min(coef * diversity, cap)
