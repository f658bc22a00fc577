"""Turning completions into sandbox jobs and sandbox results into verdicts (AZR_SPEC §2).

Proposals: parse -> AST policy -> one job per proposal (two runs in one process for
determinism) -> valid iff every call returned a plain value, the same both times; the gold
output is the first run's canonical `repr`. Solver answers: deduction answers are compared to
the gold as literal values, abduction answers are passed to `f` as literal arguments, induction
code is run on the hidden inputs; the sandbox compares, untrusted code never sees the gold.

Nothing here executes model text; `azr_jax.sandbox` does, in isolated processes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from azr_jax.azr import parsing
from azr_jax.azr.checks import check_program
from azr_jax.azr.prompts import induction_visible
from azr_jax.sandbox import Job, JobResult


@dataclass(frozen=True)
class ParsedProposal:
    """A proposal that passed the host-side checks and is ready to run."""

    task: str
    program: str  # entry function renamed to `f`
    imports: list
    inputs: list  # one input for deduction/abduction, `num_inputs` for induction
    message: str | None = None  # induction only


def parse_proposal(task: str, response: str, problem: dict | None, azr_cfg) -> ParsedProposal | str:
    """Parse a proposer completion; a reason code when it cannot become a task."""
    answer = parsing.extract_answer(response)
    if not answer:
        return "no_answer"
    if task == "induction":
        program, imports = problem["program"], list(problem.get("imports") or [])
        inputs = parsing.induction_inputs(answer)
        if len(inputs) < azr_cfg.num_inputs:
            return "too_few_inputs"
        inputs = inputs[-azr_cfg.num_inputs:]
        message = parsing.induction_message(answer)
        if not message:
            return "no_message"
        tree = parsing.parse_program(program)
        if tree is None:
            return "syntax_error"
        if not imports:
            imports = parsing.import_lines(tree)
    else:
        codes = parsing.code_blocks(answer)
        if not codes:
            return "no_code_block"
        code = codes[0] if azr_cfg.code_location == "first" else codes[-1]
        given = parsing.labelled_value(answer, "input", last=False, whole_answer_fallback=False)
        if not given and not parsing.blocks_tagged(answer, ("input",)):
            return "no_input"
        prepared = parsing.prepare_program(
            code, f_replace_location=azr_cfg.f_replace_location, reject_multiple_functions=azr_cfg.reject_multiple_functions,
            clean=azr_cfg.clean_programs,
        )
        if isinstance(prepared, str):
            return prepared
        program, imports, inputs, message = prepared.source, prepared.imports, [given], None
        tree = parsing.parse_program(program)
    calls = [parsing.parse_call_args(i) for i in inputs]
    if any(c is None for c in calls):
        return "input_syntax_error"
    violation = check_program(tree, calls, azr_cfg.banned_words)
    if violation is not None:
        return violation.code
    return ParsedProposal(task=task, program=program, imports=imports, inputs=inputs, message=message)


def with_imports(program: str, imports: list) -> str:
    """Prepend the stored import lines the program does not itself run at module level (a
    program usually carries them already). Compared as statements, not as text: `import math`
    in a comment, inside another function, or as part of `import mathx` does not count."""
    if not imports:
        return program
    tree = parsing.parse_program(program)
    if tree is None:  # it fails in the sandbox as it is; with or without its imports
        return program
    have = {ast.dump(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))}

    def present(line: str) -> bool:
        parsed = parsing.parse_program(line)
        return parsed is not None and bool(parsed.body) and all(ast.dump(node) in have for node in parsed.body)

    missing = [line for line in imports if not present(line)]
    return "\n".join(missing + [program]) if missing else program


def proposal_job(p: ParsedProposal) -> Job:
    # Each input runs on the program's fresh module state (docs/sandbox.md), so an induction
    # gold output does not depend on the inputs before it, nor on the order of the inputs.
    return Job(program=with_imports(p.program, p.imports), calls=list(p.inputs), args_mode="expression", expected=None, repeats=2)


def clip_output(text: str, max_chars: int) -> str:
    """The reference's gold truncation (first half + '...' + last half) when `max_chars` > 0."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + "..." + text[-half:]


