"""`rl.attention_chunk`: attention taken a chunk of queries at a time gives the same outputs,
gradients and update, and the compiled update needs less scratch memory."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_update import BATCH, CFG, NEEDS_8_DEVICES, OPTIM, PARAMS, RL, RULES, T, _assert_same_params, _one_step

from azr_jax.config import Config, RLSection, apply_overrides
from azr_jax.errors import UserError
from azr_jax.models import decoder
from azr_jax.models.config import ModelConfig
from azr_jax.models.decoder import forward, init_params
from azr_jax.rl.bucketed import make_bucketed_train_step
from azr_jax.rl.logprobs import token_logprobs_and_entropy
from azr_jax.rl.update import init_train_state, make_reference_logprobs, make_train_step
from azr_jax.sharding import make_mesh

# GQA (2 query heads per KV head), and non-default weights so the attention is not near uniform.
SMALL = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=16, max_position_embeddings=4096)
SMALL_PARAMS = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape),
                            init_params(SMALL, jax.random.key(0)))


@functools.lru_cache(maxsize=None)  # the unchunked reference is shared by the chunk sizes
def _loss_and_grads(chunk, dtype=jnp.float32, padding_in_loss=False):
    """Left-padded rows (one of them 7 real tokens in 37), so masked keys and padding queries fall
    inside and across chunks. `padding_in_loss`: the padding positions' logits count too (the
    update gives them no weight; a padding query sees no key at all, a uniform softmax)."""
    b, t = 3, 37
    tokens = jax.random.randint(jax.random.key(1), (b, t), 0, SMALL.vocab_size)
    mask = jnp.arange(t)[None] >= jnp.array([0, 5, 30])[:, None]
    positions = jnp.clip(jnp.cumsum(mask, 1) - 1, 0)

    def loss(p):
        logits = forward(p, tokens, positions, config=SMALL, mask_bt=mask, attention_chunk=chunk,
                         compute_dtype=dtype)[0]
        picked = jax.nn.log_softmax(logits)[..., :7]
        counted = jnp.ones_like(mask) if padding_in_loss else mask
        return jnp.sum(jnp.where(counted[..., None], picked, 0.0)), jnp.where(counted[..., None], logits, 0.0)

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(SMALL_PARAMS)
    return np.asarray(logits), grads


@pytest.mark.parametrize("padding_in_loss", [False, True], ids=["real", "all"])
@pytest.mark.parametrize("chunk", [8, 36])  # 8 leaves a short last chunk, 36 one of a single query
def test_chunked_attention_gives_the_same_logits_and_gradients(chunk, padding_in_loss):
    whole_logits, whole_grads = _loss_and_grads(0, padding_in_loss=padding_in_loss)
    logits, grads = _loss_and_grads(chunk, padding_in_loss=padding_in_loss)
    np.testing.assert_allclose(logits, whole_logits, atol=2e-6)
    for a, b in zip(jax.tree.leaves(whole_grads), jax.tree.leaves(grads)):
        # Float32 sums over a few hundred terms, added in another order: 1e-6 of the largest.
        scale = float(jnp.max(jnp.abs(a)))
        assert float(jnp.max(jnp.abs(a - b))) <= 5e-6 * scale, (float(jnp.max(jnp.abs(a - b))), scale)


def test_chunked_attention_in_bfloat16_is_as_close_to_float32_as_the_whole():
    """The chunked backward adds dK and dV up over the chunks in float32: its bf16 gradients are
    no further from the float32 ones than the unchunked attention's."""
    _, exact = _loss_and_grads(0)

    def rel(grads):
        pairs = [(a, b) for a, b in zip(jax.tree.leaves(exact), jax.tree.leaves(grads)) if float(jnp.linalg.norm(a)) > 0]
        return np.mean([float(jnp.linalg.norm(a - b.astype(jnp.float32)) / jnp.linalg.norm(a)) for a, b in pairs])

    whole_logits, whole = _loss_and_grads(0, jnp.bfloat16)
    chunked_logits, chunked = _loss_and_grads(8, jnp.bfloat16)
    np.testing.assert_array_equal(chunked_logits, whole_logits)  # the forward is the same arithmetic
    assert rel(chunked) < 1.1 * rel(whole), (rel(chunked), rel(whole))


@pytest.fixture
def chunked_traces(monkeypatch):
    """Chunk sizes the traced steps attended with (an equal result alone would also come from a
    step that never passed `rl.attention_chunk` on)."""
    calls = []
    inner = decoder._sequence_attention_in_chunks

    def counted(*args):
        calls.append(args[-1])
        return inner(*args)

    monkeypatch.setattr(decoder, "_sequence_attention_in_chunks", counted)
    return calls


@pytest.fixture(scope="module")
def whole_step():
    return _one_step(4)


