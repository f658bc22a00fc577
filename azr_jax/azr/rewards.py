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
"""

from __future__ import annotations

FORMAT_PENALTY = -1.0
WRONG_ANSWER_REWARD = -0.5


def solver_reward(answer_formatted: bool, accuracy: float) -> float:
    """Reward of one solver completion. `answer_formatted` is the R1 format check, and for
    induction also requires a code block in the answer (the reference counts its absence as a
    format failure)."""
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
