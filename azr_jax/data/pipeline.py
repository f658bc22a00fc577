"""Grain pipeline from task buffers to padded device batches of prompts.

Each (role, task) batch of a step is one Grain stream over a snapshot of the buffers:

    index ─random_map(pick)─► job (references or a task) ─map(render)─► prompt text
          ─map(tokenize)─► token ids ─filter(fits max_prompt_len)─► take batch_size ─► pad

`pick(index, rng)` draws what one prompt is about (K references, or one solver task) with a
NumPy generator that Grain derives from (stream seed, index), so a stream's content is a pure
function of its seed and the buffer snapshot: no hidden RNG state, nothing to restore but the
seed and the step. Prompts too long for `max_prompt_len` are skipped and the stream draws the
next index, as the reference does (AZR_SPEC §1.6: skip and resample).

Padding follows the sampler's conventions: prompts are left-padded to a length bucket, rows to
a batch bucket divisible by the number of batch shards (padding rows repeat the last prompt and
are marked in `row_mask`, so every shape the sampler sees comes from a small fixed set). The
trainer itself reads only `prompt_ids` and `jobs`: `sampling.generate` pads to the same buckets.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Sequence

import grain
import numpy as np

from azr_jax.errors import UserError
from azr_jax.sampling.buckets import bucket_batch, bucket_length

# How many candidates a stream may draw per requested prompt before giving up: generous enough
# for buffers where most prompts are too long, small enough to fail fast on a config mistake.
CANDIDATES_PER_PROMPT = 16


def stream_seed(seed: int, step: int, stream: str) -> int:
    """A 63-bit seed for one stream of one step, independent of Python's hash randomisation."""
    digest = hashlib.sha256(f"{seed}/{step}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclasses.dataclass
class PromptBatch:
    """Prompts of one generation call, padded for the device.

    tokens/mask/positions: int32 [rows, T], left-padded; `positions = cumsum(mask) - 1` clipped at 0.
    row_mask: bool [rows]; False for padding rows (never scored, never trained on).
    jobs: the picked jobs of the real rows (what each prompt is about), in row order.
    prompts: the rendered prompt texts of the real rows.
    prompt_ids: the token ids of the real rows (unpadded).
    """

    tokens: np.ndarray
    mask: np.ndarray
    positions: np.ndarray
    row_mask: np.ndarray
    jobs: list[dict]
    prompts: list[str]
    prompt_ids: list[list[int]]

    @property
    def size(self) -> int:
        return len(self.jobs)


def left_pad(token_lists: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, mask, positions), each int32 [len(token_lists), length], real tokens at the right."""
    rows = len(token_lists)
    tokens = np.full((rows, length), pad_id, dtype=np.int32)
    mask = np.zeros((rows, length), dtype=np.int32)
    for i, ids in enumerate(token_lists):
        if len(ids) > length:
            raise ValueError(f"row {i} has {len(ids)} tokens, more than the padded length {length}")
        if ids:
            tokens[i, length - len(ids):] = ids
            mask[i, length - len(ids):] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int32)
    return tokens, mask, positions


def prompt_stream(pick: Callable[[int, np.random.Generator], dict], render: Callable[[dict], str],
                  encode: Callable[[str], list[int]], *, max_prompt_len: int, seed: int,
                  num_candidates: int) -> grain.IterDataset:
    """The Grain stream of (job, prompt text, token ids) that fit in `max_prompt_len`."""

    def render_and_tokenize(job: dict) -> tuple[dict, str, list[int]]:
        text = render(job)
        return job, text, list(encode(text))

    return (
        grain.MapDataset.range(num_candidates)
        .seed(seed)
        .random_map(lambda index, rng: pick(index, rng))
        .map(render_and_tokenize)
        # Read in this thread, one candidate at a time: Grain's default read-ahead renders and
        # tokenizes every candidate (16 per prompt) to deliver the first few that are needed.
        .to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        .filter(lambda item: len(item[2]) <= max_prompt_len)
    )


def collate(items: Sequence[tuple[dict, str, list[int]]], *, pad_id: int, length_buckets: Sequence[int],
            batch_multiple: int = 1, rows: int | None = None) -> PromptBatch:
    """Pad (job, text, ids) items into a PromptBatch; `rows` fixes the row count (else bucketed)."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    ids = [list(item[2]) for item in items]
    length = bucket_length(max(len(x) for x in ids), length_buckets)
    n_rows = rows if rows is not None else bucket_batch(len(ids), batch_multiple)
    if n_rows < len(ids) or n_rows % batch_multiple:
        raise ValueError(f"{n_rows} rows cannot hold {len(ids)} prompts in multiples of {batch_multiple}")
    padded_ids = ids + [ids[-1]] * (n_rows - len(ids))
    tokens, mask, positions = left_pad(padded_ids, length, pad_id)
    row_mask = np.arange(n_rows) < len(ids)
    return PromptBatch(tokens, mask, positions, row_mask, [item[0] for item in items],
                       [item[1] for item in items], ids)


def build_prompt_batch(pick: Callable[[int, np.random.Generator], dict], render: Callable[[dict], str],
                       encode: Callable[[str], list[int]], *, batch_size: int, max_prompt_len: int,
                       seed: int, pad_id: int, length_buckets: Sequence[int], batch_multiple: int = 1,
                       what: str = "prompts") -> PromptBatch:
    """Take `batch_size` prompts that fit from one stream and pad them (rows = a batch bucket)."""
    stream = iter(prompt_stream(pick, render, encode, max_prompt_len=max_prompt_len, seed=seed,
                                num_candidates=batch_size * CANDIDATES_PER_PROMPT))
    items = []
    for item in stream:
        items.append(item)
        if len(items) == batch_size:
            break
    if len(items) < batch_size:
        raise UserError(
            f"only {len(items)} of {batch_size} {what} fit in sampling.max_prompt_len={max_prompt_len} "
            f"tokens after {batch_size * CANDIDATES_PER_PROMPT} draws; raise sampling.max_prompt_len "
            f"(a run may resume with a larger one)"
        )
    return collate(items, pad_id=pad_id, length_buckets=length_buckets, batch_multiple=batch_multiple)


def batch_from_prompts(jobs: Sequence[dict], prompts: Sequence[str], encode: Callable[[str], list[int]], *,
                       pad_id: int, length_buckets: Sequence[int], batch_multiple: int = 1) -> PromptBatch:
    """Pad already-chosen prompts (e.g. the learnability rollouts of valid proposals); no filtering,
    the caller decides what a prompt that is too long means."""
    items = [(job, text, list(encode(text))) for job, text in zip(jobs, prompts, strict=True)]
    return collate(items, pad_id=pad_id, length_buckets=length_buckets, batch_multiple=batch_multiple)


def concat_rows(parts: Sequence[dict[str, np.ndarray]], *, pad_id: int) -> dict[str, np.ndarray]:
    """Stack [B_k, T_k] row batches (e.g. the six (role, task) rollout batches) into one
    [sum B_k, max T_k] batch; shorter rows are right-padded (`tokens` with pad_id, the rest with 0,
    so padding is masked out of the loss)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    width = max(part["tokens"].shape[1] for part in parts)
    out = {}
    for key in parts[0]:
        fill = pad_id if key == "tokens" else 0
        padded = [np.pad(part[key], ((0, 0), (0, width - part[key].shape[1])), constant_values=fill) for part in parts]
        out[key] = np.concatenate(padded, axis=0)
    return out


def pad_rows(part: dict[str, np.ndarray], rows: int, *, pad_id: int) -> dict[str, np.ndarray]:
    """`part` ([B, T] arrays) with empty rows appended up to `rows`: `tokens` pad_id, the rest 0,
    so they carry no loss and no weight in any statistics."""
    extra = rows - part["tokens"].shape[0]
    if extra < 0:
        raise ValueError(f"cannot pad {part['tokens'].shape[0]} rows to {rows}")
    if extra == 0:
        return part
    return {k: np.pad(v, ((0, extra), (0, 0)), constant_values=pad_id if k == "tokens" else 0) for k, v in part.items()}


@dataclasses.dataclass(frozen=True)
class PipelineState:
    """Everything the pipeline needs to reproduce its next batches: streams are pure functions of
    (seed, step, stream name) and the buffers, which the checkpoint stores separately."""

    seed: int
    next_step: int

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "next_step": self.next_step}

    @classmethod
    def from_json(cls, data: dict) -> "PipelineState":
        # Whole numbers only: int() would also take "3", 2.7 (as 2) or true, and resume at a step
        # the checkpoint never recorded.
        fields = {k: data.get(k) if isinstance(data, dict) else None for k in ("seed", "next_step")}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in fields.values()) or fields["next_step"] < 1:
            raise UserError(f"checkpoint pipeline state is malformed: {data!r}")
        return cls(**fields)
