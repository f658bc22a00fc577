"""The figures a run's `summary.json` carries about evaluation (DESIGN §3.4).

The trainer evaluates at the start (base) and the end (final) with `eval.evaluate.evaluate`
and merges `solve_rate_summary(base, final)` into its summary. Plain Python.
"""

from __future__ import annotations


def solve_rate_summary(base: dict, final: dict) -> dict:
    """`base_solve_rate`, `final_solve_rate` (mean over task types), per task type, and the gain."""
    out = {
        "benchmark": final.get("benchmark", base.get("benchmark")),
        "eval_items": final.get("n_items"),
        "base_solve_rate": base["solve_rate"],
        "final_solve_rate": final["solve_rate"],
        "solve_rate_gain": final["solve_rate"] - base["solve_rate"],
        "base_format_rate": base.get("format_rate"),
        "final_format_rate": final.get("format_rate"),
    }
    for task in sorted(set(base["per_task"]) | set(final["per_task"])):
        out[f"base_solve_rate/{task}"] = base["per_task"].get(task)
        out[f"final_solve_rate/{task}"] = final["per_task"].get(task)
    return out


def format_solve_rate_table(summary: dict) -> str:
    """The summary's solve rates as a small text table (base, final, gain per task type)."""
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
    return "\n".join(f"{a:<10} {b:>6} {c:>6} {d:>7}" for a, b, c, d in rows)
