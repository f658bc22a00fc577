"""Parsing proposals and solver answers into sandbox jobs: which inputs, which program, which
pairs are checked (pure functions; nothing runs)."""

from azr_jax.azr.validation import ParsedProposal, clip_output, parse_proposal, parse_solver_answer
from azr_jax.config import AZRSection

CFG = AZRSection()
INDUCTION_PROBLEM = {"program": "def f(x):\n    return x * 2", "imports": []}


def answer(body):
    return f"<answer>{body}</answer>"


def induction_proposal(inputs, message="Double it."):
    blocks = "".join(f"```input\n{i}\n```\n" for i in inputs)
    return answer(f"{blocks}```message\n{message}\n```")


def test_an_induction_proposal_keeps_its_last_num_inputs_inputs():
    parsed = parse_proposal("induction", induction_proposal(range(11)), INDUCTION_PROBLEM, CFG)
    assert isinstance(parsed, ParsedProposal)
    assert parsed.inputs == [str(i) for i in range(1, 11)]  # 11 blocks: the first is dropped
    assert parse_proposal("induction", induction_proposal(range(9)), INDUCTION_PROBLEM, CFG) == "too_few_inputs"


def test_one_unparsable_induction_input_makes_the_proposal_an_input_syntax_error():
    inputs = [str(i) for i in range(9)] + ["1)"]
    assert parse_proposal("induction", induction_proposal(inputs), INDUCTION_PROBLEM, CFG) == "input_syntax_error"


def test_a_proposal_with_two_code_blocks_uses_the_configured_one():
    body = ("```python\ndef f(a):\n    return a + 1\n```\n```python\ndef f(a):\n    return a - 1\n```\n"
            "```input\n3\n```")
    first = parse_proposal("deduction", answer(body), None, CFG)
    last = parse_proposal("deduction", answer(body), None, AZRSection(code_location="last"))
    assert "a + 1" in first.program and "a - 1" not in first.program
    assert "a - 1" in last.program and "a + 1" not in last.program


def _solver_job(visible=None, n=4):
    problem = {"program": "def f(x):\n    return x * 2", "inputs": [str(i) for i in range(n)],
               "outputs": [str(2 * i) for i in range(n)], "message": "m", "imports": []}
    if visible is not None:
        problem["visible"] = visible
    got = parse_solver_answer("induction", problem, answer("```python\ndef f(x):\n    return x + x\n```"), CFG)
    assert got.found and got.check[0] == "job"
    return got.check[1]


def test_an_induction_answer_is_checked_on_the_hidden_pairs():
    job = _solver_job()  # default: the first half shown, the rest checked
    assert (job.calls, job.expected) == (["2", "3"], ["4", "6"])
    job = _solver_job(visible=1)
    assert (job.calls, job.expected) == (["1", "2", "3"], ["2", "4", "6"])
    # nothing shown: all pairs are hidden (0 is a count, not "unset")
    job = _solver_job(visible=0)
    assert (job.calls, job.expected) == (["0", "1", "2", "3"], ["0", "2", "4", "6"])
    # every pair shown leaves none hidden: all of them are checked rather than none
    job = _solver_job(visible=4)
    assert (job.calls, job.expected) == (["0", "1", "2", "3"], ["0", "2", "4", "6"])


def test_gold_outputs_are_clipped_only_when_longer_than_the_limit():
    assert clip_output("x" * 400, 400) == "x" * 400
    assert clip_output("ab" * 200 + "c", 400) == "ab" * 100 + "..." + "b" + "ab" * 99 + "c"
    assert clip_output("x" * 1000, 0) == "x" * 1000


def _result(**kw):
    from azr_jax.sandbox import JobResult

    base = dict(outputs=["1"], errors=[None], deterministic=True, matches=[True], timed_out=False)
    return JobResult(**{**base, **kw})


def test_a_run_without_a_value_for_every_call_gives_no_task():
    from azr_jax.azr.validation import failure_reason

    assert failure_reason(_result()) is None
    # a call that left no value is no gold output, even without an error to say why
    assert failure_reason(_result(outputs=["1", None], errors=[None, None])) == "runtime_error"
    assert failure_reason(_result(outputs=["1", None], errors=[None, "ValueError: x"])) == "runtime_error"
    assert failure_reason(_result(deterministic=False)) == "nondeterministic"


def test_a_check_is_right_only_when_it_ran_cleanly_and_every_pair_matched():
    from azr_jax.azr.validation import job_accuracy

    assert job_accuracy(_result(matches=[True, True], outputs=["1", "2"], errors=[None, None])) == 1.0
    assert job_accuracy(_result(matches=[True, False], outputs=["1", "2"], errors=[None, None])) == 0.0
    assert job_accuracy(_result(error="SyntaxError: x")) == 0.0  # a job-level failure, whatever matched
    assert job_accuracy(_result(timed_out=True)) == 0.0
    assert job_accuracy(_result(matches=[])) == 0.0  # nothing checked is not right
    assert job_accuracy(_result(matches=None)) == 0.0


