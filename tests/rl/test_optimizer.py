"""Optimizer: schedules by hand, and AdamW + global-norm clipping against torch."""

import jax
import numpy as np
import optax
import pytest
import torch

from azr_jax.config import OptimSection
from azr_jax.errors import UserError
from azr_jax.rl.optimizer import make_optimizer, make_schedule


def test_constant_schedule_with_warmup():
    sched = make_schedule(OptimSection(learning_rate=1e-3, warmup_steps=4))
    np.testing.assert_allclose([float(sched(s)) for s in (0, 2, 4, 100)], [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
    assert float(make_schedule(OptimSection(learning_rate=2e-6))(7)) == pytest.approx(2e-6)


def test_cosine_and_linear_decay_to_zero():
    cos = make_schedule(OptimSection(learning_rate=1.0, schedule="cosine", warmup_steps=2), total_steps=12)
    np.testing.assert_allclose([float(cos(s)) for s in (1, 2, 7, 12)], [0.5, 1.0, 0.5, 0.0], atol=1e-6)
    lin = make_schedule(OptimSection(learning_rate=1.0, schedule="linear"), total_steps=10)
    np.testing.assert_allclose([float(lin(s)) for s in (0, 5, 10)], [1.0, 0.5, 0.0], atol=1e-6)
    with pytest.raises(UserError, match="total number of steps"):
        make_schedule(OptimSection(schedule="cosine"))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adamw_with_clipping_matches_torch(weight_decay):
    cfg = OptimSection(learning_rate=1e-2, weight_decay=weight_decay, grad_clip_norm=1.0)
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) * scale for scale in (3.0, 0.05, 1.0)]

    opt = make_optimizer(cfg)
    params = {"w": w0}
    state = opt.init(params)
    for g in grads:
        updates, state = opt.update({"w": g}, state, params)
        params = optax.apply_updates(params, updates)

    tw = torch.nn.Parameter(torch.tensor(w0))
    topt = torch.optim.AdamW([tw], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    for g in grads:
        tw.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_([tw], 1.0)
        topt.step()
    np.testing.assert_allclose(np.asarray(params["w"]), tw.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_a_skipped_step_advances_the_schedule_but_not_adam():
    """verl skips a non-finite step but still steps its scheduler: after a skipped first step
    the second uses schedule(1), not schedule(0) (0 during warmup, which would not move params)."""
    import jax.numpy as jnp

    from azr_jax.rl.optimizer import apply_if_finite

    opt = make_optimizer(OptimSection(learning_rate=1.0, warmup_steps=2, grad_clip_norm=0.0, weight_decay=0.0))
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    bad, good = {"w": jnp.full(3, jnp.nan)}, {"w": jnp.ones(3)}
    params, state, skipped = apply_if_finite(opt, bad, jnp.linalg.norm(bad["w"]), state, params)
    assert float(skipped) == 1.0 and np.array_equal(params["w"], np.ones(3))
    params, state, skipped = apply_if_finite(opt, good, jnp.linalg.norm(good["w"]), state, params)
    # Adam's first step (bias-corrected) moves each weight by the rate: schedule(1) = 0.5.
    assert float(skipped) == 0.0
    np.testing.assert_allclose(np.asarray(params["w"]), 0.5, rtol=1e-5)


def test_null_grad_clip_norm_from_the_config_turns_clipping_off():
    """`--set optim.grad_clip_norm=null` is the documented switch; a large gradient then reaches
    AdamW unclipped (AdamW's first step is scale-free, so compare the second moment)."""
    from azr_jax.config import Config, apply_overrides

    cfg = apply_overrides(Config(), ["optim.grad_clip_norm=null", "optim.learning_rate=1e-2"])
    assert cfg.optim.grad_clip_norm is None
    params, grad = {"w": np.zeros(2, np.float32)}, {"w": np.array([30.0, 40.0], np.float32)}
    norms = {}
    for clip in (None, 1.0):
        opt = make_optimizer(OptimSection(learning_rate=1e-2, grad_clip_norm=clip))
        _, state = opt.update(grad, opt.init(params), params)
        nu = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
              if isinstance(s, optax.ScaleByAdamState)][0].nu["w"]
        norms[clip] = float(np.sqrt(np.asarray(nu).sum() / (1 - 0.999)))
    np.testing.assert_allclose([norms[None], norms[1.0]], [50.0, 1.0], rtol=1e-4)


def test_every_adamw_setting_reaches_the_update_as_torch_reads_it():
    """Non-default b1, b2, eps, weight decay and clip norm, on a matrix and a vector (weight decay
    applies to every parameter, biases and norms too, as torch's AdamW does)."""
    cfg = OptimSection(learning_rate=1e-2, b1=0.8, b2=0.95, eps=1e-3, weight_decay=0.1, grad_clip_norm=0.5)
    rng = np.random.default_rng(1)
    w0 = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) * s for k, v in w0.items()} for s in (2.0, 0.01, 0.3)]

    opt = make_optimizer(cfg)
    params = dict(w0)
    state = opt.init(params)
    for g in grads:
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)

    tp = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in w0.items()}
    topt = torch.optim.AdamW(list(tp.values()), lr=1e-2, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1)
    for g in grads:
        for k, p in tp.items():
            p.grad = torch.tensor(g[k])
        torch.nn.utils.clip_grad_norm_(list(tp.values()), 0.5)
        topt.step()
    for k, p in tp.items():
        np.testing.assert_allclose(np.asarray(params[k]), p.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_an_infinite_gradient_norm_skips_the_step_too(bad):
    import jax.numpy as jnp

    from azr_jax.rl.optimizer import apply_if_finite

    opt = make_optimizer(OptimSection(learning_rate=1.0, grad_clip_norm=0.0))
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    grads = {"w": jnp.array([bad, 1.0, 1.0])}
    new_params, _, skipped = apply_if_finite(opt, grads, jnp.linalg.norm(grads["w"]), state, params)
    assert float(skipped) == 1.0
    np.testing.assert_array_equal(np.asarray(new_params["w"]), 1.0)


def test_schedules_refuse_a_negative_warmup_and_no_steps_to_decay_over():
    with pytest.raises(UserError, match="warmup_steps must be >= 0"):
        make_schedule(OptimSection(warmup_steps=-1))
    for schedule in ("cosine", "linear"):
        with pytest.raises(UserError, match="total number of steps"):
            make_schedule(OptimSection(schedule=schedule, warmup_steps=5), total_steps=5)


def test_linear_decay_after_a_warmup_reaches_zero_at_total_steps():
    # `linear` decays over total_steps - warmup_steps, as `cosine` does: 2 warmup steps to the
    # peak 1.0, then down by 0.1 a step to 0 at step 12 (not over 12 steps, which would stop at 1/6).
    lin = make_schedule(OptimSection(learning_rate=1.0, schedule="linear", warmup_steps=2), total_steps=12)
    np.testing.assert_allclose([float(lin(s)) for s in (0, 1, 2, 7, 12)], [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_the_smallest_accepted_eps_keeps_a_zero_gradient_finite():
    """config.MIN_ADAM_EPS is the bound validation puts on optim.eps: at it a parameter whose
    gradient is 0 (an untied embedding row no token uses) stays put; float32 flushes a smaller
    eps to 0 and the same step gave 0 / 0 = NaN weights."""
    import jax.numpy as jnp

    from azr_jax.config import MIN_ADAM_EPS

    def one_step(eps):
        opt = make_optimizer(OptimSection(learning_rate=1e-3, eps=eps))
        params = {"w": jnp.ones(2)}
        updates, _ = jax.jit(opt.update)({"w": jnp.array([1.0, 0.0])}, opt.init(params), params)
        return np.asarray(optax.apply_updates(params, updates)["w"])

    np.testing.assert_allclose(one_step(MIN_ADAM_EPS), [1.0 - 1e-3, 1.0], rtol=1e-6)
    assert np.isnan(one_step(1e-50)[1])  # why the bound: 0 in float32, the zero-gradient weight is NaN


def test_the_largest_accepted_betas_keep_the_update_finite():
    """Validation refuses an optim.b1/b2 that float32 rounds to 1 (AdamW's bias correction
    1 - b**t is then 0); the largest it accepts, 1 - 2**-24, still gives finite weights."""
    import jax.numpy as jnp

    def one_step(b1, b2):
        opt = make_optimizer(OptimSection(learning_rate=1e-3, b1=b1, b2=b2))
        params = {"w": jnp.ones(2)}
        updates, _ = jax.jit(opt.update)({"w": jnp.array([1.0, 0.0])}, opt.init(params), params)
        return np.asarray(optax.apply_updates(params, updates)["w"])

    largest = 1 - 2**-24
    assert np.isfinite(one_step(largest, largest)).all()
    assert not np.isfinite(one_step(0.9, 0.99999999)).all()  # why: float32 holds it as 1
