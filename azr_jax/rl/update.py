"""The policy update: one jit-compiled, sharded function `(state, batch) -> (state, metrics)`.

- `TrainState` holds float32 master params, the optax state and the step count. Under a mesh
  every leaf is sharded by the logical-axis rules (the optimizer moments like their params), so
  FSDP and tensor parallelism come from `config.mesh.rules` alone.
- The batch is split into micro-batches of `rl.micro_batch_size` rows and gradients are
  accumulated with `lax.scan`. Loss weights are computed once over the whole batch
  (`losses.aggregation_weights`), so the accumulated gradient *is* the full-batch gradient.
- Activations run in `compute_dtype` (bfloat16 by default); gradients and the update are float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from azr_jax.errors import UserError
from azr_jax.models.decoder import param_shapes, param_shardings
from azr_jax.rl.logprobs import token_logprobs, token_logprobs_and_entropy
from azr_jax.rl.losses import aggregation_weights, combine_sums, policy_loss
from azr_jax.rl.optimizer import apply_if_finite, make_optimizer, make_schedule
from azr_jax.sharding import logical_to_pspec, mesh_rules

BATCH_KEYS = ("tokens", "positions", "mask", "loss_mask", "advantages", "old_logprobs")
OPTIONAL_BATCH_KEYS = ("ref_logprobs",)
BATCH_AXES = ("batch", "length")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    params: Any  # float32 master weights (the decoder's param tree)
    opt_state: Any  # optax state of `make_optimizer(optim_cfg, total_steps)`
    step: jax.Array  # int32 scalar: optimizer updates done so far

    def replace(self, **changes) -> "TrainState":
        return dataclasses.replace(self, **changes)


def _params_shape(model_cfg):
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
        param_shapes(model_cfg),
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x),
    )


def state_shardings(model_cfg, optim_cfg, mesh: Mesh, rules, *, total_steps: int | None = None) -> TrainState:
    """NamedShardings of every TrainState leaf: moments follow their params, scalars replicate."""
    return _state_shardings(model_cfg, make_optimizer(optim_cfg, total_steps), mesh, rules)


def _state_shardings(model_cfg, optimizer, mesh: Mesh, rules) -> TrainState:
    param_sh = param_shardings(model_cfg, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shape = jax.eval_shape(optimizer.init, _params_shape(model_cfg))
    opt_sh = optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        opt_shape,
        param_sh,
        transform_non_params=lambda _: replicated,
    )
    return TrainState(params=param_sh, opt_state=opt_sh, step=replicated)


def init_train_state(
    model_cfg,
    optim_cfg,
    params,
    *,
    total_steps: int | None = None,
    mesh: Mesh | None = None,
    rules: dict | None = None,
    abstract: bool = False,
) -> TrainState:
    """A TrainState at step 0 for `params` (cast to float32), placed on `mesh` when given.

    `abstract=True`: only its shapes, dtypes and shardings (`jax.ShapeDtypeStruct`s, nothing
    allocated), the target a checkpoint is restored into.
    """
    optimizer = make_optimizer(optim_cfg, total_steps)

    def init(p):
        # An explicit copy: the update donates the state, and the weights passed in may live on
        # (the KL reference), so the two must never share buffers (jit forwards unchanged inputs).
        p = jax.tree.map(lambda x: jnp.copy(x.astype(jnp.float32)), p)
        return TrainState(params=p, opt_state=optimizer.init(p), step=jnp.zeros((), jnp.int32))

    if mesh is None:
        fn = jax.jit(init)
    else:
        fn = jax.jit(init, out_shardings=_state_shardings(model_cfg, optimizer, mesh, rules))
    if abstract:
        return fn.eval_shape(params)
    return fn(params)


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _split_micro_batches(x_bt: jax.Array, n_micro: int) -> jax.Array:
    """[B, ...] -> [n_micro, B / n_micro, ...], micro-batch k = rows k, k + n, k + 2n and so on.

    Strided (not contiguous) so each device's rows stay on that device when the batch axis is
    sharded: row r of a batch split into D contiguous shards lives on device r // (B / D), and
    reshaping to [B / n, n] keeps that row in shard (r // n) // (B / (n D)) of the first axis.
    """
    rows = x_bt.shape[0]
    x = x_bt.reshape(rows // n_micro, n_micro, *x_bt.shape[1:])
    return jnp.swapaxes(x, 0, 1)


def _join_micro_batches(x: jax.Array) -> jax.Array:
    """The inverse of `_split_micro_batches`: [n_micro, B / n_micro, ...] -> [B, ...]."""
    return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def make_reference_logprobs(
    model_cfg,
    rl_cfg,
    *,
    mesh: Mesh | None = None,
    rules: dict | None = None,
    compute_dtype=jnp.bfloat16,
    temperature: float = 1.0,
) -> Callable[[Any, dict], jax.Array]:
    """Jitted `ref_logprobs(ref_params, batch) -> [B, T]` for `make_train_step`'s batch under
    `rl.kl_coef > 0`: the frozen reference's token logprobs, one micro-batch of
    `rl_cfg.micro_batch_size` rows at a time (the update's split), so only one micro-batch's
    logits are live, as in the update itself."""
    if mesh is not None:
        micro_sharding = NamedSharding(mesh, PartitionSpec(None, *logical_to_pspec(BATCH_AXES, rules, mesh=mesh)))

    def reference(ref_params, batch: dict):
        inputs = {k: batch[k] for k in ("tokens", "positions", "mask")}
        rows = inputs["tokens"].shape[0]
        micro_rows = min(rl_cfg.micro_batch_size, rows)
        if rows % micro_rows:  # as the update refuses it: the split would not be the update's
            raise UserError(f"batch of {rows} rows is not a multiple of rl.micro_batch_size={micro_rows}")
        n_micro = rows // micro_rows
        micro_batches = jax.tree.map(lambda x: _split_micro_batches(x, n_micro), inputs)
        if mesh is not None:
            micro_batches = jax.lax.with_sharding_constraint(micro_batches, micro_sharding)
        logp = jax.lax.map(
            lambda micro: token_logprobs(ref_params, micro, model_cfg, compute_dtype, temperature=temperature,
                                         logits_chunk=rl_cfg.logits_chunk,
                                         attention_chunk=rl_cfg.attention_chunk),
            micro_batches)
        return _join_micro_batches(logp)

    if mesh is None:
        return jax.jit(reference)

    def traced(ref_params, batch):
        with mesh_rules(mesh, rules):
            return reference(ref_params, batch)

    # Laid out as the update's batch, which the train step's jit requires of its inputs.
    return jax.jit(traced, out_shardings=NamedSharding(mesh, logical_to_pspec(BATCH_AXES, rules, mesh=mesh)))


def batch_shard_count(mesh: Mesh | None, rules: dict | None) -> int:
    """How many shards the batch axis of an update batch is split into on `mesh`."""
    if mesh is None:
        return 1
    batch_pspec = logical_to_pspec(BATCH_AXES, rules, mesh=mesh)
    batch_axis = batch_pspec[0] if len(batch_pspec) else None
    shards = 1
    for axis in (batch_axis,) if isinstance(batch_axis, str) else batch_axis or ():
        shards *= mesh.shape[axis]
    return shards


def check_micro_batch_split(micro_batch_size: int, mesh: Mesh | None, rules: dict | None) -> int:
    """The batch axes' shard count, after checking that a micro-batch splits over it (said when
    a step is built or a policy loaded: inside jit it would fail only after a whole step)."""
    shards = batch_shard_count(mesh, rules)
    if micro_batch_size % shards:
        raise UserError(f"rl.micro_batch_size={micro_batch_size} cannot be split over the {shards} devices "
                        f"of the batch axes; make it a multiple of {shards}")
    return shards


def make_grad_fn(
    model_cfg,
    rl_cfg,
    *,
    mesh: Mesh | None = None,
    rules: dict | None = None,
    compute_dtype=jnp.bfloat16,
    remat: str = "none",
    temperature: float = 1.0,
) -> Callable[[Any, dict], tuple[Any, dict]]:
    """`grads_fn(params, batch) -> (grads, metrics)`: the full-batch objective's gradient,
    accumulated over micro-batches of `rl_cfg.micro_batch_size` rows with `lax.scan`.

    Not jitted (the train step jits it together with the optimizer). Must be traced under
    `mesh_rules(mesh, rules)` when a mesh is given. Metrics: loss, pg_loss, entropy,
    clip_frac, dual_clip_frac, approx_kl (and ref_kl), logprob_gap_{max,mean,bias}, tokens.
    """
    keys = BATCH_KEYS + (OPTIONAL_BATCH_KEYS if rl_cfg.kl_coef > 0 else ())
    batch_shards = batch_shard_count(mesh, rules)
    if mesh is not None:
        batch_pspec = logical_to_pspec(BATCH_AXES, rules, mesh=mesh)
        micro_sharding = NamedSharding(mesh, PartitionSpec(None, *batch_pspec))
        param_sh = param_shardings(model_cfg, mesh, rules)

    micro_grad = _micro_grad_fn(model_cfg, rl_cfg, compute_dtype=compute_dtype, remat=remat, temperature=temperature)

    def grads_fn(params, batch: dict):
        missing = [k for k in keys if k not in batch]
        if missing:
            raise UserError(f"update batch is missing {missing}; it needs {list(keys)}")
        batch = {k: batch[k] for k in keys}
        rows = batch["tokens"].shape[0]
        micro_rows = min(rl_cfg.micro_batch_size, rows)
        if rows % micro_rows:
            raise UserError(f"batch of {rows} rows is not a multiple of rl.micro_batch_size={micro_rows}")
        if micro_rows % batch_shards:
            raise UserError(
                f"a micro-batch of {micro_rows} rows cannot be split over the {batch_shards} devices of the "
                f"batch axes; make rl.micro_batch_size (and the batch) a multiple of {batch_shards}"
            )
        n_micro = rows // micro_rows
        loss_mask_bt = batch["loss_mask"].astype(jnp.float32)
        # Weights over the whole batch: each micro-batch's loss is its share of the full objective.
        batch["weights"] = aggregation_weights(loss_mask_bt, rl_cfg.loss_agg, chunk_rows=micro_rows)
        micro_batches = jax.tree.map(lambda x: _split_micro_batches(x, n_micro), batch)
        zero_grads = jax.tree.map(jnp.zeros_like, params)
        if mesh is not None:
            micro_batches = jax.lax.with_sharding_constraint(micro_batches, micro_sharding)
            zero_grads = jax.lax.with_sharding_constraint(zero_grads, param_sh)

        def accumulate(carry, micro):
            grads_acc, sums_acc = carry
            (_, sums), grads = micro_grad(params, micro)
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            if mesh is not None:
                grads_acc = jax.lax.with_sharding_constraint(grads_acc, param_sh)
            return (grads_acc, combine_sums(sums_acc, sums)), None

        # The metric tree's structure, from the loss alone (cheap: no model in this trace).
        first = jax.tree.map(lambda x: x[0], micro_batches)
        sums_shape = jax.eval_shape(
            lambda m: policy_loss(m["old_logprobs"], m["old_logprobs"], m, m["weights"], rl_cfg)[1], first
        )
        zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
        (grads, sums), _ = jax.lax.scan(accumulate, (zero_grads, zero_sums), micro_batches)

        return grads, summarize_sums(sums, jnp.sum(loss_mask_bt))

    return grads_fn


def _micro_grad_fn(model_cfg, rl_cfg, *, compute_dtype, remat, temperature):
    """value_and_grad of one micro-batch's share of the objective (its rows carry `weights`)."""

    def micro_loss(params, micro):
        logp_bt, entropy_bt = token_logprobs_and_entropy(
            params, micro, model_cfg, compute_dtype, temperature=temperature, remat=remat,
            logits_chunk=rl_cfg.logits_chunk, attention_chunk=rl_cfg.attention_chunk,
        )
        return policy_loss(logp_bt, entropy_bt, micro, micro["weights"], rl_cfg)

    return jax.value_and_grad(micro_loss, has_aux=True)


def summarize_sums(sums: dict, n_tokens: jax.Array) -> dict:
    """The update's metrics from accumulated `policy_loss` sums over `n_tokens` response tokens."""
    per_token = 1.0 / jnp.maximum(n_tokens, 1.0)
    metrics = {
        "loss": sums["loss"],
        "pg_loss": sums["pg_loss"],
        "entropy": sums["entropy_sum"] * per_token,
        "clip_frac": sums["clip_frac_sum"] * per_token,
        "dual_clip_frac": sums["dual_clip_frac_sum"] * per_token,
        "approx_kl": sums["approx_kl_sum"] * per_token,
        # |sampler - trainer| logprob over response tokens (0 when sampler and update agree)
        "logprob_gap_max": sums["gap_abs_max"],
        "logprob_gap_mean": sums["gap_abs_sum"] * per_token,
        "logprob_gap_bias": sums["gap_sum"] * per_token,
        "tokens": n_tokens,
    }
    if "ref_kl_sum" in sums:
        metrics["ref_kl"] = sums["ref_kl_sum"] * per_token
    return metrics


def make_train_step(
    model_cfg,
    rl_cfg,
    optim_cfg,
    *,
    total_steps: int | None = None,
    mesh: Mesh | None = None,
    rules: dict | None = None,
    compute_dtype=jnp.bfloat16,
    remat: str = "none",
    temperature: float = 1.0,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Build the jitted update `train_step(state, batch) -> (state, metrics)`.

    `batch` holds the `BATCH_KEYS` (and `ref_logprobs` when `rl_cfg.kl_coef > 0`), all [B, T];
    B must be a multiple of `rl_cfg.micro_batch_size` (or smaller than it: one micro-batch), and
    under a mesh each micro-batch a multiple of the devices on the batch axes. `state` is donated:
    do not reuse the state passed in. Metrics are float32 scalars: loss, pg_loss, entropy,
    clip_frac, dual_clip_frac, approx_kl (and ref_kl), grad_norm, lr, tokens (response tokens),
    skipped (1 when a non-finite gradient skipped the optimizer step), and
    logprob_gap_{max,mean,bias} (the batch's `old_logprobs` against this pass's).
    `temperature` divides the logits (the rollout temperature, AZR_SPEC §4.2).
    """
    batch_shards = check_micro_batch_split(rl_cfg.micro_batch_size, mesh, rules)
    optimizer = make_optimizer(optim_cfg, total_steps)
    schedule = make_schedule(optim_cfg, total_steps)
    grads_fn = make_grad_fn(
        model_cfg, rl_cfg, mesh=mesh, rules=rules, compute_dtype=compute_dtype, remat=remat, temperature=temperature
    )

    def step_fn(state: TrainState, batch: dict):
        grads, metrics = grads_fn(state.params, batch)
        metrics["grad_norm"] = _global_norm(grads)  # before clipping
        params, opt_state, metrics["skipped"] = apply_if_finite(optimizer, grads, metrics["grad_norm"],
                                                                state.opt_state, state.params)
        metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)  # the rate this update used
        return TrainState(params=params, opt_state=opt_state, step=state.step + 1), metrics

    if mesh is None:
        return jax.jit(step_fn, donate_argnums=0)

    def traced(state, batch):
        with mesh_rules(mesh, rules):  # read at trace time by the decoder's activation constraints
            return step_fn(state, batch)

    state_sh = _state_shardings(model_cfg, optimizer, mesh, rules)
    batch_sharding = NamedSharding(mesh, logical_to_pspec(BATCH_AXES, rules, mesh=mesh))
    jitted = jax.jit(
        traced,
        in_shardings=(state_sh, batch_sharding),
        out_shardings=(state_sh, NamedSharding(mesh, PartitionSpec())),
        donate_argnums=0,
    )

    def train_step(state: TrainState, batch: dict):
        # The batch sharding applies before tracing, where the row checks are: without this a row
        # count the batch devices do not divide was JAX's IndivisibleError, not a sentence.
        rows = batch["tokens"].shape[0] if "tokens" in batch else 0
        if rows % batch_shards:
            raise UserError(f"a batch of {rows} rows cannot be split over the {batch_shards} devices of the batch "
                            f"axes; make it (and rl.micro_batch_size) a multiple of {batch_shards}")
        # Arrays another jitted function placed on the mesh (old_logprobs from a logprob pass,
        # replicated) are committed to their layout, and jit refuses a committed argument whose
        # sharding is not its in_sharding: lay the batch out first (a no-op when it already is).
        return jitted(state, jax.device_put(batch, batch_sharding))

    train_step.lower = jitted.lower  # for compiled-memory reports (bench train)
    return train_step
