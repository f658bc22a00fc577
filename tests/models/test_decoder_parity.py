"""Parity of the decoder with transformers on left-padded batches (CPU, no downloads)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from hf_reference import (  # noqa: E402
    bf16_configs, hf_logits, hf_model, left_padded_batch, params_of, progressions, small_config,
)

from azr_jax.models.decoder import forward as _forward  # noqa: E402

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
