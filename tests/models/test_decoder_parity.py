"""Parity of the decoder with transformers on left-padded batches (CPU, no downloads)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from hf_reference import (  # noqa: E402
    bf16_configs, hf_logits, hf_model, left_padded_batch, params_of, progressions, small_config,
)

from azr_jax.models import get_preset  # noqa: E402
from azr_jax.models.decoder import forward as _forward  # noqa: E402
from azr_jax.models.rope import apply_rope, inverse_frequencies, rope_cos_sin  # noqa: E402
from azr_jax.models.hf_mapping import params_from_hf  # noqa: E402

forward = jax.jit(_forward, static_argnames=("config", "compute_dtype", "return_hidden"))

FIXTURES = Path(__file__).parents[1] / "fixtures" / "decoder_bf16"
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
FAMILIES = {
    "qwen2_tied": dict(architecture="qwen2", tie_word_embeddings=True),
    "qwen2_untied": dict(architecture="qwen2"),
    # original_max_position_embeddings=16 with head_dim 24 puts inverse frequencies in all
    # three llama3 bands (kept, interpolated, divided by factor).
    "llama_llama3": dict(architecture="llama", rope_theta=500000.0, rope_scaling=LLAMA3),
    "qwen3": dict(architecture="qwen3"),
}
SEQ_LEN = 24  # left-padded to 24 tokens; real lengths below
LENGTHS = [24, 7, 16, 1]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float32_logits_and_hidden_states_match_transformers(family):
    kw = dict(FAMILIES[family])
    cfg = small_config(kw.pop("architecture"), **kw)
    # Non-default weights (random norms and biases too) so a mis-mapped tensor shows.
    model = hf_model(cfg, init_std=0.1)
    params = params_of(cfg, model)
    tokens, mask, positions = left_padded_batch(LENGTHS, SEQ_LEN, cfg.vocab_size)
    ref_logits, ref_hidden = hf_logits(model, tokens, mask, positions, hidden=True)

    logits, cache, hidden = forward(params, tokens, positions, config=cfg, mask_bt=mask,
                                    return_hidden=True)
    real = mask.astype(bool)
    assert cache is None
    assert logits.dtype == jnp.float32 and logits.shape == (4, SEQ_LEN, cfg.vocab_size)
    assert np.isfinite(np.asarray(logits)).all()  # padding rows included
    assert np.abs(np.asarray(logits) - ref_logits)[real].max() <= 1e-4
    assert hidden.shape[0] == len(ref_hidden) == cfg.num_layers + 1
    for ours, ref in zip(np.asarray(hidden), ref_hidden):
        assert np.abs(ours - ref)[real].max() <= 1e-4


# "small-odd-theta": a theta float32 cannot hold, which transformers rounds to float32 first.
@pytest.mark.parametrize("name", ["qwen2.5-7b", "llama-3.1-8b", "qwen3-4b-base", "small", "small-odd-theta"])
def test_inverse_frequencies_match_transformers_step_by_step(name):
    """transformers (and vLLM) compute inv_freq step by step in float32; a float64 computation
    rounded once differs by an ulp in a third of the frequencies. torch's vectorised float32
    power is not always correctly rounded, so one frequency of a preset may still differ (by
    one ulp, two after llama3's scaling, which repeats transformers' steps exactly)."""
    small = {"small": small_config("qwen2"),
             "small-odd-theta": small_config("qwen2", head_dim=128, rope_theta=123456.7)}
    cfg = small[name] if name in small else get_preset(name)
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf_config())
    module = transformers.AutoModelForCausalLM.from_config(hf_cfg).model.rotary_emb if name in small else None
    if module is None:  # a preset's rotary module alone: no 7B weights
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
        module = type(model.model.rotary_emb)(hf_cfg)
    ours, theirs = inverse_frequencies(cfg), module.inv_freq.numpy()
    assert ours.dtype == theirs.dtype == np.float32
    assert (ours != theirs).sum() <= 1, np.flatnonzero(ours != theirs)
    np.testing.assert_array_max_ulp(ours, theirs, maxulp=2)


def test_llama3_frequency_exactly_at_the_low_band_edge_matches_transformers():
    """transformers divides by `factor` only wavelengths strictly above the low-frequency edge:
    a wavelength exactly on it (frequency 0's 2 pi, with low_freq_factor = 16 / 2 pi) is
    interpolated with weight 0, i.e. divided once (1/8), not twice."""
    low = 16 / float(np.float32(2 * np.pi))
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": low, "high_freq_factor": 4 * low,
               "original_max_position_embeddings": 16}
    cfg = small_config("llama", rope_scaling=scaling)
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf_config())
    theirs = transformers.AutoModelForCausalLM.from_config(hf_cfg).model.rotary_emb.inv_freq.numpy()
    ours = inverse_frequencies(cfg)
    assert ours[0] == theirs[0] == np.float32(1 / 8)
    np.testing.assert_array_max_ulp(ours, theirs, maxulp=2)


def test_float32_logits_match_transformers_at_long_positions():
    """Rows placed at positions 30 000 on (a long rollout's tail): a one-ulp frequency error
    would show here as a 5e-4 logit error, not at the short positions of the test above."""
    cfg = small_config("qwen2", head_dim=128, rope_theta=1e6, max_position_embeddings=131072)
    model = hf_model(cfg, init_std=0.1)
    tokens, mask, positions = left_padded_batch(LENGTHS, SEQ_LEN, cfg.vocab_size)
    positions = np.where(mask == 1, positions + 30000, 0).astype(np.int32)
    ref = hf_logits(model, tokens, mask, positions)
    logits, _ = forward(params_of(cfg, model), tokens, positions, config=cfg, mask_bt=mask)
    assert np.abs(np.asarray(logits) - ref)[mask.astype(bool)].max() <= 2e-5


@pytest.mark.parametrize("name", sorted(bf16_configs()))
def test_bfloat16_top1_agrees_with_float32_transformers(name):
    """bf16 compute vs the float32 HF reference on small *trained* models (see the fixture's
    make_models.py for why random models are unsuitable). Positions start at 4000 so RoPE
    angles must be float32-accurate (training used positions < 32; RoPE is relative)."""
    cfg = bf16_configs()[name]
    tensors = dict(np.load(FIXTURES / f"{name}.npz"))
    model = hf_model(cfg)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()},
                                                strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    params = params_of(cfg, model)

    seq_len, lengths = 48, [48, 30, 41, 12, 48, 25]  # 204 real tokens, left-padded to 48
    tokens, mask, positions = left_padded_batch(lengths, seq_len, cfg.vocab_size)
    rows = progressions(len(lengths), seq_len, cfg.vocab_size, np.random.default_rng(1))
    for i, n in enumerate(lengths):
        tokens[i, seq_len - n:] = rows[i, :n]
    positions = positions + 4000
    ref = hf_logits(model, tokens, mask, positions)
    logits, _ = forward(params, tokens, positions, config=cfg, mask_bt=mask,
                        compute_dtype=jnp.bfloat16)
    real = mask.astype(bool)
    agree = (np.asarray(logits).argmax(-1) == ref.argmax(-1))[real].mean()
    assert agree >= 0.99, f"bf16 top-1 agreement {agree:.4f}"
    # The model really is decisive here (otherwise the agreement would say little).
    next_ok = (ref.argmax(-1)[:, :-1] == tokens[:, 1:])[real[:, :-1] & real[:, 1:]]
    assert next_ok.mean() >= 0.9


def _weighted_logprob_loss(logits, tokens, weights):
    """sum_t w_t * log p(tokens[t + 1] | tokens[:t + 1]): the shape of every RL/pretraining loss."""
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    chosen = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(chosen * weights)


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "loop"])
@pytest.mark.parametrize("family", ["qwen2_tied", "qwen3"])
def test_float32_gradients_match_transformers(family, scan_layers):
    """The backward pass (flattened matmuls, the hand-written attention VJP, both layer loops)
    against torch autograd through the transformers model, for every parameter."""
    kw = dict(FAMILIES[family])
    cfg = small_config(kw.pop("architecture"), scan_layers=scan_layers, **kw)
    model = hf_model(cfg, init_std=0.1)
    params = params_of(cfg, model)
    tokens, mask, positions = left_padded_batch(LENGTHS, SEQ_LEN, cfg.vocab_size)
    real_next = (mask[:, :-1] * mask[:, 1:]).astype(np.float32)
    weights = real_next * np.random.default_rng(5).standard_normal(real_next.shape).astype(np.float32)

    def loss(p):
        logits, _ = _forward(p, tokens, positions, config=cfg, mask_bt=mask)
        return _weighted_logprob_loss(logits, tokens, weights)

    grads = jax.jit(jax.grad(loss))(params)

    out = model(input_ids=torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(mask).long(),
                position_ids=torch.from_numpy(positions).long())
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    chosen = logp.gather(-1, torch.from_numpy(tokens[:, 1:]).long()[..., None])[..., 0]
    (chosen * torch.from_numpy(weights)).sum().backward()
    # params_from_hf is a per-tensor reshape/transpose, so it maps gradients as it maps weights.
    ref = params_from_hf(cfg, {n: p.grad.numpy() for n, p in model.named_parameters()}.__getitem__, np.float32)

    flat_ref = dict(jax.tree_util.tree_leaves_with_path(ref))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        r = np.asarray(flat_ref[path])
        scale = np.abs(r).max()
        assert scale > 0, path
        assert np.abs(np.asarray(g) - r).max() <= 1e-4 * max(scale, 1.0), jax.tree_util.keystr(path)


def test_sequence_attention_matches_autodiff_of_the_cache_attention():
    """`_sequence_attention` (custom VJP, per-KV-head layout) against autodiff of `_attention`
    (the plain formula the sampler uses), with GQA groups of 3 and rows whose first queries see
    no key at all (left padding): values and all three input gradients."""
    from azr_jax.models.decoder import _attention, _sequence_attention

    b, t, n, kv, h = 3, 10, 6, 2, 8
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, shape) for key, shape in
               zip(keys, [(b, t, n, h), (b, t, kv, h), (b, t, kv, h)]))
    d_out = jax.random.normal(keys[3], (b, t, n, h))
    key_mask = np.ones((b, t), bool)
    key_mask[1, :4] = False  # queries 0..3 of row 1 have no visible key
    key_mask[2, :9] = False
    allowed = np.tril(np.ones((t, t), bool))[None] & key_mask[:, None, :]
    prec = jax.lax.Precision.HIGHEST

    def value_and_vjp(attn):
        out, vjp = jax.vjp(lambda q, k, v: attn(q, k, v, jnp.asarray(allowed), prec), q, k, v)
        return (out,) + vjp(d_out)

    ours = jax.jit(lambda: value_and_vjp(_sequence_attention))()
    ref = jax.jit(lambda: value_and_vjp(_attention))()
    for name, a, r in zip(["out", "dq", "dk", "dv"], ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=1e-5, rtol=1e-5, err_msg=name)


def test_cache_attention_takes_its_softmax_in_float32_under_bfloat16():
    """With bfloat16 q/k/v the sampler's `_attention` still takes scores and softmax in float32,
    as the training pass's `_sequence_attention` does: the two agree to a bfloat16 ulp (a
    softmax of bfloat16-rounded scores is off by several)."""
    from azr_jax.models.decoder import _attention, _sequence_attention

    b, t, n, kv, h = 3, 10, 6, 2, 8
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key, shape in
               zip(keys, [(b, t, n, h), (b, t, kv, h), (b, t, kv, h)]))
    q = q * 4  # peaked scores, where the rounding of a bfloat16 softmax shows
    allowed = jnp.asarray(np.tril(np.ones((t, t), bool))[None].repeat(b, 0))
    prec = jax.lax.Precision.DEFAULT
    ours = np.asarray(_attention(q, k, v, allowed, prec), np.float32)
    ref = np.asarray(_sequence_attention(q, k, v, allowed, prec), np.float32)
    assert np.abs(ours - ref).max() <= 2 ** -8


def _float32_and_bfloat16_gradients(cfg, params):
    """Gradients of a log-softmax loss over 8 x 512 tokens (4096 terms in every sum over the
    batch) computed in float32 and in bfloat16."""
    from azr_jax.models.decoder import forward

    tokens = jax.random.randint(jax.random.key(1), (8, 512), 0, cfg.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(512), (8, 512))

    def loss(p, dtype):
        logits = forward(p, tokens, positions, config=cfg, compute_dtype=dtype)[0]
        return jnp.mean(jax.nn.log_softmax(logits.astype(jnp.float32))[..., 0])

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    return grad(params, jnp.float32), grad(params, jnp.bfloat16)


def _relative_error(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))


def test_bias_gradients_are_summed_in_float32_under_bfloat16_compute():
    """The q/k/v bias gradient sums over every token of the batch; added in bfloat16, that sum
    ran in bfloat16 and lost 2-4 % at 4096 tokens (the weights' error is ~0.5 %)."""
    from azr_jax.models import ModelConfig, init_params

    cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16, max_position_embeddings=4096)  # qwen2: biases
    exact, bf16 = _float32_and_bfloat16_gradients(cfg, init_params(cfg, jax.random.key(0)))
    rel = {k: _relative_error(exact["layers"][k], bf16["layers"][k]) for k in ("q_bias_nh", "k_bias_kh", "v_bias_kh")}
    assert max(rel.values()) < 0.015, rel


def test_float32_biases_keep_a_float32_gradient_under_bfloat16_compute():
    """The q/k/v biases are not rounded to bfloat16 on the way in, so their gradient is the
    float32 sum itself, not one rounded to bfloat16 (many of its values are not bf16 numbers)."""
    from azr_jax.models.decoder import forward, init_params

    cfg = small_config("qwen2", num_layers=1)
    params = init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, cfg.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(8), (2, 8))

    def loss(p):
        logits = forward(p, tokens, positions, config=cfg, compute_dtype=jnp.bfloat16)[0]
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grads = jax.jit(jax.grad(loss))(params)["layers"]
    for name in ("q_bias_nh", "k_bias_kh", "v_bias_kh"):
        g = np.asarray(grads[name])
        assert g.dtype == np.float32 and (g != g.astype(ml_dtypes.bfloat16).astype(np.float32)).mean() > 0.2, name