def test_an_empty_induction_code_block_is_no_answer():
    problem = {"program": "def f(x):\n    return x", "inputs": ["1", "2"], "outputs": ["1", "2"], "message": "m", "imports": []}
    got = parse_solver_answer("induction", problem, answer("```python\n \n```"), CFG)
    assert (got.found, got.check, got.reason) == (False, None, "no_code_block")


def test_an_induction_proposal_without_stored_imports_takes_the_programs_own():
    problem = {"program": "import math\n\ndef f(x):\n    return math.floor(x)"}
    parsed = parse_proposal("induction", induction_proposal(range(10)), problem, CFG)
    assert parsed.imports == ["import math"]
    stored = parse_proposal("induction", induction_proposal(range(10)), {**problem, "imports": ["import os"]}, CFG)
    assert stored.imports == ["import os"]


def test_an_empty_input_block_is_a_call_without_arguments():
    body = "```python\ndef f():\n    return 1\n```\n```input\n\n```"
    parsed = parse_proposal("deduction", answer(body), None, CFG)
    assert isinstance(parsed, ParsedProposal) and parsed.inputs == [""]
    assert parse_proposal("deduction", answer("```python\ndef f():\n    return 1\n```"), None, CFG) == "no_input"


def test_a_stored_import_line_is_dropped_only_when_all_its_statements_already_run():
    from azr_jax.azr.validation import with_imports

    program = "import math\n\ndef f(x):\n    return x"
    assert with_imports(program, ["import math"]) == program
    assert with_imports(program, ["import math; import os"]) == "import math; import os\n" + program


def test_an_empty_deduction_answer_is_no_answer():
    problem = {"program": "def f(x):\n    return x", "input": "1", "output": "1", "imports": []}
    got = parse_solver_answer("deduction", problem, answer("```output\n\n```"), CFG)
    assert (got.found, got.check, got.reason) == (False, None, "empty_answer")
    got = parse_solver_answer("deduction", problem, answer("```output\n1\n```"), CFG)
    assert (got.found, got.check) == (True, ("compare", "1", "1"))


def test_a_proposal_with_two_input_blocks_runs_the_first():
    body = "```python\ndef f(a):\n    return a\n```\n```input\n1\n```\n```input\n2\n```"
    assert parse_proposal("deduction", answer(body), None, CFG).inputs == ["1"]


def test_an_abduction_answer_runs_the_program_with_its_stored_imports():
    problem = {"program": "def f(x):\n    return math.floor(x)", "input": "1.5", "output": "1", "imports": ["import math"]}
    got = parse_solver_answer("abduction", problem, answer("```input\n1.2\n```"), CFG)
    job = got.check[1]
    assert job.program == "import math\ndef f(x):\n    return math.floor(x)"
    assert (job.calls, job.expected, job.args_mode) == (["1.2"], ["1"], "literal")


def test_a_valid_induction_proposal_keeps_its_message_inputs_and_imports():
    from azr_jax.azr.validation import judge_proposal

    p = ParsedProposal(task="induction", program="def f(x):\n    return x", imports=["import os"],
                       inputs=["1", "2", "3", "4"], message="Echo it.")
    reason, task = judge_proposal(p, _result(outputs=["1", "2", "3", "4"], errors=[None] * 4, matches=None), CFG)
    assert reason is None
    assert task == {"program": p.program, "inputs": ["1", "2", "3", "4"], "outputs": ["1", "2", "3", "4"],
                    "message": "Echo it.", "visible": 2, "imports": ["import os"]}


def test_a_proposal_runs_its_inputs_as_expressions_twice_without_a_gold():
    from azr_jax.azr.validation import proposal_job

    p = ParsedProposal(task="deduction", program="def f(x):\n    return x", imports=["import os"], inputs=["sorted([2, 1])"])
    job = proposal_job(p)
    assert (job.program, job.calls, job.args_mode, job.expected, job.repeats) == (
        "import os\ndef f(x):\n    return x", ["sorted([2, 1])"], "expression", None, 2)


def test_only_the_sandboxs_own_unrepresentable_marker_names_that_reason():
    from azr_jax.azr.validation import failure_reason

    assert failure_reason(_result(outputs=[None], errors=["unrepresentable: a generator"])) == "unrepresentable"
    assert failure_reason(_result(outputs=[None], errors=["ValueError: unrepresentable input"])) == "runtime_error"


def test_an_empty_abduction_answer_is_no_answer_but_code_checked_on_an_uncallable_input_was_given():
    triplet = {"program": "def f(x):\n    return x", "input": "1", "output": "1", "imports": []}
    got = parse_solver_answer("abduction", triplet, answer("```input\n\n```"), CFG)
    assert (got.found, got.check, got.reason) == (False, None, "empty_answer")
    # the code was given (found: a wrong formatted answer, -0.5 rather than -1) though a hidden input cannot be called
    problem = {"program": "def f(x):\n    return x", "inputs": ["1", "2)"], "outputs": ["1", "2"], "message": "m",
               "visible": 1, "imports": []}
    got = parse_solver_answer("induction", problem, answer("```python\ndef f(x):\n    return x\n```"), CFG)
    assert (got.found, got.check, got.reason) == (True, None, "input_syntax_error")
