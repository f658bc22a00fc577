"""Procedural generator of small Python programs and AZR tasks (the nano preset's "human data").

A program is a pipeline of 1..K steps over one variable whose type changes as it flows
(`int` -> `n`, `list` of ints -> `xs`, `str` -> `s`), e.g.

    def f(xs):
        xs = [x + 3 for x in xs]
        n = sum(xs)
        return n

Every step carries its source lines, an English description (the induction `message`) and a
plain Python callable with the same semantics, so the generator knows each program's outputs
without executing program text (execution of program text happens only in `azr_jax.sandbox`;
a test checks the two agree through the sandbox).

Difficulty is tunable (`Difficulty`: number of steps, constant ranges, input sizes) so the
base model solves some held-out tasks but not all. Programs are split by a hash of their
source into a held-out slice (`is_heldout`) used only by the nano benchmark and a training
slice used for pretraining and the self-play seed buffer; no program text is in both (two
texts can still compute the same function: `python -m azr_jax.nano.overlap`).

Plain Python, no JAX.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable

VAR = {"int": "n", "list": "xs", "str": "s"}
WORDS = ["abc", "hello", "banana", "kiwi", "zebra", "moon", "cat", "apple", "tree", "radar", "sky", "dog"]
HELDOUT_BUCKETS = 8  # 1 in 8 program hashes is held out for the benchmark


@dataclass(frozen=True)
class Difficulty:
    """Knobs of the generator. Larger values give longer programs and bigger numbers."""

    min_steps: int = 1
    max_steps: int = 3
    max_const: int = 5  # constants in steps are drawn from 1..max_const
    max_int_input: int = 9  # int inputs are drawn from 0..max_int_input
    max_list_len: int = 4
    max_list_item: int = 9


@dataclass(frozen=True)
class Step:
    in_type: str
    out_type: str
    lines: tuple[str, ...]  # source lines, unindented; reads VAR[in_type], assigns VAR[out_type]
    desc: str
    fn: Callable = field(compare=False, repr=False)


@dataclass(frozen=True)
class Program:
    steps: tuple[Step, ...]

    @property
    def in_type(self) -> str:
        return self.steps[0].in_type

    @property
    def out_type(self) -> str:
        return self.steps[-1].out_type

    @property
    def source(self) -> str:
        body = [f"def f({VAR[self.in_type]}):"]
        for step in self.steps:
            body.extend("    " + line for line in step.lines)
        body.append(f"    return {VAR[self.out_type]}")
        return "\n".join(body)

    @property
    def message(self) -> str:
        kinds = {"int": "an integer", "list": "a list of integers", "str": "a string"}
        parts = ", then ".join(s.desc for s in self.steps)
        return f"Given {kinds[self.in_type]}, {parts}."

    def run(self, value):
        """The program's result on `value`, computed by the steps' Python callables."""
        for step in self.steps:
            value = step.fn(value)
        return value

    def trace(self, value) -> list[str]:
        """`var = repr(value)` after each step: the reasoning shown inside <think>."""
        out = []
        for step in self.steps:
            value = step.fn(value)
            out.append(f"{VAR[step.out_type]} = {value!r}")
        return out


def program_hash(source: str) -> str:
    """Stable identity of a program: sha256 of its source with blank lines/trailing spaces removed."""
    norm = "\n".join(line.rstrip() for line in source.strip().splitlines() if line.strip())
    return hashlib.sha256(norm.encode()).hexdigest()


def is_heldout(source: str) -> bool:
    """True for the slice of program space reserved for the held-out benchmark."""
    return int(program_hash(source)[:8], 16) % HELDOUT_BUCKETS == 0


# ----------------------------------------------------------------------------------------------
# Step library. Each maker takes (rng, difficulty) and returns a Step; makers are grouped by
# input type. Callables mirror the source exactly (same Python operators, same builtins).
# ----------------------------------------------------------------------------------------------


def _k(rng: random.Random, d: Difficulty, lo: int = 1) -> int:
    return rng.randint(lo, max(lo, d.max_const))


def _int_steps(rng, d):
    k = _k(rng, d)
    k2 = _k(rng, d, lo=2)
    return [
        Step("int", "int", (f"n = n + {k}",), f"add {k}", lambda n, k=k: n + k),
        Step("int", "int", (f"n = n - {k}",), f"subtract {k}", lambda n, k=k: n - k),
        Step("int", "int", (f"n = n * {k2}",), f"multiply by {k2}", lambda n, k=k2: n * k),
        Step("int", "int", (f"n = n // {k2}",), f"floor-divide by {k2}", lambda n, k=k2: n // k),
        Step("int", "int", (f"n = n % {k2}",), f"take the remainder modulo {k2}", lambda n, k=k2: n % k),
        Step("int", "int", (f"n = max(n, {k})",), f"take the maximum with {k}", lambda n, k=k: max(n, k)),
        Step("int", "int", (f"n = n * n",), "square it", lambda n: n * n),
        Step("int", "list", (f"xs = list(range(n % {k2 + 3}))",), f"list the numbers below it modulo {k2 + 3}",
             lambda n, k=k2 + 3: list(range(n % k))),
        Step("int", "list", (f"xs = [n] * {k2}",), f"repeat it {k2} times in a list", lambda n, k=k2: [n] * k),
        Step("int", "str", ("s = str(n)",), "convert it to a string", lambda n: str(n)),
    ]


def _list_steps(rng, d):
    k = _k(rng, d)
    k2 = _k(rng, d, lo=2)
    a = rng.randint(1, 2)
    return [
        Step("list", "list", (f"xs = [x + {k} for x in xs]",), f"add {k} to each element",
             lambda xs, k=k: [x + k for x in xs]),
        Step("list", "list", (f"xs = [x * {k2} for x in xs]",), f"multiply each element by {k2}",
             lambda xs, k=k2: [x * k for x in xs]),
        Step("list", "list", (f"xs = [x for x in xs if x % {k2} == 0]",), f"keep the multiples of {k2}",
             lambda xs, k=k2: [x for x in xs if x % k == 0]),
        Step("list", "list", (f"xs = [x for x in xs if x > {k}]",), f"keep the elements greater than {k}",
             lambda xs, k=k: [x for x in xs if x > k]),
        Step("list", "list", ("xs = sorted(xs)",), "sort it", lambda xs: sorted(xs)),
        Step("list", "list", ("xs = xs[::-1]",), "reverse it", lambda xs: xs[::-1]),
        Step("list", "list", (f"xs = xs[{a}:]",), f"drop the first {a} elements", lambda xs, a=a: xs[a:]),
        Step("list", "list", (f"xs = xs + [{k}]",), f"append {k}", lambda xs, k=k: xs + [k]),
        Step("list", "int", ("n = sum(xs)",), "take the sum", lambda xs: sum(xs)),
        Step("list", "int", ("n = len(xs)",), "take the length", lambda xs: len(xs)),
        Step("list", "int", ("n = max(xs + [0])",), "take the maximum (at least 0)", lambda xs: max(xs + [0])),
        Step("list", "int", (f"n = xs.count({k})",), f"count the elements equal to {k}",
             lambda xs, k=k: xs.count(k)),
        Step("list", "int", ("n = 0", "for x in xs:", f"    if x > {k}:", "        n = n + x"),
             f"sum the elements greater than {k} with a loop",
             lambda xs, k=k: sum(x for x in xs if x > k)),
        Step("list", "str", ("s = ''.join(str(x) for x in xs)",), "join the elements into a string",
             lambda xs: "".join(str(x) for x in xs)),
    ]


def _str_steps(rng, d):
    k = _k(rng, d)
    k2 = _k(rng, d, lo=2)
    c1, c2 = rng.sample("abcdeilmnorst", 2)
    word = rng.choice(["x", "ab", "yo", "zz"])
    return [
        Step("str", "str", ("s = s.upper()",), "make it upper case", lambda s: s.upper()),
        Step("str", "str", ("s = s[::-1]",), "reverse it", lambda s: s[::-1]),
        Step("str", "str", (f"s = s.replace('{c1}', '{c2}')",), f"replace '{c1}' with '{c2}'",
             lambda s, a=c1, b=c2: s.replace(a, b)),
        Step("str", "str", (f"s = s + '{word}'",), f"append '{word}'", lambda s, w=word: s + w),
        Step("str", "str", (f"s = s[{min(k, 3)}:]",), f"drop the first {min(k, 3)} characters",
             lambda s, k=min(k, 3): s[k:]),
        Step("str", "str", (f"s = s[:{k2}]",), f"keep the first {k2} characters", lambda s, k=k2: s[:k]),
        Step("str", "int", ("n = len(s)",), "take the length", lambda s: len(s)),
        Step("str", "int", (f"n = s.count('{c1}')",), f"count the letter '{c1}'", lambda s, a=c1: s.count(a)),
        Step("str", "list", ("xs = [len(w) for w in s.split('a')]",), "split on 'a' and list the piece lengths",
             lambda s: [len(w) for w in s.split("a")]),
        Step("str", "list", (f"xs = [ord(c) % {k2 + 3} for c in s]",), f"list each character code modulo {k2 + 3}",
             lambda s, k=k2 + 3: [ord(c) % k for c in s]),
    ]


_MAKERS = {"int": _int_steps, "list": _list_steps, "str": _str_steps}
_MAX_REPR = 60  # keep values short so answers stay a few tokens (and never hit output truncation)


def random_input(rng: random.Random, type_: str, d: Difficulty):
    if type_ == "int":
        return rng.randint(0, d.max_int_input)
    if type_ == "list":
        return [rng.randint(0, d.max_list_item) for _ in range(rng.randint(1, d.max_list_len))]
    return rng.choice(WORDS)


def _value_ok(value) -> bool:
    return len(repr(value)) <= _MAX_REPR


def random_program(rng: random.Random, d: Difficulty) -> Program:
    """A well-typed pipeline of `min_steps..max_steps` steps (values checked on a few inputs)."""
    while True:
        n_steps = rng.randint(d.min_steps, d.max_steps)
        type_ = rng.choice(["int", "list", "str"])
        steps = []
        for _ in range(n_steps):
            step = rng.choice(_MAKERS[type_](rng, d))
            steps.append(step)
            type_ = step.out_type
        prog = Program(tuple(steps))
        probes = [random_input(rng, prog.in_type, d) for _ in range(4)]
        if all(_value_ok(prog.run(p)) for p in probes) and _not_constant(prog, probes):
            return prog


def _not_constant(prog: Program, probes: list) -> bool:
    # A function that ignores its input makes a poor task (abduction/induction are trivial).
    return len({repr(prog.run(p)) for p in probes}) > 1 or len({repr(p) for p in probes}) == 1


# ----------------------------------------------------------------------------------------------
# Tasks in the DESIGN §3.3 record schema
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedTask:
    """One program with an I/O pair (deduction/abduction) and 10 I/O pairs (induction)."""

    program: Program
    input_value: object
    induction_inputs: tuple

    @property
    def source(self) -> str:
        return self.program.source

    def io_record(self) -> dict:
        """Deduction/abduction task record: input is the argument list as Python source."""
        out = self.program.run(self.input_value)
        return {"program": self.source, "input": repr(self.input_value), "output": repr(out), "imports": []}

    def induction_record(self, visible: int = 5) -> dict:
        outs = [repr(self.program.run(v)) for v in self.induction_inputs]
        return {
            "program": self.source,
            "inputs": [repr(v) for v in self.induction_inputs],
            "outputs": outs,
            "message": self.program.message,
            "visible": visible,
        }


def make_task(rng: random.Random, d: Difficulty, *, heldout: bool, num_inputs: int = 10) -> GeneratedTask:
    """A task whose program lies in the held-out slice iff `heldout`."""
    while True:
        prog = random_program(rng, d)
        if is_heldout(prog.source) != heldout:
            continue
        x = random_input(rng, prog.in_type, d)
        ins, seen = [], set()
        for _ in range(num_inputs * 20):  # distinct inputs, preferring diverse outputs
            v = random_input(rng, prog.in_type, d)
            if repr(v) not in seen and _value_ok(prog.run(v)):
                seen.add(repr(v))
                ins.append(v)
            if len(ins) == num_inputs:
                break
        outs = {repr(prog.run(v)) for v in ins}
        if len(ins) == num_inputs and len(outs) >= 2 and _value_ok(prog.run(x)):
            return GeneratedTask(prog, x, tuple(ins))


def generate_tasks(seed: int, count: int, d: Difficulty = Difficulty(), *, heldout: bool = False,
                   num_inputs: int = 10) -> list[GeneratedTask]:
    """`count` tasks from one seed; the same (seed, count, d, heldout) always gives the same list."""
    rng = random.Random(seed)
    return [make_task(rng, d, heldout=heldout, num_inputs=num_inputs) for _ in range(count)]
