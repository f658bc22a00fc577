"""Safetensors checkpoints on the host: slice-wise reading and streaming writing.

Plain numpy (no JAX). Reading goes through `safetensors.safe_open(...).get_slice(name)[...]`,
so only the requested block of a tensor leaves the (memory-mapped) file. Writing streams one
tensor at a time into its file after a header computed up front from shapes and dtypes, so the
caller never holds more than one tensor in host memory (`save_pretrained` relies on this).
"""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import ml_dtypes  # noqa: F401  (registers numpy's "bfloat16" dtype, which safetensors' numpy reader needs)
import numpy as np

from azr_jax.errors import UserError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype tag <-> numpy dtype (the float and int types a causal LM checkpoint holds).
_NP_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_TAGS = {v: k for k, v in _NP_DTYPES.items()}


def dtype_tag(dtype) -> str:
    """The safetensors tag ("F32", "BF16", ...) for a numpy/JAX dtype."""
    try:
        return _TAGS[np.dtype(dtype)]
    except KeyError:
        raise UserError(f"dtype {dtype} cannot be stored in safetensors") from None


def numpy_dtype(tag: str) -> np.dtype:
    """The numpy dtype of a safetensors tag; UserError for tags a causal LM cannot use."""
    if tag not in _NP_DTYPES:
        raise UserError(f"safetensors dtype {tag} is not supported")
    return _NP_DTYPES[tag]


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors tag, e.g. "BF16"


