"""The nano base model: procedural corpus -> SentencePiece tokenizer -> small decoder.

    azr-jax pretrain --config configs/nano_base.py --out azr_jax/nano/base

Deterministic for these seeds; the shipped checkpoint in azr_jax/nano/base was built with
exactly this command (its pretrain_record.json records the settings and losses).
"""

from azr_jax.nano.run_config import nano_base_config

config = nano_base_config()
