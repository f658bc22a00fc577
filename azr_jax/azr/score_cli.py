"""`azr-jax score --in ROLLOUTS.jsonl --out SCORED.jsonl`: offline scoring with the trainer's code.

Every input line yields exactly one output line, in order. A line that is not a JSON object
following the schema yields `{"id", "line", "error", "format_ok": false, "valid": false,
"reason": "bad_record", "problem": null, "accuracy": null, "reward": null}` and scoring goes on.
Progress and a one-line summary go to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

from azr_jax.config import load_config
from azr_jax.errors import UserError
from azr_jax.jsonl import check_output_file

CHUNK = 256  # records per score_records call: bounds memory and gives regular progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="input", required=True, help="rollouts JSONL (input schema: docs/scoring.md)")
    parser.add_argument("--out", dest="output", required=True, help="where to write the scored JSONL")
    parser.add_argument("--config", default=None,
                        help="config file (.py or config.json); default: the run's config.json when --in is a "
                             "run's rollouts/step_N.jsonl, else the built-in defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set azr.boundary_reward=0.0 (repeatable)")


def _read_lines(path: Path) -> list[str | UnicodeDecodeError]:
    """The file's records, each decoded on its own: a line that is not UTF-8 is its decode error
    (that line becomes a bad_record row; the others are scored)."""
    _check_input(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"input file {path} cannot be read ({e.strerror or e})") from None
    # Records end at "\n" only: str.splitlines() would also split at U+2028, U+0085, ... which a
    # JSON string may hold unescaped (ensure_ascii=False).
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")  # a UTF-8 byte-order mark is no record
    if lines[-1] == b"":
        lines.pop()  # the newline that ends the last record
    out: list[str | UnicodeDecodeError] = []
    for raw in lines:
        try:
            out.append(raw.removesuffix(b"\r").decode("utf-8"))
        except UnicodeDecodeError as e:
            out.append(e)
    return out


def _check_input(path: Path) -> None:
    if str(path) == "-":
        raise UserError("--in - : score reads a JSONL file, not stdin; give a file path")
    if not path.exists():
        raise UserError(f"input file not found: {path}")
    if not path.is_file():
        raise UserError(f"--in {path} is not a regular file (score reads a JSONL file)")


def _refuse_constant(name: str):
    # Python's parser takes NaN and Infinity, which are not JSON: echoed back in `id`, they made
    # an output line other JSON readers refuse.
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: read as inf, written back as Infinity
        raise ValueError(f"{text} is out of range for a float")
    return value


def _decode(line: str | UnicodeDecodeError):
    """A JSON object, or an error message for the line."""
    if isinstance(line, UnicodeDecodeError):
        return None, f"not UTF-8 text: {line.reason} at byte {line.start}"
    if not line.strip():
        return None, "empty line"
    try:
        obj = json.loads(line, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON: {e.msg} (column {e.colno})"
    except RecursionError:
        return None, "not valid JSON: nested too deeply"
    except ValueError as e:  # e.g. an integer over Python's int-str digit limit
        return None, f"not valid JSON: {e}"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    return obj, None


def score_file(in_path: Path, out_path: Path, cfg, sandbox, progress=None) -> dict:
    """Score `in_path` into `out_path`; returns summary counts. `progress`: a text stream for
    the progress lines (default: stderr as it is at the call)."""
    progress = sys.stderr if progress is None else progress
    lines = _read_lines(in_path)
    stats = defaultdict(lambda: {"n": 0, "valid": 0, "reward_sum": 0.0, "rewarded": 0})
    start = time.monotonic()
    # Rows go to a side file that becomes --out only when every line is scored: a stopped run
    # leaves the old --out as it was and its rows so far under a name that says they are partial.
    # Not for an --out that is not a regular file (a pipe, a device): that is written in place,
    # never replaced by a file of the same name.
    in_place = out_path.exists() and not out_path.is_file()
    target = out_path if in_place else out_path.with_name(out_path.name + ".partial")
    try:
        errors = _score_into(lines, target, cfg, sandbox, stats, progress, start)
    except BaseException:
        if not in_place and target.exists():
            print(f"azr-jax score: stopped; the rows scored so far are in {target} (--out is unchanged)",
                  file=progress, flush=True)
        raise
    if not in_place:
        os.replace(target, out_path)
    if lines and errors == len(lines):
        print(f"azr-jax score: none of the {len(lines)} lines is a record (one JSON object per line): is "
              f"{in_path} a JSONL file?", file=progress, flush=True)
    return {"lines": len(lines), "errors": errors, "groups": dict(stats)}


def _score_into(lines, path: Path, cfg, sandbox, stats, progress, start) -> int:
    """Score `lines` into `path`, adding to the per-group `stats`; returns the malformed count."""
    from azr_jax.azr.scoring import error_record, score_records
    from azr_jax.jsonl import OutputFile

    errors = 0
    with OutputFile(path, "--out") as out:
        for begin in range(0, len(lines), CHUNK):
            chunk = lines[begin:begin + CHUNK]
            decoded = [_decode(line) for line in chunk]
            good = [obj for obj, err in decoded if err is None]
            scored = iter(score_records(good, cfg, sandbox))
            for offset, (obj, err) in enumerate(decoded):
                row = error_record(obj, err) if err is not None else next(scored)
                if row.get("error") is not None:
                    row = {"id": row["id"], "line": begin + offset + 1, **{k: v for k, v in row.items() if k != "id"}}
                    errors += 1
                else:
                    s = stats[f"{obj['role']}/{obj['task']}"]
                    s["n"] += 1
                    s["valid"] += int(row["valid"])
                    if row["reward"] is not None:
                        s["reward_sum"] += row["reward"]
                        s["rewarded"] += 1
                out.write(json.dumps(row) + "\n")
            if len(lines) > CHUNK:
                done = min(begin + CHUNK, len(lines))
                print(f"azr-jax score: {done}/{len(lines)} lines ({time.monotonic() - start:.1f}s)", file=progress, flush=True)
    return errors


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _summary(counts: dict) -> str:
    parts = []
    for group, s in sorted(counts["groups"].items()):
        mean = f"{s['reward_sum'] / s['rewarded']:+.3f}" if s["rewarded"] else "n/a"
        parts.append(f"{group}: {s['n']} ({s['valid']} valid, mean reward {mean})")
    return "; ".join([f"azr-jax score: {counts['lines']} lines, {counts['errors']} malformed"] + parts)


def run_config_of(in_path: Path) -> Path | None:
    """WORKDIR/config.json when `in_path` is a training run's WORKDIR/rollouts/step_N.jsonl
    (resolved first: `step_1.jsonl` given from inside rollouts/ has no parent name as typed)."""
    in_path = in_path.resolve()
    candidate = in_path.parent.parent / "config.json"
    audit_file = in_path.parent.name == "rollouts" and re.fullmatch(r"step_\d+\.jsonl", in_path.name)
    return candidate if audit_file and candidate.is_file() else None


def main(args: argparse.Namespace) -> int:
    from azr_jax.sandbox import Sandbox

    in_path, out_path = Path(args.input), Path(args.output)
    # A run's audit file scores to the rewards it trained on only under the run's own settings
    # (num_inputs, boundary reward, ...), not the defaults.
    config = args.config or run_config_of(in_path)
    try:
        cfg = load_config(config, args.overrides)
    except UserError as e:
        if args.config:
            raise
        raise UserError(f"{e} (the config of the run whose rollouts/ holds --in; --config FILE to choose "
                        f"another)") from None
    _check_input(in_path)  # before starting the sandbox
    if str(out_path) == "-":
        raise UserError("--out - : score writes a JSONL file, not stdout; give a file path")
    check_output_file(out_path, "--out")
    if out_path.exists() and out_path.samefile(in_path):  # opening --out would empty --in first
        raise UserError(f"--out {out_path} is the input file; give another path")
    if args.config is None:
        print(f"azr-jax score: using {config} (the run's config; --config to choose another)" if config else
              "azr-jax score: using the built-in default config (--config to choose one)", file=sys.stderr)
    # SIGTERM (a scheduler, `timeout`) stops as Ctrl-C does: queued checks dropped, one line.
    signal.signal(signal.SIGTERM, _interrupt)
    with Sandbox(cfg.sandbox) as sandbox:
        counts = score_file(in_path, out_path, cfg, sandbox)
    print(_summary(counts), file=sys.stderr)
    return 0
