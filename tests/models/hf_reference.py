"""Helpers for parity tests: small random transformers models and their azr-jax twins."""

from __future__ import annotations

import numpy as np
import torch
import transformers

from azr_jax.models.config import ModelConfig
from azr_jax.models.hf_mapping import params_from_hf


def small_config(architecture: str, **overrides) -> ModelConfig:
    """A few-layer model with head_dim != hidden/heads, GQA and a 512-token vocabulary."""
    base = dict(
        architecture=architecture, vocab_size=512, hidden_size=64, intermediate_size=160,
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=24, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=architecture == "qwen2",
        qk_norm=architecture == "qwen3", max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    base.update(overrides)
    return ModelConfig(**base)


def hf_model(cfg: ModelConfig, seed: int = 0, init_std: float | None = None):
    """A random float32 transformers model for `cfg` (eager attention, eval mode)."""
    torch.manual_seed(seed)
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf_config())
    hf_cfg._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
    model.eval()
    if init_std is not None:  # larger weights give peaked distributions (meaningful top-1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, init_std)
                elif "bias" in name:
                    p.normal_(0.0, init_std)
                else:
                    p.uniform_(0.5, 1.5)  # norm weights: random, so a wrong mapping shows
    return model


def params_of(cfg: ModelConfig, model) -> dict:
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return params_from_hf(cfg, state.__getitem__, np.float32)


def left_padded_batch(lengths: list[int], seq_len: int, vocab: int, seed: int = 0):
    """tokens, mask, positions [B, seq_len] for left-padded rows of the given real lengths."""
    rng = np.random.default_rng(seed)
    b = len(lengths)
    tokens = rng.integers(3, vocab, size=(b, seq_len)).astype(np.int32)
    mask = np.zeros((b, seq_len), np.int32)
    for i, n in enumerate(lengths):
        mask[i, seq_len - n:] = 1
    tokens = np.where(mask == 1, tokens, 0).astype(np.int32)
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int32)
    return tokens, mask, positions


def hf_logits(model, tokens, mask, positions, hidden: bool = False):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            position_ids=torch.from_numpy(positions).long(),
            output_hidden_states=hidden,
        )
    logits = out.logits.float().numpy()
    if hidden:
        return logits, [h.float().numpy() for h in out.hidden_states]
    return logits


def progressions(n: int, seq_len: int, vocab: int, rng: np.random.Generator) -> np.ndarray:
    """Arithmetic progressions mod (vocab - 3), shifted past the 3 special ids; step 1..4."""
    start = rng.integers(0, vocab - 3, size=(n, 1))
    step = rng.integers(1, 5, size=(n, 1))
    return ((start + step * np.arange(seq_len)[None]) % (vocab - 3) + 3).astype(np.int32)


def bf16_configs() -> dict[str, ModelConfig]:
    """The four trained fixture models of tests/fixtures/decoder_bf16 (one per family)."""
    shape = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                 num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=8192)
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return {
        "qwen2_tied": small_config("qwen2", tie_word_embeddings=True, **shape),
        "qwen2_untied": small_config("qwen2", **shape),
        "llama_llama3": small_config("llama", rope_theta=500000.0, rope_scaling=llama3, **shape),
        "qwen3": small_config("qwen3", **shape),
    }
