"""`azr-jax eval`: pass@1 (greedy) or pass@k of a checkpoint on a benchmark, scored by the training scorer.

    azr-jax eval --config configs/nano.py                       # the shipped nano base model
    azr-jax eval --config configs/nano.py --checkpoint DIR      # any HF-style checkpoint directory
    azr-jax eval --config configs/nano.py --set eval.benchmark=cruxeval --set eval.data_path=crux.jsonl
    azr-jax eval --config configs/nano.py --set eval.samples=8 --set eval.temperature=1.0   # + pass@8
    azr-jax eval --run runs/nano [--step 30]                    # a training run's checkpoint (default: newest)

Prints one JSON object (solve rate overall and per task type); `--out` also writes it, with
every item's response and verdict.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from azr_jax.cli import check_step_option
from azr_jax.errors import UserError
from azr_jax.jsonl import check_output_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="experiment config (.py under configs/ or a config.json); default with --run: the run's config.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set eval.max_items=30")
    parser.add_argument("--checkpoint", default=None,
                        help="Hugging Face-style checkpoint directory (default: the config's model.hf_dir)")
    parser.add_argument("--run", default=None, metavar="WORKDIR",
                        help="evaluate the policy of an `azr-jax train` run (its Orbax checkpoint) instead of a base model")
    parser.add_argument("--step", type=int, default=None, help="with --run: the checkpoint step (default: the newest)")
    parser.add_argument("--out", default=None, help="also write the full result (with responses) to this JSON file")


def run_params(cfg, policy, workdir: Path, step: int | None):
    """The policy params of a training run's checkpoint `step` (default: the newest complete one)."""
    from azr_jax import distributed
    from azr_jax.checkpoint import Checkpoints

    ckpts = Checkpoints(workdir / "checkpoints")
    try:
        if step is None:  # a save finishing between two processes' listings: they must not differ
            step = distributed.agree(ckpts.latest_step(), "the newest checkpoint step",
                                     "pass --step, or give every process the same view of the run directory")
        if step is None:
            raise UserError(f"no checkpoint in {workdir / 'checkpoints'}")
        # The params alone: the optimizer state (twice their size under Adam) stays on disk.
        restored = ckpts.restore_part(step, {"params": policy.init_state(cfg, abstract=True).params})
    finally:
        ckpts.close()
    return restored["params"], step


def main(args: argparse.Namespace) -> int:
    from azr_jax.config import load_config
    from azr_jax.eval.benchmarks import load_benchmark
    from azr_jax.eval.evaluate import evaluate, placed_params
    from azr_jax.sandbox import Sandbox
    from azr_jax.train_setup import load_policy

    if args.config is None and args.run is None:
        raise UserError("give --config (a base model) or --run WORKDIR (a training run's checkpoint)")
    if args.step is not None and args.run is None:
        raise UserError("--step needs --run WORKDIR")
    check_step_option(args.step, "--step")
    if args.run and args.checkpoint:
        raise UserError("--run and --checkpoint are two different models; give one")
    if args.run and not args.config and not (Path(args.run) / "config.json").is_file():
        raise UserError(f"--run {args.run} is not a training run directory (no config.json)")
    if args.out:
        check_output_file(args.out, "--out")  # before the evaluation, not after it
    import jax

    from azr_jax import distributed

    # Under JAX_COORDINATOR_ADDRESS/... (or AZR_TPU_MULTIHOST=1) every host runs this command:
    # one global mesh, each host's sandbox checking its share of the answers.
    distributed.initialize_from_env()
    config = args.config or Path(args.run) / "config.json"
    cfg = load_config(config, args.overrides)
    if args.checkpoint:
        if not Path(args.checkpoint).is_dir():  # said here: load_policy would name model.hf_dir
            raise UserError(f"--checkpoint {args.checkpoint} is not a directory (a Hugging Face checkpoint is expected)")
        # The checkpoint's own config.json and tokenizer define the model (as for a run's base).
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hf_dir=args.checkpoint, tokenizer=None,
                                                                 overrides={}))
    # The benchmark file before the weights (minutes for a large model): a bad line fails at once.
    items = load_benchmark(cfg.eval)
    policy = load_policy(cfg, weights=not args.run)  # a run's params come from its checkpoint
    if args.run:
        params, step = run_params(cfg, policy, Path(args.run), args.step)
        source = f"{args.run} (step {step})"
    else:
        params, source = placed_params(policy), cfg.model.hf_dir
    sandbox = Sandbox(cfg.sandbox)
    try:
        result = evaluate(params, policy, cfg, sandbox, items=items,
                          progress=lambda msg: print(f"azr-jax eval: {msg}", file=sys.stderr, flush=True))
    finally:
        sandbox.close()
    result["checkpoint"] = source
    result["processes"] = jax.process_count()
    brief = {k: v for k, v in result.items() if k != "items"}
    print(json.dumps(brief, sort_keys=True))
    if args.out and jax.process_index() == 0:  # every process holds the same result
        from azr_jax.jsonl import OutputFile

        with OutputFile(args.out, "--out (the summary line above has the result without its items)") as f:
            f.write(json.dumps(result, indent=1, sort_keys=True))
    return 0
