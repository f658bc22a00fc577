"""`azr-jax eval`: greedy pass@1 of a checkpoint on a benchmark, scored by the training scorer.

    azr-jax eval --config configs/nano.py                       # the shipped nano base model
    azr-jax eval --config configs/nano.py --checkpoint DIR      # any HF-style checkpoint directory
    azr-jax eval --config configs/nano.py --set eval.benchmark=cruxeval --set eval.data_path=crux.jsonl

Prints one JSON object (solve rate overall and per task type); `--out` also writes it, with
every item's response and verdict.
"""

from __future__ import annotations

import argparse
import dataclasses
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment config (.py under configs/ or a config.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set eval.max_items=30")
    parser.add_argument("--checkpoint", default=None,
                        help="Hugging Face-style checkpoint directory (default: the config's model.hf_dir)")
    parser.add_argument("--out", default=None, help="also write the full result (with responses) to this JSON file")


def main(args: argparse.Namespace) -> int:
    from azr_jax.config import load_config
    from azr_jax.eval.evaluate import evaluate, placed_params
    from azr_jax.sandbox import Sandbox
    from azr_jax.train_setup import load_policy

    cfg = load_config(args.config, args.overrides)
    if args.checkpoint:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hf_dir=args.checkpoint, tokenizer=None))
    policy = load_policy(cfg)
    sandbox = Sandbox(cfg.sandbox)
    try:
        result = evaluate(placed_params(policy), policy, cfg, sandbox)
    finally:
        sandbox.close()
    result["checkpoint"] = cfg.model.hf_dir
    brief = {k: v for k, v in result.items() if k != "items"}
    print(json.dumps(brief, sort_keys=True))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
    return 0