class SafetensorsReader:
    """Name -> (file, shape, dtype) over a single-file or index-sharded checkpoint; slice reads.

    Use as a context manager: file handles stay open (memory-mapped) until exit.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._stack = ExitStack()
        self._handles: dict[Path, object] = {}
        self.tensors: dict[str, TensorInfo] = {}
        files = self._checkpoint_files()
        try:
            for file, expected in files.items():
                handle = self._open(file)
                names = set(handle.keys())
                if expected is not None and not expected <= names:
                    missing = sorted(expected - names)
                    raise UserError(f"{file.name} lacks tensor(s) that {INDEX_FILE} places there: "
                                    f"{_short_list(missing)}")
                stray = names - expected if expected is not None else set()
                if stray:
                    # transformers reads every tensor of every shard, the shards in sorted order,
                    # so a later shard's copy wins over the index; we read the same weights.
                    logging.getLogger(__name__).warning(
                        "%s holds tensor(s) that %s places in another file: %s; the copy in the last "
                        "file by name is read, as transformers does", file, INDEX_FILE, _short_list(sorted(stray)))
                for name in sorted(names):
                    sl = handle.get_slice(name)
                    self.tensors[name] = TensorInfo(file, tuple(int(d) for d in sl.get_shape()), sl.get_dtype())
        except BaseException:
            self.close()
            raise

    def _checkpoint_files(self) -> dict[Path, set[str] | None]:
        index = self.directory / INDEX_FILE
        single = self.directory / SINGLE_FILE
        # transformers reads the single file when both layouts are present; so do we, so the
        # two libraries load the same weights from the same directory.
        if single.is_file() and index.is_file():
            logging.getLogger(__name__).warning(
                "%s has both %s and %s; reading %s as transformers does", self.directory,
                SINGLE_FILE, INDEX_FILE, SINGLE_FILE)
            return {single: None}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError("weight_map is not an object")
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                raise UserError(f"{index} is not a valid safetensors index ({e})") from None
            files: dict[Path, set[str] | None] = {}
            for name, file in sorted(weight_map.items(), key=lambda item: str(item[1])):
                files.setdefault(self.directory / str(file), set()).add(name)
            for file in files:
                if not file.is_file():
                    raise UserError(f"{INDEX_FILE} refers to {file.name}, which is not in {self.directory}")
            return files
        if single.is_file():
            return {single: None}
        raise UserError(f"no weights in {self.directory}: expected {SINGLE_FILE} or {INDEX_FILE}")

    def _open(self, file: Path):
        from safetensors import SafetensorError, safe_open

        if file not in self._handles:
            try:
                self._handles[file] = self._stack.enter_context(safe_open(str(file), framework="numpy"))
            except (SafetensorError, OSError) as e:
                raise UserError(f"cannot read {file} (truncated or not a safetensors file?): {e}") from None
        return self._handles[file]

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """The block `tensor[index]` (basic slices only) as a numpy array, read from disk."""
        info = self.tensors[name]
        if info.dtype not in _NP_DTYPES:
            raise UserError(f"tensor {name} has dtype {info.dtype}, which azr-jax cannot load")
        from safetensors import SafetensorError

        handle = self._open(info.file)
        try:
            block = handle.get_slice(name)[index] if index else handle.get_tensor(name)
        except SafetensorError as e:
            raise UserError(f"cannot read tensor {name} from {info.file}: {e}") from None
        return np.asarray(block).reshape(_sliced_shape(info.shape, index))

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sliced_shape(shape: tuple[int, ...], index: tuple[slice, ...] | None) -> tuple[int, ...]:
    # get_slice drops no axes for slices, but a 0-d or empty result can come back flattened.
    if not index:
        return shape
    out = []
    for dim, s in zip(shape, tuple(index) + (slice(None),) * (len(shape) - len(index))):
        start, stop, _ = s.indices(dim)
        out.append(max(stop - start, 0))
    return tuple(out)


def _short_list(names: Iterable[str], limit: int = 4) -> str:
    names = list(names)
    head = ", ".join(names[:limit])
    return head + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def plan_shards(tensors: list[TensorPlan], max_shard_bytes: int | None) -> list[list[TensorPlan]]:
    """Split tensors (in order) into files of at most `max_shard_bytes` (one tensor may exceed it alone)."""
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for t in tensors:
        if max_shard_bytes is not None and shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def _header(tensors: list[TensorPlan]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": dtype_tag(t.dtype), "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment with spaces
    return len(raw).to_bytes(8, "little") + raw


def write_checkpoint(directory: str | os.PathLike, tensors: list[TensorPlan],
                     produce: Callable[[TensorPlan], np.ndarray | None], *,
                     max_shard_bytes: int | None = None, write: bool = True) -> list[Path]:
    """Stream tensors into `model.safetensors` or `model-0000i-of-0000n.safetensors` + index.

    `produce(plan)` returns the tensor's host array; it is called exactly once per tensor in
    plan order, on every process (so it may run collectives), and its result is dropped right
    after being written. Only when `write` is true are files touched (process 0 of a multi-host
    job). Returns the paths written.
    """
    directory = Path(directory)
    shards = plan_shards(tensors, max_shard_bytes)
    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    if write:
        directory.mkdir(parents=True, exist_ok=True)
    # Every file is written under a temporary name and renamed into place once all are complete,
    # so a failure (or a full disk) part-way leaves a previous checkpoint in `directory` whole,
    # and a file being read for this save (a model loaded from the same directory) is never
    # truncated under its reader.
    partial = {}
    try:
        _write_shards(directory, names, shards, produce, write, partial)
        if write and len(shards) > 1:
            index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)},
                     "weight_map": {t.name: file_name for file_name, shard in zip(names, shards) for t in shard}}
            partial[directory / INDEX_FILE] = _partial_name(directory / INDEX_FILE)
            partial[directory / INDEX_FILE].write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        for temporary in partial.values():
            temporary.unlink(missing_ok=True)
        raise
    written = list(partial)
    for final, temporary in partial.items():
        os.replace(temporary, final)
    if write:
        # A previous save in the other layout, or sharded in another count, would leave a second,
        # stale set of weights. Removed last: `produce` may still have been reading them.
        stale = [directory / SINGLE_FILE, directory / INDEX_FILE, *directory.glob("model-*-of-*.safetensors"),
                 *directory.glob(".model*.partial")]  # the last: from a save that was killed
        for path in stale:
            if path not in written:
                path.unlink(missing_ok=True)
    return written


def _partial_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def _write_shards(directory: Path, names: list[str], shards: list[list[TensorPlan]],
                  produce: Callable[[TensorPlan], np.ndarray | None], write: bool, partial: dict) -> None:
    """Each shard into its temporary file (recorded in `partial` as final -> temporary path)."""
    for file_name, shard in zip(names, shards):
        with ExitStack() as stack:
            out = None
            if write:
                final = directory / file_name
                partial[final] = _partial_name(final)
                out = stack.enter_context(open(partial[final], "wb"))
                out.write(_header(shard))
            for t in shard:
                array = produce(t)
                if out is None:
                    continue
                array = np.asarray(array, dtype=t.dtype)
                if not array.flags.c_contiguous:
                    array = np.ascontiguousarray(array)
                if array.shape != t.shape:
                    raise ValueError(f"{t.name}: produced shape {array.shape}, planned {t.shape}")
                out.write(array.reshape(-1).view(np.uint8))  # no extra host copy
