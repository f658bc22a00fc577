"""`azr-jax bench logits`: the update step with the output head applied in chunks of positions
(`rl.logits_chunk`) vs the whole head at once, on the same model shape, batch and weights.

Reported for each side: the compiler's scratch memory for one step
(`memory_analysis().temp_size_in_bytes`: activations, logits and gradients in flight; the
params, optimizer state and batch are arguments and not counted) and seconds per step
(compilation excluded). With a large vocabulary and long rows the float32 logits, rows x
positions x vocab x 4 bytes per copy, dominate the whole-head side; chunking keeps one chunk's
and recomputes each in the backward pass (one more head matmul).
"""

from __future__ import annotations

import argparse
import sys

from azr_jax.bench.common import device_info, positive_int
from azr_jax.bench.model_shape import dtype_from_args, model_config_from_args, model_shape_record, remat_from_args
from azr_jax.bench.train import _batch, _micro, add_update_arguments, jax_update


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_update_arguments(parser, batch=2, new_tokens=960,
                         micro_help="rows per forward/backward, gradients accumulated (default: --batch)")
    parser.add_argument("--logits-chunk", type=positive_int, default=128, help="positions per chunk of the head")


def run(args: argparse.Namespace) -> dict:
    return compare_chunked(args, "logits", "logits_chunk", args.logits_chunk, "the whole head at once")


def compare_chunked(args: argparse.Namespace, bench: str, key: str, chunk: int, baseline: str) -> dict:
    """The update step with `rl.<key>` = `chunk` against `rl.<key>` = 0, the same shape, batch
    and weights (`bench logits`, `bench attention`)."""
    info = device_info()
    cfg = model_config_from_args(args)
    dtype = dtype_from_args(args, info["device"])
    remat = remat_from_args(args)
    _micro(args)  # a bad --micro-batch is said before anything runs
    batch = _batch(cfg, args)
    sides = {}
    for name, value in (("baseline", 0), ("chunked", chunk)):
        print(f"bench {bench}: update step, {cfg.num_params() / 1e6:.1f}M params, {dtype}, "
              f"rl.{key}={value}", file=sys.stderr)
        sides[name] = jax_update(cfg, args, dtype, remat, batch, **{key: value})
    (seconds, temp), (base_seconds, base_temp) = sides["chunked"], sides["baseline"]
    return {
        "bench": bench, **info, "model": model_shape_record(cfg), "dtype": dtype, "remat": remat,
        "batch": args.batch, "micro_batch": _micro(args), "seq_len": args.prompt_len + args.new_tokens,
        "repeats": args.repeats, key: chunk,
        "seconds": seconds, "temp_bytes": temp,
        "baseline": f"{baseline} (rl.{key}=0)",
        "baseline_seconds": base_seconds, "baseline_temp_bytes": base_temp,
        "ratio": base_seconds / seconds,
        "memory_ratio": None if temp is None or base_temp is None or temp == 0 else base_temp / temp,
    }
