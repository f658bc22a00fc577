"""Advantage estimators: TRR++ against the reference fixture, the others on hand-computed cases."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from azr_jax.config import RLSection
from azr_jax.rl import advantages as adv

FIXTURE = Path(__file__).parent.parent / "fixtures" / "trrpp" / "trrpp_cases.json"
CASES = json.loads(FIXTURE.read_text())["cases"]


def _case_arrays(case):
    seqs = case["sequences"]
    max_len = case["max_len"]
    lengths = np.array([s["length"] for s in seqs])
    mask_bt = (np.arange(max_len)[None, :] < lengths[:, None]).astype(np.float32)
    rewards_b = np.array([s["reward"] for s in seqs], np.float32)
    group_ids_b = np.array([adv.trrpp_group_id(s["role"], s["task"]) for s in seqs], np.int32)
    return rewards_b, mask_bt, group_ids_b


@pytest.mark.parametrize("case_index", range(len(CASES)))
@pytest.mark.parametrize("whiten_stats,key", [("token", "adv_token_weighted"), ("sequence", "adv_per_sequence")])
def test_trrpp_matches_reference_fixture(case_index, whiten_stats, key):
    case = CASES[case_index]
    rewards_b, mask_bt, group_ids_b = _case_arrays(case)
    # Shuffle rows so groups are interleaved: the grouping must come from the ids, not the order.
    perm = np.random.default_rng(case_index).permutation(len(rewards_b))
    fn = jax.jit(adv.trr_plus_plus, static_argnames=("num_groups", "whiten_stats"))
    got_bt = np.asarray(
        fn(rewards_b[perm], mask_bt[perm], group_ids_b[perm], num_groups=adv.NUM_TRRPP_GROUPS, whiten_stats=whiten_stats)
    )
    expected_b = np.array([s[key] for s in case["sequences"]])[perm]
    np.testing.assert_allclose(got_bt, expected_b[:, None] * mask_bt[perm], rtol=0, atol=1e-6)


def test_trrpp_fixture_has_the_documented_edge_cases():
    # Case 0 holds an all-equal group (advantage 0); the token and sequence variants differ.
    rewards_b, mask_bt, group_ids_b = _case_arrays(CASES[0])
    got_bt = np.asarray(adv.trr_plus_plus(rewards_b, mask_bt, group_ids_b, num_groups=6))
    deduction = group_ids_b == adv.trrpp_group_id("propose", "deduction")
    assert np.all(rewards_b[deduction] == rewards_b[deduction][0])
    assert np.all(got_bt[deduction] == 0.0)
    seq_bt = np.asarray(adv.trr_plus_plus(rewards_b, mask_bt, group_ids_b, num_groups=6, whiten_stats="sequence"))
    assert np.max(np.abs(seq_bt - got_bt)) > 0.1


def test_trrpp_token_stats_by_hand():
    # One group, lengths 1 and 3, rewards 1 and 0: N = 4 tokens, mu = 1/4,
    # var = (1 * 9/16 + 3 * 1/16) / 4 * 4/3 = 1/4, so A = (R - 1/4) / (1/2).
    mask_bt = np.array([[1, 0, 0], [1, 1, 1]], np.float32)
    got_bt = np.asarray(adv.trr_plus_plus(np.array([1.0, 0.0]), mask_bt, np.array([0, 0]), num_groups=1))
    np.testing.assert_allclose(got_bt, [[1.5, 0, 0], [-0.5, -0.5, -0.5]], atol=1e-6)
    # Per-sequence statistics: mu = 1/2, population std 1/2 -> +-1.
    got_bt = np.asarray(
        adv.trr_plus_plus(np.array([1.0, 0.0]), mask_bt, np.array([0, 0]), num_groups=1, whiten_stats="sequence")
    )
    np.testing.assert_allclose(got_bt, [[1.0, 0, 0], [-1.0, -1.0, -1.0]], atol=1e-6)


def test_trrpp_groups_are_independent():
    # Two groups with the same relative rewards give the same advantages whatever their offsets.
    mask_bt = np.ones((4, 2), np.float32)
    got_bt = np.asarray(adv.trr_plus_plus(np.array([0.0, 1.0, 10.0, 11.0]), mask_bt, np.array([0, 0, 1, 1]), num_groups=2))
    np.testing.assert_allclose(got_bt[:2], got_bt[2:], atol=1e-6)
    assert got_bt[0, 0] < 0 < got_bt[1, 0]


@pytest.mark.parametrize("name, opts", [("trr++", {"whiten_stats": "token"}), ("trr++", {"whiten_stats": "sequence"}),
                                        ("reinforce++", {}), ("grpo", {}), ("rloo", {})])
def test_rows_without_loss_tokens_leave_the_group_statistics_alone(name, opts):
    # How the trainer leaves a row out (a sandbox_error verdict, or an empty row padding a
    # micro-batch): its loss mask is zeroed. The other rows' advantages must be those of the
    # group without it, whatever its reward.
    estimator = adv.REGISTRY[name]
    mask_bt = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], np.float32)
    kept = np.asarray(estimator(np.array([1.0, 0.0, 0.5]), mask_bt, np.zeros(3, np.int32), num_groups=1, **opts))
    left_out = np.concatenate([mask_bt, np.zeros((1, 3), np.float32)])
    for reward in (-1.0, 7.0):
        got = np.asarray(estimator(np.array([1.0, 0.0, 0.5, reward]), left_out, np.zeros(4, np.int32),
                                   num_groups=1, **opts))
        np.testing.assert_allclose(got[:3], kept, atol=1e-6)
        np.testing.assert_array_equal(got[3], 0.0)


def test_single_token_group_has_zero_advantage():
    got_bt = np.asarray(adv.trr_plus_plus(np.array([3.0]), np.array([[1.0, 0.0]]), np.array([0]), num_groups=1))
    np.testing.assert_array_equal(got_bt, [[0.0, 0.0]])


@pytest.mark.parametrize("name", sorted(adv.REGISTRY))
def test_all_equal_rewards_give_zero(name):
    mask_bt = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]], np.float32)
    got_bt = np.asarray(adv.REGISTRY[name](np.full(4, 0.7), mask_bt, np.array([0, 0, 1, 1])))
    np.testing.assert_allclose(got_bt, 0.0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(adv.REGISTRY))
@pytest.mark.parametrize("reward", [0.1, 0.3, 0.7, 1.0 / 3.0])
def test_equal_inexact_rewards_give_exactly_zero(name, reward):
    # Float32 rewards that are not exact (a diversity bonus) once left ~1e-8 after centring,
    # which the whitening's rsqrt(var + 1e-8) scaled up to a ~1e-4 advantage.
    # Groups of 3, 2, 7 and 10 rows: the rounding of the mean cancels in some sizes, not in others
    # (GRPO once gave |A| = 0.056 for seven rows of 0.7).
    sizes = [3, 2, 7, 10]
    groups = np.repeat(np.arange(len(sizes)), sizes)
    mask_bt = (np.arange(4)[None, :] < 1 + np.arange(groups.size)[:, None] % 4).astype(np.float32)
    for whiten in ({"whiten_stats": "token"}, {"whiten_stats": "sequence"}) if name in ("trr++", "reinforce++") else ({},):
        rewards_b = np.full(groups.size, reward, np.float32)
        got_bt = np.asarray(adv.REGISTRY[name](rewards_b, mask_bt, groups, num_groups=len(sizes), **whiten))
        np.testing.assert_array_equal(got_bt, 0.0)


@pytest.mark.parametrize("name", sorted(adv.REGISTRY))
def test_a_group_of_rows_without_loss_tokens_gets_zero_not_nan(name):
    # rows 2-3 (group 1) have no response token (unjudged or padding): 0/0 statistics must not
    # make their advantages NaN, which would turn the whole loss NaN and skip the step
    mask_bt = np.array([[1, 1], [1, 0], [0, 0], [0, 0]], np.float32)
    got_bt = np.asarray(adv.REGISTRY[name](np.array([1.0, 0.0, 0.5, 0.2]), mask_bt, np.array([0, 0, 1, 1]), num_groups=6))
    assert np.all(np.isfinite(got_bt))
    np.testing.assert_array_equal(got_bt[2:], 0.0)


@pytest.mark.parametrize("name", sorted(adv.REGISTRY))
def test_a_row_without_loss_tokens_does_not_break_an_equal_reward_group(name):
    # seven rows of 0.7 and two empty rows with rewards 0 and 1 (padding) in one group: still exactly 0
    mask_bt = np.ones((9, 3), np.float32)
    mask_bt[7:] = 0
    rewards_b = np.array([0.7] * 7 + [0.0, 1.0], np.float32)
    for whiten in ({"whiten_stats": "token"}, {"whiten_stats": "sequence"}) if name in ("trr++", "reinforce++") else ({},):
        got_bt = np.asarray(adv.REGISTRY[name](rewards_b, mask_bt, np.zeros(9, np.int32), num_groups=1, **whiten))
        np.testing.assert_array_equal(got_bt, 0.0)


def test_reinforce_plus_plus_ignores_groups():
    mask_bt = np.ones((4, 2), np.float32)
    rewards_b = np.array([0.0, 1.0, 10.0, 11.0])
    got_bt = np.asarray(adv.reinforce_plus_plus(rewards_b, mask_bt, np.array([0, 0, 1, 1])))
    pooled_bt = np.asarray(adv.trr_plus_plus(rewards_b, mask_bt, np.zeros(4, np.int32), num_groups=1))
    np.testing.assert_allclose(got_bt, pooled_bt, atol=1e-6)


def test_grpo_per_prompt_groups_by_hand():
    # Prompt 0: rewards 1, 0, 0 -> mean 1/3, unbiased std sqrt(1/3).  Prompt 1: 2, 4 -> mean 3, std sqrt(2).
    rewards_b = np.array([1.0, 2.0, 0.0, 4.0, 0.0])
    group_ids_b = np.array([0, 1, 0, 1, 0])
    mask_bt = np.array([[1, 1], [1, 0], [1, 1], [1, 1], [0, 1]], np.float32)
    got_bt = np.asarray(adv.grpo(rewards_b, mask_bt, group_ids_b))
    s0, s1 = np.sqrt(1 / 3), np.sqrt(2.0)
    expected_b = np.array([(2 / 3) / s0, -1 / s1, (-1 / 3) / s0, 1 / s1, (-1 / 3) / s0]) * (1 - 1e-6)
    np.testing.assert_allclose(got_bt, expected_b[:, None] * mask_bt, rtol=1e-5)
    got_bt = np.asarray(adv.grpo(rewards_b, mask_bt, group_ids_b, normalize_by_std=False))
    np.testing.assert_allclose(got_bt[:, :1], [[2 / 3], [-1], [-1 / 3], [1], [0]], atol=1e-6)


def test_grpo_singleton_group_uses_raw_reward():
    got_bt = np.asarray(adv.grpo(np.array([0.5, 1.0, 0.0]), np.ones((3, 1)), np.array([2, 0, 0])))
    np.testing.assert_allclose(got_bt[0, 0], 0.5 / (1 + 1e-6), rtol=1e-6)


def test_rloo_leave_one_out_by_hand():
    # Group 0: rewards 1, 0, 2 -> baselines (0+2)/2, (1+2)/2, (1+0)/2.  Group 1: 5, 3 -> 2, -2.
    rewards_b = np.array([1.0, 5.0, 0.0, 3.0, 2.0])
    group_ids_b = np.array([0, 1, 0, 1, 0])
    mask_bt = np.array([[1, 0], [1, 1], [1, 1], [0, 1], [1, 1]], np.float32)
    got_bt = np.asarray(jax.jit(adv.rloo)(rewards_b, mask_bt, group_ids_b))
    expected_b = np.array([1 - 1, 5 - 3, 0 - 1.5, 3 - 5, 2 - 0.5])
    np.testing.assert_allclose(got_bt, expected_b[:, None] * mask_bt, atol=1e-6)


def test_compute_advantages_reads_config():
    mask_bt = np.array([[1, 0, 0], [1, 1, 1]], np.float32)
    rewards_b, group_ids_b = np.array([1.0, 0.0]), np.array([0, 0])
    token_bt = adv.compute_advantages(RLSection(), rewards_b, mask_bt, group_ids_b, num_groups=1)
    seq_bt = adv.compute_advantages(RLSection(whiten_stats="sequence"), rewards_b, mask_bt, group_ids_b, num_groups=1)
    rloo_bt = adv.compute_advantages(RLSection(estimator="rloo"), rewards_b, mask_bt, group_ids_b, num_groups=1)
    np.testing.assert_allclose(token_bt[0, 0], 1.5, atol=1e-6)
    np.testing.assert_allclose(seq_bt[0, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(rloo_bt[0, 0], 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        adv.compute_advantages(RLSection(estimator="ppo-gae"), rewards_b, mask_bt, group_ids_b)


def test_group_id_table():
    ids = {adv.trrpp_group_id(r, t) for r in adv.ROLES for t in adv.TASKS}
    assert ids == set(range(adv.NUM_TRRPP_GROUPS))
    with pytest.raises(ValueError):
        adv.trrpp_group_id("solve", "error")


def test_update_group_ids_one_sample_per_prompt_are_the_role_task_pairs():
    layout = [("propose", "deduction", 3, 1, 4), ("solve", "deduction", 2, 1, 2)]
    for estimator in ("trr++", "grpo", "rloo"):
        assert adv.update_group_ids(layout, estimator) == [1, 1, 1, 1, 4, 4]


def test_update_group_ids_per_prompt_only_for_per_prompt_estimators():
    # solve/abduction: 2 prompts x 3 samples, filled to 8 rows; propose/induction: 2 rows
    layout = [("solve", "abduction", 6, 3, 8), ("propose", "induction", 2, 1, 2)]
    assert adv.update_group_ids(layout, "trr++") == [3] * 8 + [2, 2]
    got = adv.update_group_ids(layout, "grpo")
    assert got == [6, 6, 6, 7, 7, 7, 7, 7, 2, 2]
    assert max(got) < adv.NUM_TRRPP_GROUPS + len(got)


def test_grpo_per_prompt_groups_from_the_update_layout():
    """A prompt whose samples all earn the same reward gets no advantage even when the other
    prompt of its batch differs: the baseline is the prompt's own (per (role, task) it would not be)."""
    layout = [("solve", "deduction", 4, 2, 4)]
    rewards_b = np.array([1.0, 1.0, 1.0, 0.0], np.float32)
    mask_bt = np.ones((4, 2), np.float32)
    groups_b = np.array(adv.update_group_ids(layout, "grpo"))
    per_prompt = adv.compute_advantages(RLSection(estimator="grpo"), rewards_b, mask_bt, groups_b,
                                        num_groups=adv.NUM_TRRPP_GROUPS + 4)
    np.testing.assert_array_equal(per_prompt[:2], 0.0)
    assert per_prompt[2, 0] > 0 > per_prompt[3, 0]
    per_task = adv.compute_advantages(RLSection(), rewards_b, mask_bt,
                                      np.array(adv.update_group_ids(layout, "trr++")), num_groups=6)
    assert per_task[0, 0] > 0


