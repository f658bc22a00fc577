"""Prompt rendering for the six (role, task) pairs in the reference's R1 format (AZR_SPEC §5).

Templates are plain text files in `azr_jax/azr/templates/` with `{{name}}` placeholders; a user
replaces any of them by putting a file of the same name in `config.azr.prompt_dir`. Render
functions take plain data (buffer entries as dicts) and return the full prompt text, which ends
in `Assistant: <think>` so completions start inside the reasoning block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from azr_jax.errors import UserError

TEMPLATE_DIR = Path(__file__).parent / "templates"
PLACEHOLDER_RE = re.compile(r"\{\{(\w+)\}\}")

# template name -> the placeholders it must use (and may only use)
TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "r1": frozenset({"task"}),
    "propose_abduction": frozenset({"banned_words", "references"}),
    "propose_deduction": frozenset({"banned_words", "references"}),
    "propose_induction": frozenset({"num_inputs", "program"}),
    "solve_abduction": frozenset({"program", "output"}),
    "solve_deduction": frozenset({"program", "input"}),
    "solve_induction": frozenset({"pairs", "message"}),
}


def fill(template: str, values: dict[str, str]) -> str:
    """Replace `{{name}}` placeholders in one pass (inserted text is never re-scanned, so code
    containing braces or `{{...}}` is safe)."""
    return PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


def _check_template(name: str, text: str, source: Path) -> None:
    used = set(PLACEHOLDER_RE.findall(text))
    wanted = TEMPLATE_FIELDS[name]
    if used - wanted:
        raise UserError(f"prompt template {source} uses unknown placeholder(s) {sorted(used - wanted)}; allowed: {sorted(wanted)}")
    if wanted - used:
        raise UserError(f"prompt template {source} is missing placeholder(s) {sorted(wanted - used)}")


def load_templates(prompt_dir: str | None = None) -> dict[str, str]:
    """The packaged templates, each replaced by `<prompt_dir>/<name>.txt` where that file exists."""
    if prompt_dir is not None and not Path(prompt_dir).is_dir():
        raise UserError(f"azr.prompt_dir is not a directory: {prompt_dir}")
    templates = {}
    for name in TEMPLATE_FIELDS:
        path = TEMPLATE_DIR / f"{name}.txt"
        if prompt_dir is not None and (Path(prompt_dir) / f"{name}.txt").is_file():
            path = Path(prompt_dir) / f"{name}.txt"
        text = path.read_text(encoding="utf-8")
        if name == "r1":
            text = text.rstrip("\n")  # the prompt must end exactly in "Assistant: <think>"
        _check_template(name, text, path)
        templates[name] = text
    return templates


def induction_visible(n_pairs: int) -> int:
    """How many induction pairs the solver sees: the first half (AZR_SPEC §1.8)."""
    return n_pairs // 2


def render_references(references: list[dict]) -> str:
    """Proposer reference snippets as `<snippet_i>` blocks holding code, input and output."""
    parts = []
    for i, ref in enumerate(references):
        parts.append(
            f"<snippet_{i}>\n```python\n{ref['program']}\n```\n\n```input\n{ref['input']}\n```\n\n"
            f"```output\n{ref['output']}\n```\n</snippet_{i}>"
        )
    return "\n".join(parts)


def render_pairs(inputs: list[str], outputs: list[str]) -> str:
    return "\n".join(
        f"```input_{k}\n{i}\n```\n```output_{k}\n{o}\n```" for k, (i, o) in enumerate(zip(inputs, outputs), start=1)
    )


@dataclass(frozen=True)
class Prompts:
    """Loaded templates plus the settings prompts depend on."""

    templates: dict
    banned_words: tuple
    num_inputs: int

    @classmethod
    def from_config(cls, azr_cfg) -> "Prompts":
        return cls(load_templates(azr_cfg.prompt_dir), tuple(azr_cfg.banned_words), azr_cfg.num_inputs)

    def wrap(self, task_text: str) -> str:
        return fill(self.templates["r1"], {"task": task_text.strip()})

    def propose(self, task: str, references: list[dict] | None = None, program: dict | None = None) -> str:
        """Proposer prompt. deduction/abduction: K reference triplets; induction: one program entry."""
        if task == "induction":
            if program is None:
                raise ValueError("an induction proposer prompt needs a program entry")
            body = fill(self.templates["propose_induction"], {"num_inputs": str(self.num_inputs), "program": program["program"]})
        elif task in ("deduction", "abduction"):
            body = fill(
                self.templates[f"propose_{task}"],
                {"banned_words": ", ".join(dict.fromkeys(self.banned_words)), "references": render_references(references or [])},
            )
        else:
            raise ValueError(f"unknown task type {task!r}")
        return self.wrap(body)

    def solve(self, task: str, problem: dict) -> str:
        """Solver prompt for a task record (deduction/abduction triplet or induction entry)."""
        if task == "deduction":
            body = fill(self.templates["solve_deduction"], {"program": problem["program"], "input": problem["input"]})
        elif task == "abduction":
            body = fill(self.templates["solve_abduction"], {"program": problem["program"], "output": problem["output"]})
        elif task == "induction":
            visible = problem.get("visible", induction_visible(len(problem["inputs"])))
            pairs = render_pairs(problem["inputs"][:visible], problem["outputs"][:visible])
            body = fill(self.templates["solve_induction"], {"pairs": pairs, "message": problem["message"]})
        else:
            raise ValueError(f"unknown task type {task!r}")
        return self.wrap(body)
