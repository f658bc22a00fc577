"""Every row of the reward table (AZR_SPEC §3)."""

import json

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


def test_task_answer_is_what_the_solver_must_produce():
    triplet = {"program": "def f(n):\n    return n % 2", "input": "7", "output": "1"}
    assert rewards.task_answer("deduction", triplet) == ["1"]
    assert rewards.task_answer("abduction", triplet) == ["7"]
    assert rewards.task_answer("induction", {"outputs": ["0", "1"]}) == ["0", "1"]
    with pytest.raises(ValueError, match="unknown task type"):
        rewards.task_answer("translation", triplet)


def test_answer_keys_by_value_and_by_type():
    assert rewards.answer_key(["[1,2]"], "value") == rewards.answer_key(["[1, 2]"], "value")  # canonical text
    assert rewards.answer_key(["[1, 2]"], "value") != rewards.answer_key(["[1, 3]"], "value")
    assert rewards.answer_key(["'1'"], "value") != rewards.answer_key(["1"], "value")  # a str is not an int
    assert rewards.answer_key(["[1, 2]"], "type") == rewards.answer_key(["[7]"], "type") == '["list"]'
    assert rewards.answer_key(["(1, 'a')"], "type") == '["tuple"]'
    # abduction inputs are argument lists: two arguments are not one tuple argument
    assert rewards.answer_key(["1, 'a'"], "type", arguments=True) == '["int, str"]'
    assert rewards.answer_key(["7"], "type", arguments=True) == '["int"]'  # as a deduction output 7
    assert rewards.answer_key(["1, 2"], "value", arguments=True) != rewards.answer_key(["(1, 2)"], "value", arguments=True)
    assert rewards.answer_key(["1, 2"], "value", arguments=True) != rewards.answer_key(["1, 3"], "value", arguments=True)
    assert rewards.answer_key(["1,2  # two"], "value", arguments=True) == rewards.answer_key(["1, 2"], "value", arguments=True)
    assert rewards.answer_key(["x=1"], "type", arguments=True) == '["other"]'
    assert rewards.answer_key(["1,"], "type", arguments=True) == '["int"]'  # f(1,): one argument
    assert rewards.answer_key(["[1, 2],\n"], "type", arguments=True) == '["list"]'
    # A comment after the trailing comma hides it from a plain text check.
    assert rewards.answer_key(["1, 'a',  # two"], "type", arguments=True) == '["int, str"]'
    assert rewards.answer_key(["1,  # one"], "value", arguments=True) == rewards.answer_key(["1"], "value", arguments=True)
    # one argument and a comment, without a trailing comma: still one int argument
    assert rewards.answer_key(["7  # seven"], "type", arguments=True) == '["int"]'
    assert rewards.answer_key(["7  # seven"], "value", arguments=True) == rewards.answer_key(["7"], "value", arguments=True)
    assert rewards.answer_key(["", "1,,", "  # only a comment"], "type", arguments=True) == '["other"]'
    assert rewards.answer_key(["x +"], "type") == '["other"]'  # not a literal: never evaluated
    assert rewards.answer_key(["1", "[2]", "3"], "type") == '["int", "list"]'  # induction outputs
    with pytest.raises(ValueError, match="level"):
        rewards.answer_key(["1"], "shape")


def test_answer_key_of_an_int_too_long_to_print(monkeypatch):
    """`0x` + 9990 `f`s stands for an int repr() refuses (over Python's int-str digit limit); its
    key raised ValueError, and with the diversity bonus on one such abduction input in a buffer
    crashed every later step. It is no literal, so its key is its text."""
    too_long = "0x" + "f" * 9990
    assert rewards.answer_key([too_long], "value") == json.dumps([too_long])
    assert rewards.answer_key([too_long], "type") == '["other"]'
    # A value repr() refuses is keyed by its text too, should the parser ever return one.
    monkeypatch.setattr(rewards, "parse_literal", lambda text, max_chars: 10 ** 5000)
    assert rewards.answer_key(["7"], "value") == '["7"]'


def test_answer_diversity_counts_history_and_the_batch_itself():
    # history 0, 1, 0; batch 0, [5]: p(0) = 3/5, p([5]) = 1/5
    assert rewards.answer_diversity(["0", "[5]"], ["0", "1", "0"]) == pytest.approx([0.4, 0.8])
    # a batch that repeats one answer is penalised even with an empty history
    assert rewards.answer_diversity(["0", "0"], []) == [0.0, 0.0]
    assert rewards.answer_diversity(["a", "b"], []) == [0.5, 0.5]


def test_diversity_bonus_is_clipped_at_its_max():
    assert rewards.diversity_bonus(0.8, 0.5, 0.5) == pytest.approx(0.4)
    assert rewards.diversity_bonus(0.8, 2.0, 0.5) == 0.5
    assert rewards.diversity_bonus(0.8, 0.0, 0.5) == 0.0


def test_answer_key_of_a_text_that_is_no_literal_ignores_its_layout():
    """An answer that is not a literal is keyed by its text with runs of whitespace made one space,
    so a re-indented or re-spaced copy of it counts as the same answer."""
    assert rewards.answer_key(["x  +\n 1"], "value") == rewards.answer_key(["x + 1"], "value") == '["x + 1"]'
    assert rewards.answer_key(["a  b"], "value", arguments=True) == '["a b"]'
    assert rewards.answer_key(["x +"], "value") != rewards.answer_key(["x -"], "value")
