"""The figures a run's `summary.json` carries about evaluation (docs/training.md, "What a run
leaves in its workdir").

The trainer evaluates at the start (base) and the end (final) with `eval.evaluate.evaluate`
and merges `solve_rate_summary(base, final)` into its summary. Plain Python.

The standard errors treat the benchmark's items as a sample from the task distribution the
benchmark is drawn from: they say how far a solve rate (or a gain) could move on another draw of
items, not how far it moves between training seeds (docs/nano.md measures that separately).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("azr_jax.eval")


def macro_mean_stderr(tasks: list[str], values: list[float]) -> float | None:
    """Standard error of the mean over task types of the per-type means of `values` (each type
    weighted equally, as in the solve rate); None when a type has fewer than two items."""
    groups: dict[str, list[float]] = {}
    for task, value in zip(tasks, values, strict=True):
        groups.setdefault(task, []).append(float(value))
    if not groups or any(len(g) < 2 for g in groups.values()):
        return None
    variance = sum(np.var(g, ddof=1) / len(g) for g in groups.values())
    return float(np.sqrt(variance)) / len(groups)


def solve_rate_stderr(result: dict) -> float | None:
    """Standard error of an evaluation's solve rate, from its per-item accuracies."""
    items = result.get("items") or []
    if not items or any("task" not in it for it in items):
        return None  # an evaluation written before items carried their task type
    return macro_mean_stderr([it["task"] for it in items], [it["accuracy"] for it in items])


def gain_stderr(base: dict, final: dict) -> float | None:
    """Paired standard error of `final - base` over the same items: each item's change in
    accuracy, so the items' shared difficulty cancels. None unless both cover the same items."""
    before = {it["id"]: it for it in base.get("items") or []}
    after = final.get("items") or []
    if not after or len(after) != len(before) or any(it["id"] not in before or "task" not in it for it in after):
        return None
    return macro_mean_stderr([it["task"] for it in after],
                             [it["accuracy"] - before[it["id"]]["accuracy"] for it in after])


def read_evaluation(path: Path) -> dict | None:
    """An eval/*.json result, or None (with a warning) if it is damaged: one bad file should cost
    its point on the plot, not the plots of a finished run."""
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("skipping %s: unreadable (%s)", path, e)
        return None
    if (not isinstance(result, dict) or not isinstance(result.get("solve_rate"), (int, float))
            or not isinstance(result.get("per_task"), dict)):
        log.warning("skipping %s: not an evaluation result (solve_rate, per_task)", path)
        return None
    return result


def solve_rate_summary(base: dict, final: dict) -> dict:
    """`base_solve_rate`, `final_solve_rate` (mean over task types), per task type, and the gain."""
    out = {
        "benchmark": final.get("benchmark", base.get("benchmark")),
        "eval_items": final.get("n_items"),
        "eval_samples": final.get("samples", 1),
        "eval_temperature": final.get("temperature", 0.0),
        "base_solve_rate": base["solve_rate"],
        "final_solve_rate": final["solve_rate"],
        "solve_rate_gain": final["solve_rate"] - base["solve_rate"],
        "base_solve_rate_stderr": solve_rate_stderr(base),
        "final_solve_rate_stderr": solve_rate_stderr(final),
        "solve_rate_gain_stderr": gain_stderr(base, final),
        "base_format_rate": base.get("format_rate"),
        "final_format_rate": final.get("format_rate"),
    }
    for task in sorted(set(base["per_task"]) | set(final["per_task"])):
        out[f"base_solve_rate/{task}"] = base["per_task"].get(task)
        out[f"final_solve_rate/{task}"] = final["per_task"].get(task)
    return out


def format_solve_rate_table(summary: dict) -> str:
    """The summary's solve rates as a small text table (base, final, gain per task type), and
    the standard errors of the mean row when the summary has them."""
    tasks = sorted(k.split("/", 1)[1] for k in summary if k.startswith("final_solve_rate/"))
    if "final_solve_rate" not in summary:
        return ""
    rows = [("task", "base", "final", "gain")]
    for task in tasks + ["mean"]:
        key = "" if task == "mean" else f"/{task}"
        base, final = summary.get(f"base_solve_rate{key}"), summary.get(f"final_solve_rate{key}")
        if base is None or final is None:
            continue
        rows.append((task, f"{base:.3f}", f"{final:.3f}", f"{final - base:+.3f}"))
    lines = [f"{a:<10} {b:>6} {c:>6} {d:>7}" for a, b, c, d in rows]
    errors = [summary.get(f"{k}_stderr") for k in ("base_solve_rate", "final_solve_rate", "solve_rate_gain")]
    if None not in errors:
        lines.append(f"{'std error':<10} {errors[0]:>6.3f} {errors[1]:>6.3f} {errors[2]:>7.3f}"
                     "  (over the items; the gain's is paired)")
    return "\n".join(lines)


def decoding_description(temperature: float, samples: int) -> str:
    """How an evaluation decoded, in words: "greedy" or "mean of k samples at temperature t"."""
    if not temperature:
        return "greedy"
    return f"mean of {samples} sample{'s' if samples > 1 else ''} at temperature {temperature:g}"
