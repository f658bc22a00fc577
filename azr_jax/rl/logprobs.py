"""Per-token log-probabilities and entropies of a batch under the policy.

This is the one definition of "the logprob of a token" that the trainer, the update step and the
sampler's tests share. Convention (docs/architecture.md): the logprob of `tokens[:, t]` given
`tokens[:, :t]` is stored at index t; index 0 has no prediction and holds 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from azr_jax.models.decoder import forward


def logprobs_from_logits(logits_btv: jax.Array, tokens_bt: jax.Array, temperature: float = 1.0):
    """(logp_bt, entropy_bt) of `tokens_bt` under softmax(logits / temperature), float32.

    `logits_btv[:, t]` predicts `tokens_bt[:, t + 1]`, so both outputs are shifted right by one
    and position 0 is 0. The entropy at t is that of the distribution that produced token t.
    """
    logits_btv = logits_btv[:, :-1].astype(jnp.float32) / temperature
    log_z_bt = jax.nn.logsumexp(logits_btv, axis=-1)
    chosen_bt = jnp.take_along_axis(logits_btv, tokens_bt[:, 1:, None], axis=-1)[..., 0]
    logp_bt = chosen_bt - log_z_bt
    probs_btv = jnp.exp(logits_btv - log_z_bt[..., None])
    entropy_bt = log_z_bt - jnp.sum(probs_btv * logits_btv, axis=-1)
    pad_b1 = jnp.zeros((logp_bt.shape[0], 1), jnp.float32)
    return jnp.concatenate([pad_b1, logp_bt], axis=1), jnp.concatenate([pad_b1, entropy_bt], axis=1)


def token_logprobs_and_entropy(
    params,
    batch: dict,
    config,
    compute_dtype=jnp.float32,
    *,
    temperature: float = 1.0,
    remat: str = "none",
):
    """(logp_bt, entropy_bt) for `batch["tokens"]` with `positions` and `mask` ([B, T] each)."""
    logits_btv, _ = forward(
        params,
        batch["tokens"],
        batch["positions"],
        config=config,
        mask_bt=batch["mask"],
        compute_dtype=compute_dtype,
        remat=remat,
    )
    return logprobs_from_logits(logits_btv, batch["tokens"], temperature)


def token_logprobs(params, batch: dict, config, compute_dtype=jnp.float32, *, temperature: float = 1.0):
    """logp_bt [B, T]: the logprob of each token given its prefix (0 at position 0)."""
    return token_logprobs_and_entropy(params, batch, config, compute_dtype, temperature=temperature)[0]
