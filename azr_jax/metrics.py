"""Run metrics: `metrics.jsonl`, TensorBoard event files, a progress line on stderr, audit files.

Only the primary process (jax process 0) writes; the others get a writer whose methods do nothing
but whose interface is the same, so the trainer never branches on the process index.

Contract (DESIGN §3.4): one JSON object per completed step in `metrics.jsonl`; every timing field
ends in `_s` or `_per_s`, every other value is a deterministic function of (config, seed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from azr_jax.errors import UserError
from azr_jax.jsonl import write_text_atomically

TIMING_SUFFIXES = ("_s", "_per_s")


def is_timing_key(key: str) -> bool:
    """Timing fields differ between otherwise identical runs; tests and tools ignore them."""
    return key.endswith(TIMING_SUFFIXES)


def without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if not is_timing_key(k)}


def _json_number(value: Any) -> Any:
    """NaN/inf are not JSON; write them as null so every line parses everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | Path) -> list[dict]:
    """All step records of a `metrics.jsonl`, in file order."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def step_files(directory: str | Path, suffix: str = ".json") -> list[tuple[int, Path]]:
    """(N, path) of the `step_N<suffix>` files in `directory` (eval/, rollouts/, buffers/)."""
    found = []
    for p in Path(directory).glob(f"step_*{suffix}"):
        number = p.name[len("step_"):-len(suffix)]
        if number.isascii() and number.isdigit():  # not '²' (int() raises) or '٣' (3)
            found.append((int(number), p))
    return sorted(found)


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Drop records after `last_step` (a run killed after its last checkpoint wrote steps that the
    resumed run will redo) and any partial last line, so the file ends as an uninterrupted run's."""
    p = Path(path)
    if not p.exists():
        return
    kept = [line for line, record in _whole_records(p)
            if isinstance(record, dict) and record.get("step", math.inf) <= last_step]
    write_text_atomically(p, "".join(line + "\n" for line in kept))  # a kill now cannot empty it


def has_records_after(path: str | Path, step: int) -> bool:
    """Whether a `metrics.jsonl` holds a record of a step after `step` (a cut-off line does not count)."""
    p = Path(path)
    return p.is_file() and any(isinstance(record, dict) and isinstance(record.get("step"), int)
                               and record["step"] > step for _, record in _whole_records(p))


def _whole_records(p: Path):
    """(line, parsed value) of each line of `p` that is whole JSON; a line cut short by SIGKILL is left out."""
    for line in p.read_text().splitlines():
        try:
            yield line, json.loads(line)
        except json.JSONDecodeError:
            continue


def _duration(seconds: float) -> str:
    """`400s` under an hour; `41h35m` from an hour on (a 500-step run's eta in seconds was a
    six-digit number to divide in one's head)."""
    if seconds < 3600:
        return f"{seconds:.0f}s"
    minutes = int(round(seconds / 60))
    return f"{minutes // 60}h{minutes % 60:02d}m"


