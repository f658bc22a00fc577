"""`azr-jax bench packing`: the length-bucketed update (`rl.pack_by_length`) vs the padded one
on a batch shaped like a self-play step.

The batch mixes short solver rows and long proposer rows, laid out as the trainer lays out
rollouts (left-padded prompt bucket, then the completion bucket). Both sides run one full
update (forward, backward, AdamW) with the same weights, advantages and old logprobs; the
baseline is `rl.update.make_train_step` on the padded batch, the measured side
`rl.bucketed.make_bucketed_train_step` on host arrays (packing included in its time).
Compilation is excluded: the warm-up step compiles every bucket width the batch needs.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from azr_jax.bench.common import device_info, positive_int, time_it
from azr_jax.bench.model_shape import (add_shape_arguments, dtype_from_args, model_config_from_args, model_shape_record,
                                       remat_from_args)

BUCKETS = (128, 256, 384, 512, 640)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_shape_arguments(parser, default_preset="nano")
    parser.add_argument("--rows", type=positive_int, default=48, help="rows per update (half solver, half proposer)")
    parser.add_argument("--solver-len", type=positive_int, nargs=2, default=(150, 230), metavar=("MIN", "MAX"),
                        help="solver rows: prompt + response tokens drawn uniformly from [MIN, MAX]")
    parser.add_argument("--proposer-len", type=positive_int, nargs=2, default=(330, 560), metavar=("MIN", "MAX"),
                        help="proposer rows: prompt + response tokens drawn uniformly from [MIN, MAX]")
    parser.add_argument("--response-bucket", type=positive_int, default=256, help="completion width of the padded layout")
    parser.add_argument("--micro-batch", type=positive_int, default=16, help="rl.micro_batch_size for both sides")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed steps (median is reported)")


def self_play_like_batch(vocab: int, args) -> dict[str, np.ndarray]:
    """Rows in the trainer's rollout layout: prompt right-aligned in its bucket, response after it
    (a third of each row's tokens are response tokens)."""
    from azr_jax.sampling.buckets import bucket_length

    rng = np.random.default_rng(0)
    half = args.rows // 2
    lengths = np.concatenate([rng.integers(args.solver_len[0], args.solver_len[1] + 1, half),
                              rng.integers(args.proposer_len[0], args.proposer_len[1] + 1, args.rows - half)])
    responses = np.minimum(np.maximum(lengths // 3, 1), args.response_bucket)
    prompts = lengths - responses
    prompt_width = bucket_length(int(prompts.max()), BUCKETS)
    width = prompt_width + args.response_bucket
    out = {k: np.zeros((args.rows, width), np.int32) for k in ("tokens", "positions", "mask", "loss_mask")}
    for r, (p, n) in enumerate(zip(prompts, responses)):
        start = prompt_width - p
        out["tokens"][r, start:prompt_width + n] = rng.integers(1, vocab, p + n)
        out["mask"][r, start:prompt_width + n] = 1
        out["loss_mask"][r, prompt_width:prompt_width + n] = 1
        out["positions"][r, start:prompt_width + n] = np.arange(p + n)
    out["advantages"] = (rng.standard_normal((args.rows, 1)) * out["loss_mask"]).astype(np.float32)
    return out


def run(args: argparse.Namespace) -> dict:
    import dataclasses

    from azr_jax.errors import UserError

    for flag, (low, high) in (("--solver-len", args.solver_len), ("--proposer-len", args.proposer_len)):
        if low > high:
            raise UserError(f"{flag} MIN MAX needs MIN <= MAX, got {low} {high}")

    import jax
    import jax.numpy as jnp

    from azr_jax.config import OptimSection, RLSection
    from azr_jax.models import init_params
    from azr_jax.rl.bucketed import length_bucketed_micro_batches, make_bucketed_train_step
    from azr_jax.rl.logprobs import token_logprobs
    from azr_jax.rl.update import init_train_state, make_train_step

    info = device_info()
    cfg = model_config_from_args(args)
    dtype = dtype_from_args(args, info["device"])
    cd = jnp.dtype(dtype)
    remat = remat_from_args(args)  # `--set model.remat=full` was accepted and silently not applied
    batch = self_play_like_batch(cfg.vocab_size, args)
    rl = dataclasses.replace(RLSection(), micro_batch_size=args.micro_batch)
    optim = OptimSection(learning_rate=1e-6)
    params = jax.jit(lambda k: init_params(cfg, k))(jax.random.key(0))
    batch["old_logprobs"] = np.asarray(jax.jit(lambda p, b: token_logprobs(p, b, cfg, cd))(
        params, {k: jnp.asarray(v) for k, v in batch.items()}))
    buckets = sorted(set(BUCKETS) | {batch["tokens"].shape[1]})
    print(f"bench packing: {args.rows} rows x {batch['tokens'].shape[1]} slots, {cfg.num_params() / 1e6:.1f}M params, "
          f"{dtype}", file=sys.stderr)

    def timed(step, feed):
        holder = {"state": init_train_state(cfg, optim, params)}

        def call():
            holder["state"], metrics = step(holder["state"], feed)
            jax.block_until_ready(metrics["loss"])

        return time_it(call, warmup=1, repeats=args.repeats)

    padded_s = timed(make_train_step(cfg, rl, optim, compute_dtype=cd, remat=remat),
                     {k: jnp.asarray(v) for k, v in batch.items()})
    packed_s = timed(make_bucketed_train_step(cfg, rl, optim, length_buckets=buckets, compute_dtype=cd, remat=remat),
                     batch)
    packed_slots = sum(m["tokens"].size for m in length_bucketed_micro_batches(batch, args.micro_batch, buckets))
    real = int(batch["mask"].sum())
    return {
        "bench": "packing", **info, "model": model_shape_record(cfg), "dtype": dtype, "remat": remat, "rows": args.rows,
        "micro_batch": args.micro_batch, "real_tokens": real, "padded_slots": int(batch["tokens"].size),
        "packed_slots": int(packed_slots), "repeats": args.repeats,
        "seconds": packed_s, "real_tokens_per_s": real / packed_s,
        "baseline": "padded batch, rl.update.make_train_step", "baseline_seconds": padded_s,
        "baseline_real_tokens_per_s": real / padded_s, "ratio": padded_s / packed_s,
    }
