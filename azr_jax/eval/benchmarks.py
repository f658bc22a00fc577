"""Benchmark items by name: {"id", "task", "problem"} solver records (task records as in docs/scoring.md)."""

from __future__ import annotations

from pathlib import Path

from azr_jax.errors import UserError
from azr_jax.jsonl import read_objects


def load_benchmark(eval_cfg) -> list[dict]:
    """Items of `eval_cfg.benchmark` (nano | cruxeval), cut to `eval_cfg.max_items` if > 0 so the
    task types stay balanced (nano: `max_items // 3` items per type; cruxeval: the first
    `max_items // 2` programs with both their items; at least one per type; never more than all)."""
    if eval_cfg.benchmark == "nano":
        from azr_jax.nano.benchmark import DEFAULT_PER_TYPE, nano_benchmark

        # At most the whole benchmark: nano_benchmark(n) extends it past DEFAULT_PER_TYPE with more
        # generator draws, so max_items=300 evaluated 300 items where 0 (= all) evaluates 150.
        per_type = DEFAULT_PER_TYPE if eval_cfg.max_items <= 0 else min(DEFAULT_PER_TYPE, max(1, eval_cfg.max_items // 3))
        return nano_benchmark(per_type)
    if eval_cfg.benchmark == "cruxeval":
        if not eval_cfg.data_path:
            raise UserError("eval.benchmark=cruxeval needs eval.data_path (a CRUXEval JSONL file)")
        items = load_cruxeval(eval_cfg.data_path)
    else:
        raise UserError(f"unknown eval.benchmark {eval_cfg.benchmark!r}; known: nano, cruxeval")
    # Items come in (CRUXEval-O, CRUXEval-I) pairs per program.
    return items[: 2 * max(1, eval_cfg.max_items // 2)] if eval_cfg.max_items > 0 else items


def _defines_entry(tree) -> bool:
    """Whether a program binds `f` anywhere (`def f`, `f = ...`, `import x as f`): the scorer calls `f`."""
    import ast

    from azr_jax.azr.parsing import ENTRY_NAME

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == ENTRY_NAME:
            return True
        if isinstance(node, ast.Name) and node.id == ENTRY_NAME and isinstance(node.ctx, ast.Store):
            return True
        if isinstance(node, ast.alias) and (node.asname or node.name) == ENTRY_NAME:
            return True
    return False


def _broken_item(row: dict) -> str | None:
    """Why a CRUXEval line's items could never be solved here (None: they can). Checked when the
    file is read, not after the model ran: such a line would score 0 for every model, silently
    lowering the solve rate. Gold inputs written as expressions (`dict(did=0)`, a lambda) stay
    allowed, as in the public file (docs/nano.md); only text that is not Python is refused."""
    from azr_jax.azr.parsing import ENTRY_NAME, parse_call_args, parse_program
    from azr_jax.sandbox.literals import NotALiteral, parse_literal

    tree = parse_program(row["code"])
    if tree is None:
        return "'code' is not valid Python"
    if not _defines_entry(tree):
        return f"'code' defines no function {ENTRY_NAME} (the items call {ENTRY_NAME}(input))"
    if parse_call_args(row["input"]) is None:
        return f"'input' {row['input']!r:.60} is not a Python argument list (the text inside {ENTRY_NAME}(...))"
    try:
        parse_literal(row["output"])
    except NotALiteral as e:  # deduction answers are compared with it as literal values
        return (f"'output' {row['output']!r:.60} is not a plain Python literal ({e}), so no answer can "
                f"equal it (a nan, inf or object repr has no literal form)")
    return None


def load_cruxeval(path: str | Path) -> list[dict]:
    """CRUXEval JSONL ({"code", "input", "output", "id"} per line) as deduction (CRUXEval-O) and
    abduction (CRUXEval-I) items. Malformed lines, lines no answer could solve (`_broken_item`)
    and repeated ids raise UserError with their line number."""
    p = Path(path)
    items = []
    seen: dict[str, int] = {}  # id -> line: --out and the paired gain's error tell items apart by id
    for n, row in read_objects(p, "benchmark file"):
        wrong = [f"'{k}' is {'missing' if k not in row else type(row[k]).__name__}"
                 for k in ("code", "input", "output") if not isinstance(row.get(k), str)]
        if wrong:
            raise UserError(f"benchmark file {p} line {n}: expected an object with string fields code, input, "
                            f"output ({', '.join(wrong)})")
        why = _broken_item(row)
        if why is not None:
            raise UserError(f"benchmark file {p} line {n}: {why}; fix or remove the line")
        name = str(row["id"]) if row.get("id") is not None else f"line{n}"
        if name in seen:
            raise UserError(f"benchmark file {p} line {n}: id {name!r} repeats line {seen[name]}; "
                            f"give each line its own id")
        seen[name] = n
        problem = {"program": row["code"], "input": row["input"], "output": row["output"], "imports": []}
        items.append({"id": f"cruxeval-o/{name}", "task": "deduction", "problem": problem})
        items.append({"id": f"cruxeval-i/{name}", "task": "abduction", "problem": problem})
    if not items:  # scored, it would report a solve rate of 0.0 over nothing
        raise UserError(f"benchmark file {p} holds no items")
    return items
