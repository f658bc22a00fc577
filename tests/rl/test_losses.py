"""PPO clipped surrogate, KL estimators, and loss aggregation on hand-computed cases."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from azr_jax.config import RLSection
from azr_jax.rl import losses


def _surrogate(ratio, adv, dual_clip=3.0):
    logp = jnp.log(jnp.asarray(ratio, jnp.float32))
    return losses.clipped_surrogate(
        logp, jnp.zeros_like(logp), jnp.asarray(adv, jnp.float32), eps_low=0.2, eps_high=0.28, dual_clip=dual_clip
    )


def test_clipped_surrogate_by_hand():
    #          A>0 inside | A>0 above 1.28 | A>0 below 0.8 | A<0 below 0.8 | A<0 above (dual) | A<0 1.5
    ratio = [1.1, 1.5, 0.5, 0.5, 5.0, 1.5]
    adv = [2.0, 2.0, 2.0, -1.0, -1.0, -1.0]
    out = _surrogate(ratio, adv)
    expected = [-2.2, -2.56, -1.0, 0.8, 3.0, 1.5]
    np.testing.assert_allclose(out["pg_loss"], expected, rtol=1e-6)
    np.testing.assert_array_equal(out["clipped"], [0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(out["dual_clipped"], [0, 0, 0, 0, 1, 0])
    # Without the dual clip the A<0, ratio-5 token pays the full -A r.
    np.testing.assert_allclose(_surrogate(ratio, adv, dual_clip=None)["pg_loss"][4], 5.0, rtol=1e-6)
    np.testing.assert_allclose(out["approx_kl"], -np.log(ratio), rtol=1e-6)


def test_clipped_tokens_have_no_gradient():
    ratio = jnp.array([1.1, 1.5, 0.5, 0.5, 5.0], jnp.float32)
    adv = jnp.array([2.0, 2.0, 2.0, -1.0, -1.0], jnp.float32)

    def total(logp):
        return jnp.sum(
            losses.clipped_surrogate(logp, jnp.zeros(5), adv, eps_low=0.2, eps_high=0.28, dual_clip=3.0)["pg_loss"]
        )

    grad = np.asarray(jax.grad(total)(jnp.log(ratio)))
    # d(-A r)/d log r = -A r for active tokens, 0 for clipped ones.
    np.testing.assert_allclose(grad, [-2.2, 0.0, -1.0, 0.0, 0.0], rtol=1e-6)


def test_the_log_ratio_clamp_is_wide_enough_to_keep_far_off_policy_gradients():
    """The clamp ([-20, 20], verl's) only guards exp against padding garbage: a token with
    A > 0 at log ratio -3, under the clip range, still gets d(-A r)/d log r = -A e^-3."""
    def loss(logp):
        return jnp.sum(losses.clipped_surrogate(logp, jnp.zeros(1), jnp.ones(1), eps_low=0.2, eps_high=0.28,
                                                dual_clip=3.0)["pg_loss"])

    np.testing.assert_allclose(jax.grad(loss)(jnp.array([-3.0])), [-np.exp(-3.0)], rtol=1e-6)


def test_on_policy_loss_is_minus_advantage():
    # ratio == 1 (old == current): the surrogate is plain REINFORCE, loss = -A, gradient -A.
    adv = jnp.array([0.5, -1.5], jnp.float32)
    logp = jnp.array([-1.0, -2.0], jnp.float32)
    out = losses.clipped_surrogate(logp, logp, adv, eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    np.testing.assert_allclose(out["pg_loss"], [-0.5, 1.5])
    assert float(jnp.sum(out["clipped"])) == 0.0


def test_kl_estimators():
    logp = jnp.array([-1.0, -2.0, -0.5], jnp.float32)
    ref = jnp.array([-1.0, -1.0, -1.5], jnp.float32)
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "k1"), [0.0, -1.0, 1.0], rtol=1e-6)
    d = np.array([0.0, 1.0, -1.0])
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "k3"), np.exp(d) - d - 1, rtol=1e-6)
    assert np.all(np.asarray(losses.kl_penalty(logp, ref, "k3")) >= 0)
    # k3 is capped at 10 (verl's clamp): e^3 - 3 - 1 = 16.1 reads 10
    np.testing.assert_allclose(losses.kl_penalty(jnp.array([-4.0]), jnp.array([-1.0]), "k3"), [10.0])
    with pytest.raises(ValueError):
        losses.kl_penalty(logp, ref, "k2")


MASK_BT = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], np.float32)


def test_aggregation_weights_by_hand():
    lengths = MASK_BT.sum(-1)  # 3, 1, 0, 4 -> 8 tokens, 3 sequences with tokens
    w = np.asarray(losses.aggregation_weights(MASK_BT, "token-mean"))
    np.testing.assert_allclose(w, MASK_BT / 8)
    w = np.asarray(losses.aggregation_weights(MASK_BT, "seq-mean-token-mean"))
    np.testing.assert_allclose(w, MASK_BT / np.maximum(lengths, 1)[:, None] / 3)
    w = np.asarray(losses.aggregation_weights(MASK_BT, "seq-mean-token-sum"))
    np.testing.assert_allclose(w, MASK_BT / 3)
    # Reference weighting with blocks of 2 rows: block 0 has 4 tokens, block 1 has 4; 2 blocks.
    w = np.asarray(losses.aggregation_weights(MASK_BT, "token-mean-per-micro-batch", chunk_rows=2))
    np.testing.assert_allclose(w, MASK_BT / (4 * 2))
    # Blocks of 1 row: row 2 has no tokens, so 3 blocks count (an empty block, all padding or
    # unjudged rows, would otherwise scale the update by (n - 1) / n).
    w = np.asarray(losses.aggregation_weights(MASK_BT, "token-mean-per-micro-batch", chunk_rows=1))
    np.testing.assert_allclose(w, MASK_BT / np.maximum(lengths, 1)[:, None] / 3)
    half_empty = np.array([[1, 1], [1, 0], [0, 0], [0, 0]], np.float32)
    w = np.asarray(losses.aggregation_weights(half_empty, "token-mean-per-micro-batch", chunk_rows=2))
    np.testing.assert_allclose(w, half_empty / 3)  # the token mean of the one block with tokens
    with pytest.raises(ValueError):
        losses.aggregation_weights(MASK_BT, "token-mean-per-micro-batch", chunk_rows=3)
    with pytest.raises(ValueError):
        losses.aggregation_weights(MASK_BT, "sum")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_aggregations_sum_to_the_expected_means(mode):
    loss_bt = np.arange(16, dtype=np.float32).reshape(4, 4)
    total = float(jnp.sum(losses.aggregation_weights(MASK_BT, mode) * loss_bt))
    rows = [loss_bt[i][MASK_BT[i] > 0] for i in range(4) if MASK_BT[i].sum() > 0]
    expected = {
        "token-mean": np.concatenate(rows).mean(),
        "seq-mean-token-mean": np.mean([r.mean() for r in rows]),
        "seq-mean-token-sum": np.mean([r.sum() for r in rows]),
    }[mode]
    np.testing.assert_allclose(total, expected, rtol=1e-6)


def _batch(rng, b=4, t=6):
    mask = (rng.random((b, t)) < 0.8).astype(np.float32)
    mask[:, 0] = 0
    return {
        "loss_mask": mask,
        "advantages": (rng.normal(size=(b, 1)) * mask).astype(np.float32),
        "old_logprobs": (-rng.random((b, t)) * 3).astype(np.float32),
        "ref_logprobs": (-rng.random((b, t)) * 3).astype(np.float32),
    }


def test_policy_loss_combines_terms():
    rng = np.random.default_rng(0)
    batch = _batch(rng)
    logp = jnp.asarray(batch["old_logprobs"] + rng.normal(size=(4, 6)).astype(np.float32) * 0.3)
    entropy = jnp.asarray(rng.random((4, 6)).astype(np.float32))
    w = losses.aggregation_weights(batch["loss_mask"], "token-mean")
    base = RLSection(entropy_coef=0.0, kl_coef=0.0, old_logprobs="batch")
    pg_only, m0 = losses.policy_loss(logp, entropy, batch, w, base)
    with_ent, m1 = losses.policy_loss(logp, entropy, batch, w, dataclasses.replace(base, entropy_coef=0.01))
    with_kl, m2 = losses.policy_loss(logp, entropy, batch, w, dataclasses.replace(base, kl_coef=0.1, kl_type="k1"))
    token_mean = lambda x: float(np.sum(x * batch["loss_mask"]) / batch["loss_mask"].sum())
    np.testing.assert_allclose(float(with_ent), float(pg_only) - 0.01 * token_mean(entropy), rtol=1e-5)
    k1 = np.asarray(logp) - batch["ref_logprobs"]
    np.testing.assert_allclose(float(with_kl), float(pg_only) + 0.1 * token_mean(k1), rtol=1e-5)
    np.testing.assert_allclose(float(m1["entropy_sum"]), float(np.sum(entropy * batch["loss_mask"])), rtol=1e-5)
    assert "kl_loss" not in m0 and "kl_loss" in m2
    no_ref = {k: v for k, v in batch.items() if k != "ref_logprobs"}
    with pytest.raises(ValueError, match="ref_logprobs"):
        losses.policy_loss(logp, entropy, no_ref, w, dataclasses.replace(base, kl_coef=0.1))


@pytest.mark.parametrize("old_logprobs, pad_adv, dual_clip", [
    ("recompute", 1e3, 3.0), ("batch", 1e3, 3.0),
    # negative padding advantages without the dual clip: only the log-ratio clamp keeps exp finite
    ("batch", -1e3, None),
    ("batch", -1e3, 3.0),  # ... and with it: padding would hit the dual clip
])
def test_padding_tokens_do_not_leak(old_logprobs, pad_adv, dual_clip):
    # Garbage (huge) old logprobs, reference logprobs and advantages on padding must not change
    # the loss or any metric sum (clip fractions, KL estimates, logprob gaps), or make them NaN.
    rl = RLSection(old_logprobs=old_logprobs, dual_clip=dual_clip, kl_coef=0.1)
    rng = np.random.default_rng(1)
    batch = _batch(rng)
    logp = jnp.asarray(batch["old_logprobs"] - 0.1)
    entropy = jnp.ones((4, 6))
    w = losses.aggregation_weights(batch["loss_mask"], "token-mean")
    clean, clean_metrics = losses.policy_loss(logp, entropy, batch, w, rl)
    dirty = dict(batch)
    pad = batch["loss_mask"] == 0
    dirty["old_logprobs"] = np.where(pad, -1e4, batch["old_logprobs"]).astype(np.float32)
    dirty["ref_logprobs"] = np.where(pad, -1e4, batch["ref_logprobs"]).astype(np.float32)
    dirty["advantages"] = np.where(pad, pad_adv, batch["advantages"]).astype(np.float32)
    got, metrics = losses.policy_loss(logp, entropy, dirty, w, rl)
    np.testing.assert_allclose(float(got), float(clean), rtol=1e-6)
    assert set(metrics) == set(clean_metrics) and "ref_kl_sum" in metrics
    for key, value in clean_metrics.items():
        np.testing.assert_allclose(float(metrics[key]), float(value), rtol=1e-6, atol=1e-7, err_msg=key)


def test_recomputed_old_logprobs_make_the_update_on_policy_reinforce():
    """rl.old_logprobs=recompute (the default, the reference's recompute before its single
    optimizer step): ratio 1 whatever the batch's old_logprobs say, so no clipping and the
    gradient is -sum(w * A * grad log pi); the batch's old_logprobs only feed the gap metrics."""
    rng = np.random.default_rng(2)
    batch = _batch(rng)
    logp = jnp.asarray(batch["old_logprobs"] + rng.normal(size=(4, 6)).astype(np.float32))  # far off-policy
    entropy = jnp.zeros((4, 6))
    w = losses.aggregation_weights(batch["loss_mask"], "token-mean")
    rl = RLSection(entropy_coef=0.0)
    assert rl.old_logprobs == "recompute"

    def loss_of(lp, cfg):
        return losses.policy_loss(lp, entropy, batch, w, cfg)

    (loss, metrics), grad = jax.value_and_grad(loss_of, has_aux=True)(logp, rl)
    np.testing.assert_allclose(float(loss), float(-jnp.sum(w * batch["advantages"])), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(-w * batch["advantages"]), rtol=1e-6, atol=1e-8)
    assert float(metrics["clip_frac_sum"]) == 0 and float(metrics["dual_clip_frac_sum"]) == 0
    assert float(metrics["approx_kl_sum"]) == 0
    gap = float(jnp.sum(batch["loss_mask"] * jnp.abs(batch["old_logprobs"] - logp)))
    assert float(metrics["gap_abs_sum"]) == pytest.approx(gap, rel=1e-6) and gap > 1
    # The gap's sign: sampler (batch old_logprobs) minus trainer, as logprob_gap_bias reports it.
    bias = float(jnp.sum(batch["loss_mask"] * (batch["old_logprobs"] - logp)))
    assert float(metrics["gap_sum"]) == pytest.approx(bias, rel=1e-5) and abs(bias) > 0.1
    # The same batch with the batch's old_logprobs is clipped: the two modes really differ.
    _, batch_metrics = loss_of(logp, dataclasses.replace(rl, old_logprobs="batch"))
    assert float(batch_metrics["clip_frac_sum"]) > 0


@pytest.mark.parametrize("mode, chunk_rows", [("token-mean", None), ("seq-mean-token-mean", None),
                                              ("seq-mean-token-sum", None), ("token-mean-per-micro-batch", 2)])
def test_aggregation_weights_of_a_batch_without_loss_tokens_are_zero(mode, chunk_rows):
    # Every row unjudged or empty: no token has a loss, and the weights stay 0 (not 0 / 0).
    w = np.asarray(losses.aggregation_weights(np.zeros((4, 3), np.float32), mode, chunk_rows=chunk_rows))
    np.testing.assert_array_equal(w, 0.0)


def test_the_log_ratio_clamp_is_twenty():
    """verl clamps log(pi / pi_old) to [-20, 20]: a token 15 nats more likely than under pi_old
    with A < 0 and no dual clip pays -A e^15, one 25 nats more likely -A e^20."""
    out = losses.clipped_surrogate(jnp.array([15.0, 25.0, -25.0]), jnp.zeros(3), -jnp.ones(3), eps_low=0.2,
                                   eps_high=0.28, dual_clip=None)
    np.testing.assert_allclose(out["pg_loss"], [np.exp(15.0), np.exp(20.0), 0.8], rtol=1e-5)
    np.testing.assert_allclose(out["approx_kl"], [-15.0, -20.0, 20.0])


def test_k3_of_a_token_far_below_the_reference_has_a_finite_gradient():
    """log pi_ref - log pi = 100: e^100 overflows float32, so the difference is clamped to 20
    before the exp (verl's low_var_kl); the estimate reads 10 with a zero gradient, not NaN,
    also where the token has no weight (padding)."""
    logp, ref = jnp.array([-101.0, -1.0, -101.0]), jnp.array([-1.0, -1.2, -1.0])
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "k3")[0], 10.0)
    grad = np.asarray(jax.grad(lambda lp: jnp.sum(jnp.array([1.0, 1.0, 0.0]) * losses.kl_penalty(lp, ref, "k3")))(logp))
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, [0.0, 1.0 - np.exp(-0.2), 0.0], rtol=1e-5)


