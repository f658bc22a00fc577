"""The `nano` model preset: a small Qwen2-style decoder sized for a laptop CPU.

It runs through the same `forward`, sampler and update step as the real presets; only the
shape differs. `vocab_size` is the nano tokenizer's target size (the trained tokenizer may
have fewer pieces; the extra rows are never emitted after training). Plain Python, no JAX.
"""

from azr_jax.models.config import ModelConfig
from azr_jax.models.presets import register_preset

NANO = ModelConfig(
    architecture="qwen2", vocab_size=1024, hidden_size=128, intermediate_size=512, num_layers=4,
    num_heads=4, num_kv_heads=2, head_dim=32, rope_theta=10_000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, attention_bias=True, qk_norm=False, max_position_embeddings=2048,
    bos_token_id=2, eos_token_id=3, pad_token_id=0,
)

register_preset("nano", NANO)
