"""`azr-jax train`: self-play training from a config preset.

    azr-jax train --config configs/nano.py --workdir runs/nano
    azr-jax train --config configs/qwen2.5-7b.py --mesh v6e-8 --set model.hf_dir=/ckpt/Qwen2.5-7B \\
        --set train.steps=200 --workdir runs/q7b

Running the same command again resumes from the newest complete checkpoint in --workdir.
"""

from __future__ import annotations

import argparse

from azr_jax.cli import check_step_option
from azr_jax.errors import UserError

EPILOG = """\
starting: pick a preset from configs/ (nano.py runs on a laptop CPU); the resolved config is
  written to WORKDIR/config.json.
resuming: run the same command again; training continues from the newest complete checkpoint in
  WORKDIR/checkpoints (--resume-step N picks an older one and DELETES the newer checkpoints, so
  the run continues from there). A workdir holding a checkpoint of a different config is
  refused (one without a checkpoint, from a start that failed, takes the new config); only
  train.steps (not with a cosine/linear optim.schedule, which decays over it), the
  logging/saving/evaluation intervals (train.save_every, train.keep_checkpoints,
  train.log_every, train.eval_every, train.audit_every), sandbox.workers, sandbox.isolation,
  sandbox.seccomp, the memory layout (model.remat, model.scan_layers, sampling.max_rows,
  sampling.prefill_chunk, rl.logits_chunk, rl.attention_chunk) and the mesh (mesh.shape,
  mesh.rules: another slice) may change, and sampling.max_prompt_len grow; the seed files' paths
  may change too, and model.hf_dir, model.tokenizer and azr.prompt_dir where the files the run
  read there are the same (WORKDIR/inputs.json).
overriding: --set section.key=value (JSON values: numbers, lists, null, true; every key and its
  default: docs/config.md), e.g.
  --set train.steps=50 --set azr.batch_size=16 --set mesh.shape='{"data":1,"fsdp":8,"tensor":1}'.
  --mesh TOPOLOGY lays the preset out on v4-8, v5p-8, v5e-8, v6e-8 or gpu-8.
outputs (WORKDIR): config.json, inputs.json (fingerprints of the base, tokenizer and prompts), trainer.lock,
  metrics.jsonl (one line per step), tensorboard/,
  checkpoints/<step>/, rollouts/step_N.jsonl and buffers/step_N.json (audit), eval/*.json
  (held-out evaluations), plots/*.png, summary.json; seed/ when a fresh run seeds its buffers
  (azr.seed_size > 0 and a seed file not given).
stopping: SIGTERM (or Ctrl-C) saves a checkpoint after the current step and exits.
multi-host: set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (on a multi-host
  TPU slice set AZR_TPU_MULTIHOST=1 instead, and JAX discovers them) and start the same command
  on every host, with a --workdir on a filesystem they share.
See docs/training.md."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--config", required=True, help="experiment preset (.py under configs/) or a config.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set train.steps=20")
    parser.add_argument("--workdir", default=None,
                        help="run directory (default: runs/<config name>); resumed if it holds a checkpoint")
    parser.add_argument("--mesh", default=None, metavar="TOPOLOGY",
                        help="lay the model out on a known machine: v4-8, v5p-8, v5e-8, v6e-8, gpu-8")
    parser.add_argument("--resume-step", type=int, default=None, metavar="N",
                        help="resume from checkpoint step N instead of the newest one; the newer "
                             "checkpoints are deleted")
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def resolve_config(args: argparse.Namespace):
    """The config after the preset, --mesh, then --set (so --set always wins)."""
    from azr_jax.config import apply_overrides, read_config_file
    from azr_jax.run_presets import with_mesh

    cfg = read_config_file(args.config)  # validated as a whole once --mesh and --set are in
    if args.mesh:
        cfg = with_mesh(cfg, args.mesh)
    return apply_overrides(cfg, args.overrides)


def main(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if not args.workdir and (not cfg.name or cfg.name in (".", "..") or "/" in cfg.name or "\\" in cfg.name):
        raise UserError(f"the default workdir is runs/<name>, and name={cfg.name!r} is not a plain directory name; "
                        f"set a plain name or give --workdir")
    workdir = args.workdir or f"runs/{cfg.name}"
    check_step_option(args.resume_step, "--resume-step")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for noisy in ("absl", "jax", "orbax", "etils"):  # keep the run's own log readable
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from azr_jax.stopping import StopFlag

    # Before JAX is imported: a Ctrl-C during that import could land in JAX's garbage-collection
    # callback, where Python drops the KeyboardInterrupt, and the run went on. The flag keeps it.
    stop = StopFlag(stepping=False)
    stop.install()
    try:
        from azr_jax.trainer import train

        stop.check_startup()
        result = train(cfg, workdir, resume_step=args.resume_step, progress=not args.no_progress, stop=stop)
    finally:
        stop.restore()
    if result.get("status") == "completed":
        print_report(result, workdir)
    return 0 if result.get("status") in ("completed", "stopped") else 1


def print_report(summary: dict, workdir) -> None:
    """Where the outputs are and, when the run evaluated, the held-out solve rates (stdout)."""
    from pathlib import Path

    from azr_jax.eval.summary import decoding_description, format_solve_rate_table

    workdir = Path(workdir)
    table = format_solve_rate_table(summary)
    if table:
        how = decoding_description(summary.get("eval_temperature", 0.0), summary.get("eval_samples", 1))
        print(f"held-out solve rate ({summary.get('benchmark')}, {summary.get('eval_items')} items, {how}):")
        print(table)
    print(f"summary: {workdir / 'summary.json'}")
    print(f"metrics: {workdir / 'metrics.jsonl'}")
    plots = sorted((workdir / "plots").glob("*.png"))
    if plots:
        print(f"plots:   {', '.join(str(p) for p in plots)}")
