"""`azr-jax pretrain`: build the nano base model (the stand-in for human pretraining).

    azr-jax pretrain --config configs/nano_base.py --out azr_jax/nano/base

Steps, all deterministic for a fixed config: generate the procedural corpus (training slice of
program space only), render every task as AZR transcripts with the host's prompt renderer,
train the SentencePiece tokenizer on them, then train the `nano` preset decoder (the same
`forward` as every other model) with next-token cross-entropy on the response tokens. The
output directory is a Hugging Face-style checkpoint (config.json + model.safetensors +
tokenizer.model) plus the self-play seed files and a record of how it was built.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from azr_jax.errors import UserError

SEED_IO_FILE = "seed_io.jsonl"
SEED_INDUCTION_FILE = "seed_induction.jsonl"
RECORD_FILE = "pretrain_record.json"
# Every file a build writes into --out (a rebuild in place writes over each).
BASE_FILES = ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json", SEED_IO_FILE,
              SEED_INDUCTION_FILE, RECORD_FILE)
PROPOSE_EVERY = 2  # proposer transcripts for every 2nd program: they are long and need less practice
_BUCKET = 128  # sequences are padded to a multiple of this (bounds the number of compilations)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pretraining config, e.g. configs/nano_base.py")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set pretrain.steps=100")
    parser.add_argument("--out", required=True, help="output directory of the base checkpoint")


def main(args: argparse.Namespace) -> int:
    from azr_jax.config import load_config

    from azr_jax.jsonl import check_output_dir

    cfg = load_config(args.config, args.overrides)
    out = check_output_dir(args.out, "--out", inside=BASE_FILES)  # a rebuild writes over them
    if out.is_dir() and any(out.iterdir()):
        if not (out / "pretrain_record.json").is_file():
            raise UserError(f"--out {out} is not empty and holds no base model built by `azr-jax pretrain`; "
                            f"give a new or empty directory")
        # A rebuild (the documented command rebuilds the shipped base in place): said, not refused.
        print(f"azr-jax pretrain: replacing the base model in {out}; runs that read it will not resume "
              f"(their inputs.json fingerprints change) until it is restored (git checkout -- {out} for the "
              f"shipped one)", file=sys.stderr, flush=True)
    # Re-runnable as printed, quotes and all; from the parsed arguments, not sys.argv (which is
    # another program's when the command is run through azr_jax.cli.main from Python).
    sets = [a for o in args.overrides for a in ("--set", o)]
    command = shlex.join(["azr-jax", "pretrain", "--config", str(args.config), *sets, "--out", str(args.out)])
    from azr_jax.stopping import sigterm_as_interrupt

    with sigterm_as_interrupt():  # as Ctrl-C: a new --out is removed, not left empty
        record = build_base(cfg, out, log=lambda msg: print(msg, file=sys.stderr, flush=True), command=command)
    print(json.dumps({"out": str(out), **{k: record[k] for k in ("num_params", "final_loss", "wall_s")}}))
    return 0


# ----------------------------------------------------------------------------------------------
# Corpus -> token arrays
# ----------------------------------------------------------------------------------------------


def corpus_tasks(cfg):
    """The pretraining corpus's generated tasks (training slice only)."""
    from azr_jax.nano.corpus import Difficulty, generate_tasks

    p = cfg.pretrain
    return generate_tasks(p.corpus_seed, p.corpus_programs, Difficulty(max_steps=p.max_program_steps),
                          heldout=False, num_inputs=cfg.azr.num_inputs)


def corpus_transcripts(cfg, tasks):
    from azr_jax.azr.prompts import Prompts
    from azr_jax.nano.transcripts import build_transcripts

    return build_transcripts(tasks, Prompts.from_config(cfg.azr), n_references=cfg.azr.n_references,
                             seed=cfg.pretrain.corpus_seed, propose_every=PROPOSE_EVERY)


