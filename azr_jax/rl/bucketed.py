"""The update on length-bucketed micro-batches: the same objective and optimizer step as
`update.make_train_step`, without computing on padding.

A self-play batch mixes short solver rows with long proposer rows, and every rollout row is laid
out as [left-padded prompt bucket | completion bucket]; padded to one width, most of the update's
FLOPs go to padding. Here the host
1. computes the loss weights over the *whole* batch (`losses.aggregation_weights`, as the plain
   step does), so splitting the batch does not change the objective;
2. moves each row's tokens to the start of the row (positions travel with them, so the model sees
   exactly the same sequence), sorts rows by length and cuts them into micro-batches of
   `rl.micro_batch_size` rows, each padded only to its own length bucket;
3. accumulates gradients with one jitted call per micro-batch (one compilation per bucket width)
   and applies the optimizer once.
The result equals the plain step up to float summation order (tests/rl/test_bucketed.py).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from azr_jax.errors import UserError
from azr_jax.models.decoder import param_shardings
from azr_jax.rl.logprobs import token_logprobs
from azr_jax.rl.losses import aggregation_weights, combine_sums, policy_loss
from azr_jax.rl.optimizer import apply_if_finite, make_optimizer, make_schedule
from azr_jax.rl.update import (
    BATCH_KEYS, OPTIONAL_BATCH_KEYS, TrainState, _global_norm, _micro_grad_fn, _state_shardings,
    check_micro_batch_split, summarize_sums,
)
from azr_jax.sampling.buckets import bucket_length
from azr_jax.sharding import mesh_rules


def length_bucketed_micro_batches(batch: dict[str, np.ndarray], micro_rows: int, length_buckets) -> list[dict]:
    """Host-side: rows of `batch` ([B, T] numpy arrays, one contiguous `mask` span per row) as
    micro-batches of `micro_rows` rows, longest rows first, each [micro_rows, bucket] with the
    row's span moved to the front. Missing rows of the last micro-batch are all-zero (weight 0)."""
    mask = np.asarray(batch["mask"]).astype(bool)
    rows = mask.shape[0]
    lengths = mask.sum(axis=1)
    starts = np.where(lengths > 0, mask.argmax(axis=1), 0)
    for r in range(rows):
        if not mask[r, starts[r]:starts[r] + lengths[r]].all():
            raise ValueError(f"row {r} of the update batch has a non-contiguous mask")
    order = np.argsort(-lengths, kind="stable")
    out = []
    for first in range(0, rows, micro_rows):
        chosen = order[first:first + micro_rows]
        width = bucket_length(max(int(lengths[chosen].max()), 1), length_buckets)
        micro = {}
        for key, x in batch.items():
            x = np.asarray(x)
            packed = np.zeros((micro_rows, width), x.dtype)
            for i, r in enumerate(chosen):
                packed[i, :lengths[r]] = x[r, starts[r]:starts[r] + lengths[r]]
            micro[key] = packed
        out.append(micro)
    return out


