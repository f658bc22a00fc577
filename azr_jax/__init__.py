"""azr-jax: the Absolute Zero Reasoner in JAX.

Public API (DESIGN.md §3.2): `azr_jax.models.from_pretrained`, `azr_jax.config.load_config`.
Submodules import JAX lazily where they can, so host-only tools stay light.
"""

__version__ = "0.1.0"