class ProgressLine:
    """A one-line progress display on stderr: rewritten in place on a terminal, one line per
    update otherwise (so CI logs stay readable)."""

    RECENT = 10  # the time per step is the mean over this many recent steps

    def __init__(self, total: int, start: int = 0, stream: TextIO | None = None):
        self.total = total
        self.start = start
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._seen: list[tuple[int, float]] = []  # (step, time) of the updates so far
        self.showing = False  # a line is on the terminal with no newline after it
        # On a terminal a log record would continue the progress line (it ends with no newline):
        # the log handlers that write to the same stream clear it first.
        self._handlers = [h for h in logging.getLogger().handlers
                          if self.tty and getattr(h, "stream", None) is self.stream]
        for h in self._handlers:
            h.addFilter(self._clear_before_log)

    def update(self, step: int, fields: dict[str, float], now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        self._seen = (self._seen + [(step, now)])[-(self.RECENT + 1):]
        # Between updates only: the first step of a run (or of a resume) also paid for start-up,
        # compilation, seeding and the base evaluation, and would inflate the estimate many times
        # over; until a second update there is no estimate.
        if len(self._seen) > 1:
            (s0, t0), (s1, t1) = self._seen[0], self._seen[-1]
            per_step = (t1 - t0) / max(s1 - s0, 1)
            rate = f"{per_step:.1f}s/step eta {_duration(per_step * (self.total - step))}"
        else:
            rate = "eta ?"
        width = 20
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        shown = " ".join(f"{k}={v:.3g}" for k, v in fields.items() if isinstance(v, (int, float)))
        text = f"[{bar}] step {step}/{self.total} {rate} {shown}"
        if self.tty:
            self.stream.write("\r" + text + "\033[K")
            self.showing = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _clear_before_log(self, record) -> bool:
        if self.showing:
            self.stream.write("\r\033[K")
            self.showing = False
        return True

    def close(self) -> None:
        for h in self._handlers:
            h.removeFilter(self._clear_before_log)
        if self.showing:
            self.stream.write("\n")
            self.stream.flush()
            self.showing = False


@contextlib.contextmanager
def run_output(path: Path):
    """A failed write of a run's outputs (a full disk, a revoked permission, a file where a
    directory should be) as one line naming the file, instead of a traceback."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write {getattr(e, 'filename', None) or path} ({e.strerror or e}); the run stopped: "
                        f"make room or fix the permissions, then run the same command to resume from the newest "
                        f"checkpoint") from None


class MetricsWriter:
    """Writes step records to `metrics.jsonl` and TensorBoard, audit files to `rollouts/`.
    A failed write raises UserError naming the file."""

    def __init__(self, workdir: str | Path, *, total_steps: int, start_step: int = 0,
                 enabled: bool = True, progress: bool = True, progress_every: int = 1):
        self.workdir = Path(workdir)
        self.enabled = enabled
        self.total_steps = total_steps
        self.progress_every = progress_every  # the progress line; metrics.jsonl gets every step
        self._jsonl = None
        self._tb = None
        self._progress = None
        if not enabled:
            return
        with run_output(self.metrics_path):
            self.workdir.mkdir(parents=True, exist_ok=True)
            # A resumed run redoes the steps after its checkpoint: drop their old records first.
            truncate_metrics(self.metrics_path, start_step)
            self._jsonl = open(self.metrics_path, "a", encoding="utf-8")
        from tensorboardX import SummaryWriter

        # purge_step hides events a killed run wrote past the checkpoint we resumed from. The
        # file is named by the second it was opened in: a start in the same second as the one
        # before (a resume right after a failed start, a test) replaced that file; the start
        # step in the name keeps them apart.
        try:  # a file where tensorboard/ belongs: one line, as for metrics.jsonl (it was a traceback)
            with run_output(self.workdir / "tensorboard"):
                self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=start_step + 1,
                                         filename_suffix=f".from_step_{start_step}")
        except UserError:
            self._jsonl.close()
            raise
        if progress:
            self._progress = ProgressLine(total_steps, start_step)

    @property
    def metrics_path(self) -> Path:
        return self.workdir / "metrics.jsonl"

    def write_step(self, record: dict) -> None:
        """One completed step; `record["step"]` is required. Scalars also go to TensorBoard."""
        if not self.enabled:
            return
        step = int(record["step"])
        clean = {k: _json_number(v) for k, v in record.items()}
        with run_output(self.metrics_path):
            self._jsonl.write(json.dumps(clean, sort_keys=True) + "\n")
            self._jsonl.flush()
        with run_output(self.workdir / "tensorboard"):
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    if math.isfinite(value):
                        self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._progress is not None and (step % self.progress_every == 0 or step == self.total_steps):
            shown = {k: record[k] for k in ("reward/mean", "buffer/deduction", "step_time_s") if k in record}
            self._progress.update(step, shown)

    def amend_step(self, step: int, extra: dict) -> None:
        """Add `extra` to the already written record of `step` (metrics.jsonl and TensorBoard)."""
        if not self.enabled:
            return
        lines = self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else []
        for i, line in enumerate(lines):
            record = json.loads(line)
            if record.get("step") == step:
                lines[i] = json.dumps({**record, **{k: _json_number(v) for k, v in extra.items()}}, sort_keys=True)
                break
        else:
            return  # no such record (metrics.jsonl lost): nothing to amend
        with run_output(self.metrics_path):
            self._jsonl.close()
            write_text_atomically(self.metrics_path, "".join(line + "\n" for line in lines))
            self._jsonl = open(self.metrics_path, "a", encoding="utf-8")
        for key, value in extra.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def write_rollouts(self, step: int, records: list[dict]) -> None:
        """Sampled rollouts of one step (score-schema records plus their scores), for audit and
        re-scoring with `azr-jax score --in rollouts/step_N.jsonl`."""
        if not self.enabled:
            return
        out = self.workdir / "rollouts" / f"step_{step}.jsonl"
        with run_output(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            # Renamed into place: `azr-jax score --in` beside the run read a file cut short (its
            # last row "malformed", the rest missing, exit 0), or one a resume rewrote under it.
            write_text_atomically(out, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def write_buffers(self, step: int, snapshot: dict) -> None:
        """The task buffers as of the end of `step`, for audit."""
        if not self.enabled:
            return
        out = self.workdir / "buffers" / f"step_{step}.json"
        with run_output(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(out, json.dumps(snapshot, sort_keys=True))  # whole for a reader, as above

    def write_json(self, name: str, data: dict) -> None:
        if not self.enabled:
            return
        with run_output(self.workdir / name):
            write_text_atomically(self.workdir / name, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def close(self) -> None:
        jsonl, tb, progress = self._jsonl, self._tb, self._progress
        self._jsonl = self._tb = self._progress = None
        try:
            if jsonl is not None:
                with run_output(self.metrics_path):
                    jsonl.close()  # flushes: a full disk may only show here
        finally:
            try:
                if tb is not None:
                    with run_output(self.workdir / "tensorboard"):
                        tb.close()
            finally:
                if progress is not None:
                    progress.close()
