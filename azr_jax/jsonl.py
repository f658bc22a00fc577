"""Reading user-supplied JSON / JSONL files with one-line errors that name the file (and line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from azr_jax.errors import UserError


def read_objects(path: str | Path, what: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line of a JSONL file of objects.

    `what` names the file in errors ("seed file", "benchmark file"); a missing file, a line that is
    not JSON, or a line that is not an object raises UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{what} {p} line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{what} {p} line {n}: expected a JSON object")
        yield n, row


def read_json_object(path: str | Path, what: str) -> dict:
    """The JSON object in `path` (e.g. a checkpoint's config.json); UserError if it is not one."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p} is not valid JSON ({what}): {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p} must hold a JSON object ({what}), found {type(data).__name__}")
    return data
