"""Choosing the next token from logits: temperature, top-k, top-p (nucleus), greedy.

The logprob returned for a chosen token is its log-probability under the *temperature-scaled,
untruncated* distribution, `log_softmax(logits / T)`, the same quantity the trainer recomputes
(verl does the same). Top-k/top-p truncation only restricts which tokens can be drawn; it is not
part of the logprob, so the PPO ratio compares like with like. Greedy decoding (T = 0) reports
`log_softmax(logits)`, i.e. T = 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from azr_jax.models.decoder import UNKNOWN_TOKEN_LOGIT


def scale_logits(logits_bv: jax.Array, temperature: jax.Array) -> jax.Array:
    """float32 logits divided by the temperature (T = 0 means greedy, scored at T = 1)."""
    t = jnp.asarray(temperature, jnp.float32)
    return logits_bv.astype(jnp.float32) / jnp.where(t > 0, t, 1.0)


def truncate(scaled_bv: jax.Array, top_p: jax.Array, *, top_k: int, use_top_p: bool) -> jax.Array:
    """Set logits outside the top-k and outside the top-p nucleus to -inf.

    Top-k is applied first, then top-p on the renormalised top-k distribution (the order
    transformers and vLLM use). The nucleus is the smallest prefix of tokens, most likely first,
    whose mass reaches top_p; the most likely token is always kept. Ties at the cut-off are kept,
    at the top-k cut-off too: the top-p masses are then shares of the tie-inclusive top-k set.
    """
    if top_k <= 0 and not use_top_p:
        return scaled_bv
    vocab = scaled_bv.shape[-1]
    if 0 < top_k < vocab:
        sorted_bk = jax.lax.top_k(scaled_bv, top_k)[0]  # descending
    else:
        sorted_bk = -jnp.sort(-scaled_bv, axis=-1)
    threshold_b = sorted_bk[:, -1]
    if use_top_p:
        # Tokens tied with the k-th beyond the k that top_k returned are kept too, so they count
        # in the mass the nucleus is a share of (each has the k-th's logit).
        extra_b = jnp.sum(scaled_bv >= threshold_b[:, None], axis=-1) - sorted_bk.shape[-1]
        top_b = sorted_bk[:, 0]
        weights_bk = jnp.exp(sorted_bk - top_b[:, None])
        total_b = jnp.sum(weights_bk, axis=-1) + extra_b * jnp.exp(threshold_b - top_b)
        probs_bk = weights_bk / total_b[:, None]
        mass_before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
        n_keep_b = jnp.sum(mass_before_bk < top_p, axis=-1)  # >= 1: mass before the first is 0
        threshold_b = jnp.take_along_axis(sorted_bk, (n_keep_b - 1)[:, None], axis=-1)[:, 0]
    return jnp.where(scaled_bv >= threshold_b[:, None], scaled_bv, -jnp.inf)


def choose_tokens(logits_bv, keys_b, temperature, top_p, *, greedy: bool, top_k: int, use_top_p: bool):
    """Pick one token per row. Returns (tokens_b int32, logprobs_b float32).

    keys_b holds one PRNG key per row, so a row's draw does not depend on the other rows (or on
    batch padding and sharding).
    """
    scaled_bv = scale_logits(logits_bv, temperature)
    if greedy:
        tokens_b = jnp.argmax(scaled_bv, axis=-1)
    else:
        filtered_bv = truncate(scaled_bv, top_p, top_k=top_k, use_top_p=use_top_p)
        # Ids past the tokenizer's vocabulary carry a finite logit; divided by a large enough
        # temperature it would compete again, so they are taken out of the draw here.
        filtered_bv = jnp.where(logits_bv <= UNKNOWN_TOKEN_LOGIT, -jnp.inf, filtered_bv)
        tokens_b = jax.vmap(jax.random.categorical)(keys_b, filtered_bv)
    tokens_b = tokens_b.astype(jnp.int32)
    logprobs_bv = jax.nn.log_softmax(scaled_bv, axis=-1)
    logprobs_b = jnp.take_along_axis(logprobs_bv, tokens_b[:, None], axis=-1)[:, 0]
    return tokens_b, logprobs_b
