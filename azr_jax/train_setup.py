"""What the self-play loop needs before its first step: the workdir check, the policy on its
mesh (params, tokenizer, jitted helpers) and the per-(role, task) samplers over the buffers."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from azr_jax import config as config_lib
from azr_jax.errors import UserError

log = logging.getLogger("azr_jax.train")

# Keys that may differ between a workdir's config and the config it is resumed with: how long
# to run, how often to log or save, and how the same computation is laid out (recomputation in
# the backward pass, the layer loop, rows per generation call: memory and compile time; in
# bfloat16 another layout can round differently), never what a step computes.
RESUMABLE_CHANGES = ("train.steps", "train.save_every", "train.keep_checkpoints", "train.log_every",
                     "train.eval_every", "train.audit_every", "sandbox.workers", "sandbox.isolation",
                     "sandbox.seccomp", "model.remat", "model.scan_layers", "sampling.max_rows",
                     "rl.logits_chunk", "rl.attention_chunk", "sampling.prefill_chunk",
                     # another mesh (a preempted job on another slice): the checkpoint restores
                     # into the new shardings, and a `-1` axis already follows the device count
                     "mesh.shape", "mesh.rules")

# Read on a fresh start only (a resume takes its buffers from the checkpoint): free to change.
NOT_READ_ON_RESUME = ("azr.seed_file", "azr.induction_seed_file")
# Paths a resume may find elsewhere (a run copied to another machine or clone, whose nano base
# and prompts sit under another absolute path): they may change when what the run reads from
# them is the same, by the fingerprints WORKDIR/inputs.json keeps. Weight files count by name and
# size only (a resume takes the policy from its checkpoint; the base's weights serve only as the
# KL reference when rl.kl_coef > 0), so that 15 GB need not be read at every start.
MOVABLE_INPUTS = ("model.hf_dir", "model.tokenizer", "azr.prompt_dir")
INPUTS_FILE = "inputs.json"
_MODEL_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json",
                     "tokenizer.model", "special_tokens_map.json", "chat_template.jinja")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def SELFPLAY_ROLES(tasks: list[str]) -> list[tuple[str, str]]:
    """(role, task) batches of a step in the reference's order: gen_i, pred_i, gen_o, pred_o, gen_f, pred_f."""
    return [(role, task) for task in tasks for role in ("propose", "solve")]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("overrides", "shape", "rules"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def allowed_config_change(old: dict, new: dict) -> list[str]:
    """Keys whose values differ between two config dicts and are not allowed to on resume."""
    a, b = _flatten(old), _flatten(new)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
    # Raising the prompt limit is the way out of a run whose buffers grew prompts past it (the
    # batch builder says so); the steps after the resume then draw from the longer prompts too.
    key = "sampling.max_prompt_len"
    if key in differ and isinstance(a.get(key), int) and isinstance(b.get(key), int) and b[key] > a[key]:
        differ.remove(key)
    # A cosine or linear schedule decays to 0 at train.steps: another length changes every rate.
    if a.get("train.steps") != b.get("train.steps") and b.get("optim.schedule", "constant") != "constant":
        differ.append("train.steps (optim.schedule decays over it)")
    return differ


# The trainer folds the step number (0 for seeding, then 1, 2, ...) into key(train.seed); random
# initialisation folds in the largest uint32, a step no run reaches, so it shares no key with sampling.
INIT_KEY_FOLD = 2**32 - 1


def init_key(seed: int) -> jax.Array:
    """The key of a random-init policy's parameters for `train.seed`."""
    return jax.random.fold_in(jax.random.key(seed), np.uint32(INIT_KEY_FOLD))


def has_checkpoint(workdir: Path) -> bool:
    """Whether `workdir` holds a complete training checkpoint."""
    from azr_jax.checkpoint import saved_steps

    return bool(saved_steps(workdir / "checkpoints"))


def check_inputs(cfg, workdir: Path):
    """Read the input files the start-up reads after `load_policy` (which can take minutes) now,
    so that a wrong path fails at once, with the same error: the prompt templates, the cruxeval
    file when the run evaluates, and the seed files unless `workdir` resumes (from its buffers);
    and that `model.hf_dir` and the tokenizer, which `load_policy` reads, are there.
    Returns the seeded buffers of a fresh start (None for a resume), for the start-up to use."""
    from azr_jax.azr.buffers import TaskBuffers
    from azr_jax.azr.prompts import load_templates
    from azr_jax.eval.benchmarks import load_benchmark
    from azr_jax.models.tokenizer import tokenizer_file

    _require_hf_dir(cfg.model)
    # Where the tokenizer comes from, before config.json, inputs.json and the lock are written
    # into a fresh workdir (a missing one failed in load_policy, after them).
    tokenizer_file(_tokenizer_source(cfg.model))
    if not cfg.model.hf_dir:  # overrides apply to random init only
        preset_with_overrides(cfg.model)
    load_templates(cfg.azr.prompt_dir)
    if cfg.train.eval_every >= 0 and cfg.eval.benchmark == "cruxeval":  # nano is generated, not read
        load_benchmark(cfg.eval)
    return None if has_checkpoint(workdir) else TaskBuffers.seeded(cfg.azr)


def preset_with_overrides(model_section):
    """The ModelConfig of `model.preset` with `model.overrides` applied (random init), checked."""
    from azr_jax.models import get_preset

    model_cfg = get_preset(model_section.preset)
    if not model_section.overrides:
        return model_cfg
    try:
        return model_cfg.replace(**model_section.overrides)
    except (TypeError, UserError) as e:  # an unknown field, or a value the config refuses
        raise UserError(f"model.overrides: {e}") from None


def input_fingerprints(cfg) -> dict:
    """sha256 of what the run reads through each of MOVABLE_INPUTS (None: the key is unset)."""
    from azr_jax.azr.prompts import load_templates

    prompts = json.dumps(load_templates(cfg.azr.prompt_dir), sort_keys=True).encode()
    out = {"azr.prompt_dir": hashlib.sha256(prompts).hexdigest()}
    for key, value in (("model.hf_dir", cfg.model.hf_dir), ("model.tokenizer", cfg.model.tokenizer)):
        out[key] = None if value is None else _files_digest(Path(value))
    return out


def _files_digest(path: Path) -> str:
    """A model directory's (or a tokenizer file's) config and tokenizer files, names and bytes."""
    directory = path if path.is_dir() else path.parent
    files = {directory / name for name in _MODEL_SIDE_FILES} | (set() if path.is_dir() else {path})
    h = hashlib.sha256()
    for f in sorted(files):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    if path.is_dir():
        for f in sorted(path.glob("*.safetensors*")):
            h.update(f"{f.name}:{f.stat().st_size}\0".encode())
    return h.hexdigest()


def _moved_inputs(differ: list[str], workdir: Path, now: dict) -> list[str]:
    """The keys of `differ` that are moved copies of what the run read (inputs.json agrees)."""
    keys = [k for k in differ if k in MOVABLE_INPUTS]
    if not keys:
        return []
    try:
        stored = json.loads((workdir / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return []  # a run from before inputs.json: nothing to compare with
    return [k for k in keys if isinstance(stored, dict) and stored.get(k) == now[k]]


def _refuse_a_checkpoint_past_the_end(cfg, workdir: Path, resume_step: int | None) -> None:
    """A resume whose train.steps is below its checkpoint's step would run nothing, yet rewrite
    summary.json without the run's evaluation and config.json with the smaller train.steps."""
    from azr_jax.checkpoint import check_checkpoint_directory, pending_rollback, saved_steps

    check_checkpoint_directory(workdir / "checkpoints")  # before anything is written or loaded
    steps = saved_steps(workdir / "checkpoints")
    if resume_step is not None:
        if resume_step not in steps:  # said before config.json and checkpoints/ are written
            raise UserError(f"no complete checkpoint for step {resume_step} in {workdir / 'checkpoints'}; "
                            f"available: {steps}")
        step = resume_step
    else:  # what a plain resume takes (Checkpoints.latest_step)
        step = pending_rollback(workdir / "checkpoints") if steps else None
        step = steps[-1] if step is None and steps else step
    if step is not None and step > cfg.train.steps:
        raise UserError(f"{workdir} holds a checkpoint of step {step}, past train.steps={cfg.train.steps}: set "
                        f"train.steps to {step} or more (the same command re-evaluates a finished run), or go back "
                        f"with --resume-step N (N <= {cfg.train.steps}; it deletes the newer checkpoints)")


LOCK_FILE = "trainer.lock"


class WorkdirLock:
    """An exclusive lock on WORKDIR/trainer.lock for as long as a trainer runs there: a second
    trainer started on the same workdir replaced metrics.jsonl under the first and wrote its
    checkpoints beside the first's, both with exit status 0. The lock is the kernel's (flock),
    so a killed trainer leaves none behind."""

    def __init__(self, workdir: Path):
        path = workdir / LOCK_FILE
        self._fd: int | None = None  # set first: __del__ runs even when __init__ raised
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip()
            os.close(self._fd)
            self._fd = None
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # a file system without locks
                log.warning("cannot lock %s (%s): make sure no other trainer runs in %s", path, e.strerror, workdir)
                return
            raise _in_use(workdir, holder) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __del__(self):
        self.release()


def _in_use(workdir: Path, holder: str) -> UserError:
    return UserError(f"workdir {workdir} is in use by another trainer ({holder or 'unknown process'}); "
                     f"wait for it, stop it, or use another --workdir")


def _refuse_a_running_trainer(workdir: Path) -> None:
    """The lock's refusal, said before the checks of the run's files: `--resume-step N` beside a
    running trainer was told "no complete checkpoint for step N; available: [M]" (the run had
    pruned N meanwhile), and again for M a step later, never that a trainer runs there. Only
    looks: a shared lock taken and dropped at once, nothing written."""
    try:
        fd = os.open(workdir / LOCK_FILE, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return  # no lock file yet, or unreadable: WorkdirLock decides
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise _in_use(workdir, os.pread(fd, 200, 0).decode(errors="replace").strip()) from None
    finally:
        os.close(fd)


def check_workdir(cfg, workdir: Path, *, write: bool, resume_step: int | None = None) -> WorkdirLock | None:
    """Refuse a workdir holding a run of a different config, or a checkpoint past train.steps
    (the one `resume_step`, else the newest); with `write`, lock it for this trainer (released by
    the caller) and write the resolved config."""
    if write:  # the process that locks; the others may look while it holds the lock
        _refuse_a_running_trainer(workdir)
    path = workdir / "config.json"
    new = config_lib.to_dict(cfg)
    fingerprints = input_fingerprints(cfg)
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError) as e:
            raise UserError(f"{path} is unreadable ({e}); is {workdir} a training run directory?") from None
        if not isinstance(old, dict):
            raise UserError(f"{path} does not hold a config; is {workdir} a training run directory?")
        differ = [k for k in allowed_config_change(old, new) if k not in NOT_READ_ON_RESUME]
        moved = _moved_inputs(differ, workdir, fingerprints)
        if moved:
            log.info("resuming with %s at a new path; what the run reads there is unchanged", ", ".join(moved))
            differ = [k for k in differ if k not in moved]
        if differ and has_checkpoint(workdir):
            shown = ", ".join(differ[:5]) + (" ..." if len(differ) > 5 else "")
            raise UserError(f"workdir {workdir} holds a run of a different config (differs in {shown}); "
                            f"use a new --workdir or the same config")
        if differ and not all(isinstance(old.get(k), dict) for k in ("model", "train", "azr")):
            # Not a run's config (a Hugging Face model directory given as --workdir has a
            # config.json too): it was written over with only the warning below.
            raise UserError(f"{path} is not an azr-jax run config (a model directory?), and training would "
                            f"replace it; use a new --workdir")
        if differ:  # a start that failed before its first checkpoint: nothing to resume, start afresh
            log.warning("workdir %s has a config.json but no checkpoint; starting afresh with the new config "
                        "(differs in %s)", workdir, ", ".join(differ[:5]))
    elif has_checkpoint(workdir):  # the checkpoints alone do not say which config trained them
        raise UserError(f"workdir {workdir} holds checkpoints but no config.json, so the config they were "
                        f"trained with cannot be checked against this one; put the run's config.json back, "
                        f"or use a new --workdir")
    _refuse_a_checkpoint_past_the_end(cfg, workdir, resume_step)
    if not write:
        return None
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a parent should be, no permission, a full disk
        raise UserError(f"cannot create the workdir {workdir}: {e.strerror or e}") from None
    lock = WorkdirLock(workdir)  # before the config is written: a second trainer changes nothing
    try:
        # Written beside and renamed into place: the other processes of a multi-host run read this
        # file while process 0 rewrites it, and must see the old or the new file, never half of one.
        for target, text in ((workdir / INPUTS_FILE, json.dumps(fingerprints, indent=2, sort_keys=True)),
                             (path, config_lib.to_json(cfg))):
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                tmp.write_text(text + "\n")
                os.replace(tmp, target)
            except OSError as e:  # a full disk, a quota: the old file stays whole
                raise UserError(f"cannot write {target}: {e.strerror or e}") from None
            finally:
                tmp.unlink(missing_ok=True)
    except BaseException:
        lock.release()
        raise
    return lock


@dataclasses.dataclass
class Policy:
    """The model being trained, on its mesh, with the helpers the loop calls."""

    config: Any  # models.ModelConfig
    params: Any
    tokenizer: Any
    mesh: Any
    rules: dict
    compute_dtype: Any
    peak_flops: float | None
    advantages_fn: Callable = None

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_id)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return tuple(self.tokenizer.eos_ids) or tuple(self.config.stop_token_ids)

    def decode_all(self, completions) -> list[str]:
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in completions.as_lists()]

    def put_batch(self, x: np.ndarray) -> jax.Array:
        """A host array (identical on every process) as a global array sharded by rows."""
        from jax.sharding import NamedSharding

        from azr_jax.sharding import logical_to_pspec

        spec = logical_to_pspec(("batch", "length")[: x.ndim], self.rules, x.shape, self.mesh)
        sharding = NamedSharding(self.mesh, spec)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    def put_replicated(self, x: np.ndarray) -> jax.Array:
        from jax.sharding import NamedSharding, PartitionSpec

        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, NamedSharding(self.mesh, PartitionSpec()), lambda idx: x[idx])

    def init_state(self, cfg, abstract: bool = False):
        """The train state at step 0; `abstract`: only its shapes and shardings (a restore target)."""
        from azr_jax.rl.update import init_train_state

        return init_train_state(self.config, cfg.optim, self.params, total_steps=cfg.train.steps, mesh=self.mesh,
                                rules=self.rules, abstract=abstract)

    @staticmethod
    def checkpoint_tree(state) -> dict:
        return {"params": state.params, "opt_state": state.opt_state, "step": state.step}

    @staticmethod
    def state_from_tree(tree: dict):
        from azr_jax.rl.update import TrainState

        return TrainState(params=tree["params"], opt_state=tree["opt_state"], step=tree["step"])


