"""Task buffers, one per task type (AZR_SPEC §1.1, §1.4, §1.6-1.9).

An entry is a plain dict (the task record of DESIGN §3.3 plus `step`, the training step that
added it): deduction/abduction `{program, input, output, imports, step}`, induction
`{program, inputs, outputs, message, visible, imports, step}`. Randomness always comes from a
`numpy.random.Generator` passed in by the caller (the reference uses unseeded global RNGs), so a
run is reproducible from its seed and resumable from `to_state()`.

Rules:
- De-duplication: an entry whose normalised program (comments and layout removed) and input(s)
  equal an existing entry's is not added.
- Cap: at most `cap` entries. `drop_oldest` (default) evicts the oldest entries to admit new
  ones; `keep_oldest` refuses new entries once full, which is what the reference's `list[:cap]`
  does. Only the eviction is the reference's: its "newest tasks first" sampling then keeps
  returning the list's last (old) entries, while `max_new` here finds no recent entry and draws
  uniformly from the whole buffer.
- Proposer references: K entries uniformly without replacement (fewer if the buffer is smaller).
- Solver tasks (`max_new`): entries added at or after `new_since_step` first (uniformly, without
  replacement), the rest of the batch uniformly from the whole buffer (without replacement
  within the fill while the buffer is large enough, as the reference's `random.sample`).
"""

from __future__ import annotations

import ast
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from azr_jax import pyast
from azr_jax.errors import UserError
from azr_jax.jsonl import read_objects
from azr_jax.azr.prompts import induction_visible

log = logging.getLogger(__name__)

TASK_TYPES = ("deduction", "abduction", "induction")

IDENTITY_PROGRAM = "def f(a):\n    return a"
IDENTITY_INDUCTION_INPUTS = [
    "'Hello world'", "1", "{'a': 1, 'b': 2}", "(1.1, 1.2, 1.3)", "'[[1, 0, 0], [0, 0, 0], [0, 0, 0]]'", "1001101100010001",
]


def identity_triplet() -> dict:
    """The single seed task of the paper: `f(a) = a` on "Hello world"."""
    return {"program": IDENTITY_PROGRAM, "input": "'Hello world'", "output": "'Hello world'", "imports": []}


def identity_induction() -> dict:
    """The identity program with six inputs; outputs are the reprs of the values (the
    reference stores the input strings themselves, which differ for e.g. `dict(a=1, b=2)`)."""
    inputs = list(IDENTITY_INDUCTION_INPUTS)
    return {
        "program": IDENTITY_PROGRAM, "inputs": inputs, "outputs": list(inputs),
        "message": "Write a function that returns whatever you input", "visible": induction_visible(len(inputs)),
        "imports": [],
    }


def _normalise_code(text: str, mode: str = "exec") -> str:
    try:
        return ast.unparse(pyast.parse(text, mode=mode))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return " ".join(text.split())


def _call_key(args: str) -> str:
    # On lines of their own, as `parse_call_args` reads them: an input that ends in a comment
    # (`'abc'  # the input`) still parses, so a changed comment is not a new task.
    return _normalise_code(f"f(\n{args}\n)", mode="eval")


def dedup_key(entry: dict) -> str:
    program = _normalise_code(entry["program"])
    if "inputs" in entry:
        return json.dumps([program, [_call_key(i) for i in entry["inputs"]]])
    return json.dumps([program, _call_key(entry["input"])])