def tokenize_transcripts(tok, transcripts, seq_len: int):
    """(tokens, loss_mask) lists; the loss covers the response and the closing EOS only."""
    rows = []
    prompts = tok.encode_batch([t.prompt for t in transcripts])
    responses = tok.encode_batch([t.response for t in transcripts])
    for p_ids, r_ids in zip(prompts, responses):
        ids = p_ids + r_ids + [tok.eos_id]
        if len(ids) > seq_len:
            continue
        rows.append((np.asarray(ids, np.int32), np.asarray([0] * len(p_ids) + [1] * (len(r_ids) + 1), np.float32)))
    if transcripts and not rows:  # said here: a larger corpus (what bucket_rows would suggest) cannot help
        shortest = min(len(p_ids) + len(r_ids) + 1 for p_ids, r_ids in zip(prompts, responses))
        raise UserError(f"no transcript fits pretrain.seq_len={seq_len}: the shortest of {len(transcripts)} is "
                        f"{shortest} tokens; raise pretrain.seq_len")
    return rows


def bucket_rows(rows, batch_size: int):
    """Group rows by padded length (multiple of `_BUCKET`, right-padded) into [N, T] arrays."""
    buckets: dict[int, list] = {}
    for ids, mask in rows:
        length = _BUCKET * math.ceil(len(ids) / _BUCKET)
        buckets.setdefault(length, []).append((ids, mask))
    out, fullest = {}, max((len(items) for items in buckets.values()), default=0)
    for length, items in sorted(buckets.items()):
        if len(items) < batch_size:
            continue  # too few to fill one batch of this shape; rare lengths only
        tokens = np.zeros((len(items), length), np.int32)
        masks = np.zeros((len(items), length), np.float32)
        valid = np.zeros((len(items), length), np.float32)
        for i, (ids, m) in enumerate(items):
            tokens[i, : len(ids)] = ids
            masks[i, : len(ids)] = m
            valid[i, : len(ids)] = 1
        out[length] = (tokens, masks, valid)
    if not out:
        raise UserError(f"the pretraining corpus is too small for one batch: no length (in steps of {_BUCKET} tokens) "
                        f"has pretrain.batch_size={batch_size} transcripts, the most is {fullest}; raise "
                        f"pretrain.corpus_programs or lower pretrain.batch_size")
    return out


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def nano_model_config(cfg, vocab_size: int):
    """The `nano` preset with the tokenizer's special ids, `model.scan_layers` and any `model.overrides`."""
    from azr_jax.nano.preset import NANO
    from azr_jax.nano.tokenizer_train import BOS_ID, EOS_ID, PAD_ID

    model_cfg = NANO.replace(vocab_size=max(NANO.vocab_size, vocab_size), bos_token_id=BOS_ID,
                             eos_token_id=EOS_ID, pad_token_id=PAD_ID, scan_layers=cfg.model.scan_layers)
    return model_cfg.replace(**cfg.model.overrides) if cfg.model.overrides else model_cfg


def make_train_step(model_cfg, optimizer):
    """A jitted (params, opt_state, batch) -> (params, opt_state, loss) step: response-token CE."""
    import jax
    import jax.numpy as jnp
    import optax

    from azr_jax.models import forward

    def loss_fn(params, tokens_bt, loss_mask_bt, valid_bt):
        positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1], dtype=jnp.int32), tokens_bt.shape)
        logits_btv, _ = forward(params, tokens_bt, positions_bt, config=model_cfg, mask_bt=valid_bt,
                                compute_dtype=jnp.float32)
        logp_btv = jax.nn.log_softmax(logits_btv[:, :-1], axis=-1)
        target_logp_bt = jnp.take_along_axis(logp_btv, tokens_bt[:, 1:, None], axis=-1)[..., 0]
        weight_bt = loss_mask_bt[:, 1:]
        return -(target_logp_bt * weight_bt).sum() / jnp.maximum(weight_bt.sum(), 1.0)

    @jax.jit
    def step(params, opt_state, tokens_bt, loss_mask_bt, valid_bt):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens_bt, loss_mask_bt, valid_bt)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, jax.jit(loss_fn)


def make_optimizer(p):
    import optax

    # A warmup starts from 0, so its first step changes nothing (as in torch's and verl's
    # schedulers); without one (warmup_steps=0, or a run of one step) every step trains.
    warmup = min(p.warmup_steps, p.steps // 2)
    if warmup == 0:
        schedule = optax.cosine_decay_schedule(p.learning_rate, max(p.steps, 1), alpha=0.05)
    else:
        schedule = optax.warmup_cosine_decay_schedule(0.0, p.learning_rate, warmup, max(p.steps, warmup + 1),
                                                      end_value=p.learning_rate * 0.05)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=p.weight_decay))