def _abstract_params(model_cfg, dtype, mesh, rules):
    """The parameter tree's shapes and shardings in `dtype`, nothing allocated."""
    from azr_jax.models import init_params
    from azr_jax.models.decoder import param_shardings

    shapes = jax.eval_shape(lambda key: init_params(model_cfg, key, dtype=dtype), jax.random.key(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                        param_shardings(model_cfg, mesh, rules))


# The fields that make a checkpoint "the model a preset names". Not the vocabulary, which a
# release may pad or a trimmed base shrink (the nano base has 786 of the preset's 1024 rows).
_SHAPE_FIELDS = ("architecture", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim")


def warn_if_checkpoint_is_not_the_preset(preset: str, checkpoint_cfg) -> None:
    """With model.hf_dir the checkpoint's config.json decides the shape and model.preset is not
    used, so a config written for one model (its batch sizes, lengths, mesh) pointed at another
    checkpoint would otherwise run without a word."""
    from azr_jax.models import get_preset

    try:
        named = get_preset(preset)
    except UserError as e:
        log.warning("model.preset is ignored with model.hf_dir, and %s", e)
        return
    differs = [f"{f} {getattr(checkpoint_cfg, f)} (preset {getattr(named, f)})" for f in _SHAPE_FIELDS
               if getattr(checkpoint_cfg, f) != getattr(named, f)]
    if differs:
        log.warning("model.hf_dir is not the model that model.preset '%s' names: %s; the checkpoint's "
                    "shape is used (the config's batch sizes and lengths were chosen for the preset)",
                    preset, ", ".join(differs))


def _require_hf_dir(model_section) -> None:
    if model_section.hf_dir and not Path(model_section.hf_dir).is_dir():
        raise UserError(f"model.hf_dir {model_section.hf_dir} is not a directory (a Hugging Face checkpoint is expected)")


def _tokenizer_source(model_section) -> str:
    """Where `load_policy` reads the tokenizer: model.tokenizer, else the checkpoint's own."""
    source = model_section.tokenizer or model_section.hf_dir
    if not source:
        raise UserError(f"model preset '{model_section.preset}' needs weights: set model.hf_dir to a local Hugging "
                        f"Face checkpoint (or model.tokenizer to train from random initialisation)")
    return source


def warn_ineffective_settings(cfg) -> None:
    """Warnings for settings a run accepts but that do not do what they seem to."""
    if cfg.optim.warmup_steps >= cfg.train.steps:  # the decaying schedules refuse this outright
        log.warning("optim.warmup_steps=%d is not below train.steps=%d: the learning rate never reaches "
                    "optim.learning_rate=%g in this run", cfg.optim.warmup_steps, cfg.train.steps,
                    cfg.optim.learning_rate)
    warn_partial_loss_blocks(cfg)


def warn_partial_loss_blocks(cfg) -> None:
    """One warning when `token-mean-per-micro-batch` will see partly filled blocks. Each (role,
    task) part's last block is filled up with empty rows and still weighs as much as a full
    block, so the real rows in it weigh more (docs/rl.md): 17 rows in blocks of 16 give the 17th
    row 16 times the weight of the others."""
    rl, azr = cfg.rl, cfg.azr
    if rl.loss_agg != "token-mean-per-micro-batch":
        return
    micro = rl.micro_batch_size
    parts = {"proposer": azr.batch_size, "solver": azr.batch_size * azr.solver_samples}
    uneven = [f"{role} {rows} rows" for role, rows in parts.items() if rows % micro]
    if azr.train_learnability_rollouts:
        uneven.append("learnability rollouts (their count varies)")
    if uneven:
        log.warning("rl.loss_agg=token-mean-per-micro-batch weighs every block of rl.micro_batch_size=%d rows "
                    "alike, and these parts leave a partly filled last block whose rows then weigh more: %s; "
                    "make each part's row count a multiple of %d to weigh every row alike", micro,
                    ", ".join(uneven), micro)


def warn_idle_mesh_axes(model_cfg, mesh, rules) -> None:
    """One warning per mesh axis that shards no parameter though the rules give it some
    (`decoder.idle_mesh_axes`): the memory a larger fsdp count was chosen to save is not saved."""
    from azr_jax.models.decoder import idle_mesh_axes

    for ax in idle_mesh_axes(model_cfg, mesh, rules):
        dims = {name: getattr(model_cfg, attr) for name, attr in (("embed", "hidden_size"), ("mlp", "intermediate_size"),
                                                                  ("vocab", "vocab_size"), ("heads", "num_heads"),
                                                                  ("kv_heads", "num_kv_heads"))
                if rules.get(name) == ax or (isinstance(rules.get(name), (list, tuple)) and ax in rules[name])}
        log.warning("mesh axis %r (%d devices) shards no parameter: no dimension mesh.rules give it (%s) divides "
                    "by %d, so parameters, gradients and optimizer state are whole on each of its devices; choose "
                    "a size that divides them, or give the axis another logical axis in mesh.rules", ax,
                    mesh.shape[ax], ", ".join(f"{k} {v}" for k, v in dims.items()) or "none", mesh.shape[ax])


def warn_rollouts_past_context(cfg, model_cfg) -> None:
    """Training's length budgets against the model's context. Not for `eval`/`convert`, which
    never read sampling.max_prompt_len (eval warns about its own prompts as it sees them)."""
    longest = cfg.sampling.max_prompt_len + max(cfg.sampling.max_response_len, cfg.eval.max_response_len)
    if longest > model_cfg.max_position_embeddings:
        log.warning("sampling.max_prompt_len + the longest response (%d tokens) is over the model's "
                    "max_position_embeddings (%d): positions past it were never trained", longest,
                    model_cfg.max_position_embeddings)


def load_policy(cfg, *, weights: bool = True) -> Policy:
    """Model config, initial params and tokenizer from `cfg.model`, placed on `cfg.mesh`.

    `weights=False`: `params` are only shapes, dtypes and shardings (`jax.ShapeDtypeStruct`s);
    nothing is read from the base's safetensors or allocated. For callers that take the params
    from a training run's checkpoint instead (`eval --run`, `convert`)."""
    from azr_jax.bench.common import peak_numbers
    from azr_jax.models import init_params
    from azr_jax.models.decoder import param_shardings
    from azr_jax.models.tokenizer import load_tokenizer
    from azr_jax.rl.advantages import NUM_TRRPP_GROUPS, compute_advantages
    from azr_jax.sharding import make_mesh

    m = cfg.model
    # The mesh first: every parameter is created (or read) straight into its sharding, never
    # gathered on one device (which would not fit for large models and which jit then refuses).
    mesh = make_mesh(cfg.mesh.shape)
    rules = dict(cfg.mesh.rules)
    if m.hf_dir:
        from azr_jax.models import from_pretrained
        from azr_jax.models.checkpoint_hf import read_hf_config

        _require_hf_dir(m)
        if m.overrides:
            raise UserError(f"model.overrides {dict(m.overrides)} would be ignored: with model.hf_dir the "
                            f"checkpoint's config.json fixes the architecture (overrides are for random init)")
        if weights:
            model = from_pretrained(m.hf_dir, dtype=_DTYPES[m.param_dtype], mesh=mesh, rules=rules)
            model_cfg, params = model.config, model.params
        else:
            model_cfg = read_hf_config(m.hf_dir)
            params = _abstract_params(model_cfg, _DTYPES[m.param_dtype], mesh, rules)
        warn_if_checkpoint_is_not_the_preset(m.preset, model_cfg)
        tokenizer = load_tokenizer(_tokenizer_source(m))  # the checkpoint's own unless one is named
    else:
        source = _tokenizer_source(m)
        model_cfg = preset_with_overrides(m)
        tokenizer = load_tokenizer(source)
        if weights:
            params = jax.jit(lambda key: init_params(model_cfg, key, dtype=_DTYPES[m.param_dtype]),
                             out_shardings=param_shardings(model_cfg, mesh, rules))(init_key(cfg.train.seed))
        else:
            params = _abstract_params(model_cfg, _DTYPES[m.param_dtype], mesh, rules)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {model_cfg.vocab_size}")
    warn_idle_mesh_axes(model_cfg, mesh, rules)
    model_cfg = model_cfg.replace(scan_layers=m.scan_layers)
    if tokenizer.vocab_size < model_cfg.vocab_size:  # never sample an id the tokenizer cannot decode
        model_cfg = model_cfg.replace(tokenizer_vocab_size=tokenizer.vocab_size)
    compute_dtype = _DTYPES[m.compute_dtype]
    peak, _ = peak_numbers(getattr(jax.devices()[0], "device_kind", ""))

    @jax.jit
    def advantages_fn(rewards_b, loss_mask_bt, groups_b):
        # Static under jit: per-prompt group ids (grpo/rloo) stay below 6 + the row count.
        return compute_advantages(cfg.rl, rewards_b, loss_mask_bt, groups_b,
                                  num_groups=NUM_TRRPP_GROUPS + rewards_b.shape[0])

    return Policy(config=model_cfg, params=params, tokenizer=tokenizer, mesh=mesh, rules=rules,
                  compute_dtype=compute_dtype, peak_flops=peak * jax.device_count() if peak else None,
                  advantages_fn=advantages_fn)


def task_sampler(buffers, role: str, task: str, azr_cfg, step: int, seed: int) -> Callable[[int, np.random.Generator], dict]:
    """`pick(index, rng) -> job` for the Grain stream of one (role, task) batch.

    propose deduction/abduction: K references drawn per prompt (uniform, without replacement);
    propose induction: one program from the deduction + abduction pools;
    solve: the batch's tasks are chosen once (`azr.pred_data_mix`, "new" = added since the previous
    step, or in this one with `azr.solver_task_lag=false`) and the stream walks through them,
    wrapping around, so a prompt skipped for length is replaced by a repeat of the first chosen
    tasks that fit (the reference pads back by re-sampling surviving items uniformly).
    """
    if role == "propose":
        if task == "induction":
            if not buffers["deduction"].entries and not buffers["abduction"].entries:
                raise UserError("the deduction and abduction buffers are empty: induction proposers take their "
                                "programs from them (check azr.seed_file)")
            return lambda index, rng: {"program": buffers.sample_induction_programs(1, rng)[0]}
        return lambda index, rng: {"references": buffers[task].sample_references(azr_cfg.n_references, rng)}
    rng = np.random.default_rng(seed)
    new_since = step - 1 if azr_cfg.solver_task_lag else step
    chosen = buffers[task].sample_solver_tasks(azr_cfg.batch_size, rng, new_since_step=new_since,
                                               mix=azr_cfg.pred_data_mix)
    if not chosen:
        raise UserError(f"the {task} buffer is empty: no solver tasks (check azr.seed_file)")
    return lambda index, rng: {"problem": chosen[index % len(chosen)]}
