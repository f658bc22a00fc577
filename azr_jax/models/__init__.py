"""The policy model: config + presets, pure JAX decoder with KV cache, HF name mapping.

Exports are resolved lazily (PEP 562) so that host-only code importing
`azr_jax.models.config` or `azr_jax.models.tokenizer` does not pull in JAX.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelConfig": "azr_jax.models.config",
    "PRESETS": "azr_jax.models.presets",
    "get_preset": "azr_jax.models.presets",
    "register_preset": "azr_jax.models.presets",
    "init_params": "azr_jax.models.decoder",
    "param_axes": "azr_jax.models.decoder",
    "param_shapes": "azr_jax.models.decoder",
    "param_shardings": "azr_jax.models.decoder",
    "forward": "azr_jax.models.decoder",
    "init_cache": "azr_jax.models.decoder",
    "cache_axes": "azr_jax.models.decoder",
    "hf_tensor_specs": "azr_jax.models.hf_mapping",
    "params_from_hf": "azr_jax.models.hf_mapping",
    "hf_from_params": "azr_jax.models.hf_mapping",
    "from_pretrained": "azr_jax.models.checkpoint_hf",
    "Model": "azr_jax.models.checkpoint_hf",
    "read_hf_config": "azr_jax.models.checkpoint_hf",
    "load_tokenizer": "azr_jax.models.tokenizer",
    "Tokenizer": "azr_jax.models.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'azr_jax.models' has no attribute {name!r}")
