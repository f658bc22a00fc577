"""Every row of the reward table (AZR_SPEC §3)."""

import pytest

from azr_jax.azr import rewards


@pytest.mark.parametrize(
    "formatted, accuracy, expected",
    [
        (False, 1.0, -1.0),  # format fails: -1 even when right
        (False, 0.0, -1.0),
        (True, 0.0, -0.5),  # formatted but wrong
        (True, 1.0, 1.0),  # formatted and right: the accuracy
        (True, 0.4, 0.4),
    ],
)
def test_solver_reward(formatted, accuracy, expected):
    assert rewards.solver_reward(formatted, accuracy) == expected


@pytest.mark.parametrize(
    "valid, fmt, rate, boundary, expected",
    [
        (False, True, 0.5, -0.5, -1.0),  # invalid task
        (True, False, 0.5, -0.5, -1.0),  # valid task, broken format
        (True, True, 3 / 8, -0.5, 0.625),  # learnability 1 - r
        (True, True, 1.0, -0.5, -0.5),  # always solved: boundary (reference)
        (True, True, 0.0, -0.5, -0.5),  # never solved: boundary (reference)
        (True, True, 1.0, 0.0, 0.0),  # paper's boundary value
        (True, True, 0.0, 0.0, 0.0),
        (True, True, None, -0.5, None),  # no rollouts: no reward
    ],
)
def test_proposer_reward(valid, fmt, rate, boundary, expected):
    assert rewards.proposer_reward(valid, fmt, rate, boundary) == expected


def test_mean_solve_rate():
    assert rewards.mean_solve_rate([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]) == 3 / 8
    assert rewards.mean_solve_rate([]) is None


def test_judged_solve_rate_ignores_rollouts_the_sandbox_did_not_judge():
    broke = {"accuracy": 0.0, "reason": "sandbox_error"}
    rollouts = [{"accuracy": 1.0, "reason": None}, {"accuracy": None, "reason": "wrong_answer"}, broke, broke]
    assert rewards.judged_solve_rate(rollouts) == 0.5  # 1 right of 2 judged, not 1 of 4
    assert rewards.judged_solve_rate([broke, broke]) is None
    assert rewards.judged_solve_rate([{"accuracy": 1.0}]) == 1.0
