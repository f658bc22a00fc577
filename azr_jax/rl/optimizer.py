"""Optimizer from `config.OptimSection`: global-norm clipping, then AdamW on a schedule.

Reference (AZR_SPEC §4.3): AdamW, lr 1e-6 constant, betas (0.9, 0.999), clip-norm 1.0, weight
decay 0.0 (master) / 0.01 (paper branch), applied to every parameter as torch's AdamW does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from azr_jax.errors import UserError


def make_schedule(optim_cfg, total_steps: int | None = None) -> optax.Schedule:
    """Learning rate per optimizer step: linear warmup from 0 over `warmup_steps`, then

    - `constant`: the peak rate;
    - `cosine`: cosine decay from the peak to 0 at `total_steps`;
    - `linear`: linear decay from the peak to 0 at `total_steps`.
    """
    peak = optim_cfg.learning_rate
    warmup = optim_cfg.warmup_steps
    if warmup < 0:
        raise UserError(f"optim.warmup_steps must be >= 0, got {warmup}")
    if optim_cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        if total_steps is None or total_steps <= warmup:
            raise UserError(
                f"optim.schedule={optim_cfg.schedule!r} needs the total number of steps "
                f"(> optim.warmup_steps={warmup}), got {total_steps}"
            )
        decay_steps = total_steps - warmup
        if optim_cfg.schedule == "cosine":
            after = optax.cosine_decay_schedule(peak, decay_steps, alpha=0.0)
        elif optim_cfg.schedule == "linear":
            after = optax.linear_schedule(peak, 0.0, decay_steps)
        else:
            raise UserError(f"optim.schedule must be constant, cosine or linear, got {optim_cfg.schedule!r}")
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], boundaries=[warmup])


def make_optimizer(optim_cfg, total_steps: int | None = None) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip_norm) followed by AdamW(schedule); a clip of None (or <= 0) disables it."""
    adamw = optax.adamw(
        learning_rate=make_schedule(optim_cfg, total_steps),
        b1=optim_cfg.b1,
        b2=optim_cfg.b2,
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
    )
    if optim_cfg.grad_clip_norm is not None and optim_cfg.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip_norm), adamw)
    return adamw


def apply_if_finite(optimizer: optax.GradientTransformation, grads, grad_norm, opt_state, params):
    """One optimizer step, skipped when the gradient norm `grad_norm` (the caller's, also logged)
    is NaN or infinite, as verl skips such a step: params and the Adam state (moments and their
    bias-correction count) stay as they were, so one bad batch cannot poison the weights or the
    moments. The learning-rate schedule still advances, as verl steps its scheduler either way,
    so the rate used stays schedule(update count), the one logged.

    Returns (params, opt_state, skipped) with `skipped` a float32 0/1 scalar.
    """
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(grad_norm)

    def keep_if_finite(new, old):
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    def is_schedule(x):
        return isinstance(x, optax.ScaleByScheduleState)

    kept_state = keep_if_finite(new_opt_state, opt_state)
    kept_state = jax.tree.map(lambda kept, new: new if is_schedule(kept) else kept, kept_state, new_opt_state,
                              is_leaf=is_schedule)
    return keep_if_finite(new_params, params), kept_state, 1.0 - finite.astype(jnp.float32)
