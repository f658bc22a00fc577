"""Rotary position embeddings, computed as transformers computes them for Llama/Qwen.

Half-rotation convention: the head dimension is split into two halves [x1, x2] and rotated as
(x1 cos - x2 sin, x2 cos + x1 sin), frequency i shared by x1[i] and x2[i]. (This is HF's
`rotate_half` layout, not the interleaved-pairs layout of the original RoPE paper; HF
checkpoints' q/k projections are permuted for it, so the layouts are not interchangeable.)
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from azr_jax.models.config import ModelConfig


def inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """inv_freq [H/2] as float32, including `llama3` scaling, as transformers computes them.

    Computed on the host, so it is a constant that does not depend on the accelerator's
    transcendental functions, and in float32 step by step as transformers (and vLLM) do: one
    float64 computation rounded at the end differs from theirs by an ulp in about a third of
    the frequencies, a rotation error that grows with the position (2e-3 rad at 32k). The
    power alone is taken in float64 and rounded (numpy's float32 power is less accurate than
    torch's), and `a / t` is written as torch evaluates it, `t.reciprocal() * a`.
    """
    h = cfg.head_dim
    f32 = np.float32
    exponents = np.arange(0, h, 2, dtype=np.int64).astype(f32) / f32(h)
    powers = (np.float64(f32(cfg.rope_theta)) ** exponents.astype(np.float64)).astype(f32)
    inv_freq = f32(1.0) / powers
    scaling = cfg.rope_scaling
    if scaling is not None and scaling["rope_type"] == "llama3":
        factor = f32(scaling["factor"])
        low, high = f32(scaling["low_freq_factor"]), f32(scaling["high_freq_factor"])
        old_len = scaling["original_max_position_embeddings"]
        low_freq_wavelen = f32(old_len / scaling["low_freq_factor"])
        high_freq_wavelen = f32(old_len / scaling["high_freq_factor"])
        wavelen = (f32(1.0) / inv_freq) * f32(2 * math.pi)
        # Long wavelengths are slowed down by `factor`, short ones kept, and the band in
        # between interpolated smoothly.
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = ((f32(1.0) / wavelen) * f32(old_len) - low) / f32(scaling["high_freq_factor"] - scaling["low_freq_factor"])
        smoothed = (f32(1.0) - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
        inv_freq = np.where(is_medium, smoothed, scaled)
    return inv_freq.astype(f32)


def rope_cos_sin(positions_bt: jnp.ndarray, inv_freq_f: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos, sin [B, T, H/2] in float32.

    The angle position * inv_freq reaches ~1e5 rad at long contexts, where a bfloat16 (or a
    TPU default-precision matmul, which rounds inputs to bfloat16) error of one part in 256 would
    scramble the rotation entirely. So the angles are an elementwise float32 product (never a
    matmul), i.e. full float32 precision on every backend.
    """
    angles_btf = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq_f, jnp.float32)
    return jnp.cos(angles_btf), jnp.sin(angles_btf)


def apply_rope(x_btnh: jnp.ndarray, cos_btf: jnp.ndarray, sin_btf: jnp.ndarray) -> jnp.ndarray:
    """Rotate q or k [B, T, heads, H] in float32; returns x's dtype."""
    half = x_btnh.shape[-1] // 2
    x = x_btnh.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos_btf[:, :, None, :], sin_btf[:, :, None, :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_btnh.dtype)
