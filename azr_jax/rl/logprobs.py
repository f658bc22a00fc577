"""Per-token log-probabilities and entropies of a batch under the policy.

This is the one definition of "the logprob of a token" that the trainer, the update step and the
sampler's tests share. Convention (docs/architecture.md): the logprob of `tokens[:, t]` given
`tokens[:, :t]` is stored at index t; index 0 has no prediction and holds 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from azr_jax.models.decoder import forward, output_logits
from azr_jax.sharding import constrain


def _logp_and_entropy(logits_btv: jax.Array, targets_bt: jax.Array, temperature: float):
    """logp of `targets_bt[:, t]` and the entropy under softmax(logits_btv[:, t] / temperature)."""
    logits_btv = logits_btv.astype(jnp.float32) / temperature
    log_z_bt = jax.nn.logsumexp(logits_btv, axis=-1)
    chosen_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
    logp_bt = chosen_bt - log_z_bt
    probs_btv = jnp.exp(logits_btv - log_z_bt[..., None])
    entropy_bt = log_z_bt - jnp.sum(probs_btv * logits_btv, axis=-1)
    return logp_bt, entropy_bt


def _shift_right(x_bt: jax.Array) -> jax.Array:
    return jnp.concatenate([jnp.zeros((x_bt.shape[0], 1), jnp.float32), x_bt], axis=1)


def logprobs_from_logits(logits_btv: jax.Array, tokens_bt: jax.Array, temperature: float = 1.0):
    """(logp_bt, entropy_bt) of `tokens_bt` under softmax(logits / temperature), float32.

    `logits_btv[:, t]` predicts `tokens_bt[:, t + 1]`, so both outputs are shifted right by one
    and position 0 is 0. The entropy at t is that of the distribution that produced token t.
    """
    logp_bt, entropy_bt = _logp_and_entropy(logits_btv[:, :-1], tokens_bt[:, 1:], temperature)
    return _shift_right(logp_bt), _shift_right(entropy_bt)


def _logprobs_in_chunks(params, x_btd, tokens_bt, config, compute_dtype, temperature: float, chunk_len: int):
    """`logprobs_from_logits` of the head's logits, computed `chunk_len` positions at a time.

    Only one chunk's [B, chunk_len, V] logits are live: each chunk is rematerialised in the
    backward pass instead of kept, which trades one more head matmul for the largest
    activations of a long-sequence update (float32 logits of a 150k vocabulary).
    """
    b, t, d = x_btd.shape
    n = t - 1
    n_chunks = -(-n // chunk_len)
    pad = n_chunks * chunk_len - n
    x_cbkd = jnp.pad(x_btd[:, :-1], ((0, 0), (0, pad), (0, 0))).reshape(b, n_chunks, chunk_len, d).swapaxes(0, 1)
    y_cbk = jnp.pad(tokens_bt[:, 1:], ((0, 0), (0, pad))).reshape(b, n_chunks, chunk_len).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(xy):
        x_bkd, y_bk = xy
        logits_bkv = output_logits(params, x_bkd.reshape(b * chunk_len, d), config, compute_dtype)
        logits_bkv = constrain(logits_bkv.reshape(b, chunk_len, -1), ("batch", "length", "vocab"))
        return _logp_and_entropy(logits_bkv, y_bk, temperature)

    logp_cbk, entropy_cbk = jax.lax.map(one_chunk, (x_cbkd, y_cbk))
    join = lambda x_cbk: _shift_right(x_cbk.swapaxes(0, 1).reshape(b, n_chunks * chunk_len)[:, :n])  # noqa: E731
    return join(logp_cbk), join(entropy_cbk)


def token_logprobs_and_entropy(
    params,
    batch: dict,
    config,
    compute_dtype=jnp.float32,
    *,
    temperature: float = 1.0,
    remat: str = "none",
    logits_chunk: int = 0,
    attention_chunk: int = 0,
):
    """(logp_bt, entropy_bt) for `batch["tokens"]` with `positions` and `mask` ([B, T] each).

    `logits_chunk` > 0 applies the output head that many positions at a time (`rl.logits_chunk`);
    0 (or a chunk as long as the sequence) computes all the logits at once. `attention_chunk` > 0
    attends that many queries at a time (`rl.attention_chunk`, `decoder.forward`).
    """
    tokens_bt = batch["tokens"]
    chunked = 0 < logits_chunk < tokens_bt.shape[1] - 1
    out, _ = forward(
        params,
        tokens_bt,
        batch["positions"],
        config=config,
        mask_bt=batch["mask"],
        compute_dtype=compute_dtype,
        remat=remat,
        head=not chunked,
        attention_chunk=attention_chunk,
    )
    if chunked:
        return _logprobs_in_chunks(params, out, tokens_bt, config, compute_dtype, temperature, logits_chunk)
    return logprobs_from_logits(out, tokens_bt, temperature)


def token_logprobs(params, batch: dict, config, compute_dtype=jnp.float32, *, temperature: float = 1.0,
                   logits_chunk: int = 0, attention_chunk: int = 0):
    """logp_bt [B, T]: the logprob of each token given its prefix (0 at position 0)."""
    return token_logprobs_and_entropy(params, batch, config, compute_dtype, temperature=temperature,
                                      logits_chunk=logits_chunk, attention_chunk=attention_chunk)[0]