@pytest.mark.parametrize("whiten_stats, want", [("token", 1.5), ("sequence", 1.0)])
def test_reinforce_plus_plus_honours_whiten_stats_directly_and_from_the_config(whiten_stats, want):
    # One batch-wide group whatever the ids (two singleton groups here, which trr++ would zero):
    # lengths 1 and 3, rewards 1 and 0, the numbers of test_trrpp_token_stats_by_hand.
    mask_bt = np.array([[1, 0, 0], [1, 1, 1]], np.float32)
    rewards_b, group_ids_b = np.array([1.0, 0.0]), np.array([0, 1])
    direct = np.asarray(adv.reinforce_plus_plus(rewards_b, mask_bt, group_ids_b, whiten_stats=whiten_stats))
    cfg = RLSection(estimator="reinforce++", whiten_stats=whiten_stats)
    via_cfg = np.asarray(adv.compute_advantages(cfg, rewards_b, mask_bt, group_ids_b, num_groups=2))
    for got in (direct, via_cfg):
        np.testing.assert_allclose(got[0, 0], want, atol=1e-6)


def test_rloo_singleton_group_uses_raw_reward():
    # Row 0 alone in group 2; rows 3-4 are a prompt left with one judged row (row 4 unjudged).
    rewards_b = np.array([0.5, 1.0, 0.0, -0.25, 7.0])
    mask_bt = np.array([[1, 1], [1, 1], [1, 0], [1, 1], [0, 0]], np.float32)
    got_bt = np.asarray(adv.rloo(rewards_b, mask_bt, np.array([2, 0, 0, 3, 3])))
    np.testing.assert_allclose(got_bt, np.array([0.5, 1.0, -1.0, -0.25, 0.0])[:, None] * mask_bt, atol=1e-6)


