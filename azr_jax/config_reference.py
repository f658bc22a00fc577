"""Every config key with its default, its allowed values and what it does, as Markdown.

`python -m azr_jax.config_reference > docs/config.md` writes docs/config.md; a test checks the file
is current, so the reference cannot drift from `azr_jax/config.py`. The descriptions are the
comments beside (or just above) each field in config.py: that file stays the one place a key is
explained."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import re
import sys
import tokenize
from pathlib import Path

from azr_jax import config as config_module

HEADER = """# Configuration reference

Every key of a run config, its default (`azr_jax/config.py`; the presets in `configs/` change
some of them: `azr-jax train --config configs/nano.py` writes the resolved values to
`WORKDIR/config.json`), the values it accepts where they are a fixed set, and what it does. Set a
key with `--set section.key=value` (JSON values: `--set train.steps=50`, `--set
rl.dual_clip=null`) or in a config file. Generated from the comments in `azr_jax/config.py` by
`python -m azr_jax.config_reference > docs/config.md`; `tests/test_docs_config.py` checks that
this file is current.
"""


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment lines just above the field plus the comment at
    the end of its first line, joined into one text."""
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    out = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            above = []
            line = item.lineno - 1
            while line in comments and line not in code_lines:
                above.insert(0, comments[line])
                line -= 1
            trailing = [comments[item.lineno]] if item.lineno in comments and item.lineno in code_lines else []
            out[(node.name, item.target.id)] = " ".join(above + trailing)
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text[-1] in ".!?)" else text + "."


def _describe(comment: str, allowed) -> str:
    """The field's comment as a sentence, plus its allowed values unless the comment names them all."""
    text = _sentence(comment)
    if allowed and not all(re.search(rf"(?<![\w+-]){re.escape(c)}(?![\w+-])", comment) for c in allowed):
        text += f" One of: {', '.join(f'`{c}`' for c in allowed)}."
    return text.strip()


def _config_comments() -> dict[tuple[str, str], str]:
    return field_comments(Path(inspect.getsourcefile(config_module)).read_text())


def _sections(default):
    """(section name, section value) for each dataclass section of the config `default`."""
    for f in dataclasses.fields(default):
        section = getattr(default, f.name)
        if dataclasses.is_dataclass(section):
            yield f.name, section


def reference_markdown() -> str:
    """docs/config.md's text."""
    comments = _config_comments()
    choices = config_module._CHOICES
    default = config_module.Config()
    parts = [HEADER]
    name_comment = comments.get(("Config", "name"), "")
    parts.append(f"\n## `name`\n\n{_sentence(name_comment)} Default `{json.dumps(default.name)}`.\n")
    for name, section in _sections(default):
        cls = type(section)
        doc = inspect.cleandoc(cls.__doc__) if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
        parts.append(f"\n## `{name}`\n\n" + (f"{doc}\n\n" if doc else ""))
        parts.append("| key | default | what it does |\n|---|---|---|\n")
        for sub in dataclasses.fields(cls):
            value = json.dumps(getattr(section, sub.name))
            text = _describe(comments.get((cls.__name__, sub.name), ""), choices.get((name, sub.name)))
            parts.append(f"| `{name}.{sub.name}` | `{_cell(value)}` | {_cell(text)} |\n")
    return "".join(parts)


def missing_descriptions() -> list[str]:
    """Keys without a comment in config.py (a test keeps this empty)."""
    comments = _config_comments()
    default = config_module.Config()
    missing = [f.name for f in dataclasses.fields(default)
               if not dataclasses.is_dataclass(getattr(default, f.name)) and not comments.get(("Config", f.name))]
    for name, section in _sections(default):
        cls = type(section)
        missing += [f"{name}.{sub.name}" for sub in dataclasses.fields(cls) if not comments.get((cls.__name__, sub.name))]
    return missing


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
