"""The jitted update step: micro-batching, meshes and remat change nothing; it learns; it checks input.

Adam's first step is nearly sign(g) * lr, which would hide gradient differences, so these tests
use eps = 1 (update ~ lr * g for small g): equal params after one step then mean equal gradients.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from azr_jax.config import MeshSection, OptimSection, RLSection
from azr_jax.errors import UserError
from azr_jax.models.config import ModelConfig
from azr_jax.models.decoder import init_params
from azr_jax.rl import advantages
from azr_jax.rl.logprobs import token_logprobs, token_logprobs_and_entropy
from azr_jax.rl.losses import clipped_surrogate
from azr_jax.rl.update import BATCH_AXES, init_train_state, make_grad_fn, make_reference_logprobs, make_train_step
from azr_jax.sharding import logical_to_pspec, make_mesh

# Dimensions divisible by 8 (fsdp) and 4 (tensor) so every parameter is really sharded.
CFG = ModelConfig(
    architecture="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
    num_heads=8, num_kv_heads=4, head_dim=8, rope_theta=10000.0,
)
RULES = MeshSection().rules
# The CPU test run forces 8 host devices (tests/conftest.py); on one GPU these tests cannot run.
NEEDS_8_DEVICES = pytest.mark.skipif(jax.device_count() < 8, reason="needs an 8-device mesh")
OPTIM = OptimSection(learning_rate=0.5, eps=1.0, weight_decay=0.01)
# "batch": the ratio uses the batch's off-policy old_logprobs, so the clip is exercised.
RL = RLSection(micro_batch_size=16, entropy_coef=0.01, old_logprobs="batch")
B, T = 16, 12
PARAMS = init_params(CFG, jax.random.key(0))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(2, 5, B)
    response = rng.integers(1, T - 5, B)
    start = T - 5 - prompt  # left padding, response after the prompt, then right padding
    idx = np.arange(T)[None, :]
    mask = ((idx >= start[:, None]) & (idx < (start + prompt + response)[:, None])).astype(np.int32)
    loss_mask = ((idx >= (start + prompt)[:, None]) & (mask == 1)).astype(np.float32)
    tokens = np.where(mask == 1, rng.integers(2, CFG.vocab_size, (B, T)), 0).astype(np.int32)
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None).astype(np.int32)
    group_ids = rng.integers(0, advantages.NUM_TRRPP_GROUPS, B)
    adv = advantages.trr_plus_plus(rng.normal(size=B), loss_mask, group_ids, num_groups=advantages.NUM_TRRPP_GROUPS)
    batch = dict(tokens=tokens, positions=positions, mask=mask, loss_mask=loss_mask, advantages=np.asarray(adv))
    logp = np.asarray(_logprobs_fn(jnp.float32)(PARAMS, batch))
    batch["old_logprobs"] = (logp + rng.normal(0, 0.3, (B, T)) * loss_mask).astype(np.float32)
    return batch


@functools.cache
def _logprobs_fn(compute_dtype):
    return jax.jit(lambda p, b: token_logprobs(p, b, CFG, compute_dtype))


@functools.cache
def _step_fn(micro: int, mesh_shape: tuple = (), remat: str = "none", compute_dtype=jnp.float32):
    """Compiled steps are shared between tests (compiling dominates their cost)."""
    mesh = make_mesh(dict(mesh_shape)) if mesh_shape else None
    rl = dataclasses.replace(RL, micro_batch_size=micro)
    step = make_train_step(CFG, rl, OPTIM, mesh=mesh, rules=RULES, compute_dtype=compute_dtype, remat=remat)
    return step, mesh


def _one_step(micro, mesh_shape=(), remat="none"):
    step, mesh = _step_fn(micro, mesh_shape, remat)
    state = init_train_state(CFG, OPTIM, PARAMS, mesh=mesh, rules=RULES)
    new_state, metrics = step(state, BATCH)
    return new_state, jax.tree.map(float, metrics)


BATCH = _batch()


@pytest.fixture(scope="module")
def full_batch_step():
    return _one_step(16)


def _assert_same_params(a, b, atol=1e-6):
    diffs = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y)))), a, b)
    assert max(jax.tree.leaves(diffs)) <= atol, diffs


def test_full_batch_step_moves_params_and_reports_metrics(full_batch_step):
    state, metrics = full_batch_step
    moved = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), state.params, PARAMS)
    assert min(jax.tree.leaves(moved)) > 0  # every parameter (norms, biases too) got an update
    assert int(state.step) == 1
    assert metrics["tokens"] == BATCH["loss_mask"].sum()
    assert 0 < metrics["clip_frac"] < 1 and metrics["grad_norm"] > 0 and metrics["lr"] == pytest.approx(0.5)
    assert metrics["entropy"] == pytest.approx(np.log(CFG.vocab_size), rel=0.05)  # near-uniform random model
    assert metrics["loss"] == pytest.approx(metrics["pg_loss"] - 0.01 * metrics["entropy"], abs=1e-6)


def test_micro_batched_step_equals_full_batch(full_batch_step):
    state, metrics = _one_step(4)
    _assert_same_params(state.params, full_batch_step[0].params)
    _assert_same_params(state.opt_state, full_batch_step[0].opt_state)
    for key in ("loss", "pg_loss", "entropy", "clip_frac", "grad_norm"):
        assert metrics[key] == pytest.approx(full_batch_step[1][key], rel=1e-5, abs=1e-7), key


def test_micro_batched_grads_equal_the_hand_weighted_per_micro_batch_objective():
    """make_grad_fn's gradient under `token-mean-per-micro-batch` is that of sum(w * per-token
    loss) with w written out by hand. The padded and bucketed updates are otherwise only compared
    with each other, which cannot see a bug both share in calling `aggregation_weights`
    (chunk_rows = the whole batch, or the wrong micro_rows). (`token-mean` is checked against
    torch in test_grad_parity.)"""
    micro = 2
    batch = {k: v[:6].copy() for k, v in BATCH.items()}
    batch["loss_mask"][2:4] = 0  # the 2nd block of 2 rows has no loss token (all unjudged rows)
    mask = batch["loss_mask"]
    # A token mean inside each block of `micro` consecutive rows, averaged over the blocks with
    # a loss token (docs/rl.md): counting the empty block would scale every weight by 2/3.
    blocks = [slice(first, first + micro) for first in range(0, len(mask), micro)]
    live = [b for b in blocks if mask[b].sum() > 0]
    assert [mask[b].sum() for b in blocks] == [8, 0, 7]  # unequal blocks: not the batch's token mean
    weights = np.zeros_like(mask)
    for b in live:
        weights[b] = mask[b] / mask[b].sum() / len(live)
    rl = dataclasses.replace(RL, micro_batch_size=micro, loss_agg="token-mean-per-micro-batch")

    def hand_loss(params):
        logp, entropy = token_logprobs_and_entropy(params, batch, CFG, jnp.float32)
        pg = clipped_surrogate(logp, batch["old_logprobs"], batch["advantages"], eps_low=rl.clip_eps_low,
                               eps_high=rl.clip_eps_high, dual_clip=rl.dual_clip)["pg_loss"]
        return jnp.sum(weights * (pg - rl.entropy_coef * entropy))

    want = jax.jit(jax.grad(hand_loss))(PARAMS)
    # The scan's micro-batches are strided (rows 0 and 3, 1 and 4, 2 and 5), the weighting's blocks
    # consecutive rows: only weights computed over the whole batch give the hand gradient.
    got, metrics = jax.jit(make_grad_fn(CFG, rl, compute_dtype=jnp.float32))(PARAMS, batch)
    assert float(metrics["tokens"]) == 15
    jax.tree_util.tree_map_with_path(
        lambda path, g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path)),
        got, want)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mesh_shape,micro,remat,q_spec",
    [
        # FSDP x tensor parallel, 2 micro-batches, remat keeping the matmuls
        ((("data", 1), ("fsdp", 2), ("tensor", 4)), 8, "dots", P(None, "fsdp", "tensor")),
        # pure FSDP over 8 devices, one micro-batch, full remat
        ((("data", 1), ("fsdp", 8), ("tensor", 1)), 16, "full", P(None, "fsdp")),
    ],
)
@NEEDS_8_DEVICES
def test_sharded_step_equals_single_device(full_batch_step, mesh_shape, micro, remat, q_spec):
    state, metrics = _one_step(micro, mesh_shape, remat)
    _assert_same_params(state.params, full_batch_step[0].params)
    assert metrics["loss"] == pytest.approx(full_batch_step[1]["loss"], rel=1e-5)
    q_proj = state.params["layers"]["q_proj_dnh"]
    assert q_proj.sharding.spec == q_spec
    assert q_proj.addressable_shards[0].data.size == q_proj.size // 8  # each device holds 1/8
    mu = state.opt_state[1][0].mu["layers"]["q_proj_dnh"]  # Adam moments are sharded like params
    assert mu.sharding.spec == q_spec


@pytest.mark.slow
@NEEDS_8_DEVICES
def test_layer_loop_sharded_step_equals_scanned_single_device(full_batch_step):
    """`scan_layers=False` (the Python layer loop) on an FSDP x tensor mesh with full remat gives
    the scanned single-device step."""
    cfg = CFG.replace(scan_layers=False)
    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    step = make_train_step(cfg, dataclasses.replace(RL, micro_batch_size=8), OPTIM, mesh=mesh, rules=RULES,
                           compute_dtype=jnp.float32, remat="full")
    state, metrics = step(init_train_state(cfg, OPTIM, PARAMS, mesh=mesh, rules=RULES), BATCH)
    _assert_same_params(state.params, full_batch_step[0].params)
    assert float(metrics["loss"]) == pytest.approx(full_batch_step[1]["loss"], rel=1e-5)


def test_bf16_steps_learn_with_float32_master_weights_and_donated_state():
    # bfloat16 compute, float32 master weights; on-policy steps as AZR runs them (ratio = 1).
    step, _ = _step_fn(4, compute_dtype=jnp.bfloat16)
    logp_fn = _logprobs_fn(jnp.bfloat16)
    state = init_train_state(CFG, OPTIM, jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    batch = dict(BATCH)
    before = np.asarray(logp_fn(state.params, batch))
    first_state = state
    for _ in range(3):
        batch["old_logprobs"] = np.asarray(logp_fn(state.params, batch))
        state, metrics = step(state, batch)
        assert np.isfinite(list(jax.tree.map(float, metrics).values())).all()
    assert first_state.params["final_norm_d"].is_deleted()  # buffers were donated to the new state
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    delta = (np.asarray(logp_fn(state.params, batch)) - before) * batch["loss_mask"]
    adv = batch["advantages"]
    assert delta[adv > 0].mean() > 0.05 and delta[adv < 0].mean() < -0.05


def test_bad_batches_are_user_errors():
    step = make_train_step(CFG, dataclasses.replace(RL, micro_batch_size=5), OPTIM, compute_dtype=jnp.float32)
    # Both errors are raised while tracing, before anything compiles.
    state = init_train_state(CFG, OPTIM, PARAMS)
    with pytest.raises(UserError, match="not a multiple of rl.micro_batch_size"):
        step(state, BATCH)
    no_adv = {k: v for k, v in BATCH.items() if k != "advantages"}
    with pytest.raises(UserError, match="missing"):
        make_train_step(CFG, RL, OPTIM)(state, no_adv)


@NEEDS_8_DEVICES
def test_a_micro_batch_the_mesh_cannot_split_is_refused_when_the_step_is_built():
    # It once failed inside jit, after a whole step's generation.
    with pytest.raises(UserError, match="cannot be split over the 8 devices"):
        _step_fn(4, (("data", 1), ("fsdp", 8), ("tensor", 1)))
    # A batch whose rows the 8 batch devices do not divide: JAX's IndivisibleError, before the
    # step's own row checks could run; now the step's sentence.
    step, mesh = _step_fn(8, (("data", 1), ("fsdp", 8), ("tensor", 1)))
    state = init_train_state(CFG, OPTIM, PARAMS, mesh=mesh, rules=RULES)
    with pytest.raises(UserError, match="a batch of 12 rows cannot be split over the 8 devices"):
        step(state, {k: v[:12] for k, v in BATCH.items()})


@pytest.mark.parametrize("mesh_shape", [
    pytest.param((), id="one device"),
    pytest.param((("data", 1), ("fsdp", 2), ("tensor", 4)), id="fsdp x tensor", marks=NEEDS_8_DEVICES),
])
def test_reference_logprobs_by_micro_batch_equal_the_full_batch_and_use_less_memory(mesh_shape):
    """The padded update's `rl.kl_coef > 0` reference pass: one micro-batch's logits at a time,
    the same logprobs as one pass over the whole batch."""
    mesh = make_mesh(dict(mesh_shape)) if mesh_shape else None
    full = np.asarray(_logprobs_fn(jnp.float32)(PARAMS, BATCH))

    def built(micro):
        return make_reference_logprobs(CFG, dataclasses.replace(RL, micro_batch_size=micro), mesh=mesh, rules=RULES,
                                       compute_dtype=jnp.float32)

    by_micro = built(4)
    np.testing.assert_allclose(np.asarray(by_micro(PARAMS, BATCH)), full, atol=2e-6)
    if mesh_shape:  # the update takes them as they come out: laid out as its batch
        rl = dataclasses.replace(RL, micro_batch_size=4, kl_coef=0.1)
        step = make_train_step(CFG, rl, OPTIM, mesh=mesh, rules=RULES, compute_dtype=jnp.float32)
        batch_sharding = jax.sharding.NamedSharding(mesh, logical_to_pspec(BATCH_AXES, RULES, mesh=mesh))
        batch = {k: jax.device_put(v, batch_sharding) for k, v in BATCH.items()}
        batch["ref_logprobs"] = by_micro(PARAMS, batch)
        _, metrics = step(init_train_state(CFG, OPTIM, PARAMS, mesh=mesh, rules=RULES), batch)
        assert abs(float(metrics["ref_kl"])) < 1e-6  # the policy is still the reference
    if not mesh_shape:  # the compiler's own accounting of the scratch memory each version needs
        def temp_bytes(fn):
            return fn.lower(PARAMS, BATCH).compile().memory_analysis().temp_size_in_bytes
        assert temp_bytes(by_micro) < temp_bytes(built(B)) / 2  # 93 kB against 263 kB when written
        with pytest.raises(UserError, match="not a multiple of rl.micro_batch_size=3"):
            built(3)(PARAMS, BATCH)  # as the update: a split other than the update's is refused


def test_the_update_and_the_reference_use_the_rollout_temperature():
    """Logprobs under softmax(logits / T) at the temperature the rollouts were sampled at
    (AZR_SPEC §4.2): with old_logprobs taken at T = 0.7 the step sees no gap between them and its
    own logprobs, nor a KL to a reference taken at 0.7, and the reference pass matches the
    logprobs computed at 0.7 directly."""
    temperature = 0.7
    at_t = np.asarray(jax.jit(lambda p, b: token_logprobs(p, b, CFG, jnp.float32, temperature=temperature))(PARAMS, BATCH))
    assert np.abs(at_t - np.asarray(_logprobs_fn(jnp.float32)(PARAMS, BATCH)))[BATCH["loss_mask"] > 0].max() > 1e-2
    reference = make_reference_logprobs(CFG, RL, compute_dtype=jnp.float32, temperature=temperature)
    np.testing.assert_allclose(np.asarray(reference(PARAMS, BATCH)), at_t, atol=2e-6)
    rl = dataclasses.replace(RL, old_logprobs="batch", kl_coef=0.1)
    batch = dict(BATCH, old_logprobs=at_t, ref_logprobs=at_t)
    step = make_train_step(CFG, rl, OPTIM, compute_dtype=jnp.float32, temperature=temperature)
    _, metrics = step(init_train_state(CFG, OPTIM, PARAMS), batch)
    assert float(metrics["logprob_gap_max"]) < 1e-5 and abs(float(metrics["ref_kl"])) < 1e-6
    untempered = make_train_step(CFG, rl, OPTIM, compute_dtype=jnp.float32)
    _, metrics = untempered(init_train_state(CFG, OPTIM, PARAMS), batch)
    assert float(metrics["logprob_gap_max"]) > 1e-2 and float(metrics["ref_kl"]) > 1e-5


def test_step_metrics_are_the_whole_batch_token_statistics():
    """Each metric the micro-batched step reports equals the statistic computed by hand over the
    whole batch's response tokens, and grad_norm is the global norm of the objective's gradient
    (the micro-batched and bucketed steps are otherwise only compared with each other)."""
    _, metrics = _one_step(4)
    mask = BATCH["loss_mask"]
    n = float(mask.sum())
    logp, entropy = jax.jit(lambda p, b: token_logprobs_and_entropy(p, b, CFG, jnp.float32))(PARAMS, BATCH)
    sur = clipped_surrogate(logp, BATCH["old_logprobs"], BATCH["advantages"], eps_low=RL.clip_eps_low,
                            eps_high=RL.clip_eps_high, dual_clip=RL.dual_clip)
    mean = lambda x: float(np.sum(np.asarray(x) * mask) / n)  # noqa: E731
    gap = BATCH["old_logprobs"] - np.asarray(logp)
    want = {"entropy": mean(entropy), "clip_frac": mean(sur["clipped"]), "dual_clip_frac": mean(sur["dual_clipped"]),
            "approx_kl": mean(sur["approx_kl"]), "logprob_gap_mean": mean(np.abs(gap)),
            "logprob_gap_bias": mean(gap), "logprob_gap_max": float(np.max(np.abs(gap) * mask)), "tokens": n}
    assert want["clip_frac"] > 0 and abs(want["approx_kl"]) > 1e-3 and abs(want["logprob_gap_bias"]) > 1e-3
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    grads, _ = jax.jit(make_grad_fn(CFG, dataclasses.replace(RL, micro_batch_size=4), compute_dtype=jnp.float32))(
        PARAMS, BATCH)
    norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(g))) for g in jax.tree.leaves(grads))))
    assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-5)


def test_summarize_sums_divides_the_token_sums_by_the_response_tokens():
    from azr_jax.rl.update import summarize_sums

    sums = {"loss": 1.5, "pg_loss": 2.0, "entropy_sum": 8.0, "clip_frac_sum": 2.0, "dual_clip_frac_sum": 1.0,
            "approx_kl_sum": -4.0, "gap_abs_max": 0.7, "gap_abs_sum": 6.0, "gap_sum": -2.0, "ref_kl_sum": 3.0}
    sums = {k: jnp.float32(v) for k, v in sums.items()}
    got = jax.tree.map(float, summarize_sums(sums, jnp.float32(4)))
    assert got == pytest.approx({"loss": 1.5, "pg_loss": 2.0, "entropy": 2.0, "clip_frac": 0.5, "dual_clip_frac": 0.25,
                                 "approx_kl": -1.0, "logprob_gap_max": 0.7, "logprob_gap_mean": 1.5,
                                 "logprob_gap_bias": -0.5, "tokens": 4.0, "ref_kl": 0.75})
    # One response token: the sums themselves; none (all sums 0): zeros, not 0 / 0.
    assert float(summarize_sums(sums, jnp.float32(1))["entropy"]) == 8.0
    zero = jax.tree.map(float, summarize_sums(jax.tree.map(jnp.zeros_like, sums), jnp.float32(0)))
    assert all(v == 0.0 for v in zero.values()), zero


@pytest.mark.parametrize("remat", ["dots", "full"])
def test_the_update_passes_remat_to_the_forward(monkeypatch, remat):
    """`remat` changes memory, not values, so the sharded remat tests above cannot see it dropped
    on the way: trace the gradient and read what the forward pass was given."""
    from azr_jax.rl import logprobs

    seen = []
    inner = logprobs.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("remat"))
        return inner(*args, **kwargs)

    monkeypatch.setattr(logprobs, "forward", spy)
    jax.eval_shape(make_grad_fn(CFG, dataclasses.replace(RL, micro_batch_size=4), compute_dtype=jnp.float32,
                                remat=remat), PARAMS, BATCH)
    assert seen and set(seen) == {remat}


def test_the_update_and_the_reference_pass_run_the_forward_in_compute_dtype(monkeypatch):
    """`compute_dtype` (bfloat16 in AZR runs) changes values only by rounding, which the float32
    tests and the learning test cannot tell from float32: trace the update's gradient and the
    KL reference pass, and read the dtype their forward passes were given."""
    from azr_jax.rl import logprobs

    seen = []
    inner = logprobs.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("compute_dtype"))
        return inner(*args, **kwargs)

    monkeypatch.setattr(logprobs, "forward", spy)
    rl = dataclasses.replace(RL, micro_batch_size=4)
    jax.eval_shape(make_grad_fn(CFG, rl, compute_dtype=jnp.bfloat16), PARAMS, BATCH)
    assert seen and set(seen) == {jnp.bfloat16}
    seen.clear()
    jax.eval_shape(make_reference_logprobs(CFG, rl, compute_dtype=jnp.bfloat16), PARAMS, BATCH)
    assert seen and set(seen) == {jnp.bfloat16}
