"""`rl.logits_chunk`: the output head applied a chunk of positions at a time gives the same
logprobs, entropies and update, and the compiled update needs less scratch memory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_update import BATCH, CFG, NEEDS_8_DEVICES, OPTIM, PARAMS, RL, RULES, T, _assert_same_params, _one_step

from azr_jax.config import Config, RLSection, apply_overrides
from azr_jax.errors import UserError
from azr_jax.models.config import ModelConfig
from azr_jax.models.decoder import init_params
from azr_jax.rl import logprobs
from azr_jax.rl.bucketed import make_bucketed_train_step
from azr_jax.rl.logprobs import token_logprobs_and_entropy
from azr_jax.rl.update import init_train_state, make_reference_logprobs, make_train_step
from azr_jax.sharding import make_mesh


def _logp_entropy(chunk, params=PARAMS, cfg=CFG, batch=BATCH):
    fn = jax.jit(lambda p, b: token_logprobs_and_entropy(p, b, cfg, jnp.float32, temperature=0.7, logits_chunk=chunk))
    return [np.asarray(x) for x in fn(params, {k: batch[k] for k in ("tokens", "positions", "mask")})]


# 5 leaves a short last chunk; T - 2 is the longest chunk that still splits the T - 1 scored
# positions; T - 1 and 64 cover them in one go and take the whole head (no chunks traced).
@pytest.mark.parametrize("chunk", [1, 4, 5, T - 2, T - 1, 64])
def test_chunked_head_gives_the_same_logprobs_and_entropies(chunk, chunked_traces):
    whole_logp, whole_entropy = _logp_entropy(0)
    assert chunked_traces == []
    logp, entropy = _logp_entropy(chunk)
    assert chunked_traces == ([chunk] if chunk < T - 1 else [])
    assert logp.shape == whole_logp.shape == (BATCH["tokens"].shape[0], T)
    np.testing.assert_allclose(logp, whole_logp, atol=2e-6)
    np.testing.assert_allclose(entropy, whole_entropy, atol=2e-6)
    assert (logp[:, 0] == 0).all() and (entropy[:, 0] == 0).all()


def test_chunked_head_masks_ids_past_the_tokenizer():
    cfg = dataclasses.replace(CFG, tokenizer_vocab_size=CFG.vocab_size - 8)
    batch = dict(BATCH, tokens=np.minimum(BATCH["tokens"], CFG.vocab_size - 9))
    for whole, chunked in zip(_logp_entropy(0, cfg=cfg, batch=batch), _logp_entropy(3, cfg=cfg, batch=batch)):
        np.testing.assert_allclose(chunked, whole, atol=2e-6)
        assert np.isfinite(chunked).all()


@pytest.fixture(scope="module")
def whole_step():
    return _one_step(4)


@pytest.fixture
def chunked_traces(monkeypatch):
    """How often a traced step took the chunked head (an equal result alone would also come from
    a step that never passed `rl.logits_chunk` on)."""
    calls = []
    inner = logprobs._logprobs_in_chunks

    def counted(*args):
        calls.append(args[-1])
        return inner(*args)

    monkeypatch.setattr(logprobs, "_logprobs_in_chunks", counted)
    return calls


def _chunked_step(chunk, mesh_shape=()):
    mesh = make_mesh(dict(mesh_shape)) if mesh_shape else None
    rl = dataclasses.replace(RL, micro_batch_size=4, logits_chunk=chunk)
    step = make_train_step(CFG, rl, OPTIM, mesh=mesh, rules=RULES, compute_dtype=jnp.float32)
    state, metrics = step(init_train_state(CFG, OPTIM, PARAMS, mesh=mesh, rules=RULES), BATCH)
    return state, jax.tree.map(float, metrics)


def test_chunked_update_equals_the_whole_head(whole_step, chunked_traces):
    state, metrics = _chunked_step(4)
    assert chunked_traces == [4]
    _assert_same_params(state.params, whole_step[0].params)
    for key in ("loss", "pg_loss", "entropy", "clip_frac", "grad_norm"):
        assert metrics[key] == pytest.approx(whole_step[1][key], rel=1e-5, abs=1e-7), key


def test_chunked_reference_pass_equals_the_whole_head(chunked_traces):
    def reference(chunk):
        rl = dataclasses.replace(RL, micro_batch_size=4, logits_chunk=chunk)
        return np.asarray(make_reference_logprobs(CFG, rl, compute_dtype=jnp.float32)(PARAMS, BATCH))

    np.testing.assert_allclose(reference(3), reference(0), atol=2e-6)
    assert chunked_traces == [3]


@pytest.mark.slow
@NEEDS_8_DEVICES
def test_chunked_update_on_a_mesh_with_the_vocab_sharded(whole_step):
    state, metrics = _chunked_step(5, (("data", 1), ("fsdp", 2), ("tensor", 4)))
    _assert_same_params(state.params, whole_step[0].params)
    assert metrics["loss"] == pytest.approx(whole_step[1]["loss"], rel=1e-5)


def test_chunked_bucketed_update_equals_the_whole_head(chunked_traces):
    def one(chunk):
        rl = dataclasses.replace(RL, micro_batch_size=4, logits_chunk=chunk)
        step = make_bucketed_train_step(CFG, rl, OPTIM, length_buckets=(T,), compute_dtype=jnp.float32)
        return step(init_train_state(CFG, OPTIM, PARAMS), dict(BATCH))

    (whole, whole_metrics), (chunked, chunked_metrics) = one(0), one(3)
    assert chunked_traces == [3]
    _assert_same_params(chunked.params, whole.params)
    assert float(chunked_metrics["loss"]) == pytest.approx(float(whole_metrics["loss"]), rel=1e-5, abs=1e-7)


def test_chunked_head_needs_less_scratch_memory_in_the_update():
    """The compiler's own accounting: a 2048-token vocabulary over 64 positions, chunks of 8."""
    cfg = ModelConfig(architecture="qwen2", vocab_size=2048, hidden_size=32, intermediate_size=64, num_layers=1,
                      num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=10000.0)
    params = init_params(cfg, jax.random.key(0))
    rows, t = 4, 64
    batch = {"tokens": np.ones((rows, t), np.int32), "positions": np.tile(np.arange(t, dtype=np.int32), (rows, 1)),
             "mask": np.ones((rows, t), np.int32)}

    def temp_bytes(chunk):
        def loss(p):
            logp, entropy = token_logprobs_and_entropy(p, batch, cfg, jnp.float32, logits_chunk=chunk)
            return jnp.sum(logp) + jnp.sum(entropy)
        return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

    whole, chunked = temp_bytes(0), temp_bytes(8)
    assert chunked < whole / 4, (chunked, whole)  # whole: several [4, 63, 2048] float32 copies (2 MB each)


def test_logits_chunk_is_checked_and_may_change_on_resume():
    assert apply_overrides(Config(), ["rl.logits_chunk=512"]).rl.logits_chunk == 512
    assert RLSection().logits_chunk == 0  # the default computes the whole head at once
    with pytest.raises(UserError, match="'rl.logits_chunk' must be >= 0"):
        apply_overrides(Config(), ["rl.logits_chunk=-1"])
    from azr_jax.train_setup import RESUMABLE_CHANGES
    assert {"rl.logits_chunk", "sampling.prefill_chunk"} <= set(RESUMABLE_CHANGES)  # layout, not what is computed