def test_entropy_and_kl_terms_use_the_aggregation_weights_and_their_metrics_the_token_sums():
    """Pins policy_loss against the objective written out in numpy under a sequence-level
    weighting (each row's token mean, averaged over rows): the entropy bonus and the k3 penalty are
    weighted like the surrogate, while `entropy_sum` and `ref_kl_sum` (which the update divides by
    the response tokens for `entropy` and `ref_kl`) are plain masked token sums, not weighted ones."""
    rng = np.random.default_rng(3)
    batch = _batch(rng)
    mask, adv, old, ref = batch["loss_mask"], batch["advantages"], batch["old_logprobs"], batch["ref_logprobs"]
    logp = (old + rng.normal(size=mask.shape) * 0.2).astype(np.float32)
    entropy = rng.random(mask.shape).astype(np.float32)
    lengths = mask.sum(-1)
    w = mask / np.maximum(lengths, 1)[:, None] / (lengths > 0).sum()  # seq-mean-token-mean by hand
    rl = RLSection(entropy_coef=0.05, kl_coef=0.2, kl_type="k3", old_logprobs="batch", dual_clip=None)
    ratio = np.exp(logp - old)
    pg = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - rl.clip_eps_low, 1 + rl.clip_eps_high))
    d = ref - logp
    k3 = np.exp(d) - d - 1
    got, metrics = losses.policy_loss(jnp.asarray(logp), jnp.asarray(entropy), batch, jnp.asarray(w), rl)
    np.testing.assert_allclose(float(got), np.sum(w * (pg - 0.05 * entropy + 0.2 * k3)), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["entropy_loss"]), np.sum(w * entropy), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["kl_loss"]), np.sum(w * k3), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["entropy_sum"]), np.sum(mask * entropy), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["ref_kl_sum"]), np.sum(mask * k3), rtol=1e-5)
