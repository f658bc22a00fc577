"""Reading user-supplied JSON / JSONL files with one-line errors that name the file (and line),
checking output paths before long work writes to them, and replacing a file atomically."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Iterator

from azr_jax.errors import UserError


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: read as inf, written back as Infinity
        raise ValueError(f"{text} is out of range for a float")
    return value


def loads_strict(text: str):
    """`json.loads` that refuses what is not JSON though Python's parser takes it: `NaN`,
    `Infinity`, and numbers out of a float's range (read as inf). Echoed back into an output
    file they make lines other JSON readers refuse. Raises ValueError (JSONDecodeError is one)."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def read_objects(path: str | Path, what: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line of a JSONL file of objects.

    `what` names the file in errors ("seed file", "benchmark file"); a missing file, a line that is
    not JSON, or a line that is not an object raises UserError."""
    p = check_input_file(path, what, "a JSONL file")
    # Lines end at "\n" only: str.splitlines would also cut at U+2028 or U+0085 inside a string.
    data = p.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is no text
    for n, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{what} {p} line {n}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not line.strip():
            continue
        try:
            row = loads_strict(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{what} {p} line {n}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise UserError(f"{what} {p} line {n}: not valid JSON (nested too deeply)") from None
        except ValueError as e:  # NaN, 1e400, an integer past Python's digit limit
            raise UserError(f"{what} {p} line {n}: not valid JSON ({str(e)[:100]})") from None
        if not isinstance(row, dict):
            raise UserError(f"{what} {p} line {n}: expected a JSON object")
        yield n, row


def read_json_object(path: str | Path, what: str) -> dict:
    """The JSON object in `path` (e.g. a checkpoint's config.json); UserError if it is not one."""
    p = Path(path)
    try:
        data = loads_strict(p.read_text(encoding="utf-8"))  # a NaN rope_theta would load as a number
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise UserError(f"{p} is not valid JSON ({what}): {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p} must hold a JSON object ({what}), found {type(data).__name__}")
    return data


def check_input_file(path: str | Path, what: str, want: str) -> Path:
    """`path` as a file to read: UserError if it is missing ("WHAT not found: PATH") or is not a
    regular file (a directory, say: "WHAT PATH is a directory; give WANT")."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    if not p.is_file():
        raise UserError(f"{what} {p} is {'a directory' if p.is_dir() else 'not a regular file'}; give {want}")
    return p


def check_output_file(path: str | Path, what: str) -> Path:
    """`path` as a file to be written after long work (an evaluation, a benchmark): UserError now,
    not a traceback at the end, if its directory is missing or it is a directory."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory; give a file path")
    if not p.parent.is_dir():
        raise UserError(f"{what} {p}: directory {p.parent} does not exist")
    if not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{what} {p} is not writable")
    return p


def check_output_dir(path: str | Path, what: str, inside: Iterable[str] = ()) -> Path:
    """`path` as a directory to create or write into: UserError if a file is in the way (at `path`
    or above it) or the nearest existing directory is not writable, before any long work.
    `inside`: the names in it the command writes (files, folders); those already there must be
    writable too (a run or a base another user made: else the write fails after the work)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} exists and is not a directory")
    existing = next(a for a in (p, *p.absolute().parents) if a.exists())
    if not existing.is_dir():
        raise UserError(f"{what} {p}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {p}: {existing} is not writable")
    for child in (p / name for name in inside):
        if child.exists() and not os.access(child, os.W_OK | (os.X_OK if child.is_dir() else 0)):
            raise UserError(f"{what} {p}: {child} is not writable")
    return p


def write_text_atomically(path: str | Path, text: str, *, durable: bool = False) -> None:
    """Replace `path`'s content with `text` so that a reader, or the next start after a kill,
    sees the old content or the new one, never a cut-off file. `durable`: flushed to disk (file
    and directory) before it returns."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class OutputFile:
    """A text file a command writes its results to (`--out`): a failed open, write or close (a
    full disk, a quota, a revoked permission) is one UserError naming the file, not a traceback."""

    def __init__(self, path: str | Path, what: str):
        self.path, self.what = Path(path), what
        try:
            self._file = open(self.path, "w", encoding="utf-8")
        except OSError as e:
            raise self._error("cannot open", e) from None

    def _error(self, doing: str, e: OSError) -> UserError:
        return UserError(f"{self.what} {self.path}: {doing} ({e.strerror or e})")

    def write(self, text: str) -> None:
        try:
            self._file.write(text)
        except OSError as e:
            raise self._error("write failed", e) from None

    def close(self) -> None:
        try:
            self._file.close()  # flushes what is buffered: a full disk may only show here
        except OSError as e:
            raise self._error("write failed", e) from None

    def __enter__(self) -> "OutputFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # the error on its way out says more than a failed flush of its partial output
            try:
                self._file.close()
            except OSError:
                pass