def batch_schedule(buckets: dict, steps: int, batch_size: int, seed: int):
    """Deterministic list of (length, row indices): buckets drawn in proportion to their size,
    rows reshuffled each time a bucket's epoch ends."""
    rng = np.random.default_rng(seed)
    lengths = sorted(buckets)
    sizes = np.array([len(buckets[length][0]) for length in lengths], np.float64)
    orders = {length: rng.permutation(len(buckets[length][0])) for length in lengths}
    cursors = {length: 0 for length in lengths}
    out = []
    for _ in range(steps):
        length = lengths[int(rng.choice(len(lengths), p=sizes / sizes.sum()))]
        if cursors[length] + batch_size > len(orders[length]):
            orders[length], cursors[length] = rng.permutation(len(orders[length])), 0
        out.append((length, orders[length][cursors[length]: cursors[length] + batch_size]))
        cursors[length] += batch_size
    return out


def train(model_cfg, buckets: dict, p, *, log=None, log_every: int = 50, params=None):
    """Train for `p.steps` steps from `params` (default: a fresh init); returns (params, per-step losses)."""
    import jax

    from azr_jax.models import init_params

    optimizer = make_optimizer(p)
    if params is None:
        params = init_params(model_cfg, jax.random.key(p.seed))
    opt_state = optimizer.init(params)
    step_fn, _ = make_train_step(model_cfg, optimizer)
    losses = []
    t0 = time.perf_counter()
    for i, (length, idx) in enumerate(batch_schedule(buckets, p.steps, p.batch_size, p.seed)):
        tokens, masks, valid = buckets[length]
        params, opt_state, loss = step_fn(params, opt_state, tokens[idx], masks[idx], valid[idx])
        losses.append(float(loss))
        if not np.isfinite(losses[-1]):  # nothing a NaN step produced may reach the checkpoint
            raise UserError(f"pretraining loss is {losses[-1]} at step {i + 1}: lower pretrain.learning_rate, "
                            f"or check model.overrides")
        if log and (i % log_every == 0 or i == p.steps - 1):
            log(f"pretrain step {i + 1}/{p.steps} len {length} loss {np.mean(losses[-log_every:]):.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
    return params, losses


# ----------------------------------------------------------------------------------------------
# Whole build
# ----------------------------------------------------------------------------------------------


def write_seed_files(cfg, out: Path, count: int = 64) -> None:
    """Self-play seed buffers: training-slice tasks from a seed distinct from the corpus's."""
    from azr_jax.nano.corpus import Difficulty, generate_tasks

    p = cfg.pretrain
    tasks = generate_tasks(p.corpus_seed + 1, count, Difficulty(max_steps=p.max_program_steps),
                           heldout=False, num_inputs=cfg.azr.num_inputs)
    visible = cfg.azr.num_inputs // 2
    (out / SEED_IO_FILE).write_text("".join(json.dumps(t.io_record()) + "\n" for t in tasks))
    (out / SEED_INDUCTION_FILE).write_text("".join(json.dumps(t.induction_record(visible)) + "\n" for t in tasks))


def trim_vocab(model_cfg, params, vocab_size: int):
    """Drop embedding rows the tokenizer can never produce (the preset reserves 1024; a corpus
    may support fewer pieces), so sampling cannot emit an id the tokenizer cannot decode."""
    if model_cfg.vocab_size == vocab_size:
        return model_cfg, params
    if not model_cfg.tie_word_embeddings:
        raise UserError("the nano preset ties its embeddings; untied vocab trimming is not supported")
    params = dict(params)
    params["embed"] = {"embedding_vd": np.asarray(params["embed"]["embedding_vd"])[:vocab_size]}
    return model_cfg.replace(vocab_size=vocab_size), params


def save_checkpoint(out: Path, model_cfg, params, tok) -> None:
    from safetensors.numpy import save_file

    from azr_jax.models import hf_from_params

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model_cfg.to_hf_config(dtype="float32"), indent=2) + "\n")
    tensors = {k: np.asarray(v, np.float32) for k, v in hf_from_params(model_cfg, params).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    # safetensors creates the file 0600; like every other file here it should follow the umask
    # (the sandbox tests and other users read the shipped base).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out / "model.safetensors", 0o666 & ~umask)
    tok.save(out)


def build_base(cfg, out: Path, *, log=print, command: str = "build_base()") -> dict:
    """Corpus -> tokenizer -> pretraining -> checkpoint in `out`; returns the build record."""
    t0 = time.perf_counter()
    p = cfg.pretrain
    if cfg.model.preset != "nano":  # a paper config would otherwise build a nano model, silently
        raise UserError(f"azr-jax pretrain builds the nano base model (model.preset 'nano'); this config has "
                        f"model.preset {cfg.model.preset!r}. Larger models start from their released "
                        f"checkpoints (model.hf_dir); use configs/nano_base.py here")
    for key in ("hf_dir", "tokenizer"):  # train's way to name a start; here it would be a random init, silently
        if getattr(cfg.model, key):
            raise UserError(f"azr-jax pretrain does not read model.{key} ({getattr(cfg.model, key)}); continue from a "
                            f"checkpoint with pretrain.init_from=DIR, and use configs/nano_base.py (configs/nano.py "
                            f"is the self-play config)")
    # Settle the model's shape before anything is written into `out` (which may be the shipped base).
    if p.init_from and cfg.model.overrides:
        raise UserError("model.overrides cannot reshape a model continued from pretrain.init_from; "
                        "drop one of the two")
    if not p.init_from:
        nano_model_config(cfg, p.vocab_size)  # an unknown or bad override fails here, not after the tokenizer
    # Nothing is written into `out` before the weights are trained: a build that fails or is
    # stopped half-way must not leave a new tokenizer beside the old weights (the shipped base
    # would then read other token ids, silently). The tokenizer waits in memory until the end.
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)  # an unwritable `out` fails now, not after the training
    try:
        return _build_into(cfg, out, log=log, command=command, t0=t0)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed build leaves no empty folder behind
        raise


