"""Named model shapes (`get_preset`), matching the published Hugging Face config.json files.

A preset fixes only the shape and numerics; weights come from an HF checkpoint directory
(`model.hf_dir`), whose own config.json then takes precedence. `PRESETS` is a plain dict that
other modules extend with `register_preset` (e.g. the nano model).
"""

from __future__ import annotations

import difflib

from azr_jax.errors import UserError
from azr_jax.models.config import ModelConfig

_QWEN25_BOS_EOS = dict(bos_token_id=151643, eos_token_id=151643, pad_token_id=151643)


def _qwen25(**shape) -> ModelConfig:
    base = dict(
        architecture="qwen2", rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        attention_bias=True, qk_norm=False, **_QWEN25_BOS_EOS,
    )
    base.update(shape)
    return ModelConfig(**base)


_QWEN25_3B = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16,
    num_kv_heads=2, head_dim=128, tie_word_embeddings=True, max_position_embeddings=32768,
)
_QWEN25_7B = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
    num_kv_heads=4, head_dim=128, tie_word_embeddings=False,
)
_QWEN25_14B = dict(
    vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_layers=48, num_heads=40,
    num_kv_heads=8, head_dim=128, tie_word_embeddings=False, rms_norm_eps=1e-5,
)

PRESETS: dict[str, ModelConfig] = {
    # Qwen2.5 base models. The 7B/14B checkpoints pad the vocabulary to 152064 rows.
    "qwen2.5-0.5b": _qwen25(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
        num_kv_heads=2, head_dim=64, tie_word_embeddings=True, max_position_embeddings=32768,
    ),
    "qwen2.5-1.5b": _qwen25(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
        num_kv_heads=2, head_dim=128, tie_word_embeddings=True, max_position_embeddings=131072,
    ),
    "qwen2.5-3b": _qwen25(**_QWEN25_3B),
    "qwen2.5-7b": _qwen25(**_QWEN25_7B, max_position_embeddings=131072),
    "qwen2.5-14b": _qwen25(**_QWEN25_14B, max_position_embeddings=131072),
    # Qwen2.5-Coder: same shapes as the base models of the same size, 32k context.
    "qwen2.5-coder-3b": _qwen25(**_QWEN25_3B),
    "qwen2.5-coder-7b": _qwen25(**_QWEN25_7B, max_position_embeddings=32768),
    "qwen2.5-coder-14b": _qwen25(**_QWEN25_14B, max_position_embeddings=32768),
    "llama-3.1-8b": ModelConfig(
        architecture="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500_000.0,
        rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        },
        rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False, qk_norm=False,
        max_position_embeddings=131072, bos_token_id=128000, eos_token_id=128001,
    ),
    "qwen3-4b-base": ModelConfig(
        architecture="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728,
        num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=1_000_000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False, qk_norm=True,
        max_position_embeddings=32768, **_QWEN25_BOS_EOS,
    ),
}


def register_preset(name: str, config: ModelConfig, *, overwrite: bool = False) -> None:
    """Add a named shape (e.g. the nano model); refuses to silently replace an existing one."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"register_preset expects a ModelConfig, got {type(config).__name__}")
    if name in PRESETS and not overwrite and PRESETS[name] != config:
        raise ValueError(f"model preset {name!r} is already registered with a different config")
    PRESETS[name] = config


def get_preset(name: str) -> ModelConfig:
    import azr_jax.nano.preset  # noqa: F401  (registers "nano", the default model.preset)

    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown model preset {name!r}{hint} (known: {sorted(PRESETS)})")
    return PRESETS[name]