def failure_reason(result: JobResult) -> str | None:
    """Why a validation run does not give a task (None when it does)."""
    if result.timed_out:
        return "timeout"
    if result.sandbox_fault:
        return "sandbox_error"  # the sandbox broke, not the program: the response was not judged
    if not result.deterministic:
        return "nondeterministic"
    for err in [result.error] + list(result.errors or []):
        if err:
            return "unrepresentable" if str(err).startswith("unrepresentable") else "runtime_error"
    if any(o is None for o in result.outputs):
        return "runtime_error"
    return None


def judge_proposal(p: ParsedProposal, result: JobResult, azr_cfg) -> tuple[str | None, dict | None]:
    """(reason, task record): the task is None exactly when reason is not."""
    reason = failure_reason(result)
    if reason is not None:
        return reason, None
    outputs = [clip_output(o, azr_cfg.max_output_chars) for o in result.outputs]
    if p.task == "induction":
        return None, {
            "program": p.program, "inputs": list(p.inputs), "outputs": outputs, "message": p.message,
            "visible": induction_visible(len(p.inputs)), "imports": list(p.imports),
        }
    return None, {"program": p.program, "input": p.inputs[0], "output": outputs[0], "imports": list(p.imports)}


# ------------------------------------------------------------------------------------------------
# Solver answers
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolverAnswer:
    """What a solver completion gave, before checking it against the gold.

    `found`: an answer could be extracted (the schema's `valid` for solve records).
    `check`: what the sandbox must decide: ("compare", gold, answer) or ("job", Job) — None when
    the answer is wrong without running anything (then `reason` says why).
    """

    found: bool
    check: tuple | None
    reason: str | None = None


def parse_solver_answer(task: str, problem: dict, response: str, azr_cfg) -> SolverAnswer:
    answer = parsing.extract_answer(response)
    if not answer:
        return SolverAnswer(found=False, check=None, reason="no_answer")
    if task == "deduction":
        given = parsing.labelled_value(answer, "output")
        return SolverAnswer(found=bool(given), check=("compare", problem["output"], given) if given else None,
                            reason=None if given else "empty_answer")
    if task == "abduction":
        given = parsing.labelled_value(answer, "input")
        if not given:
            return SolverAnswer(found=False, check=None, reason="empty_answer")
        if parsing.parse_call_args(given) is None:
            return SolverAnswer(found=True, check=None, reason="input_syntax_error")
        job = Job(program=with_imports(problem["program"], problem.get("imports") or []), calls=[given],
                  args_mode="literal", expected=[problem["output"]], repeats=1, calls_per_input=1)
        return SolverAnswer(found=True, check=("job", job))
    codes = parsing.code_blocks(answer) or parsing.other_blocks(answer)
    if not codes or not codes[-1].strip():
        return SolverAnswer(found=False, check=None, reason="no_code_block")
    code = codes[-1]
    tree = parsing.parse_program(code)
    if tree is None:
        return SolverAnswer(found=True, check=None, reason="syntax_error")
    inputs, outputs = problem["inputs"], problem["outputs"]
    visible = problem.get("visible", induction_visible(len(inputs)))
    hidden_in, hidden_out = (inputs[visible:], outputs[visible:]) if visible < len(inputs) else (inputs, outputs)
    calls = [parsing.parse_call_args(i) for i in hidden_in]
    if any(c is None for c in calls):
        return SolverAnswer(found=True, check=None, reason="input_syntax_error")
    violation = check_program(tree, calls, azr_cfg.banned_words)
    if violation is not None:
        return SolverAnswer(found=True, check=None, reason=violation.code)
    job = Job(program=with_imports(code, problem.get("imports") or []), calls=list(hidden_in),
              args_mode="expression", expected=list(hidden_out), repeats=1, calls_per_input=1)
    return SolverAnswer(found=True, check=("job", job))


def job_accuracy(result: JobResult) -> float:
    """1.0 iff every call ran and matched its expected output."""
    if result.timed_out or result.error or not result.matches:
        return 0.0
    return 1.0 if all(result.matches) else 0.0
