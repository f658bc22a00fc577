"""RL for AZR: advantage estimators, PPO-style policy losses, optimizer, and the jitted update step.

Modules: `advantages` (estimator registry incl. TRR++), `losses` (clipped surrogate, entropy, KL,
aggregation), `optimizer` (optax AdamW + clipping + schedules), `logprobs` (per-token logprobs
and entropy from the decoder), `update` (`TrainState`, `make_train_step`). See docs/rl.md.
"""
