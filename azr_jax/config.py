"""Typed experiment configuration.

A config is a tree of frozen dataclasses (`Config` at the root, one section per concern).
Experiment presets are Python files under `configs/` that define `config = Config(...)` (or a
`get_config()` function); `--set a.b=c` overrides any field with type checking, and an unknown
key is an error naming the closest valid key. The fully resolved config is written into every
run's workdir as `config.json`, and can be loaded back from there.

This module is plain Python (no JAX) so host-only commands such as `azr-jax score` stay light.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import struct
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azr_jax.errors import UserError
from azr_jax.jsonl import check_input_file


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSection:
    """Which policy to train and how it computes."""

    preset: str = "nano"  # a name from azr_jax.models.presets; with hf_dir only compared (a warning)
    hf_dir: str | None = None  # Hugging Face checkpoint directory (config.json + safetensors)
    tokenizer: str | None = None  # tokenizer.json / SentencePiece .model; default: inside hf_dir
    # ModelConfig fields to replace in the preset (random init only; refused with hf_dir; not
    # scan_layers, which is model.scan_layers below)
    overrides: dict = field(default_factory=dict)
    compute_dtype: str = "bfloat16"  # dtype of activations and matmuls
    # The dtype weights are loaded (or initialised) in, so also the KL reference's and the
    # default export dtype; the trainer's master copy is float32 whatever this says.
    param_dtype: str = "float32"
    remat: str = "none"  # rematerialisation policy of the update step: none | full | dots
    # False runs the layers as a Python loop instead of one lax.scan (ModelConfig.scan_layers):
    # faster on CPU, slower to compile for deep models.
    scan_layers: bool = True


@dataclass(frozen=True)
class MeshSection:
    """Device mesh and the logical-axis -> mesh-axis table (the only place sharding is decided)."""

    # Mesh axis sizes; one entry may be -1 to take all remaining devices. An axis that no rule
    # below uses must be 1 (its devices would all repeat the same work).
    shape: dict = field(default_factory=lambda: {"data": 1, "fsdp": -1, "tensor": 1})
    # logical axis name -> mesh axis name(s) or None (replicated). Order matters only for readability.
    rules: dict = field(
        default_factory=lambda: {
            "batch": ["data", "fsdp"],
            "length": None,
            "vocab": "tensor",
            "embed": "fsdp",
            "heads": "tensor",
            "kv_heads": "tensor",
            "head_dim": None,
            "mlp": "tensor",
            "layers": None,
            "norm": None,
            "cache_length": None,
        }
    )


@dataclass(frozen=True)
class SamplingSection:
    """Rollout generation settings (AZR_SPEC §4.4: T = 1.0, top-p 1.0, no top-k)."""

    # Sampling temperature of proposals and solutions (learnability: azr.learnability_temperature)
    temperature: float = 1.0
    top_p: float = 1.0  # nucleus sampling; 1.0 = off
    top_k: int = 0  # top-k sampling; 0 = off
    # Longest prompt in tokens; longer proposer/solver prompts are skipped and redrawn
    max_prompt_len: int = 6144
    max_response_len: int = 8096  # tokens generated per rollout at most
    # Prompt/response lengths are padded up to one of these buckets to bound recompilation. The
    # rollouts add max_prompt_len as a bucket of its own (the longest prompt a batch holds).
    length_buckets: list = field(default_factory=lambda: [256, 512, 1024, 2048, 4096, 8192])
    # Rows (prompts x samples) one rollout generation aims to decode at once; null = all of them.
    # Calls take max(1, max_rows // samples) prompts, rounded up to the sampler's batch bucket
    # and the batch shards. The KV cache is dense (rows x the prompt and response buckets), so
    # this bounds its memory: the learnability rollouts of a 64-prompt batch are up to 512 rows
    # (docs/training.md). Each row's draws depend only on the key and its index (the same
    # samples in float32; in bfloat16 a different split can round a logit differently).
    max_rows: int | None = None
    # Positions per chunk of the prompt pass (0 = the whole prompt bucket at once): a longer
    # prompt bucket goes through the model in chunks that attend to the cache so far, so the
    # prefill's attention scores are chunk x bucket per head instead of bucket x bucket. The same
    # tokens up to float rounding (docs/training.md, "Memory").
    prefill_chunk: int = 0
    # Not read: `azr-jax eval` and the trainer's evaluations use `eval.temperature` (0 = greedy,
    # as the paper). Kept so existing config files still load; any other value is refused.
    eval_temperature: float = 0.0


@dataclass(frozen=True)
class AZRSection:
    """The method on the host side: task types, prompts, validation, rewards, buffers."""

    # The task types trained, each with a propose and a solve batch
    task_types: list = field(default_factory=lambda: ["abduction", "deduction", "induction"])
    batch_size: int = 64  # sequences per (role, task) batch; 6 batches per step
    n_references: int = 6  # K reference snippets shown to deduction/abduction proposers
    n_solver_samples: int = 8  # N learnability rollouts per valid proposal
    # Completions per task in each solve/<task> batch (reference and paper: 1). With
    # rl.estimator=grpo or rloo and more than 1, each task's completions are one group
    # (a per-prompt baseline); under trr++ they stay in the solve/<task> group. A deviation.
    solver_samples: int = 1
    # Temperature of the learnability rollouts (AZR_SPEC §3.2: sampled, never greedy)
    learnability_temperature: float = 1.0
    num_inputs: int = 10  # induction proposals must give this many inputs
    boundary_reward: float = -0.5  # proposer reward when all or none of N solved (paper: 0.0)
    solver_task_lag: bool = True  # solver tasks come from buffers as of the previous step (reference)
    buffer_cap: int = 16384  # tasks per task-type buffer at most; buffer_eviction says which go
    buffer_eviction: str = "drop_oldest"  # drop_oldest | keep_oldest (reference: keep_oldest)
    # Solver tasks: max_new = the previous step's new tasks first; uniform = the whole buffer
    pred_data_mix: str = "max_new"
    # True: refuse a second top-level function (reference: any second def)
    reject_multiple_functions: bool = False
    f_replace_location: str = "not_first"  # not_first | any_last
    code_location: str = "first"  # first | last ```python``` (or untagged) block of a proposal
    # Modules (and dotted names: os.path, sys.exit) a proposed program may not import or use
    # (docs/sandbox.md)
    banned_words: list = field(
        default_factory=lambda: [
            "logging", "random", "multiprocessing", "pebble", "subprocess", "threading",
            "datetime", "time", "hashlib", "hmac", "bcrypt", "os.sys", "os.path", "sys.exit",
            "os.environ", "calendar",
        ]
    )
    seed_file: str | None = None  # JSONL of triplets; None = identity triplet only
    # JSONL of induction tasks; None = the identity induction task (or the seeding phase)
    induction_seed_file: str | None = None
    # Seeding phase (AZR_SPEC §1.3), run before step 1 of a fresh run for each seed file not given:
    # propose-only rounds, no update, until the deduction/abduction seed triplets and the
    # induction seed each hold this many tasks (paper 256, Llama 64); 0 = start self-play at once.
    seed_size: int = 0
    seed_max_rounds: int = 200  # give up seeding after this many rounds (a warning; self-play starts anyway)
    # Strip comments/docstrings, prints and non-def top-level code from proposed programs before
    # validation (AZR_SPEC §2.2). Off in self-play (paper D.5); the seeding phase always turns it on.
    clean_programs: bool = False
    train_propose: bool = True  # False = solver-only ablation: proposals are not trained on
    # True = also train the solver on the learnability rollouts (n_solver_samples per valid
    # proposal, in the solve/<task> group; under grpo/rloo each proposal's samples form their
    # own group). A deviation: the reference discards them.
    train_learnability_rollouts: bool = False
    # False = no proposer at all: the solver trains on tasks from the seed buffers only (the
    # "what does self-play add" baseline); no proposals, no learnability rollouts.
    propose: bool = True
    prompt_dir: str | None = None  # directory of replacement prompt templates
    max_output_chars: int = 0  # 0 = never truncate gold outputs (reference: 400)
    # Answer-diversity bonus for valid proposals (AZR_SPEC §3.4; implemented but off in the
    # reference and the paper): min(coef * (1 - p(answer)), max) added to the proposer reward,
    # p = the share of the task's buffer (plus this step's valid proposals) with the same answer:
    # the same value (`value`, the reference's flat table) or the same Python type (`type`).
    answer_diversity_coef: float = 0.0
    answer_diversity_max: float = 0.5  # the largest answer-diversity bonus a proposal gets
    answer_diversity_level: str = "value"  # value | type


@dataclass(frozen=True)
class SandboxSection:
    """Isolation and limits for running model-written programs (DESIGN §6)."""

    # Wall-clock limit of one run of a job, the program and all its calls (reference: 10 s
    # for each snippet, docs/deviations.md); at most 1e6 s
    timeout_s: float = 10.0
    workers: int = 0  # sandbox processes running jobs in parallel; 0 = number of CPU cores
    memory_mb: int = 1024  # each process's address space, and the job's processes together
    max_file_mb: int = 16  # largest file a job may write (RLIMIT_FSIZE)
    max_open_files: int = 64  # open descriptors per process (RLIMIT_NOFILE)
    max_processes: int = 16  # processes a job may run at once
    isolation: str = "auto"  # auto | bwrap | unshare | none (none only with an explicit warning)
    seccomp: bool = True  # syscall filter in every mode (azr_jax/sandbox/seccomp.py)


@dataclass(frozen=True)
class RLSection:
    """Advantage estimator and policy loss (AZR_SPEC §4)."""

    estimator: str = "trr++"  # trr++ | reinforce++ | grpo | rloo
    whiten_stats: str = "token"  # token (reference/verl) | sequence (paper Eq. 8)
    clip_eps_low: float = 0.2  # PPO ratio clip below 1 (1 - eps)
    clip_eps_high: float = 0.28  # PPO ratio clip above 1 (1 + eps; clip-higher)
    dual_clip: float | None = 3.0  # dual-clip bound c on negative-advantage tokens; null = off
    entropy_coef: float = 0.001  # weight of the entropy bonus
    kl_coef: float = 0.0  # weight of the KL term to the starting policy; 0 = none (AZR)
    kl_type: str = "k3"  # k1 | k3
    # token-mean | seq-mean-token-mean | seq-mean-token-sum | token-mean-per-micro-batch (reference:
    # token mean within each block of micro_batch_size rows, averaged over blocks; docs/rl.md)
    loss_agg: str = "token-mean"
    micro_batch_size: int = 16  # rows per gradient micro-batch (accumulated into one optimizer step)
    # The ratio's pi_old. recompute (reference): the update's own pre-update logprobs, so the
    # ratio is 1 as after verl's recompute before its single optimizer step; batch: the batch's
    # `old_logprobs` (in self-play the sampler's), so the clip also acts on sampler/trainer gaps.
    old_logprobs: str = "recompute"
    # Self-play update on length-bucketed micro-batches (rows sorted by length, each micro-batch
    # padded to its own bucket; same objective, no compute on padding; azr_jax/rl/bucketed.py).
    # false: one padded batch, one jitted step (gradient accumulation in lax.scan).
    pack_by_length: bool = True
    # Positions per chunk of the output head in the update and the KL reference pass: only one
    # chunk's [rows, chunk, vocab] float32 logits are live (recomputed in the backward pass).
    # 0 = the whole sequence at once. Same objective; it bounds the update's largest activation.
    logits_chunk: int = 0
    # Queries per chunk of the attention in the update and the KL reference pass: each query
    # still attends to its whole row, but only one chunk's [chunk, row] scores per head are live
    # (the backward pass recomputes them). 0 = all queries at once ([row, row] scores per head).
    attention_chunk: int = 0


@dataclass(frozen=True)
class OptimSection:
    """The optimizer: AdamW after a global-norm gradient clip, on a learning-rate schedule
    (docs/rl.md)."""

    learning_rate: float = 1e-6  # peak learning rate (after warmup)
    schedule: str = "constant"  # constant | cosine | linear
    warmup_steps: int = 0  # linear warmup from 0 over this many updates
    weight_decay: float = 0.0  # AdamW decoupled weight decay (master 0.0, paper branch 0.01)
    b1: float = 0.9  # AdamW first-moment decay
    b2: float = 0.999  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW denominator epsilon; at least 2**-126 (float32 holds a smaller one as 0)
    grad_clip_norm: float | None = 1.0  # global gradient-norm clip; null = no clipping


@dataclass(frozen=True)
class TrainSection:
    """The run: its length, seed, and how often it checkpoints, logs, evaluates and audits."""

    steps: int = 500  # self-play steps (one update each)
    seed: int = 0  # seed of the run: parameter init, task draws and sampling keys
    save_every: int = 10  # checkpoint every N steps (and at the end, and on SIGTERM)
    keep_checkpoints: int = 3  # the newest N complete checkpoints stay on disk
    log_every: int = 1  # the progress line on stderr; metrics.jsonl and TensorBoard get every step
    eval_every: int = 0  # 0 = only at the start and the end; -1 = never
    # Write sampled rollouts and buffer snapshots every N steps (and at step 1); 0 = never
    audit_every: int = 10


@dataclass(frozen=True)
class EvalSection:
    """Held-out evaluation: `azr-jax eval`, and the trainer's at the start, every
    train.eval_every steps and at the end. It also reads sampling.top_p/top_k (when it samples),
    sampling.max_rows and sampling.prefill_chunk; it keeps the sampler's default length buckets."""

    benchmark: str = "nano"  # nano (shipped) | cruxeval (needs eval.data_path, a CRUXEval JSONL file)
    data_path: str | None = None  # the CRUXEval JSONL file (eval.benchmark=cruxeval); not read for nano
    # 0 = all; balanced cut: nano max_items // 3 per type, cruxeval max_items // 2 programs (both
    # items), at least 1 and at most all
    max_items: int = 0
    max_response_len: int = 1024  # answer budget in tokens per item
    # Completions per item: 1 = pass@1 (greedy at temperature 0); k > 1 also reports pass@k
    # (an item counts when any of its k samples is right) and needs temperature > 0.
    samples: int = 1
    temperature: float = 0.0  # 0 = greedy (the paper's evaluation)


