"""`azr-jax convert`: a training run's policy as a Hugging Face checkpoint directory.

    azr-jax convert --run runs/q7b --out exported/q7b            # the newest complete checkpoint
    azr-jax convert --run runs/q7b --step 200 --out DIR --dtype bfloat16

Writes what `transformers.AutoModelForCausalLM.from_pretrained(DIR)` and vLLM load unchanged:
config.json, generation_config.json, safetensors (sharded above `--max-shard-size`) and the run's
tokenizer, so a trained policy can be evaluated with any harness (or by `azr-jax eval --checkpoint
DIR --config WORKDIR/config.json`). A `tokenizer.json` tokenizer loads in transformers as it is;
a SentencePiece one (the nano preset's) does not — transformers picks its tokenizer class by
`model_type` and reads the `.model` with other ids — so convert says so. Only the policy's parameters are read from the Orbax checkpoint; the optimizer's moments
stay on disk. Multi-host: run it on every host, as training (each process reads its shards; process 0
writes the files).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from azr_jax.cli import check_step_option
from azr_jax.errors import UserError
from azr_jax.jsonl import check_output_dir

DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="WORKDIR", help="the `azr-jax train` run directory")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint step (default: the newest complete one)")
    parser.add_argument("--out", required=True, help="directory to write the Hugging Face checkpoint into (new or empty)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="cast the weights before writing (default: the run's model.param_dtype)")
    parser.add_argument("--max-shard-size", default="5GB", help="split the safetensors above this size (default 5GB)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the run's config, e.g. --set model.hf_dir=DIR when its base moved")


def exported_metadata(policy, model_section):
    """(model config, generation config) to write. A base checkpoint's own tokenizer keeps the
    base's special ids and generation_config.json. Another tokenizer (a random init, or
    `model.tokenizer` set) gives its ids: a preset carries its family's ids (Qwen's 151643 ...),
    which would not fit that tokenizer's vocabulary; the generation config is then derived."""
    from azr_jax.jsonl import read_json_object
    from azr_jax.models.checkpoint_hf import GENERATION_CONFIG_FILE

    if model_section.hf_dir and not model_section.tokenizer:
        path = Path(model_section.hf_dir) / GENERATION_CONFIG_FILE
        return policy.config, read_json_object(path, "generation config") if path.is_file() else None
    tok = policy.tokenizer
    return policy.config.replace(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
                                 extra_eos_token_ids=tuple(i for i in tok.eos_ids if i != tok.eos_id)), None


def main(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from azr_jax import distributed
    from azr_jax.config import load_config
    from azr_jax.eval.cli import run_params
    from azr_jax.models.checkpoint_hf import Model, parse_size
    from azr_jax.train_setup import load_policy

    run = Path(args.run)
    if not (run / "config.json").is_file():
        raise UserError(f"{run} is not a training run directory (no config.json)")
    out = check_output_dir(args.out, "--out")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty; give a new or empty directory")
    parse_size(args.max_shard_size)  # a bad size is said now, not after the restore
    check_step_option(args.step, "--step")

    distributed.initialize_from_env()
    cfg = load_config(run / "config.json", args.overrides)
    say = lambda msg: print(f"azr-jax convert: {msg}", file=sys.stderr, flush=True)
    say(f"restoring the policy of {run} ...")
    policy = load_policy(cfg, weights=False)  # the params come from the run's checkpoint
    params, step = run_params(cfg, policy, run, args.step)
    # The train state keeps float32 master weights whatever model.param_dtype says; the export
    # is written in that dtype unless --dtype names another.
    dtype = jnp.dtype(args.dtype or cfg.model.param_dtype)
    params = jax.tree.map(lambda x: x.astype(dtype), params)
    model_cfg, generation_config = exported_metadata(policy, cfg.model)
    model = Model(model_cfg, params, tokenizer=policy.tokenizer, generation_config=generation_config,
                  mesh=policy.mesh, rules=policy.rules)
    # Every process has checked --out and restored its shards before process 0 writes anything,
    # and they start the per-tensor gathers together (the CPU collectives' start-up deadline).
    distributed.barrier("azr-convert-write")
    say(f"writing step {step} to {out} ...")
    try:
        model.save_pretrained(out, max_shard_size=args.max_shard_size)
    except OSError as e:  # a full disk, a lost mount: save_pretrained removes its partial files
        raise UserError(f"writing {out} failed: {e.strerror or e}") from None
    if policy.tokenizer.is_sentencepiece:
        say(f"note: the tokenizer is a SentencePiece model ({out}/tokenizer.model); transformers' AutoTokenizer "
            f"and vLLM build another tokenizer class for model_type {model_cfg.architecture!r} from it, with "
            f"other token ids: tokenize with sentencepiece.SentencePieceProcessor(model_file=...) instead")
    print(json.dumps({"run": str(run), "step": step, "out": str(out), "dtype": str(dtype),
                      "params": policy.config.num_params()}, sort_keys=True))
    return 0