def test_grpo_epsilon_is_added_to_the_std():
    # verl: (R - mean) / (std + 1e-6). Rewards 2e-6 apart: std = sqrt(2) * 1e-6, so the epsilon
    # is of the std's size, A = +-1 / (sqrt(2) + 1); 1e-8, or the epsilon under the root, read otherwise.
    got_bt = np.asarray(adv.grpo(np.array([0.0, 2e-6], np.float32), np.ones((2, 1), np.float32), np.array([0, 0])))
    np.testing.assert_allclose(got_bt[:, 0], [-1 / (np.sqrt(2) + 1), 1 / (np.sqrt(2) + 1)], rtol=1e-4)


@pytest.mark.parametrize("whiten_stats", ["token", "sequence"])
def test_whitening_epsilon_is_added_under_the_root(whiten_stats):
    # verl's masked_whiten: (R - mu) * rsqrt(var + 1e-8). Rewards 1e-4 apart (one token each):
    # var is 5e-9 over tokens (Bessel) and 2.5e-9 over sequences, of the epsilon's size.
    rewards_b = np.array([0.0, 1e-4], np.float32)
    got_bt = np.asarray(adv.trr_plus_plus(rewards_b, np.ones((2, 1), np.float32), np.array([0, 0]), num_groups=1,
                                          whiten_stats=whiten_stats))
    r = rewards_b.astype(np.float64)
    var = r.var(ddof=1 if whiten_stats == "token" else 0)
    np.testing.assert_allclose(got_bt[:, 0], (r - r.mean()) / np.sqrt(var + 1e-8), rtol=1e-3)


def test_update_group_ids_a_partly_sampled_last_prompt_gets_an_id_of_its_own():
    # 7 rows of 3 samples: prompts 0-1 and a last prompt with one row; the next part's prompts
    # must not reuse its id.
    layout = [("solve", "abduction", 7, 3, 7), ("solve", "deduction", 3, 3, 3)]
    got = adv.update_group_ids(layout, "grpo")
    assert got == [6, 6, 6, 7, 7, 7, 8, 9, 9, 9]
    assert max(got) < adv.NUM_TRRPP_GROUPS + len(got)


def test_trrpp_without_num_groups_keeps_every_group_apart():
    # num_groups defaults to the batch size (module doc), which holds the six (role, task) ids:
    # case 0 of the verl fixture (24 rows, all six groups) gives the fixture's values without it.
    rewards_b, mask_bt, group_ids_b = _case_arrays(CASES[0])
    expected_b = np.array([s["adv_token_weighted"] for s in CASES[0]["sequences"]])
    got_bt = np.asarray(jax.jit(adv.trr_plus_plus)(rewards_b, mask_bt, group_ids_b))  # one compile, not one per op
    np.testing.assert_allclose(got_bt, expected_b[:, None] * mask_bt, rtol=0, atol=1e-6)