@dataclass
class TaskBuffer:
    task: str
    cap: int = 16384
    eviction: str = "drop_oldest"
    entries: list = field(default_factory=list)
    # dedup_key of each entry, as computed when it was added. Kept (and checkpointed) rather than
    # recomputed: a program near Python's recursion limit normalises differently at another call
    # depth, and a restored buffer must reject and evict exactly what the live one would.
    keys: list | None = None

    def __post_init__(self):
        if self.task not in TASK_TYPES:
            raise ValueError(f"unknown task type {self.task!r}")
        if self.eviction not in ("drop_oldest", "keep_oldest"):
            raise ValueError(f"unknown eviction rule {self.eviction!r}")
        if self.keys is None or len(self.keys) != len(self.entries):
            self.keys = [dedup_key(e) for e in self.entries]
        self._keys = set(self.keys)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: dict, step: int) -> bool:
        """Add a task; False if it is a duplicate or the buffer is full under `keep_oldest`."""
        key = dedup_key(entry)
        if key in self._keys:
            return False
        if len(self.entries) >= self.cap:
            if self.eviction == "keep_oldest":
                return False
            while len(self.entries) >= self.cap:
                self.entries.pop(0)
                self._keys.discard(self.keys.pop(0))
        self.entries.append({**entry, "step": int(step)})
        self.keys.append(key)
        self._keys.add(key)
        return True

    def sample_references(self, k: int, rng: np.random.Generator) -> list[dict]:
        """K distinct entries chosen uniformly (all of them, shuffled, if fewer than K)."""
        k = min(k, len(self.entries))
        return [self.entries[i] for i in rng.choice(len(self.entries), size=k, replace=False)]

    def sample_solver_tasks(self, n: int, rng: np.random.Generator, *, new_since_step: int, mix: str = "max_new") -> list[dict]:
        """`n` tasks for the solver. `max_new`: entries with `step >= new_since_step` first, then
        uniform fill; `uniform`: uniform over the buffer (without replacement while possible)."""
        if not self.entries or n <= 0:
            return []
        if mix == "uniform":
            return [self.entries[i] for i in rng.choice(len(self.entries), size=n, replace=n > len(self.entries))]
        if mix != "max_new":
            raise ValueError(f"unknown solver-task mix {mix!r}")
        new = [e for e in self.entries if e["step"] >= new_since_step]
        take = min(n, len(new))
        chosen = [new[i] for i in rng.choice(len(new), size=take, replace=False)] if take else []
        rest = n - take
        if rest:
            # the reference's random.sample: distinct within the fill (it may repeat a "new" pick)
            chosen += [self.entries[i] for i in rng.choice(len(self.entries), size=rest, replace=rest > len(self.entries))]
        return chosen

    def to_state(self, *, keys: bool = True) -> dict:
        """The buffer as JSON data; `keys=False` leaves the dedup keys out (the audit files)."""
        state = {"task": self.task, "cap": self.cap, "eviction": self.eviction, "entries": [dict(e) for e in self.entries]}
        return {**state, "keys": list(self.keys)} if keys else state

    @classmethod
    def from_state(cls, state: dict) -> "TaskBuffer":
        """A buffer from `to_state()` (a state without `keys`, from before they were saved, has
        them recomputed)."""
        return cls(task=state["task"], cap=state["cap"], eviction=state["eviction"],
                   entries=[dict(e) for e in state["entries"]], keys=state.get("keys"))


_REQUIRED = {
    "deduction": ("input", "output"),
    "abduction": ("input", "output"),
    "induction": ("inputs", "outputs", "message"),
}


def _unusable_seed(program: str, golds: list[str], banned, inputs: list[str] = ()) -> str | None:
    """Why a seed task could never be solved or built on here (None: usable). An empty gold
    (a reference validation hole, AZR_SPEC §2.6), or one that is not a plain literal (a
    `Counter(...)` repr, an output the reference cut to 403 characters in the middle of a
    list), matches no answer. An input that is not an argument list (`'a` for `'a'`) fails every
    induction answer (input_syntax_error) and shows a deduction or abduction solver nonsense. A
    program that does not parse, or that the AST policy refuses, makes every induction proposal
    on it invalid (`banned`: None skips that check)."""
    from azr_jax.azr import parsing
    from azr_jax.azr.checks import check_tree
    from azr_jax.sandbox.literals import NotALiteral, parse_literal

    if any(g == "" for g in golds):
        return "an empty gold output"
    for gold in golds:
        try:
            parse_literal(gold)
        except NotALiteral:
            return "a gold output that is not a plain literal"
    if any(parsing.parse_call_args(i) is None for i in inputs):
        return "an input that is not a Python argument list"
    if banned is not None:
        tree = parsing.parse_program(program)
        if tree is None:
            return "a program that does not parse"
        if check_tree(tree, banned) is not None:
            return "a program the AST policy refuses"
    return None


