"""Prompt rendering for the six (role, task) pairs and user-replaceable templates."""

import pytest

from azr_jax.azr.prompts import Prompts, fill
from azr_jax.config import AZRSection
from azr_jax.errors import UserError

REFS = [
    {"program": "def f(a):\n    return {'k': a}", "input": "'x'", "output": "{'k': 'x'}", "imports": []},
    {"program": "def f(n):\n    return n * 2", "input": "3", "output": "6", "imports": []},
]
INDUCTION = {
    "program": "def f(n):\n    return n + 1", "inputs": ["1", "2", "3", "4"], "outputs": ["2", "3", "4", "5"],
    "message": "Add one.", "visible": 2, "imports": [],
}


@pytest.fixture(scope="module")
def prompts():
    return Prompts.from_config(AZRSection())


def test_outer_template_is_r1(prompts):
    for text in (prompts.propose("deduction", REFS), prompts.solve("abduction", REFS[0]), prompts.solve("induction", INDUCTION)):
        assert text.endswith("\nAssistant: <think>")
        assert "\nUser: ## Task" in text
        assert "<think> </think>" in text and "<answer> </answer>" in text


@pytest.mark.parametrize("task", ["deduction", "abduction"])
def test_io_proposer_shows_references_and_banned_words(prompts, task):
    text = prompts.propose(task, REFS)
    for i, ref in enumerate(REFS):
        block = f"<snippet_{i}>\n```python\n{ref['program']}\n```\n\n```input\n{ref['input']}\n```\n\n```output\n{ref['output']}\n```\n</snippet_{i}>"
        assert block in text
    assert "logging, random, multiprocessing" in text and "os.environ, calendar" in text
    assert "```python```" in text and "```input```" in text


def test_induction_proposer_shows_program_and_plug_line(prompts):
    text = prompts.propose("induction", program=INDUCTION)
    assert "```python\ndef f(n):\n    return n + 1\n```\nf(<|YOUR INPUT WILL BE PLUGGED HERE|>)" in text
    assert "Write 10 different inputs" in text and "```message```" in text


def test_solver_prompts(prompts):
    ded = prompts.solve("deduction", REFS[0])
    assert "```python\ndef f(a):\n    return {'k': a}\n```" in ded and "```input\n'x'\n```" in ded and "```output```" in ded
    abd = prompts.solve("abduction", REFS[0])
    assert "```output\n{'k': 'x'}\n```" in abd and "```input```" in abd
    ind = prompts.solve("induction", INDUCTION)
    # only the visible half is shown, numbered, plus the message; hidden pairs never appear
    assert "```input_1\n1\n```\n```output_1\n2\n```\n```input_2\n2\n```\n```output_2\n3\n```" in ind
    assert "input_3" not in ind and "```message\nAdd one.\n```" in ind
    assert "def f(n)" not in ind


def test_fill_never_rescans_inserted_text():
    assert fill("A {{x}} B", {"x": "{{x}} {y}"}) == "A {{x}} {y} B"


def test_prompt_dir_replaces_one_template(tmp_path):
    (tmp_path / "solve_deduction.txt").write_text("Predict f({{input}}) for:\n{{program}}\n")
    prompts = Prompts.from_config(AZRSection(prompt_dir=str(tmp_path)))
    text = prompts.solve("deduction", REFS[1])
    assert "User: Predict f(3) for:\ndef f(n):\n    return n * 2\nAssistant: <think>" in text
    assert "<snippet_0>" in prompts.propose("deduction", REFS)  # the others stay packaged


def test_bad_templates_are_user_errors(tmp_path):
    (tmp_path / "solve_abduction.txt").write_text("Only {{program}} here\n")
    with pytest.raises(UserError, match="missing placeholder.*output"):
        Prompts.from_config(AZRSection(prompt_dir=str(tmp_path)))
    (tmp_path / "solve_abduction.txt").write_text("{{program}} {{output}} {{answer}}\n")
    with pytest.raises(UserError, match="unknown placeholder.*answer"):
        Prompts.from_config(AZRSection(prompt_dir=str(tmp_path)))
    with pytest.raises(UserError, match="not a directory"):
        Prompts.from_config(AZRSection(prompt_dir=str(tmp_path / "nope")))


def test_fill_never_rescans_text_inserted_for_another_placeholder():
    """A program that contains `{{input}}` is shown as written, not filled with the input."""
    assert fill("{{a}} {{b}}", {"a": "{{b}}", "b": "B"}) == "{{b}} B"
    problem = {"program": "def f(s):\n    return s.replace('{{input}}', '')", "input": "'x'", "output": "'x'"}
    assert "return s.replace('{{input}}', '')" in Prompts.from_config(AZRSection()).solve("deduction", problem)


def test_proposer_prompts_follow_the_configured_inputs_and_banned_words():
    """azr.num_inputs sets the induction proposer's count; a repeated banned word is listed once;
    snippets are separated by one newline."""
    prompts = Prompts.from_config(AZRSection(num_inputs=6, banned_words=["time", "random", "time"]))
    assert "Write 6 different inputs" in prompts.propose("induction", program=INDUCTION)
    text = prompts.propose("deduction", REFS)
    assert "time, random" in text and "time, random, time" not in text
    assert "</snippet_0>\n<snippet_1>" in text


def test_stored_visible_count_decides_the_shown_pairs(prompts):
    """An induction task's stored `visible` wins over the default half."""
    text = prompts.solve("induction", {**INDUCTION, "visible": 1})
    assert "```input_1\n1\n```" in text and "input_2" not in text


def test_bad_task_requests_are_refused(prompts):
    """Unknown task types, and an induction proposer prompt without a program, are ValueErrors."""
    with pytest.raises(ValueError, match="program entry"):
        prompts.propose("induction")
    with pytest.raises(ValueError, match="unknown task type"):
        prompts.propose("error", REFS)
    with pytest.raises(ValueError, match="unknown task type"):
        prompts.solve("error", REFS[0])


def test_only_files_in_prompt_dir_replace_templates(tmp_path):
    """A directory named like a template is not a template: the packaged one stays."""
    (tmp_path / "solve_deduction.txt").mkdir()
    text = Prompts.from_config(AZRSection(prompt_dir=str(tmp_path))).solve("deduction", REFS[1])
    assert "```input\n3\n```" in text