def test_norm_weight_gradients_are_summed_in_float32_under_bfloat16_compute():
    """RMSNorm rounds like transformers' bf16 module, yet its weight gradient (a sum over every
    token) must not be summed in bf16: that doubled the norms' gradient error at 4096 tokens."""
    from azr_jax.models import ModelConfig, init_params

    cfg = ModelConfig(architecture="qwen3", vocab_size=64, hidden_size=64, intermediate_size=128,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, attention_bias=False,
                      qk_norm=True, max_position_embeddings=4096)
    params = init_params(cfg, jax.random.key(0))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), params)
    exact, bf16 = _float32_and_bfloat16_gradients(cfg, params)
    rel = [_relative_error(exact["final_norm_d"], bf16["final_norm_d"])] + [
        _relative_error(exact["layers"][k], bf16["layers"][k]) for k in ("attn_norm_d", "mlp_norm_d", "q_norm_h", "k_norm_h")]
    # Measured: 0.0065 summed in float32, 0.013 summed in bf16.
    assert np.mean(rel) < 0.009, rel


@pytest.mark.parametrize("family", ["qwen2", "llama", "qwen3"])
def test_bfloat16_rms_norm_is_bit_identical_to_transformers(family):
    """transformers casts the normalised values to bf16 before the bf16 weight multiplies them;
    the other order (weight in float32, cast last) differs by one bf16 ulp in ~26 % of values."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    from azr_jax.models.decoder import rms_norm

    norm_class = {"qwen2": Qwen2RMSNorm, "llama": LlamaRMSNorm, "qwen3": Qwen3RMSNorm}[family]
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 96)) * 3).astype(np.float32)
    w = rng.normal(size=(96,)).astype(np.float32)
    norm = norm_class(96, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(w))
        ref = norm(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
    # Float32 master weights, as the trainer holds them, cast like transformers' bf16 weights.
    ours = jax.jit(rms_norm, static_argnums=2)(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w), 1e-6)
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(ours.astype(jnp.float32)), ref)


def test_every_norm_uses_the_configured_eps():
    """rms_norm_eps reaches the layer norms, the q/k norms and the final norm: with an eps large
    enough to matter (0.1, against the 1e-6 of the other tests) the logits still match."""
    cfg = small_config("qwen3", rms_norm_eps=0.1, num_layers=1)
    model = hf_model(cfg, init_std=0.1)
    tokens, mask, positions = left_padded_batch([8, 5], 8, cfg.vocab_size)
    ref = hf_logits(model, tokens, mask, positions)
    logits, _ = forward(params_of(cfg, model), tokens, positions, config=cfg, mask_bt=mask)
    assert np.abs(np.asarray(logits) - ref)[mask.astype(bool)].max() <= 1e-4


def test_rope_keeps_the_dtype_of_q_and_k():
    """apply_rope rotates in float32 and hands back q/k in their own dtype (bfloat16 stays bf16)."""
    cfg = small_config("llama")
    cos, sin = rope_cos_sin(jnp.arange(6)[None], inverse_frequencies(cfg))
    x = jax.random.normal(jax.random.key(0), (1, 6, 2, cfg.head_dim), jnp.bfloat16)
    out = apply_rope(x, cos, sin)
    assert out.dtype == jnp.bfloat16
    expected = apply_rope(x.astype(jnp.float32), cos, sin)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected.astype(jnp.bfloat16), np.float32))