def load_seed_file(path: str | Path, task: str, banned: list[str] | tuple[str, ...] | None = None) -> list[dict]:
    """Read seed tasks from JSONL. Accepts our field names or the reference's (`snippet` for
    `program`). Tasks no answer or proposal could succeed on (`_unusable_seed`: the reference's
    files hold empty and cut-off gold outputs) are skipped, with one warning counting them."""
    p = Path(path)
    out = []
    skipped: Counter = Counter()
    for n, row in read_objects(p, "seed file"):
        program = row.get("program", row.get("snippet"))
        missing = [k for k in _REQUIRED[task] if k not in row] + ([] if program is not None else ["program"])
        if missing:
            raise UserError(f"seed file {p} line {n}: missing field(s) {missing} for a {task} seed")
        if not isinstance(program, str):
            raise UserError(f"seed file {p} line {n}: 'program' must be a string, got {type(program).__name__}")
        def bad(field: str, expected: str):
            return UserError(f"seed file {p} line {n}: '{field}' must be {expected}, got {row[field]!r:.80}")

        imports = row.get("imports") or []
        if not isinstance(imports, list) or not all(isinstance(x, str) for x in imports):
            raise bad("imports", "a list of import lines")
        if task == "induction":
            for field in ("inputs", "outputs"):
                if not isinstance(row[field], list):  # a string would be read as its characters
                    raise bad(field, "a list")
            inputs, outputs = [str(x) for x in row["inputs"]], [str(x) for x in row["outputs"]]
            if len(inputs) != len(outputs):
                raise UserError(f"seed file {p} line {n}: {len(inputs)} inputs but {len(outputs)} outputs")
            if not inputs:  # no pair to show or check: the scorer refuses such a task
                raise UserError(f"seed file {p} line {n}: an induction seed needs at least one input/output pair")
            visible = row.get("visible", induction_visible(len(inputs)))
            if isinstance(visible, bool) or not isinstance(visible, int) or not 0 <= visible <= len(inputs):
                raise bad("visible", f"an int in [0, {len(inputs)}] (the number of pairs shown)")
            if row["message"] is None:  # was read as the message "None" (a number is read as its text)
                raise bad("message", "the description shown to the solver")
            why = _unusable_seed(program, outputs, banned, inputs)
            if why is None:
                out.append({"program": program, "inputs": inputs, "outputs": outputs, "message": str(row["message"]),
                            "visible": visible, "imports": list(imports)})
        else:
            why = _unusable_seed(program, [str(row["output"])], banned, [str(row["input"])])
            if why is None:
                out.append({"program": program, "input": str(row["input"]), "output": str(row["output"]),
                            "imports": list(imports)})
        if why is not None:
            skipped[why] += 1
    if skipped:
        log.warning("seed file %s: skipped %d task(s) no answer could solve or build on: %s", p, sum(skipped.values()),
                    ", ".join(f"{n} with {why}" for why, n in sorted(skipped.items())))
    if not out:
        raise UserError(f"seed file {p} has no usable {task} seed (empty, or every task skipped: {dict(skipped)})")
    return out


@dataclass
class TaskBuffers:
    """The three buffers together, with the induction program pool drawn from the other two."""

    buffers: dict

    @classmethod
    def seeded(cls, azr_cfg) -> "TaskBuffers":
        """Buffers seeded at step 0: the seed triplets go into both the deduction and the
        abduction buffer (as in the reference); induction gets its own seed entries."""
        make = lambda task: TaskBuffer(task, cap=azr_cfg.buffer_cap, eviction=azr_cfg.buffer_eviction)  # noqa: E731
        buffers = {task: make(task) for task in TASK_TYPES}
        banned = azr_cfg.banned_words
        triplets = load_seed_file(azr_cfg.seed_file, "deduction", banned) if azr_cfg.seed_file else [identity_triplet()]
        problems = (load_seed_file(azr_cfg.induction_seed_file, "induction", banned) if azr_cfg.induction_seed_file
                    else [identity_induction()])
        for t in triplets:
            buffers["deduction"].add(t, step=0)
            buffers["abduction"].add(t, step=0)
        for pr in problems:
            buffers["induction"].add(pr, step=0)
        return cls(buffers)

    def __getitem__(self, task: str) -> TaskBuffer:
        return self.buffers[task]

    def sizes(self) -> dict:
        return {task: len(buf) for task, buf in self.buffers.items()}

    def sample_induction_programs(self, n: int, rng: np.random.Generator) -> list[dict]:
        """Programs for induction proposers: uniform over the deduction + abduction entries (a
        program in both buffers is twice as likely, as in the reference)."""
        pool = self.buffers["deduction"].entries + self.buffers["abduction"].entries
        if not pool or n <= 0:
            return []
        return [pool[i] for i in rng.choice(len(pool), size=n, replace=True)]

    def to_state(self, *, keys: bool = True) -> dict:
        return {task: buf.to_state(keys=keys) for task, buf in self.buffers.items()}

    @classmethod
    def from_state(cls, state: dict) -> "TaskBuffers":
        return cls({task: TaskBuffer.from_state(s) for task, s in state.items()})
