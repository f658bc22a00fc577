"""Benchmark items by name: {"id", "task", "problem"} solver records (task records as in docs/scoring.md)."""

from __future__ import annotations

from pathlib import Path

from azr_jax.errors import UserError
from azr_jax.jsonl import read_objects


def load_benchmark(eval_cfg) -> list[dict]:
    """Items of `eval_cfg.benchmark` (nano | cruxeval), cut to `eval_cfg.max_items` if > 0 so the
    task types stay balanced (nano: `max_items // 3` items per type; cruxeval: the first
    `max_items // 2` programs with both their items; at least one per type)."""
    if eval_cfg.benchmark == "nano":
        from azr_jax.nano.benchmark import DEFAULT_PER_TYPE, nano_benchmark

        per_type = DEFAULT_PER_TYPE if eval_cfg.max_items <= 0 else max(1, eval_cfg.max_items // 3)
        return nano_benchmark(per_type)
    if eval_cfg.benchmark == "cruxeval":
        if not eval_cfg.data_path:
            raise UserError("eval.benchmark=cruxeval needs eval.data_path (a CRUXEval JSONL file)")
        items = load_cruxeval(eval_cfg.data_path)
    else:
        raise UserError(f"unknown eval.benchmark {eval_cfg.benchmark!r}; known: nano, cruxeval")
    # Items come in (CRUXEval-O, CRUXEval-I) pairs per program.
    return items[: 2 * max(1, eval_cfg.max_items // 2)] if eval_cfg.max_items > 0 else items


def load_cruxeval(path: str | Path) -> list[dict]:
    """CRUXEval JSONL ({"code", "input", "output", "id"} per line) as deduction (CRUXEval-O) and
    abduction (CRUXEval-I) items. Malformed lines raise UserError with their line number."""
    p = Path(path)
    items = []
    for n, row in read_objects(p, "benchmark file"):
        if not all(isinstance(row.get(k), str) for k in ("code", "input", "output")):
            raise UserError(f"{p} line {n}: expected an object with string fields code, input, output")
        problem = {"program": row["code"], "input": row["input"], "output": row["output"], "imports": []}
        name = str(row.get("id", f"line{n}"))
        items.append({"id": f"cruxeval-o/{name}", "task": "deduction", "problem": problem})
        items.append({"id": f"cruxeval-i/{name}", "task": "abduction", "problem": problem})
    if not items:  # scored, it would report a solve rate of 0.0 over nothing
        raise UserError(f"benchmark file {p} holds no items")
    return items