@dataclass(frozen=True)
class PretrainSection:
    """`azr-jax pretrain`: the nano base model's procedural corpus, tokenizer and training run."""

    corpus_seed: int = 0  # generator seed of the pretraining corpus (the benchmark uses its own)
    # Programs drawn (repeats included); three solver transcripts each, proposer ones for every 2nd
    corpus_programs: int = 6000
    max_program_steps: int = 3  # generator difficulty: pipeline length 1..this
    vocab_size: int = 1024  # SentencePiece vocabulary trained on the corpus
    steps: int = 1500  # pretraining updates
    batch_size: int = 32  # transcripts per update
    seq_len: int = 384  # transcripts longer than this are dropped
    learning_rate: float = 3e-3  # peak AdamW learning rate; cosine decay to 5 % of it after the warmup
    warmup_steps: int = 100  # linear warmup updates (at most half of pretrain.steps)
    weight_decay: float = 0.01  # AdamW weight decay
    seed: int = 0  # parameter init and batch order
    # Continue from this nano checkpoint directory (its weights and its tokenizer, which is then
    # not retrained) with a fresh optimizer and schedule; None = train from a random init.
    # (pretrain refuses model.hf_dir and model.tokenizer: this is its way to name a start.)
    init_from: str | None = None


@dataclass(frozen=True)
class Config:
    name: str = "unnamed"  # The run's name; a workdir default (runs/<name>) when --workdir is not given
    model: ModelSection = field(default_factory=ModelSection)
    mesh: MeshSection = field(default_factory=MeshSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    azr: AZRSection = field(default_factory=AZRSection)
    sandbox: SandboxSection = field(default_factory=SandboxSection)
    rl: RLSection = field(default_factory=RLSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)


# ----------------------------------------------------------------------------------------------
# Loading, overriding, validating, dumping
# ----------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _field_types(cls).items():
        full = f"{prefix}{name}"
        keys.append(full)
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, full + "."))
    return keys


