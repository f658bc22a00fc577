"""KV cache: prefill + step-by-step decode reproduces the full forward."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hf_reference import left_padded_batch, small_config  # noqa: E402

from azr_jax.models.decoder import forward as _forward  # noqa: E402
from azr_jax.models.decoder import init_cache, init_params  # noqa: E402

# Compiled once per shape: much faster on CPU than op-by-op dispatch.
forward = jax.jit(_forward, static_argnames=("config", "compute_dtype", "return_hidden"))


def _setup(architecture="qwen3", **kw):
    cfg = small_config(architecture, **kw)
    params = init_params(cfg, jax.random.key(0))
    params = jax.tree.map(lambda x: x * 5.0 if x.ndim > 2 else x, params)  # sharper attention
    tokens, mask, positions = left_padded_batch([12, 5, 9], 12, cfg.vocab_size, seed=3)
    return cfg, params, tokens, mask, positions


def test_prefill_then_decode_equals_full_forward():
    cfg, params, tokens, mask, positions = _setup()
    full, _ = forward(params, tokens, positions, config=cfg, mask_bt=mask)
    prompt_len, total = 6, tokens.shape[1]

    cache = init_cache(cfg, batch=3, max_len=16, dtype=jnp.float32)
    logits, cache = forward(params, tokens[:, :prompt_len], positions[:, :prompt_len], config=cfg,
                            mask_bt=mask[:, :prompt_len], cache=cache)
    outs = [logits]
    # One compiled decode step serves every position: the index is traced, shapes are static.
    step = jax.jit(lambda p, t, q, m, c: forward(p, t, q, config=cfg, mask_bt=m, cache=c))
    for i in range(prompt_len, total):
        logits, cache = step(params, tokens[:, i:i + 1], positions[:, i:i + 1], mask[:, i:i + 1], cache)
        outs.append(logits)
    assert step._cache_size() == 1
    incremental = np.concatenate([np.asarray(o) for o in outs], axis=1)

    real = mask.astype(bool)
    assert np.isfinite(incremental).all()
    assert np.abs(incremental - np.asarray(full))[real].max() <= 1e-5
    assert int(cache["index"]) == total
    np.testing.assert_array_equal(np.asarray(cache["mask"])[:, :total], real)
    assert not np.asarray(cache["mask"])[:, total:].any()


def test_chunked_prefill_with_bias_and_bf16_cache_is_finite_and_close():
    cfg, params, tokens, mask, positions = _setup("qwen2", tie_word_embeddings=True)
    full, _ = forward(params, tokens, positions, config=cfg, mask_bt=mask)
    cache = init_cache(cfg, batch=3, max_len=12, dtype=jnp.float32)
    a, cache = forward(params, tokens[:, :7], positions[:, :7], config=cfg, mask_bt=mask[:, :7], cache=cache)
    b, cache = forward(params, tokens[:, 7:], positions[:, 7:], config=cfg, mask_bt=mask[:, 7:], cache=cache)
    chunked = np.concatenate([np.asarray(a), np.asarray(b)], axis=1)
    real = mask.astype(bool)
    assert np.abs(chunked - np.asarray(full))[real].max() <= 1e-5

    # A bfloat16 cache (the sampler's default) changes numbers only at bf16 resolution.
    cache16 = init_cache(cfg, batch=3, max_len=12, dtype=jnp.bfloat16)
    c, cache16 = forward(params, tokens, positions, config=cfg, mask_bt=mask, cache=cache16)
    assert cache16["k"].dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(c)).all()
    assert (np.asarray(c).argmax(-1) == np.asarray(full).argmax(-1))[real].mean() >= 0.9


def test_fully_padded_rows_are_finite_and_do_not_affect_other_rows():
    cfg, params, tokens, mask, positions = _setup()
    mask = mask.copy()
    mask[1] = 0  # a row with no real token at all
    logits, _ = forward(params, tokens, positions, config=cfg, mask_bt=mask)
    assert np.isfinite(np.asarray(logits)).all()
    alone, _ = forward(params, tokens[:1], positions[:1], config=cfg, mask_bt=mask[:1])
    np.testing.assert_allclose(np.asarray(logits)[0], np.asarray(alone)[0], atol=1e-5)

    # Gradients through padding rows stay finite too (the RL loss differentiates this).
    def loss(p):
        return forward(p, tokens, positions, config=cfg, mask_bt=mask)[0].sum()

    grads = jax.jit(jax.grad(loss))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_a_write_past_the_cache_end_is_refused_or_nan():
    """Past the last slot the key/value write lands on earlier slots: eagerly an error; under
    jit, where the index is traced, NaN logits instead of quietly wrong ones."""
    cfg, params, tokens, mask, positions = _setup()
    cache = init_cache(cfg, batch=3, max_len=8, dtype=jnp.float32)
    kw = lambda lo, hi: dict(config=cfg, mask_bt=mask[:, lo:hi])  # noqa: E731
    _, cache = forward(params, tokens[:, :6], positions[:, :6], cache=cache, **kw(0, 6))
    with pytest.raises(ValueError, match="the cache has 8 slots: 6 used, 3 more do not fit"):
        _forward(params, tokens[:, 6:9], positions[:, 6:9], cache=cache, **kw(6, 9))
    fits, cache = forward(params, tokens[:, 6:8], positions[:, 6:8], cache=cache, **kw(6, 8))  # the last two slots
    assert np.isfinite(np.asarray(fits)).all()
    past, _ = forward(params, tokens[:, 8:9], positions[:, 8:9], cache=cache, **kw(8, 9))
    assert np.isnan(np.asarray(past)).all()


def test_forward_refuses_an_unknown_remat_and_hidden_states_without_the_head():
    """remat names a policy of REMAT_POLICIES; head=False with return_hidden=True is refused
    (the final normed states would come back twice). Traced only: nothing is computed."""
    cfg = small_config("qwen3", num_layers=1)
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    tokens = jax.ShapeDtypeStruct((2, 4), jnp.int32)

    def run(**kw):
        return jax.eval_shape(lambda p, t: _forward(p, t, t, config=cfg, **kw), params, tokens)

    run(remat="full", head=False)  # a known policy, and head=False alone, are fine
    with pytest.raises(ValueError, match=r"remat must be one of \['dots', 'full', 'none'\], got 'all'"):
        run(remat="all")
    with pytest.raises(ValueError, match="head=False returns the final normed states"):
        run(head=False, return_hidden=True)


def test_a_concrete_index_that_exactly_fills_the_cache_is_accepted():
    """The eager slot check refuses index + T past the slots, not a write into the last ones
    (traced with the index concrete, as in an eager call; nothing is computed)."""
    cfg = small_config("qwen3", num_layers=1)
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    cache = jax.eval_shape(lambda: init_cache(cfg, batch=1, max_len=8, dtype=jnp.float32))

    def run(t):
        def fwd(p, c, x):
            return _forward(p, x, x, config=cfg, cache=dict(c, index=np.int32(6)))
        return jax.eval_shape(fwd, params, cache, jax.ShapeDtypeStruct((1, t), jnp.int32))

    logits, new_cache = run(2)
    assert logits.shape == (1, 2, cfg.vocab_size) and new_cache["k"].shape == cache["k"].shape
    with pytest.raises(ValueError, match="the cache has 8 slots: 6 used, 3 more do not fit"):
        run(3)
