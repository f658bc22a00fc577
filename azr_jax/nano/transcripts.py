"""AZR-format transcripts (prompt + response) of generated tasks: the nano pretraining documents.

Prompts come from the host's renderer (`azr_jax.azr.prompts.Prompts`, with the nano templates
from `azr.prompt_dir`), so the base model sees exactly the text self-play will show it. The
responses are what a careful demonstrator would write: a short reasoning inside <think> (the
step-by-step trace of values for deduction/abduction, the plan for proposals) and the answer
in the fenced blocks the parser reads. Responses start right after the prompt's `<think>`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from azr_jax.azr.prompts import Prompts
from azr_jax.nano.corpus import GeneratedTask

ROLES_TASKS = tuple((role, task) for task in ("deduction", "abduction", "induction") for role in ("propose", "solve"))


@dataclass(frozen=True)
class Transcript:
    role: str
    task: str
    prompt: str
    response: str


def _answer(blocks: list[tuple[str, str]]) -> str:
    body = "\n".join(f"```{tag}\n{text}\n```" for tag, text in blocks)
    return f"<answer>\n{body}\n</answer>"


def solve_response(task: str, gen: GeneratedTask) -> str:
    """The demonstrator's solver completion for `gen` as a `task` problem."""
    prog = gen.program
    if task == "deduction":
        trace = " ; ".join(prog.trace(gen.input_value))
        return f" {trace} </think> " + _answer([("output", repr(prog.run(gen.input_value)))])
    if task == "abduction":
        trace = " ; ".join(prog.trace(gen.input_value))
        return f" try {gen.input_value!r} : {trace} </think> " + _answer([("input", repr(gen.input_value))])
    if task == "induction":
        return f" {prog.message} </think> " + _answer([("python", gen.source)])
    raise ValueError(f"unknown task type {task!r}")


def propose_response(task: str, gen: GeneratedTask) -> str:
    """The demonstrator's proposer completion: a plan, then the program and input(s)."""
    prog = gen.program
    if task in ("deduction", "abduction"):
        return f" Plan: {prog.message} </think> " + _answer([("python", gen.source), ("input", repr(gen.input_value))])
    if task == "induction":
        blocks = [("input", repr(v)) for v in gen.induction_inputs] + [("message", prog.message)]
        return " I pick varied inputs that reveal the rule. </think> " + _answer(blocks)
    raise ValueError(f"unknown task type {task!r}")


def solve_problem(task: str, gen: GeneratedTask, visible: int) -> dict:
    return gen.induction_record(visible) if task == "induction" else gen.io_record()


def transcripts_for(gen: GeneratedTask, prompts: Prompts, references: list[dict], visible: int,
                    roles: tuple[str, ...] = ("propose", "solve")) -> list[Transcript]:
    """The (role, task) transcripts of one generated task, for the given roles."""
    out = []
    for role, task in ROLES_TASKS:
        if role not in roles:
            continue
        if role == "solve":
            prompt = prompts.solve(task, solve_problem(task, gen, visible))
            response = solve_response(task, gen)
        elif task == "induction":
            prompt = prompts.propose(task, program={"program": gen.source})
            response = propose_response(task, gen)
        else:
            prompt = prompts.propose(task, references=references)
            response = propose_response(task, gen)
        out.append(Transcript(role, task, prompt, response))
    return out


def build_transcripts(tasks: list[GeneratedTask], prompts: Prompts, *, n_references: int, seed: int,
                      propose_every: int = 1) -> list[Transcript]:
    """Solver transcripts of every task and proposer transcripts of every `propose_every`-th task
    (proposer prompts are the long ones); proposer references are other tasks of the corpus."""
    rng = random.Random(seed)
    visible = prompts.num_inputs // 2
    pool = [t.io_record() for t in tasks]
    out = []
    for i, gen in enumerate(tasks):
        others = rng.sample(range(len(tasks)), min(n_references + 1, len(tasks)))
        refs = [pool[j] for j in others if j != i][:n_references]
        roles = ("propose", "solve") if i % propose_every == 0 else ("solve",)
        out.extend(transcripts_for(gen, prompts, refs, visible, roles))
    return out
