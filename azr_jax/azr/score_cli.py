"""`azr-jax score --in ROLLOUTS.jsonl --out SCORED.jsonl`: offline scoring with the trainer's code.

Every input line yields exactly one output line, in order. A line that is not a JSON object
following the schema yields `{"id", "line", "error", "format_ok": false, "valid": false,
"reason": "bad_record", "problem": null, "accuracy": null, "reward": null}` and scoring goes on.
Progress and a one-line summary go to stderr.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import os
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator

from azr_jax.azr.scoring import INPUT_FIELDS, TASK_FIELDS
from azr_jax.config import load_config
from azr_jax.errors import UserError
from azr_jax.jsonl import check_output_file, loads_strict
from azr_jax.stopping import sigterm_as_interrupt

CHUNK = 256  # records per score_records call: bounds memory and gives regular progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="input", required=True, help="rollouts JSONL (input schema: docs/scoring.md)")
    parser.add_argument("--out", dest="output", required=True, help="where to write the scored JSONL")
    parser.add_argument("--config", default=None,
                        help="config file (.py or config.json); default: the run's config.json when --in is a "
                             "run's rollouts/step_N.jsonl, else the built-in defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set azr.boundary_reward=0.0 (repeatable)")


def _count_lines(path: Path) -> int:
    """How many records `path` holds (for progress), read in blocks, not whole."""
    _check_input(path)
    count, last = 0, b"\n"
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                count += block.count(b"\n")
                last = block[-1:]
    except OSError as e:
        raise UserError(f"input file {path} cannot be read ({e.strerror or e})") from None
    return count + (last != b"\n")  # a last record without its newline


def _read_lines(path: Path) -> Iterator[str | UnicodeDecodeError]:
    """The file's records one at a time (memory stays bounded whatever the input's size), each
    decoded on its own: a line that is not UTF-8 is its decode error (that line becomes a
    bad_record row; the others are scored)."""
    try:
        with open(path, "rb") as f:
            # Records end at "\n" only (a binary file iterates at b"\n"): str.splitlines() would
            # also split at U+2028, U+0085, ... which a JSON string may hold unescaped.
            for n, raw in enumerate(f):
                if n == 0:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is no record
                try:
                    yield raw.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8")
                except UnicodeDecodeError as e:
                    yield e
    except OSError as e:
        raise UserError(f"input file {path} cannot be read ({e.strerror or e})") from None


def _check_input(path: Path) -> None:
    if str(path) == "-":
        raise UserError("--in - : score reads a JSONL file, not stdin; give a file path")
    if not path.exists():
        raise UserError(f"input file not found: {path}")
    if not path.is_file():
        raise UserError(f"--in {path} is not a regular file (score reads a JSONL file)")


def _decode(line: str | UnicodeDecodeError):
    """A JSON object, or an error message for the line."""
    if isinstance(line, UnicodeDecodeError):
        return None, f"not UTF-8 text: {line.reason} at byte {line.start}"
    if not line.strip():
        return None, "empty line"
    try:
        obj = loads_strict(line)
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
    total = _count_lines(in_path)
    stats = defaultdict(lambda: {"n": 0, "valid": 0, "reward_sum": 0.0, "rewarded": 0})
    unread = Counter()  # fields the schema does not read: a misspelt one is otherwise silent
    start = time.monotonic()
    # Rows go to a side file that becomes --out only when every line is scored: a stopped run
    # leaves the old --out as it was and its rows so far under a name that says they are partial.
    # Not for an --out that is not a regular file (a pipe, a device): that is written in place,
    # never replaced by a file of the same name.
    in_place = out_path.exists() and not out_path.is_file()
    target = out_path if in_place else partial_file(out_path)
    try:
        errors = _score_into(_read_lines(in_path), total, target, cfg, sandbox, stats, unread, progress, start)
    except BaseException:
        if not in_place and target.exists():
            print(f"azr-jax score: stopped; the rows scored so far are in {target} (--out is unchanged)",
                  file=progress, flush=True)
        raise
    if not in_place:
        os.replace(target, out_path)
    if total and errors == total:
        print(f"azr-jax score: none of the {total} lines is a record (one JSON object per line): is "
              f"{in_path} a JSONL file?", file=progress, flush=True)
    if unread:
        print(f"azr-jax score: warning: fields the schema does not read were ignored: {_unread_summary(unread)} "
              f"(input schema: docs/scoring.md)", file=progress, flush=True)
    return {"lines": total, "errors": errors, "groups": dict(stats), "unread_fields": dict(unread)}


def partial_file(out_path: Path) -> Path:
    """Where score_file writes the rows of a regular --out until every line is scored."""
    return out_path.with_name(out_path.name + ".partial")


# The fields score_records reads, plus those a run's audit file adds (its verdict, `scored`, and
# the tasks a proposer was shown, `references`: trainer._rollouts).
RECORD_FIELDS = INPUT_FIELDS + ("scored", "references")
PROBLEM_FIELDS = TASK_FIELDS


def _unread_fields(obj: dict) -> list[str]:
    names = [k for k in obj if k not in RECORD_FIELDS]
    problem = obj.get("problem")
    if isinstance(problem, dict):
        names += [f"problem.{k}" for k in problem if k not in PROBLEM_FIELDS]
    return names


def _unread_summary(unread: Counter) -> str:
    parts = []
    for name, n in unread.most_common(10):
        known = [f"problem.{k}" for k in PROBLEM_FIELDS] if name.startswith("problem.") else RECORD_FIELDS
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"'{name}' ({n} record{'s' * (n != 1)}" + (f"; did you mean '{close[0]}'?)" if close else ")"))
    more = len(unread) - len(parts)
    return ", ".join(parts) + (f", and {more} more" if more > 0 else "")


def _score_into(lines, total: int, path: Path, cfg, sandbox, stats, unread, progress, start) -> int:
    """Score `lines` (an iterator of `total`) into `path`, adding to the per-group `stats` and the
    `unread` field counts; returns the malformed count."""
    from azr_jax.azr.scoring import error_record, score_records
    from azr_jax.jsonl import OutputFile

    errors = done = 0
    with OutputFile(path, "--out") as out:
        while chunk := list(itertools.islice(lines, CHUNK)):
            decoded = [_decode(line) for line in chunk]
            good = [obj for obj, err in decoded if err is None]
            for obj in good:
                unread.update(_unread_fields(obj))
            scored = iter(score_records(good, cfg, sandbox))
            for offset, (obj, err) in enumerate(decoded):
                row = error_record(obj, err) if err is not None else next(scored)
                if row.get("error") is not None:
                    row = {"id": row["id"], "line": done + offset + 1, **{k: v for k, v in row.items() if k != "id"}}
                    errors += 1
                else:
                    s = stats[f"{obj['role']}/{obj['task']}"]
                    s["n"] += 1
                    s["valid"] += int(row["valid"])
                    if row["reward"] is not None:
                        s["reward_sum"] += row["reward"]
                        s["rewarded"] += 1
                out.write(json.dumps(row) + "\n")
            done += len(chunk)
            if total > CHUNK:
                print(f"azr-jax score: {done}/{total} lines ({time.monotonic() - start:.1f}s)", file=progress, flush=True)
    return errors


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
    from azr_jax.sandbox.isolation import readable_by_jobs

    in_path, out_path = Path(args.input), Path(args.output)
    # A run's audit file scores to the rewards it trained on only under the run's own settings
    # (num_inputs, boundary reward, ...), not the defaults.
    config = args.config or run_config_of(in_path)
    try:
        cfg = load_config(config, args.overrides)
    except UserError as e:
        if config is None or args.config:  # the built-in defaults or --config: not a run's config
            raise
        raise UserError(f"{e} (the config of the run whose rollouts/ holds --in; --config FILE to choose "
                        f"another)") from None
    _check_input(in_path)  # before starting the sandbox
    if str(out_path) == "-":
        raise UserError("--out - : score writes a JSONL file, not stdout; give a file path")
    check_output_file(out_path, "--out")
    if out_path.exists() and out_path.samefile(in_path):  # opening --out would empty --in first
        raise UserError(f"--out {out_path} is the input file; give another path")
    side = partial_file(out_path)
    if side.exists() and side.samefile(in_path):  # it is opened first, then moved onto --out
        raise UserError(f"--in {in_path} is the file --out {out_path} is first written to; give another --out")
    in_place = out_path.exists() and not out_path.is_file()  # /dev/full, a FIFO: no side file then
    if side.exists() and not in_place:
        # A directory (say) there, or another user's file from a stopped run: said now, not after
        # the sandbox started, with a message that the rows scored so far were "in" it.
        unusable = ("not a regular file" if not side.is_file() else
                    "not writable" if not os.access(side, os.W_OK) else None)
        if unusable:
            raise UserError(f"--out {out_path} is first written to {side}, which is {unusable}; "
                            f"remove it or give another --out")
    if args.config is None:
        print(f"azr-jax score: using {config} (the run's config; --config to choose another)" if config else
              "azr-jax score: using the built-in default config (--config to choose one)", file=sys.stderr)
    # SIGTERM stops as Ctrl-C does: queued checks dropped, one line, the partial file kept.
    with sigterm_as_interrupt(), Sandbox(cfg.sandbox) as sandbox:
        # Both hold hidden outputs: --in the records' own, --out's partial file those scored so far.
        places = {f"--in {in_path}": in_path, f"--out's directory {out_path.parent}": out_path.parent}
        exposed = [name for name, path in places.items() if readable_by_jobs(sandbox.plan, path)]
        if exposed:
            print(f"azr-jax score: warning: sandbox isolation '{sandbox.plan.mode}' runs jobs as uids that can read "
                  f"{' and '.join(exposed)}, and the hidden outputs there for a job to look up; `chmod o-rwx` "
                  f"(or isolation bwrap) keeps them out", file=sys.stderr)
        counts = score_file(in_path, out_path, cfg, sandbox)
    print(_summary(counts), file=sys.stderr)
    # Every --out row written, but a file in which no line is a record is almost always the wrong
    # file (a pretty-printed JSON, a log): a script chaining on the exit status should stop.
    return 1 if counts["lines"] and counts["errors"] == counts["lines"] else 0
