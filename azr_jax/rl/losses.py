"""Policy-gradient objective: PPO clipped surrogate (+ dual clip), entropy bonus, optional KL.

Aggregation is expressed as per-token weights computed once over the *whole* batch
(`aggregation_weights`), so the objective is always `sum(weights * per_token_loss)`. Splitting
the batch into micro-batches then just splits that sum: gradient accumulation gives exactly the
full-batch gradient, whatever the aggregation mode. Formulas and the relation to the reference's
per-micro-batch token-mean: docs/rl.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOG_RATIO_CLAMP = 20.0  # verl clamps log(pi/pi_old) to [-20, 20] before exp (keeps padding finite)
KL_CLAMP = 10.0  # verl clamps the k3 estimate to [-10, 10]

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-mean-per-micro-batch")


def aggregation_weights(loss_mask_bt: jax.Array, mode: str, chunk_rows: int | None = None) -> jax.Array:
    """Per-token weights w [B, T] such that the aggregated loss is sum(w * loss_bt).

    - `token-mean`: every response token of the batch counts equally, 1 / N_tokens.
    - `seq-mean-token-mean`: each sequence's token mean, averaged over sequences, 1 / (L_i N_seq).
    - `seq-mean-token-sum`: each sequence's token sum, averaged over sequences, 1 / N_seq.
    - `token-mean-per-micro-batch`: the reference's weighting. A token mean inside each block of
      `chunk_rows` consecutive rows, averaged over blocks: 1 / (N_tokens(block) * N_blocks).
    Sequences without response tokens (e.g. padding rows) are not counted in N_seq.
    """
    mask_bt = loss_mask_bt.astype(jnp.float32)
    lengths_b = jnp.sum(mask_bt, axis=-1)
    n_seq = jnp.maximum(jnp.sum(lengths_b > 0), 1).astype(jnp.float32)
    if mode == "token-mean":
        return mask_bt / jnp.maximum(jnp.sum(lengths_b), 1.0)
    if mode == "seq-mean-token-mean":
        return mask_bt / (jnp.maximum(lengths_b, 1.0)[:, None] * n_seq)
    if mode == "seq-mean-token-sum":
        return mask_bt / n_seq
    if mode == "token-mean-per-micro-batch":
        rows = mask_bt.shape[0]
        if chunk_rows is None or chunk_rows <= 0 or rows % chunk_rows:
            raise ValueError(f"token-mean-per-micro-batch needs chunk_rows dividing the batch ({rows}), got {chunk_rows}")
        n_chunks = rows // chunk_rows
        tokens_c = jnp.sum(lengths_b.reshape(n_chunks, chunk_rows), axis=-1)
        tokens_b = jnp.repeat(jnp.maximum(tokens_c, 1.0), chunk_rows)
        # Blocks without a loss token (all padding or unjudged rows, which the reference never
        # has) do not count: they would scale the whole update down by (n - 1) / n.
        n_live = jnp.maximum(jnp.sum(tokens_c > 0), 1).astype(jnp.float32)
        return mask_bt / (tokens_b[:, None] * n_live)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {list(AGGREGATIONS)}")


def clipped_surrogate(
    logp_bt: jax.Array,
    old_logp_bt: jax.Array,
    adv_bt: jax.Array,
    *,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None,
) -> dict[str, jax.Array]:
    """Per-token PPO loss max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), r = pi / pi_old.

    With `dual_clip = c` (> 1) the loss of tokens with A < 0 is further capped at -A c, so a
    huge ratio on a bad token cannot produce an unbounded update. Returns the loss and indicator
    arrays for the metrics (all [B, T]).
    """
    log_ratio_bt = jnp.clip(logp_bt - old_logp_bt, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio_bt = jnp.exp(log_ratio_bt)
    unclipped_bt = -adv_bt * ratio_bt
    clipped_bt = -adv_bt * jnp.clip(ratio_bt, 1.0 - eps_low, 1.0 + eps_high)
    loss_bt = jnp.maximum(unclipped_bt, clipped_bt)
    clip_hit_bt = clipped_bt > unclipped_bt
    dual_hit_bt = jnp.zeros_like(clip_hit_bt)
    if dual_clip is not None:
        cap_bt = -adv_bt * dual_clip
        dual_hit_bt = (loss_bt > cap_bt) & (adv_bt < 0)
        loss_bt = jnp.where(adv_bt < 0, jnp.minimum(loss_bt, cap_bt), loss_bt)
    return {
        "pg_loss": loss_bt,
        "clipped": clip_hit_bt.astype(jnp.float32),
        "dual_clipped": dual_hit_bt.astype(jnp.float32),
        "approx_kl": -log_ratio_bt,  # k1 estimate of KL(pi_old || pi), as verl's ppo_kl
    }


def combine_sums(a: dict, b: dict) -> dict:
    """Accumulate two `policy_loss` metric dicts: `*_max` entries by max, the rest by sum."""
    return {k: jnp.maximum(a[k], b[k]) if k.endswith("_max") else a[k] + b[k] for k in a}


def kl_penalty(logp_bt: jax.Array, ref_logp_bt: jax.Array, kind: str) -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.

    k1 = log pi - log pi_ref (unbiased, high variance); k3 = e^(ref - logp) - (ref - logp) - 1
    (unbiased, non-negative, low variance; Schulman's estimator).
    """
    if kind == "k1":
        return logp_bt - ref_logp_bt
    if kind == "k3":
        delta_bt = jnp.clip(ref_logp_bt - logp_bt, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return jnp.clip(jnp.exp(delta_bt) - delta_bt - 1.0, -KL_CLAMP, KL_CLAMP)
    raise ValueError(f"kl_type must be 'k1' or 'k3', got {kind!r}")


def policy_loss(
    logp_bt: jax.Array,
    entropy_bt: jax.Array,
    batch: dict,
    weights_bt: jax.Array,
    rl_cfg,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The scalar objective sum(w * (pg - entropy_coef * H + kl_coef * KL)) and metric sums.

    `batch` needs `loss_mask`, `advantages`, `old_logprobs` (and `ref_logprobs` when
    `rl_cfg.kl_coef > 0`). `weights_bt` comes from `aggregation_weights` over the full batch.
    The returned dict holds the weighted loss terms (already normalised), `*_sum` masked token
    sums that the caller divides by the total number of response tokens, and `*_max` maxima
    (combined over micro-batches with max, see `combine_sums`).
    """
    mask_bt = batch["loss_mask"].astype(jnp.float32)
    # One optimizer step per batch: the pre-update logprobs are this pass's, so "recompute" needs
    # no second forward (ratio exactly 1, gradient -A * grad log pi).
    if rl_cfg.old_logprobs == "recompute":
        old_logp_bt = jax.lax.stop_gradient(logp_bt)
    elif rl_cfg.old_logprobs == "batch":
        old_logp_bt = batch["old_logprobs"]
    else:
        raise ValueError(f"rl.old_logprobs must be 'recompute' or 'batch', got {rl_cfg.old_logprobs!r}")
    surrogate = clipped_surrogate(
        logp_bt,
        old_logp_bt,
        batch["advantages"],
        eps_low=rl_cfg.clip_eps_low,
        eps_high=rl_cfg.clip_eps_high,
        dual_clip=rl_cfg.dual_clip,
    )
    pg_loss = jnp.sum(weights_bt * surrogate["pg_loss"])
    entropy_loss = jnp.sum(weights_bt * entropy_bt)
    loss = pg_loss - rl_cfg.entropy_coef * entropy_loss
    metrics = {
        "pg_loss": pg_loss,
        "entropy_loss": entropy_loss,
        "entropy_sum": jnp.sum(mask_bt * entropy_bt),
        "clip_frac_sum": jnp.sum(mask_bt * surrogate["clipped"]),
        "dual_clip_frac_sum": jnp.sum(mask_bt * surrogate["dual_clipped"]),
        "approx_kl_sum": jnp.sum(mask_bt * surrogate["approx_kl"]),
        # Sampler-vs-trainer logprob gap at the pre-update params (a free by-product of this pass).
        "gap_abs_sum": jnp.sum(mask_bt * jnp.abs(batch["old_logprobs"] - logp_bt)),
        "gap_sum": jnp.sum(mask_bt * (batch["old_logprobs"] - logp_bt)),
        "gap_abs_max": jnp.max(mask_bt * jnp.abs(batch["old_logprobs"] - logp_bt)),
    }
    if rl_cfg.kl_coef > 0:
        if "ref_logprobs" not in batch:
            raise ValueError("rl.kl_coef > 0 needs `ref_logprobs` in the batch")
        kl_bt = kl_penalty(logp_bt, batch["ref_logprobs"], rl_cfg.kl_type)
        kl_loss = jnp.sum(weights_bt * kl_bt)
        loss = loss + rl_cfg.kl_coef * kl_loss
        metrics["kl_loss"] = kl_loss
        metrics["ref_kl_sum"] = jnp.sum(mask_bt * kl_bt)
    metrics["loss"] = loss
    return loss, metrics