def _chunked_step(chunk, mesh_shape=()):
    mesh = make_mesh(dict(mesh_shape)) if mesh_shape else None
    rl = dataclasses.replace(RL, micro_batch_size=4, attention_chunk=chunk)
    step = make_train_step(CFG, rl, OPTIM, mesh=mesh, rules=RULES, compute_dtype=jnp.float32)
    state, metrics = step(init_train_state(CFG, OPTIM, PARAMS, mesh=mesh, rules=RULES), BATCH)
    return state, jax.tree.map(float, metrics)


def test_chunked_update_equals_the_whole_attention(whole_step, chunked_traces):
    state, metrics = _chunked_step(5)
    assert set(chunked_traces) == {5}  # once per layer
    _assert_same_params(state.params, whole_step[0].params)
    for key in ("loss", "pg_loss", "entropy", "clip_frac", "grad_norm"):
        assert metrics[key] == pytest.approx(whole_step[1][key], rel=1e-5, abs=1e-7), key


def test_chunked_reference_pass_and_bucketed_update(chunked_traces):
    def reference(chunk):
        rl = dataclasses.replace(RL, micro_batch_size=4, attention_chunk=chunk)
        return np.asarray(make_reference_logprobs(CFG, rl, compute_dtype=jnp.float32)(PARAMS, BATCH))

    np.testing.assert_allclose(reference(3), reference(0), atol=2e-6)
    assert set(chunked_traces) == {3}

    def bucketed(chunk):
        rl = dataclasses.replace(RL, micro_batch_size=4, attention_chunk=chunk)
        step = make_bucketed_train_step(CFG, rl, OPTIM, length_buckets=(T,), compute_dtype=jnp.float32)
        return step(init_train_state(CFG, OPTIM, PARAMS), dict(BATCH))

    (whole, whole_metrics), (chunked, chunked_metrics) = bucketed(0), bucketed(6)
    assert set(chunked_traces) == {3, 6}
    _assert_same_params(chunked.params, whole.params)
    assert float(chunked_metrics["loss"]) == pytest.approx(float(whole_metrics["loss"]), rel=1e-5, abs=1e-7)


@pytest.mark.slow
@NEEDS_8_DEVICES
def test_chunked_update_on_a_mesh_with_the_heads_sharded(whole_step):
    state, metrics = _chunked_step(5, (("data", 1), ("fsdp", 2), ("tensor", 4)))
    _assert_same_params(state.params, whole_step[0].params)
    assert metrics["loss"] == pytest.approx(whole_step[1]["loss"], rel=1e-5)


def test_chunked_attention_needs_less_scratch_memory_in_the_update():
    """The compiler's own accounting: 8 heads over 512 positions, chunks of 64 queries, the
    layers in a scan (the presets' layout)."""
    cfg = ModelConfig(architecture="qwen2", vocab_size=64, hidden_size=64, intermediate_size=64, num_layers=1,
                      num_heads=8, num_kv_heads=2, head_dim=8, rope_theta=10000.0, scan_layers=True)
    params = init_params(cfg, jax.random.key(0))
    rows, t = 2, 512
    batch = {"tokens": np.ones((rows, t), np.int32), "positions": np.tile(np.arange(t, dtype=np.int32), (rows, 1)),
             "mask": np.ones((rows, t), np.int32)}

    def compiled(chunk):
        def loss(p):
            logp, entropy = token_logprobs_and_entropy(p, batch, cfg, jnp.float32, attention_chunk=chunk)
            return jnp.sum(logp) + jnp.sum(entropy)
        return jax.jit(jax.grad(loss)).lower(params).compile()

    whole, chunked = compiled(0), compiled(64)
    whole_bytes, chunked_bytes = (c.memory_analysis().temp_size_in_bytes for c in (whole, chunked))
    # Whole: several [2, 8, 512, 512] float32 copies (8 MB each); measured 35.6 MB against 12.9 MB.
    assert chunked_bytes < whole_bytes / 2, (chunked_bytes, whole_bytes)
    # No array of the chunked step is anywhere near heads x T x T elements (a chunk's scores are
    # an eighth of it). Inside the layer scan JAX used to keep every chunk's causal mask as a
    # residual, [chunks, rows, heads, chunk, T] booleans: T x T per head after all.
    sizes = [int(np.prod([int(d) for d in dims.split(",")]))
             for dims in re.findall(r"(?:f32|bf16|pred|s32)\[([0-9,]+)\]", chunked.as_text())]
    assert max(sizes) < rows * 8 * t * t // 4, max(sizes)


def test_attention_chunk_is_checked_and_may_change_on_resume():
    assert apply_overrides(Config(), ["rl.attention_chunk=512"]).rl.attention_chunk == 512
    assert RLSection().attention_chunk == 0
    with pytest.raises(UserError, match="'rl.attention_chunk' must be >= 0"):
        apply_overrides(Config(), ["rl.attention_chunk=-1"])
    from azr_jax.train_setup import RESUMABLE_CHANGES
    assert "rl.attention_chunk" in RESUMABLE_CHANGES