# Common short names for keys whose spelling difflib would match to another key
# (`sampling.temp` looks more like `sampling.top_p` than `sampling.temperature`).
_SHORT_NAMES = {"lr": "learning_rate", "temp": "temperature", "kl": "kl_coef", "entropy": "entropy_coef",
                "wd": "weight_decay", "bs": "batch_size", "warmup": "warmup_steps"}


def _unknown_key(key: str) -> UserError:
    keys = _all_keys(Config)
    section, _, leaf = key.rpartition(".")
    if leaf in _SHORT_NAMES:
        meant = [k for k in keys if k.rpartition(".")[2] == _SHORT_NAMES[leaf]]
        in_section = [k for k in meant if k.rpartition(".")[0] == section]
        meant = in_section or meant
        if meant:
            return UserError(f"unknown config key '{key}'; did you mean "
                             f"{' or '.join(repr(k) for k in meant)}?")
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; every key is listed in docs/config.md"
    return UserError(f"unknown config key '{key}'{hint}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (a parsed override or a JSON value) to type `tp`, or raise UserError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(value, opt, key)
            except UserError as e:
                errors.append(str(e))
        message = errors[0] if errors else f"config key '{key}': bad value {value!r}"
        if type(None) in options and isinstance(value, str) and value.strip().lower() == "none":
            message += " (JSON null for none)"  # Python's spelling is not JSON
        raise UserError(message)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"config key '{key}' expects a bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"config key '{key}' expects an int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.isascii():  # Python's int() also reads '５' (full width) as 5
            try:
                return int(value)
            except ValueError:
                pass
        raise UserError(f"config key '{key}' expects an int, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"config key '{key}' expects a float, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str) and value.isascii():
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"config key '{key}' expects a float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"config key '{key}' expects a string, got {value!r}")
    if tp is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise UserError(f"config key '{key}' expects a list (JSON, e.g. [1, 2]), got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise UserError(f"config key '{key}' expects a mapping (JSON, e.g. {{\"a\": 1}}), got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return _typed(value, tp, prefix=key + ".")
        raise UserError(f"config key '{key}' expects a section, got {value!r}")
    raise UserError(f"config key '{key}': unsupported type {tp}")


def from_dict(data: dict, cls: type = Config, prefix: str = "") -> Any:
    """Build a (nested) config from plain data, rejecting unknown keys and wrong types."""
    out = _typed(data, cls, prefix)
    return validate(out) if cls is Config else out


def _typed(data: dict, cls: type, prefix: str = "") -> Any:
    """`from_dict` without the cross-field checks of `validate`."""
    if not isinstance(data, dict):
        raise UserError(f"config {'section ' + repr(prefix[:-1]) if prefix else 'file'} must be a mapping of keys "
                        f"to values, got {type(data).__name__}")
    types_ = _field_types(cls)
    kwargs = {}
    for k, v in data.items():
        if k not in types_:
            raise _unknown_key(prefix + k)
        kwargs[k] = _coerce(v, types_[k], prefix + k)
    return cls(**kwargs)


def _parse_override_value(text: str) -> Any:
    """`--set` values are JSON when they parse as JSON (numbers, lists, null, true), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _override_value(raw: str, tp: Any, key: str) -> Any:
    """The value of `--set key=raw` for a field of type `tp`."""
    value = _parse_override_value(raw)
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if raw.strip() == "None" and type(None) in options:  # Python's spelling; as text it was the path "None"
        raise UserError(f"config key '{key}': write null, not None, to clear it")
    if str in options and not isinstance(value, str) and not (value is None and type(None) in options):
        return raw  # name=2024 is the name "2024", not a type error
    if bool in options and type(value) is int and value in (0, 1):
        return bool(value)  # as the strings "1" and "0" are
    return value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `a.b=c` overrides, then check the whole config; unknown keys and wrong types raise UserError."""
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        key = key.strip()
        cfg = _replace_path(cfg, key.split("."), raw, key)
    return validate(cfg)


def _replace_path(obj: Any, path: list[str], raw: str, full_key: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise _unknown_key(full_key)
    types_ = _field_types(type(obj))
    head = path[0]
    if head not in types_:
        raise _unknown_key(full_key)
    if len(path) > 1:
        child = getattr(obj, head)
        if isinstance(child, dict):  # e.g. model.overrides.num_layers=2, mesh.shape.fsdp=4
            new = _set_in_dict(child, path[1:], _parse_override_value(raw), full_key)
        else:
            new = _replace_path(child, path[1:], raw, full_key)
    elif dataclasses.is_dataclass(types_[head]):
        new = _merge_section(getattr(obj, head), _override_value(raw, types_[head], full_key), full_key)
    else:
        new = _coerce(_override_value(raw, types_[head], full_key), types_[head], full_key)
    return dataclasses.replace(obj, **{head: new})


def _merge_section(section: Any, value: Any, key: str) -> Any:
    """`--set azr={"batch_size": 4}` changes the keys it names and keeps the others (the preset's)."""
    if not isinstance(value, dict):
        return _coerce(value, type(section), key)  # the one-line type error
    types_ = _field_types(type(section))
    changes = {}
    for k, v in value.items():
        if k not in types_:
            raise _unknown_key(f"{key}.{k}")
        if dataclasses.is_dataclass(types_[k]):
            changes[k] = _merge_section(getattr(section, k), v, f"{key}.{k}")
        else:
            changes[k] = _coerce(v, types_[k], f"{key}.{k}")
    return dataclasses.replace(section, **changes)


def _set_in_dict(d: dict, path: list[str], value: Any, full_key: str) -> dict:
    out = dict(d)
    head = path[0]
    if len(path) == 1:
        out[head] = value
        return out
    inner = out.get(head)
    if inner is not None and not isinstance(inner, dict):
        parent = full_key[: len(full_key) - len(".".join(path[1:])) - 1]
        raise UserError(f"config key '{full_key}': '{parent}' is {inner!r}, which has no keys to set")
    out[head] = _set_in_dict(inner or {}, path[1:], value, full_key)
    return out


_CHOICES = {
    # float16 is left out: the update has no loss scaling, and its gradients underflow.
    ("model", "compute_dtype"): ("bfloat16", "float32"),
    ("model", "param_dtype"): ("bfloat16", "float32"),
    ("model", "remat"): ("none", "full", "dots"),
    ("azr", "buffer_eviction"): ("drop_oldest", "keep_oldest"),
    ("azr", "pred_data_mix"): ("max_new", "uniform"),
    ("azr", "f_replace_location"): ("not_first", "any_last"),
    ("azr", "code_location"): ("first", "last"),
    ("azr", "answer_diversity_level"): ("value", "type"),
    ("sandbox", "isolation"): ("auto", "bwrap", "unshare", "none"),
    ("rl", "estimator"): ("trr++", "reinforce++", "grpo", "rloo"),  # rl/advantages.py REGISTRY
    ("rl", "whiten_stats"): ("token", "sequence"),
    ("rl", "kl_type"): ("k1", "k3"),
    ("rl", "old_logprobs"): ("recompute", "batch"),
    ("rl", "loss_agg"): ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-mean-per-micro-batch"),
    ("optim", "schedule"): ("constant", "cosine", "linear"),
    ("eval", "benchmark"): ("nano", "cruxeval"),  # eval/benchmarks.py
}


# The smallest temperature above 0 (greedy): the sampler and the update divide float32 logits by
# it, and below ~1e-38 float32 holds it as 0 (the sampler then divided by 1: samples at T = 1) while
# just above that logits / T overflow to inf (NaN logprobs). 1e-30 is as greedy as 0 in practice.
MIN_TEMPERATURE = 1e-30

# The smallest AdamW eps (2**-126, float32's smallest normal number): the update divides by
# sqrt(v) + eps in float32, which flushes a smaller eps to 0, so a parameter whose gradient is 0
# (an untied embedding row no token of the batch uses) got 0 / 0 = NaN weights at the first step.
MIN_ADAM_EPS = 2.0**-126

# The longest sandbox.timeout_s: the host waits for a zygote's answer with poll(), whose timeout is
# a C int of milliseconds (2**31 ms, about 24.8 days, less a grace period); above it every job was
# a sandbox failure ("OverflowError: timeout is too large"), so no program was ever judged.
MAX_SANDBOX_TIMEOUT_S = 1e6


# The logical axes the model code names (the default rules list each once), and the mesh axes
# the presets and --mesh lay out; mesh.shape may add others that a rule maps to.
LOGICAL_AXES = tuple(MeshSection().rules)
MESH_AXES = tuple(MeshSection().shape)


def _check_mesh(mesh: "MeshSection") -> None:
    shape = mesh.shape
    if not isinstance(shape, dict) or not shape:
        raise UserError(f"config key 'mesh.shape' must map axis names to sizes, got {shape!r}")
    for axis, size in shape.items():
        if type(size) is not int or not (size > 0 or size == -1):
            raise UserError(f"config key 'mesh.shape.{axis}' must be a positive int or -1 (the rest), got {size!r}")
    if list(shape.values()).count(-1) > 1:  # said here, not first by make_mesh at the start of a run
        raise UserError(f"config key 'mesh.shape' {dict(shape)}: at most one axis may be -1 (the rest)")
    if not isinstance(mesh.rules, dict):
        raise UserError(f"config key 'mesh.rules' must map logical axes to mesh axes, got {mesh.rules!r}")
    used = set()
    for logical, target in mesh.rules.items():
        if logical not in LOGICAL_AXES:  # a misspelt rule would leave the real one in force
            hint = _did_you_mean(logical, LOGICAL_AXES)
            raise UserError(f"config key 'mesh.rules.{logical}': no such logical axis{hint} "
                            f"(known: {', '.join(LOGICAL_AXES)})")
        targets = [] if target is None else [target] if isinstance(target, str) else target
        if not isinstance(targets, list) or any(t not in shape for t in targets) or len(set(targets)) < len(targets):
            raise UserError(f"config key 'mesh.rules.{logical}' must name distinct axes of mesh.shape {list(shape)} "
                            f"(a name, a list of names, or null), got {target!r}")
        used.update(targets)
    missing = [a for a in LOGICAL_AXES if a not in mesh.rules]
    if missing:  # the model names every one of them: sharding would fail at the first param
        raise UserError(f"config key 'mesh.rules' has no entry for {', '.join(missing)}: a whole mesh.rules value "
                        f"replaces the table, so give every logical axis (null: replicated), or set single "
                        f"entries (--set mesh.rules.batch=data)")
    for axis, size in shape.items():
        if axis in used:
            continue
        # No rule shards over it: a new name is a typo (mesh.shape.tensr=2), and a known axis of
        # more than one device would only repeat the same work on each.
        if axis not in MESH_AXES:
            raise UserError(f"config key 'mesh.shape.{axis}': no mesh.rules entry uses mesh axis '{axis}'"
                            f"{_did_you_mean(axis, sorted(used | set(MESH_AXES)))}")
        # -1 too: on several devices it takes all of them (on one, it could only be 1).
        if size > 1 or size == -1:
            raise UserError(f"config key 'mesh.shape.{axis}' is {size}, but no mesh.rules entry uses mesh axis "
                            f"'{axis}': its devices would all do the same work (map a logical axis to it, or set 1)")


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def validate(cfg: Config) -> Config:
    """Cross-field checks with messages that say what to change."""
    for (section, name), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise UserError(f"config key '{section}.{name}' must be one of {list(allowed)}, got {value!r}")
    for t in cfg.azr.task_types:
        if t not in ("abduction", "deduction", "induction"):
            raise UserError(f"config key 'azr.task_types': unknown task type {t!r}")
    if not cfg.azr.task_types or len(set(cfg.azr.task_types)) != len(cfg.azr.task_types):
        raise UserError(f"config key 'azr.task_types' needs one or more distinct task types, got {cfg.azr.task_types!r}")
    for section in dataclasses.fields(cfg):
        part = getattr(cfg, section.name)
        for f in dataclasses.fields(part) if dataclasses.is_dataclass(part) else ():
            value = getattr(part, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"config key '{section.name}.{f.name}' must be a finite number, got {value!r}")
    positive = {
        "azr.batch_size": cfg.azr.batch_size,
        "azr.n_solver_samples": cfg.azr.n_solver_samples,
        "azr.solver_samples": cfg.azr.solver_samples,
        "azr.buffer_cap": cfg.azr.buffer_cap,
        "sandbox.timeout_s": cfg.sandbox.timeout_s,
        # Resource limits of every job: a zero or negative one fails every program, unreported.
        "sandbox.memory_mb": cfg.sandbox.memory_mb,
        "sandbox.max_file_mb": cfg.sandbox.max_file_mb,
        "sandbox.max_open_files": cfg.sandbox.max_open_files,
        "sandbox.max_processes": cfg.sandbox.max_processes,
        "sampling.max_prompt_len": cfg.sampling.max_prompt_len,
        "sampling.max_response_len": cfg.sampling.max_response_len,
        "sampling.max_rows": 1 if cfg.sampling.max_rows is None else cfg.sampling.max_rows,
        "rl.micro_batch_size": cfg.rl.micro_batch_size,
        "train.steps": cfg.train.steps,
        "train.save_every": cfg.train.save_every,
        "train.keep_checkpoints": cfg.train.keep_checkpoints,
        "train.log_every": cfg.train.log_every,
        "azr.seed_max_rounds": cfg.azr.seed_max_rounds,
        "azr.learnability_temperature": cfg.azr.learnability_temperature,  # sampled, never greedy
        "eval.samples": cfg.eval.samples,
        "eval.max_response_len": cfg.eval.max_response_len,
        "optim.eps": cfg.optim.eps,
        "pretrain.corpus_programs": cfg.pretrain.corpus_programs,
        "pretrain.max_program_steps": cfg.pretrain.max_program_steps,
        "pretrain.vocab_size": cfg.pretrain.vocab_size,
        "pretrain.steps": cfg.pretrain.steps,
        "pretrain.batch_size": cfg.pretrain.batch_size,
        "pretrain.seq_len": cfg.pretrain.seq_len,
        "pretrain.learning_rate": cfg.pretrain.learning_rate,
    }
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"config key '{key}' must be positive, got {value!r}")
    not_negative = {
        "azr.n_references": cfg.azr.n_references,
        "azr.max_output_chars": cfg.azr.max_output_chars,
        "sampling.top_k": cfg.sampling.top_k,
        "eval.max_items": cfg.eval.max_items,
        "optim.learning_rate": cfg.optim.learning_rate,
        "optim.warmup_steps": cfg.optim.warmup_steps,
        "optim.weight_decay": cfg.optim.weight_decay,
        "rl.kl_coef": cfg.rl.kl_coef,
        "rl.logits_chunk": cfg.rl.logits_chunk,
        "rl.attention_chunk": cfg.rl.attention_chunk,
        "sampling.prefill_chunk": cfg.sampling.prefill_chunk,
        "pretrain.warmup_steps": cfg.pretrain.warmup_steps,
        "pretrain.weight_decay": cfg.pretrain.weight_decay,
    }
    for key, value in not_negative.items():
        if value < 0:
            raise UserError(f"config key '{key}' must be >= 0, got {value!r}")
    if cfg.azr.num_inputs < 2:  # induction shows num_inputs // 2 of the pairs and checks the others
        raise UserError(f"config key 'azr.num_inputs' must be >= 2 (half are shown, half checked), "
                        f"got {cfg.azr.num_inputs!r}")
    if cfg.azr.max_output_chars == 1:  # clip_output keeps max_chars // 2 chars each side: 0 = all of it
        raise UserError("config key 'azr.max_output_chars' must be 0 (no clipping) or >= 2, got 1")
    words = cfg.azr.banned_words
    if not all(isinstance(w, str) and w for w in words):
        raise UserError(f"config key 'azr.banned_words' must be a list of non-empty strings, got {words!r}")
    for key, seed in (("train.seed", cfg.train.seed), ("pretrain.seed", cfg.pretrain.seed)):
        # jax.random.key keeps 32 bits: seeds 2**32 apart share every key, larger ones overflow.
        if not 0 <= seed < 2**32:
            raise UserError(f"config key '{key}' must be in [0, 2**32), got {seed!r}")
    for key, steps in (("train.steps", cfg.train.steps), ("optim.warmup_steps", cfg.optim.warmup_steps),
                       ("pretrain.steps", cfg.pretrain.steps)):
        # The update counts its steps in int32 (TrainState.step, the optax schedule): a larger
        # warmup or decay length was an OverflowError traceback at the first update.
        if steps >= 2**31:
            raise UserError(f"config key '{key}' must be < 2**31 (the update counts its steps in int32), got {steps!r}")
    if cfg.optim.grad_clip_norm is not None and cfg.optim.grad_clip_norm <= 0:
        raise UserError(f"config key 'optim.grad_clip_norm' must be positive, or null for no clipping, got {cfg.optim.grad_clip_norm!r}")
    if 0 < cfg.optim.eps < MIN_ADAM_EPS:
        raise UserError(f"config key 'optim.eps' is {cfg.optim.eps!r}: it must be >= 2**-126 (~{MIN_ADAM_EPS:.3g}; "
                        f"float32 holds a smaller one as 0, and a parameter with a zero gradient gets NaN weights)")
    for key in ("b1", "b2"):
        if not 0 <= getattr(cfg.optim, key) < 1:
            raise UserError(f"config key 'optim.{key}' must be in [0, 1), got {getattr(cfg.optim, key)!r}")
        # AdamW runs in float32, which holds 0.99999999 as 1: its bias correction 1 - b**t was
        # then 0 and the first update made NaN (or infinite) weights.
        if struct.unpack("f", struct.pack("f", getattr(cfg.optim, key)))[0] == 1.0:
            raise UserError(f"config key 'optim.{key}' is {getattr(cfg.optim, key)!r}, which float32 (the update's "
                            f"precision) rounds to 1; the largest usable value is 1 - 2**-24 (0.99999994)")
    for key in ("clip_eps_low", "clip_eps_high"):
        if not 0 < getattr(cfg.rl, key) < 1:
            raise UserError(f"config key 'rl.{key}' must be in (0, 1), got {getattr(cfg.rl, key)!r}")
    buckets = cfg.sampling.length_buckets
    if not buckets or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in buckets):
        raise UserError(f"config key 'sampling.length_buckets' needs one or more positive token counts, got {buckets!r}")
    if cfg.train.eval_every < -1:
        raise UserError(f"config key 'train.eval_every' must be -1 (never), 0 (start and end) or a step interval, "
                        f"got {cfg.train.eval_every!r}")
    if cfg.optim.schedule != "constant" and cfg.train.steps <= cfg.optim.warmup_steps:
        raise UserError(f"optim.schedule={cfg.optim.schedule!r} decays to 0 after the warmup, so train.steps "
                        f"({cfg.train.steps}) must be > optim.warmup_steps ({cfg.optim.warmup_steps})")
    if cfg.eval.data_path and cfg.eval.benchmark != "cruxeval":
        raise UserError(f"eval.data_path is read only with eval.benchmark=cruxeval (this config evaluates on "
                        f"{cfg.eval.benchmark!r}); set the benchmark or drop the path")
    if cfg.azr.seed_size > 0 and cfg.azr.seed_file and cfg.azr.induction_seed_file:
        raise UserError(f"azr.seed_size={cfg.azr.seed_size} asks for a seeding phase, but both buffers come from "
                        f"seed files (azr.seed_file, azr.induction_seed_file); set azr.seed_size=0 or drop a file")
    if cfg.eval.samples > 1 and cfg.eval.temperature <= 0:
        raise UserError(f"eval.samples={cfg.eval.samples} needs eval.temperature > 0 (greedy samples are all the same)")
    if cfg.eval.benchmark == "cruxeval" and not cfg.eval.data_path:
        raise UserError("eval.benchmark=cruxeval needs eval.data_path (a CRUXEval JSONL file)")
    if cfg.train.audit_every < 0:
        raise UserError(f"config key 'train.audit_every' must be >= 0 (0 = no rollout audit), got {cfg.train.audit_every!r}")
    if cfg.eval.temperature < 0:
        raise UserError("eval.temperature must be >= 0 (0 = greedy)")
    if cfg.azr.train_learnability_rollouts and cfg.azr.learnability_temperature != cfg.sampling.temperature:
        raise UserError("azr.train_learnability_rollouts needs azr.learnability_temperature == sampling.temperature "
                        "(the update scores every row at sampling.temperature)")
    if cfg.azr.seed_size < 0:
        raise UserError(f"config key 'azr.seed_size' must be >= 0 (0 = no seeding phase), got {cfg.azr.seed_size!r}")
    if cfg.azr.seed_size > cfg.azr.buffer_cap:  # seeding would run every round and never get there
        raise UserError(f"azr.seed_size={cfg.azr.seed_size} is larger than azr.buffer_cap={cfg.azr.buffer_cap}")
    if cfg.sampling.temperature <= 0 or not 0 < cfg.sampling.top_p <= 1:
        # The update divides the logits by the rollout temperature; greedy is for evaluation.
        raise UserError("sampling.temperature must be > 0 and sampling.top_p in (0, 1] "
                        "(rollouts are sampled; greedy evaluation is eval.temperature=0)")
    for key, t in (("sampling.temperature", cfg.sampling.temperature), ("eval.temperature", cfg.eval.temperature),
                   ("azr.learnability_temperature", cfg.azr.learnability_temperature)):
        if 0 < t < MIN_TEMPERATURE:
            raise UserError(f"config key '{key}' is {t!r}: a temperature must be 0 (greedy) or >= {MIN_TEMPERATURE:g} "
                            f"(float32 logits divided by a smaller one overflow, or it rounds to 0)")
    if cfg.sandbox.timeout_s > MAX_SANDBOX_TIMEOUT_S:
        raise UserError(f"config key 'sandbox.timeout_s' must be at most {MAX_SANDBOX_TIMEOUT_S:.0f} s "
                        f"(the host's wait for a job counts milliseconds in a C int), got {cfg.sandbox.timeout_s!r}")
    # Every job sets these as 64-bit rlimits (sandbox/pool.py: MiB << 20, max_processes + 2); a
    # larger value was an OverflowError in every job, which scored as the program's runtime error.
    for key, value, bound in (("memory_mb", cfg.sandbox.memory_mb, 2**43), ("max_file_mb", cfg.sandbox.max_file_mb, 2**43),
                              ("max_open_files", cfg.sandbox.max_open_files, 2**62),
                              ("max_processes", cfg.sandbox.max_processes, 2**62)):
        if value >= bound:
            raise UserError(f"config key 'sandbox.{key}' must be < 2**{bound.bit_length() - 1} (the sandbox sets it "
                            f"as a 64-bit resource limit), got {value!r}")
    if cfg.sandbox.workers < 0:
        raise UserError(f"config key 'sandbox.workers' must be >= 0 (0 = one per CPU core), got {cfg.sandbox.workers!r}")
    _check_mesh(cfg.mesh)
    # ModelConfig fields every command sets itself after the overrides: an override of them was
    # accepted and then replaced without a word (train, bench) or beat model.scan_layers (pretrain).
    for key, why in (("scan_layers", "set model.scan_layers instead"),
                     ("tokenizer_vocab_size", "it follows the tokenizer")):
        if key in cfg.model.overrides:
            raise UserError(f"model.overrides: {key} is not a model field to override ({why})")
    if cfg.sampling.eval_temperature != 0:
        raise UserError("sampling.eval_temperature is not read; set eval.temperature (0 = greedy) instead")
    if cfg.rl.dual_clip is not None and cfg.rl.dual_clip <= 1:
        raise UserError(f"rl.dual_clip must be > 1 or null (off), got {cfg.rl.dual_clip!r}")
    if cfg.azr.answer_diversity_coef < 0 or cfg.azr.answer_diversity_max < 0:
        raise UserError("azr.answer_diversity_coef and azr.answer_diversity_max must be >= 0 (coef 0 = off)")
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a config file (`.py` defining `config`/`get_config()`, or a `config.json` dump) and
    apply `--set` overrides; the whole config is validated once, after the overrides."""
    return apply_overrides(read_config_file(path), overrides or [])


def read_config_file(path: str | Path | None) -> Config:
    """The config a file defines (defaults for None), type-checked but not validated as a whole:
    a preset may leave a field to --mesh or --set (eval.data_path, say). Pass the result through
    `apply_overrides`, which validates it."""
    if path is None:
        return Config()
    p = Path(path)
    hint = f" (its config.json: {p / 'config.json'})" if (p / "config.json").is_file() else ""  # a run directory
    check_input_file(p, "config file", f"a .py preset or a config.json{hint}")
    if p.suffix == ".py":
        return _load_py_config(p)
    if p.suffix != ".json":
        raise UserError(f"config file must be .py or .json, got {p}")
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))  # JSON is UTF-8, whatever the locale says
    except UnicodeDecodeError as e:
        raise UserError(f"config file {p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"config file {p} is not valid JSON: {e}") from None
    except (OSError, RecursionError, ValueError) as e:  # unreadable; nested too deep; too many digits
        raise UserError(f"config file {p} could not be read: {type(e).__name__}: {e}") from None
    return _typed_file(data, p)


def _typed_file(data: Any, p: Path) -> Config:
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return _typed(data, Config)
    except UserError as e:
        raise UserError(f"config file {p}: {e}") from None


def _load_py_config(p: Path) -> Config:
    spec = importlib.util.spec_from_file_location(f"azr_config_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # a trusted, user-written config file
    except UserError:
        raise
    except (Exception, SystemExit) as e:  # a broken config file: say where, not a traceback (nor exit 0 unsaid)
        raise UserError(f"config file {p} failed to load: {type(e).__name__}: {e}") from None
    if hasattr(module, "get_config") and hasattr(module, "config"):
        # Two candidates: which one is meant is a guess, so refuse rather than pick silently.
        raise UserError(f"config file {p} defines both `config` and `get_config()`; keep one")
    try:
        if hasattr(module, "get_config"):
            cfg = module.get_config()
        elif hasattr(module, "config"):
            cfg = module.config
        else:
            raise UserError(f"config file {p} must define `config = Config(...)` or `get_config()`")
    except UserError:
        raise
    except (Exception, SystemExit) as e:
        raise UserError(f"config file {p}: get_config() failed: {type(e).__name__}: {e}") from None
    if not isinstance(cfg, Config):
        raise UserError(f"config file {p}: `config` must be an azr_jax.config.Config")
    # Through the same type checks as a config.json or --set (a dataclass does not check types).
    return _typed_file(to_dict(cfg), p)
