"""`azr-jax bench NAME`: dispatch to one benchmark module and print its JSON result.

Each benchmark module defines `add_arguments(parser)` and `run(args) -> dict`; the dict is
printed as one JSON object on stdout (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

BENCHES = {
    "executor": ("azr_jax.bench.executor", "sandboxed validations per second, and a batch with non-terminating programs"),
    "sample": ("azr_jax.bench.sample", "sampler tokens/s vs transformers.generate (static cache) on the same model shape"),
    "train": ("azr_jax.bench.train", "update-step tokens/s and MFU vs a torch fwd+bwd+AdamW step"),
    "packing": ("azr_jax.bench.packing", "length-bucketed update vs the padded update on a self-play-shaped batch"),
    "logits": ("azr_jax.bench.logits", "update step with the output head in chunks (rl.logits_chunk) vs all at once: "
                                       "scratch memory and seconds"),
    "attention": ("azr_jax.bench.attention", "update step with attention a chunk of queries at a time "
                                             "(rl.attention_chunk) vs all at once: scratch memory and seconds"),
}


def add_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """`argv`: the arguments after `bench` (default: the process's), which pick the benchmark."""
    sub = parser.add_subparsers(dest="bench", metavar="NAME")
    sub.required = True
    chosen = next((a for a in (sys.argv[1:] if argv is None else argv) if a in BENCHES), None)
    for name, (module_name, help_text) in BENCHES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the chosen benchmark's module (and its imports) is loaded
            importlib.import_module(module_name).add_arguments(p)
        p.add_argument("--out", default=None, help="also write the JSON result to this file")


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not available on this platform
        return None


def main(args: argparse.Namespace) -> int:
    from azr_jax.jsonl import check_output_file

    if args.out:
        check_output_file(args.out, "--out")  # before the benchmark, not after it
    # JAX otherwise takes 75 % of an accelerator's memory when it starts, and a torch baseline
    # that runs after it (bench sample) would be squeezed or run out of memory.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    module = importlib.import_module(BENCHES[args.bench][0])
    load_start = _load_average()
    result = module.run(args)
    # Other work on the machine skews both sides of a comparison, not always equally: a load
    # average above the core count says this record's timings were contended.
    result.update(host_load_1min_start=load_start, host_load_1min_end=_load_average(), host_cpus=os.cpu_count())
    text = json.dumps(result, sort_keys=True)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # stdout's reader is gone (`| head -c1`): the record still goes to --out
        _write_out(args.out, text, "--out")
        raise
    _write_out(args.out, text, "--out (the result is the line above)")
    return 0


def _write_out(path: str | None, text: str, what: str) -> None:
    if path:
        from azr_jax.jsonl import OutputFile

        with OutputFile(path, what) as f:
            f.write(text + "\n")