def _build_into(cfg, out: Path, *, log, command: str, t0: float) -> dict:
    from azr_jax.models.tokenizer import load_tokenizer
    from azr_jax.nano.tokenizer_train import train_tokenizer

    p = cfg.pretrain
    tasks = corpus_tasks(cfg)
    transcripts = corpus_transcripts(cfg, tasks)
    log(f"corpus: {len(tasks)} programs, {len(transcripts)} transcripts")
    init = None
    if p.init_from:
        from azr_jax.models import from_pretrained

        src = Path(p.init_from)
        if not (src / "model.safetensors").is_file() or not (src / "tokenizer.model").is_file():
            raise UserError(f"pretrain.init_from {src} is not a nano checkpoint (model.safetensors + tokenizer.model)")
        tok = load_tokenizer(src / "tokenizer.model")
        init = from_pretrained(src, dtype=np.float32)
        log(f"continuing from {src} (its tokenizer, {tok.vocab_size} pieces)")
    else:
        with tempfile.TemporaryDirectory() as scratch:
            tok = load_tokenizer(train_tokenizer([t.prompt + t.response for t in transcripts],
                                                 Path(scratch) / "tokenizer.model", vocab_size=p.vocab_size))
    rows = tokenize_transcripts(tok, transcripts, p.seq_len)
    # Before the batching, whose error ("too small for one batch") this line explains.
    log(f"tokenizer: {tok.vocab_size} pieces; {len(rows)}/{len(transcripts)} transcripts fit seq_len {p.seq_len}")
    buckets = bucket_rows(rows, p.batch_size)
    if init is not None:
        model_cfg, start = init.config.replace(scan_layers=cfg.model.scan_layers), {k: v for k, v in init.params.items()}
    else:
        model_cfg, start = nano_model_config(cfg, tok.vocab_size), None
    if model_cfg.vocab_size < tok.vocab_size:  # ids past the embedding table would train on NaN
        raise UserError(f"model.overrides vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
                        f"{tok.vocab_size} pieces")
    params, losses = train(model_cfg, buckets, p, log=log, params=start)
    model_cfg, params = trim_vocab(model_cfg, params, tok.vocab_size)
    save_checkpoint(out, model_cfg, params, tok)
    write_seed_files(cfg, out)
    record = {
        "command": command,
        "pretrain": dataclasses.asdict(p),
        "num_params": model_cfg.num_params(),
        "tokenizer_pieces": tok.vocab_size,
        "corpus_programs": len(tasks),
        "transcripts_used": sum(len(tokens) for tokens, _, _ in buckets.values()),  # rare lengths are dropped
        "first_loss": float(np.mean(losses[:20])),
        "final_loss": float(np.mean(losses[-50:])),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