def make_bucketed_train_step(
    model_cfg,
    rl_cfg,
    optim_cfg,
    *,
    length_buckets,
    total_steps: int | None = None,
    mesh: Mesh | None = None,
    rules: dict | None = None,
    put_rows: Callable[[np.ndarray], jax.Array] | None = None,
    compute_dtype=jnp.bfloat16,
    remat: str = "none",
    temperature: float = 1.0,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`train_step(state, batch) -> (state, metrics)` like `update.make_train_step`, but `batch`
    holds host (numpy) arrays and the work runs on length-bucketed micro-batches (module doc).
    Any number of rows works: the last micro-batch is topped up with empty rows.

    `put_rows` places a host [rows, T] array on the mesh, sharded by rows (e.g. `Policy.put_batch`);
    without a mesh arrays go to the default device. `state` is donated. Metrics as `make_train_step`.

    With `rl.kl_coef > 0` the batch either carries `ref_logprobs`, or `train_step(state, batch,
    ref_params=P)` computes them micro-batch by micro-batch under the frozen reference params P
    (a forward pass on the packed rows, so no work on padding).
    """
    keys = BATCH_KEYS + (OPTIONAL_BATCH_KEYS if rl_cfg.kl_coef > 0 else ())
    micro_rows = rl_cfg.micro_batch_size
    shards = check_micro_batch_split(micro_rows, mesh, rules)
    optimizer = make_optimizer(optim_cfg, total_steps)
    schedule = make_schedule(optim_cfg, total_steps)
    micro_grad = _micro_grad_fn(model_cfg, rl_cfg, compute_dtype=compute_dtype, remat=remat, temperature=temperature)
    put = put_rows or jnp.asarray

    def accumulate(params, acc, micro):
        grads_acc, sums_acc = acc
        (_, sums), grads = micro_grad(params, micro)
        return jax.tree.map(jnp.add, grads_acc, grads), combine_sums(sums_acc, sums)

    def reference_logprobs(ref_params, micro):
        return token_logprobs(ref_params, micro, model_cfg, compute_dtype, temperature=temperature,
                              logits_chunk=rl_cfg.logits_chunk, attention_chunk=rl_cfg.attention_chunk)

    def zeros(params, micro):
        sums = jax.eval_shape(lambda m: policy_loss(m["old_logprobs"], m["old_logprobs"], m, m["weights"], rl_cfg)[1],
                              micro)
        return jax.tree.map(jnp.zeros_like, params), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums)

    def apply(state, acc, n_tokens):
        grads, sums = acc
        metrics = summarize_sums(sums, n_tokens)
        metrics["grad_norm"] = _global_norm(grads)
        params, opt_state, metrics["skipped"] = apply_if_finite(optimizer, grads, metrics["grad_norm"],
                                                                state.opt_state, state.params)
        metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        return TrainState(params=params, opt_state=opt_state, step=state.step + 1), metrics

    if mesh is None:
        accumulate_jit = jax.jit(accumulate, donate_argnums=1)
        reference_jit = jax.jit(reference_logprobs)
        zeros_jit = jax.jit(zeros)
        apply_jit = jax.jit(apply, donate_argnums=0)
    else:
        replicated = NamedSharding(mesh, PartitionSpec())
        acc_sh = (param_shardings(model_cfg, mesh, rules), replicated)
        state_sh = _state_shardings(model_cfg, optimizer, mesh, rules)

        def under_rules(fn):
            def traced(*args):
                with mesh_rules(mesh, rules):  # read at trace time by the decoder's constraints
                    return fn(*args)
            return traced

        accumulate_jit = jax.jit(under_rules(accumulate), out_shardings=acc_sh, donate_argnums=1)
        reference_jit = jax.jit(under_rules(reference_logprobs))
        zeros_jit = jax.jit(zeros, out_shardings=acc_sh)
        apply_jit = jax.jit(apply, out_shardings=(state_sh, replicated), donate_argnums=0)

    def train_step(state: TrainState, batch: dict[str, Any], ref_params=None):
        from_reference = ref_params is not None and "ref_logprobs" not in batch
        wanted = [k for k in keys if not (from_reference and k == "ref_logprobs")]
        missing = [k for k in wanted if k not in batch]
        if missing:
            raise UserError(f"update batch is missing {missing}; it needs {list(keys)}")
        host = {k: np.asarray(batch[k]) for k in wanted}
        rows = host["tokens"].shape[0]
        if rl_cfg.loss_agg == "token-mean-per-micro-batch" and rows % micro_rows and rows > micro_rows:
            raise UserError(f"rl.loss_agg=token-mean-per-micro-batch weighs blocks of rl.micro_batch_size rows: the "
                            f"batch of {rows} rows must be a multiple of {micro_rows}")
        loss_mask = host["loss_mask"].astype(np.float32)
        host["weights"] = np.asarray(aggregation_weights(jnp.asarray(loss_mask), rl_cfg.loss_agg,
                                                         chunk_rows=min(micro_rows, rows)))
        micro_batches = length_bucketed_micro_batches(host, micro_rows, length_buckets)
        placed = [{k: put(v) for k, v in micro.items()} for micro in micro_batches]
        if from_reference and rl_cfg.kl_coef > 0:
            for micro in placed:
                micro["ref_logprobs"] = reference_jit(ref_params, micro)
        acc = zeros_jit(state.params, placed[0])
        for micro in placed:
            acc = accumulate_jit(state.params, acc, micro)
        return apply_jit(state, acc, jnp.float32(loss_mask.sum()))

    return train_step
