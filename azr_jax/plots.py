"""PNG plots of a run's metrics.jsonl: reward, valid-proposal rate, learnability and solve rate
per (role, task) over steps (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from azr_jax.errors import UserError
from azr_jax.eval.summary import decoding_description, read_evaluation
from azr_jax.jsonl import check_input_file
from azr_jax.metrics import step_files

TASKS = ("deduction", "abduction", "induction")
ROLES = ("propose", "solve")
# file stem -> (title, metric keys plotted as one line each)
PANELS = {
    "reward": ("mean reward", [f"{role}/{task}/reward" for role in ROLES for task in TASKS]),
    "valid_rate": ("valid proposal rate", [f"propose/{task}/valid_rate" for task in TASKS]),
    "learnability": ("proposer learnability (mean over valid proposals)", [f"propose/{task}/learnability" for task in TASKS]),
    "solve_rate": ("solver accuracy on buffer tasks (self-proposed and seed)", [f"solve/{task}/accuracy" for task in TASKS]),
}


def read_metrics(path: str | Path) -> list[dict]:
    p = check_input_file(path, "metrics file", "a metrics.jsonl")
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p} line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
                raise UserError(f"{p} line {n}: not a metrics row (a JSON object with an integer \"step\")")
            rows.append(row)
    return rows




def _evaluations(eval_dir: Path, last_step: int) -> list[tuple[int, dict]]:
    """A run's eval/*.json by step: base.json at step 0, step_N.json at N, final.json at `last_step`."""
    files = [(0, eval_dir / "base.json"), (last_step, eval_dir / "final.json")] + step_files(eval_dir)
    out = []
    for step, path in sorted(files, key=lambda x: x[0]):
        if path.is_file():
            result = read_evaluation(path)
            if result is not None:
                out.append((step, result))
    return out


def _points(evaluations: list[tuple[int, dict]]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for step, result in evaluations:
        series.setdefault("mean", []).append((step, result["solve_rate"]))
        for task, rate in result.get("per_task", {}).items():
            series.setdefault(task, []).append((step, rate))
    return series


def _band(evaluations: list[tuple[int, dict]]) -> list[tuple[int, float, float]]:
    return [(step, r["solve_rate"], r["solve_rate_stderr"]) for step, r in evaluations
            if r.get("solve_rate_stderr") is not None]


def heldout_points(eval_dir: Path, last_step: int) -> dict[str, list[tuple[int, float]]]:
    """Held-out solve rate per task type (and `mean`) over steps, from a run's eval/*.json."""
    return _points(_evaluations(eval_dir, last_step))


def heldout_mean_band(eval_dir: Path, last_step: int) -> list[tuple[int, float, float]]:
    """(step, mean solve rate, its standard error) for the evaluations that record one."""
    return _band(_evaluations(eval_dir, last_step))


def plot_metrics(metrics_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write one PNG per panel into `out_dir` (plus `heldout_solve_rate.png` when the run's
    eval/ directory holds evaluations); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    def save(fig, ax, title: str, stem: str) -> None:
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        # Drawn beside it and moved into place: a viewer refreshing the plots during a run (or
        # a kill mid-write) sees the previous picture or the new one, never a cut-off PNG.
        tmp = path.with_name(path.name + ".tmp")
        try:
            fig.savefig(tmp, dpi=100, format="png")
            os.replace(tmp, path)
        finally:
            plt.close(fig)
            tmp.unlink(missing_ok=True)
        written.append(path)

    for stem, (title, keys) in PANELS.items():
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for key in keys:
            pts = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=key.rsplit("/", 1)[0])
        save(fig, ax, title, stem)
    last_step = max((row["step"] for row in rows), default=0)
    evaluations = _evaluations(Path(metrics_path).parent / "eval", last_step)
    series = _points(evaluations)
    if series:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, pts in series.items():
            ax.plot(*zip(*pts), marker="o", label=name, linewidth=2.5 if name == "mean" else 1.2)
        band = _band(evaluations)
        if len(band) > 1:  # how far the mean could move on another draw of benchmark items
            steps, rates, errors = (np.array(x) for x in zip(*band))
            ax.fill_between(steps, rates - errors, rates + errors, color=ax.lines[0].get_color(), alpha=0.15,
                            label="mean ± 1 standard error")
        top = max(rate for pts in series.values() for _, rate in pts)
        ax.set_ylim(0, min(1.0, max(0.3, 1.5 * top)))
        last = evaluations[-1][1]
        how = decoding_description(last.get("temperature", 0.0), last.get("samples", 1))
        save(fig, ax, f"held-out solve rate ({how}; step 0 = base model)", "heldout_solve_rate")
    return written
