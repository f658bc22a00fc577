"""azr-jax: the Absolute Zero Reasoner in JAX.

Public API (DESIGN.md §3.2): `azr_jax.models.from_pretrained`, `azr_jax.config.load_config`.
Submodules import JAX lazily where they can, so host-only tools stay light; `import azr_jax` alone
imports none of them, and `azr_jax.models` (or any other subpackage) is imported on first use.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("azr", "bench", "config", "data", "errors", "eval", "jsonl", "metrics", "models", "nano", "plots",
               "rl", "sampling", "sandbox", "sharding")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
