"""RL for AZR: advantage estimators, PPO-style policy losses, optimizer, and the jitted update step.

Modules: `advantages` (estimator registry incl. TRR++), `losses` (clipped surrogate, entropy, KL,
aggregation), `optimizer` (optax AdamW + clipping + schedules), `logprobs` (per-token logprobs
and entropy from the decoder), `update` (`TrainState`, `init_train_state`, `make_train_step`).
Formulas and a minimal driving example: docs/rl.md. Exports resolve lazily, like azr_jax.models.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "REGISTRY": "azr_jax.rl.advantages",
    "compute_advantages": "azr_jax.rl.advantages",
    "trrpp_group_id": "azr_jax.rl.advantages",
    "make_optimizer": "azr_jax.rl.optimizer",
    "make_schedule": "azr_jax.rl.optimizer",
    "token_logprobs": "azr_jax.rl.logprobs",
    "token_logprobs_and_entropy": "azr_jax.rl.logprobs",
    "TrainState": "azr_jax.rl.update",
    "init_train_state": "azr_jax.rl.update",
    "make_grad_fn": "azr_jax.rl.update",
    "make_train_step": "azr_jax.rl.update",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'azr_jax.rl' has no attribute {name!r}")
