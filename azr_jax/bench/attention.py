"""`azr-jax bench attention`: the update step with attention taken a chunk of queries at a time
(`rl.attention_chunk`) vs all queries at once, on the same model shape, batch and weights.

Reported as `bench logits` reports (its `compare_chunked`): the compiled step's scratch memory
and seconds per step. With long rows the float32 attention scores, heads x positions^2 x 4 bytes
per row and copy, dominate the unchunked side; chunking keeps one chunk of queries' scores and
recomputes them in the backward pass (one more QK^T matmul).
"""

from __future__ import annotations

import argparse

from azr_jax.bench.common import positive_int
from azr_jax.bench.logits import compare_chunked
from azr_jax.bench.train import add_update_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_update_arguments(parser, batch=1, new_tokens=1984,
                         micro_help="rows per forward/backward, gradients accumulated (default: --batch)")
    parser.add_argument("--attention-chunk", type=positive_int, default=256, help="queries per chunk")


def run(args: argparse.Namespace) -> dict:
    return compare_chunked(args, "attention", "attention_chunk", args.attention_chunk, "all queries at once")
