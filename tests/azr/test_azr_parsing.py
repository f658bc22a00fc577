"""Answer extraction, fenced blocks and entry-function renaming (host-side text/AST work only)."""

import pytest

from azr_jax.azr import parsing


@pytest.mark.parametrize(
    "response, ok",
    [
        (" plan </think> <answer>x</answer>", True),
        (" plan </think>\n\n<answer>x</answer>\ntrailing text is allowed", True),
        (" plan </think>\nHere it is:\n<answer>x</answer>", False),  # text between the tags
        (" plan </think> <answer>x", False),  # unclosed answer
        (" plan <answer>x</answer>", False),  # no </think>
        ("<think> doubled opening tag </think><answer>x</answer>", True),
    ],
)
def test_format_check_is_anchored_r1_regex(response, ok):
    assert parsing.format_ok(response) is ok


def test_format_check_agrees_with_the_r1_regex_on_random_texts():
    # format_ok avoids the regex (quadratic on many unclosed `</think><answer>` pairs) but must
    # accept exactly the texts it accepts.
    import random
    import re

    r1 = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x", "\t", "<", "/", "answer>", "\u2003"]
    rng = random.Random(0)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        assert parsing.format_ok(text) is (r1.match("<think>" + text) is not None), repr(text)
    # 24 000 unclosed pairs: 37 s for the old regex here (0.46 s at 3 000: it grows with the square)
    assert _within(2.0, parsing.format_ok, "</think><answer>" * 24_000 + "</answer>")
    assert not _within(2.0, parsing.format_ok, "</think><answer>" * 24_000)


def _within(seconds: float, fn, *args):
    """fn(*args), failing the test if it takes longer than `seconds`: a bound on how the work
    grows (the inputs are sized so that a quadratic scan takes ten times as long or more), with
    a margin of hundreds over the linear code's milliseconds, not a timing."""
    import time

    start = time.perf_counter()
    out = fn(*args)
    took = time.perf_counter() - start
    assert took < seconds, f"{took:.1f} s: the scan is no longer linear in the text"
    return out


def test_extract_answer_takes_last_answer_and_runs_to_end_when_unclosed():
    assert parsing.extract_answer("</think><answer>draft</answer> again <answer> final </answer>") == "final"
    assert parsing.extract_answer("</think><answer>```input\n1\n```\n") == "```input\n1\n```"
    assert parsing.extract_answer("no tags at all") is None
    assert parsing.extract_answer("<answer></answer>") == ""


def test_fenced_blocks_tags_and_order():
    text = "```input\n1, 2\n```\nthen\n```python\ndef f(a, b):\n    return a\n```\n```\nx = 1\n```"
    assert parsing.fenced_blocks(text) == [("input", "1, 2"), ("python", "def f(a, b):\n    return a"), ("", "x = 1")]
    # input/output/message blocks are never taken as code, wherever they are
    assert parsing.code_blocks(text) == ["def f(a, b):\n    return a", "x = 1"]


def test_labelled_value_fallback_chain():
    assert parsing.labelled_value("```output\n1\n```\nNo wait:\n```output\n2\n```", "output") == "2"
    assert parsing.labelled_value("```output\n1\n```\n```output\n2\n```", "output", last=False) == "1"
    assert parsing.labelled_value("# Input: [1, 2], 3\n", "input") == "[1, 2], 3"
    assert parsing.labelled_value("<output>(3, 2)</output>", "output") == "(3, 2)"
    assert parsing.labelled_value("(3, 2)", "output") == "(3, 2)"  # whole answer as the last resort
    assert parsing.labelled_value("nothing here", "message", whole_answer_fallback=False) == ""


def test_solver_answers_also_accept_a_call_and_a_sentence_as_the_reference_does():
    value = parsing.labelled_value
    assert value("So output([1, (2, 3)]) it is", "output") == "[1, (2, 3)]"  # nested brackets kept
    assert value('input("a)b", 2)', "input") == '"a)b", 2'  # a parenthesis inside a string
    assert value("The output is 5.", "output") == "5"
    assert value("Hmm. The input is [1, 2]", "input") == "[1, 2]"
    # the order: a call before a tag, a tag before the sentence
    assert value("output(1) <output>2</output>", "output") == "1"
    assert value("<input>3</input> and the input is 4", "input") == "3"
    # proposer fields (no whole-answer fallback) do not take these spellings
    assert value("the message is add one", "message", whole_answer_fallback=False) == ""
    assert value("input(5)", "input", last=False, whole_answer_fallback=False) == ""


def test_extraction_of_adversarial_answers_is_linear(monkeypatch):
    """A lazy regex rescanned the blanks of a padded `# Output:` line or "the output is" sentence
    once per character, and every `output(` of a text was parsed once per `)` after it: seconds
    to minutes on 30 kB. The scan for calls now parses at most `_CALL_PARSE_LIMIT` (256) texts, not
    up to 32 per `output(` (128 000 here)."""
    value = parsing.labelled_value
    padded = "a" + " " * 120_000 + "b"  # the old lazy regex: 1.9 s at 30 000 blanks, 51 s here
    assert _within(2.0, value, "# output: " + padded, "output") == padded
    assert _within(2.0, value, "the output is " + padded + ". ", "output") == padded
    assert value("<output>" * 4_000, "output") == "<output>" * 4_000  # unclosed tags: the whole answer
    parses = []
    monkeypatch.setattr(parsing, "_parses_as_call", lambda text: parses.append(text) or False)
    for answer in ("output(" * 4_000 + ")" * 32, "output(" * 4_000 + "]" + ")" * 32):
        parses.clear()
        assert value(answer, "output") == answer
        assert len(parses) <= 256
    monkeypatch.undo()
    assert value("output(" * 4_000 + ")" * 32, "output") == ""  # the innermost call, as before


def test_an_inline_mention_of_a_fence_does_not_hide_the_real_block():
    """Models echo the prompt's "in a ```output``` block"; the closing backticks of that inline
    span once opened a block tagged " block:" that swallowed the real block's fence."""
    text = "The result goes in an ```output``` block:\n```output\n9\n```"
    assert parsing.fenced_blocks(text) == [("output", "9")]
    code = "Write it as a ```python``` block, then:\n```python\ndef f(x):\n    return x\n```"
    assert parsing.code_blocks(code) == ["def f(x):\n    return x"]
    assert parsing.fenced_blocks("```Python \nx = 1\n```") == [("python", "x = 1")]  # tag case and blanks
    assert parsing.fenced_blocks("```python\r\nx = 1\r\n```") == [("python", "x = 1")]  # CRLF line ends


def test_a_label_block_on_one_line_is_read_as_the_reference_reads_it():
    """```` ```output [5, 6]``` ```` is an output block in the reference's per-tag patterns; it was
    no block here, so a right answer written that way scored 0."""
    assert parsing.labelled_value("```output [5, 6]```", "output") == "[5, 6]"
    assert parsing.labelled_value("<think>x</think> ```Input 2, 3 ```", "input") == "2, 3"
    assert parsing.fenced_blocks("```output 1```\nthen\n```python\ndef f(x):\n    return x\n```") == [
        ("output", "1"), ("python", "def f(x):\n    return x")]  # its closing fence opens nothing
    # Only label blocks: a one-line ```python ...``` is not code, and a bare mention is no block.
    assert parsing.code_blocks("```python def f(x): return x```") == []
    assert parsing.fenced_blocks("put it in an ```output``` block") == []


def test_induction_message_choice():
    """The last message block (a model that revises its message writes the final one last),
    then a one-line `# Message:` comment, then a `<message>` tag; an empty block is no message
    (docs/deviations.md, "induction message")."""
    assert parsing.induction_message("```message\nDraft\n```\n```message\nFinal\n```") == "Final"
    assert parsing.induction_message("<message>from tag</message>\n# Message: from comment\n") == "from comment"
    assert not parsing.induction_message("```message\n\n```")


def assert_renamed(cases: dict[str, str]) -> None:
    """Each source's first function renamed to f gives exactly the text expected (which is
    still a valid program)."""
    for src, renamed in cases.items():
        prog = parsing.prepare_program(src, f_replace_location="not_first", reject_multiple_functions=False)
        assert prog.source == renamed, src
        compile(prog.source, "<renamed>", "exec")


def test_renaming_leaves_a_parameter_or_local_of_the_same_name_alone():
    """Only names that refer to the module-level function are renamed; a parameter, lambda
    argument, comprehension variable or local of the same name is another variable."""
    cases = {
        "def word(word):\n    return word[::-1].upper()": "def f(word):\n    return word[::-1].upper()",
        "def key(p):\n    return sorted(p, key=lambda key: key[1])": "def f(p):\n    return sorted(p, key=lambda key: key[1])",
        "def g(xs):\n    return [g for g in xs] + [g(0) for _ in []]": "def f(xs):\n    return [g for g in xs] + [f(0) for _ in []]",
        "def g(x):\n    g = x\n    return g": "def f(x):\n    g = x\n    return g",
        # a comprehension's first iterable is evaluated outside it, where g is still the function
        "def g(x):\n    return [g for g in g(x - 1)] if x else [0]": "def f(x):\n    return [g for g in f(x - 1)] if x else [0]",
        # while its later iterables and conditions are inside it
        "def g(xs):\n    return [y for x in xs for y in g(x) if g(y) != [0]] if isinstance(xs, list) else [xs]":
            "def f(xs):\n    return [y for x in xs for y in f(x) if f(y) != [0]] if isinstance(xs, list) else [xs]",
        "def g(x):\n    return x\ndef h(xs):\n    return {g(x): g(x) for x in xs}":
            "def f(x):\n    return x\ndef h(xs):\n    return {f(x): f(x) for x in xs}",
        # a scope nested in one that binds g sees that g
        "def g(xs):\n    return [(lambda: g)() for g in xs]": "def f(xs):\n    return [(lambda: g)() for g in xs]",
        "def g(x):\n    return x\ndef h():\n    g = 1\n    class K:\n        y = g\n    return K.y\n":
            "def f(x):\n    return x\ndef h():\n    g = 1\n    class K:\n        y = g\n    return K.y",
        "def g(n):\n    return 1 if n < 1 else n * g(n - 1)": "def f(n):\n    return 1 if n < 1 else n * f(n - 1)",
        # a match pattern's capture names are locals too
        "def g(x):\n    match x:\n        case [g]:\n            return g\n    return 0":
            "def f(x):\n    match x:\n        case [g]:\n            return g\n    return 0",
        "def g(x):\n    match x:\n        case {**g}:\n            return g\n    return 0":
            "def f(x):\n    match x:\n        case {**g}:\n            return g\n    return 0",
    }
    assert_renamed(cases)


def test_renaming_follows_global_declarations():
    """`global g` in any function means the module-level g, so the declaration is renamed with
    the rebinding it governs (else `f = ...` would become a new local and the program would
    change meaning), including inside a function where an enclosing scope shadows g."""
    cases = {
        "def g(x):\n    return x + 1\ndef h():\n    global g\n    g = abs\n":
            "def f(x):\n    return x + 1\ndef h():\n    global f\n    f = abs",
        "def g(x):\n    return x\ndef h():\n    global gg, \\\n        g; g = 2\n":
            "def f(x):\n    return x\ndef h():\n    global gg, \\\n        f; f = 2",
        "def g(x):\n    return x\ndef h(g):\n    def k():\n        global g\n        return g(1)\n    return g + k()\n":
            "def f(x):\n    return x\ndef h(g):\n    def k():\n        global f\n        return f(1)\n    return g + k()",
        # nonlocal names the enclosing function's variable, never the module's
        "def g(x):\n    return x\ndef h():\n    g = 1\n    def k():\n        nonlocal g\n        g += 1\n    k()\n    return g\n":
            "def f(x):\n    return x\ndef h():\n    g = 1\n    def k():\n        nonlocal g\n        g += 1\n    k()\n    return g",
    }
    assert_renamed(cases)


def test_renaming_follows_every_rebinding_of_the_name():
    """A second def, a class, `except ... as`, a match capture or an import that rebinds the
    module's g (at module level, or under `global g`) is renamed with it, so the renamed program
    means what the original did (each pair below was run to check it). An import of the name
    itself keeps what it imports (`as f`); `import g.h` binds a package no `as` can name: refused.
    Inside a function that binds g they are its locals and stay."""
    cases = {
        "def g(x):\n    return x + 1\ndef g(x):\n    return x + 2\nr = g(1)\n":
            "def f(x):\n    return x + 1\ndef f(x):\n    return x + 2\nr = f(1)",
        "def g(x):\n    return x\ntry:\n    raise ValueError(3)\nexcept ValueError as g:\n    r = str(g)\n":
            "def f(x):\n    return x\ntry:\n    raise ValueError(3)\nexcept ValueError as f:\n    r = str(f)",
        "def g(x):\n    return x\nmatch [4, [5]]:\n    case [g, [*_]] | [_, g]:\n        pass\nr = g\n":
            "def f(x):\n    return x\nmatch [4, [5]]:\n    case [f, [*_]] | [_, f]:\n        pass\nr = f",
        "def g(x):\n    return x\nmatch [4, 5]:\n    case [4, *g]:\n        r = g\n    case {**g}:\n        r = g\n    case int() as g:\n        r = g\n":
            "def f(x):\n    return x\nmatch [4, 5]:\n    case [4, *f]:\n        r = f\n    case {**f}:\n        r = f\n    case int() as f:\n        r = f",
        "def g(x):\n    return x\nimport math as g\nr = g.floor(2.5)\n":
            "def f(x):\n    return x\nimport math as f\nr = f.floor(2.5)",
        "def floor(x):\n    return x\nfrom math import (ceil,\n    floor)\nr = floor(2.5)\n":
            "def f(x):\n    return x\nfrom math import (ceil,\n    floor as f)\nr = f(2.5)",
        "def math(x):\n    return x\nimport math\nr = math.floor(2.5)\n":
            "def f(x):\n    return x\nimport math as f\nr = f.floor(2.5)",
        "def math(x):\n    return x\nimport math as math\nr = math.floor(2.5)\n":
            "def f(x):\n    return x\nimport math as f\nr = f.floor(2.5)",
        "def g(x):\n    return x\ndef h():\n    global g\n    class g:\n        v = 7\n":
            "def f(x):\n    return x\ndef h():\n    global f\n    class f:\n        v = 7",
        "def g(x):\n    return x\ndef h():\n    import math as g\n    try:\n        pass\n    except ValueError as g:\n        pass\n    return g\n":
            "def f(x):\n    return x\ndef h():\n    import math as g\n    try:\n        pass\n    except ValueError as g:\n        pass\n    return g",
        # the name found among the tokens, also across a line continuation
        "def \\\n  g(x):\n    return g\n": "def \\\n  f(x):\n    return f",
    }
    assert_renamed(cases)
    refused = "def os(x):\n    return x\nimport os.path\nr = os.path.join('a', 'b')\n"
    assert parsing.prepare_program(refused, f_replace_location="not_first", reject_multiple_functions=False) == "syntax_error"


def test_renaming_leaves_class_attributes_of_the_same_name_alone():
    """A class body that binds the name makes it an attribute (`self.g`), which keeps its name;
    its methods still see the module's function, and a class body that does not bind it too.
    Each expected text is what Python itself resolves (class bodies do not enclose nested scopes)."""
    cases = {
        "def g(x):\n    return x\nclass C:\n    g = 5\n    def m(self):\n        return self.g + g(1)\n":
            "def f(x):\n    return x\nclass C:\n    g = 5\n    def m(self):\n        return self.g + f(1)",
        "def g(x):\n    return x\nclass C:\n    def g(self):\n        return 1\n    h = g\n":
            "def f(x):\n    return x\nclass C:\n    def g(self):\n        return 1\n    h = g",
        "def g(x):\n    return x\nclass C:\n    h = g(1)\n":
            "def f(x):\n    return x\nclass C:\n    h = f(1)",
        # A method's decorators, defaults and annotations, a lambda's defaults and a
        # comprehension's first iterable are evaluated in the class body, so they read C.g; the
        # bodies of methods, lambdas, comprehensions and nested classes do not see it.
        "def g(x):\n    return x\nclass C:\n    g = 5\n    @staticmethod\n    def m(a: g = g) -> g:\n        return g(a)\n":
            "def f(x):\n    return x\nclass C:\n    g = 5\n    @staticmethod\n    def m(a: g = g) -> g:\n        return f(a)",
        "def g(x):\n    return x\nclass C:\n    g = 5\n    xs = [g(i) for i in [g]]\n    h = lambda self, d=g: g(d)\n":
            "def f(x):\n    return x\nclass C:\n    g = 5\n    xs = [f(i) for i in [g]]\n    h = lambda self, d=g: f(d)",
        "def g(x):\n    return x\nclass C:\n    g = 5\n    class D:\n        y = g(1)\n":
            "def f(x):\n    return x\nclass C:\n    g = 5\n    class D:\n        y = f(1)",
        "def g(x):\n    return x\nclass C:\n    g = object\n    class D(g):\n        pass\n":
            "def f(x):\n    return x\nclass C:\n    g = object\n    class D(g):\n        pass",
    }
    assert_renamed(cases)


def test_a_fenced_block_wins_over_a_label_line():
    assert parsing.labelled_value("# Output: 6\n```output\n5\n```", "output") == "5"
    assert parsing.labelled_value("# Output: 6\n<output>7</output>", "output") == "6"


def test_import_lines_include_imports_inside_functions():
    tree = parsing.parse_program("import re\ndef f(x):\n    import math\n    from re import sub\n    return math.floor(x)")
    assert parsing.import_lines(tree) == ["import re", "import math", "from re import sub"]


def test_induction_inputs_and_message_forms():
    answer = "```input\n1\n```\n```python\n2\n```\n```input\n3\n```\n<message>Add one.</message>"
    assert parsing.induction_inputs(answer) == ["1", "3"]
    assert parsing.induction_message(answer) == "Add one."
    assert parsing.induction_message("```message\nHint.\n```") == "Hint."
    assert parsing.induction_message("# Message: Sum the digits.\n") == "Sum the digits."


def test_rename_first_function_preserves_text_and_recursion():
    src = (
        "# helper comment\n"
        "from functools import lru_cache\n\n"
        "@lru_cache(maxsize=None)\n"
        "def fib(n):  # fib stays in comments\n"
        "    s = 'fib(1) in a string'\n"
        "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
    )
    prog = parsing.prepare_program(src, f_replace_location="not_first", reject_multiple_functions=False)
    assert prog.source == src.strip().replace("def fib(", "def f(").replace("else fib(n - 1) + fib(n - 2)", "else f(n - 1) + f(n - 2)")
    assert "# fib stays in comments" in prog.source and "'fib(1) in a string'" in prog.source
    assert prog.imports == ["from functools import lru_cache"]


def test_rename_handles_non_ascii_columns():
    src = "def g(x):\n    s = 'héllo'; return g(x - 1) if x else s\n"
    prog = parsing.prepare_program(src, f_replace_location="not_first", reject_multiple_functions=False)
    assert prog.source == "def f(x):\n    s = 'héllo'; return f(x - 1) if x else s"


def test_existing_f_is_the_entry_and_location_rules():
    both = "def helper(x):\n    return x\n\ndef f(x):\n    return helper(x)"
    # an existing top-level f is kept (the reference's not_first would rename `helper` to a second f)
    assert parsing.prepare_program(both, f_replace_location="not_first", reject_multiple_functions=False).source == both
    two = "def a(x):\n    return x\n\ndef b(x):\n    return a(x) + 1"
    assert "def f(x):\n    return x" in parsing.prepare_program(two, f_replace_location="not_first", reject_multiple_functions=False).source
    last = parsing.prepare_program(two, f_replace_location="any_last", reject_multiple_functions=False).source
    assert "def f(x):\n    return a(x) + 1" in last and "def a(x)" in last


def test_reject_multiple_functions_counts_top_level_defs_only():
    nested = "def f(n):\n    def step(x):\n        return x + 1\n    return step(n)"
    methods = "class S:\n    def __init__(self):\n        self.items = []\n\ndef f(x):\n    return S().items"
    two = "def g(x):\n    return x\n\ndef f(x):\n    return g(x)"
    for src in (nested, methods):
        assert isinstance(parsing.prepare_program(src, f_replace_location="not_first", reject_multiple_functions=True), parsing.Program)
    assert parsing.prepare_program(two, f_replace_location="not_first", reject_multiple_functions=True) == "multiple_defs"
    assert isinstance(parsing.prepare_program(two, f_replace_location="not_first", reject_multiple_functions=False), parsing.Program)


@pytest.mark.parametrize(
    "src, reason",
    [
        ("", "empty_code"),
        ("def f(x)\n    return x", "syntax_error"),
        ("f = lambda x: x + 1", "no_def"),
        ("print x", "syntax_error"),
    ],
)
def test_prepare_program_failures(src, reason):
    assert parsing.prepare_program(src, f_replace_location="not_first", reject_multiple_functions=False) == reason


def test_parse_call_args_accepts_args_and_kwargs_only():
    assert parsing.parse_call_args("[1, 2], scale=3") is not None
    assert parsing.parse_call_args("7, 2)") is None
    assert parsing.parse_call_args("1) + f(2") is None  # not a single call of f
    assert parsing.parse_call_args("[" * 100_000) is None  # absurd nesting is refused, not a crash


def test_clean_program_applies_the_seeding_transforms():
    src = (
        "import math  # needed\nLIMIT = 3\n\n\ndef helper(a):\n    '''Doc.'''\n    print('debug', a)  # trace\n"
        "    if a:\n        print(a)\n    try:\n        print(1)\n    finally:\n        print(2)\n    return math.floor(a)\n\n"
        "print(helper(2))\n\n\nclass Box:\n    \"\"\"A box.\"\"\"\n    size = 1\n"
    )
    out = parsing.clean_program(src)
    assert "#" not in out and "print" not in out and "Doc." not in out and "A box." not in out
    assert "LIMIT" not in out  # top-level statements other than imports, defs and classes go
    assert out.startswith("import math\n") and "size = 1" in out
    compile(out, "<cleaned>", "exec")  # emptied bodies got `pass`: still valid Python
    assert parsing.clean_program("def f(:") is None


def test_a_program_too_deep_to_clean_is_a_syntax_error_not_a_crash():
    """`x+1+1…` with 900 terms parses, but the cleaning visitor and `ast.unparse` recurse in Python
    and ran out of stack (RecursionError through score_records, ending seeding): with cleaning on
    such a program is refused like one nested too deeply to parse."""
    src = "def f(x):\n    return x" + "+1" * 900
    assert parsing.clean_program(src) is None
    kwargs = dict(f_replace_location="not_first", reject_multiple_functions=True)
    assert parsing.prepare_program(src, clean=True, **kwargs) == "syntax_error"
    assert isinstance(parsing.prepare_program(src, **kwargs), parsing.Program)  # uncleaned it stays a program


def test_prepare_program_cleans_before_renaming_only_when_asked():
    src = "def g(x):\n    # c\n    print(x)\n    return g(x - 1) if x else 0"
    plain = parsing.prepare_program(src, f_replace_location="not_first", reject_multiple_functions=True)
    cleaned = parsing.prepare_program(src, f_replace_location="not_first", reject_multiple_functions=True, clean=True)
    assert "# c" in plain.source and "print(x)" in plain.source
    assert cleaned.source == "def f(x):\n    return f(x - 1) if x else 0"


def test_extract_answer_stops_at_the_first_closing_tag_after_the_last_answer():
    """The answer runs from the last `<answer>` to the *next* `</answer>`, not the last one (AZR_SPEC §2.1)."""
    assert parsing.extract_answer("<answer> 5 </answer> and a stray </answer>") == "5"


def test_fence_tags_and_one_line_blocks_side_by_side():
    """Two one-line label blocks on a line are two blocks; `py`/`python3` tags are code; a tag with
    punctuation (`c++`, `objective-c`) is still a tag, so the block after it is read whole."""
    assert parsing.fenced_blocks("```output 1``` or ```output 2```") == [("output", "1"), ("output", "2")]
    assert parsing.code_blocks("```py\nx = 1\n```\n```python3\ny = 2\n```") == ["x = 1", "y = 2"]
    text = "```objective-c\nint x;\n```\n```python\ndef f(x):\n    return x\n```"
    assert parsing.fenced_blocks(text) == [("objective-c", "int x;"), ("python", "def f(x):\n    return x")]
    assert parsing.code_blocks(text) == ["def f(x):\n    return x"]


def test_other_blocks_leave_out_label_blocks():
    """The induction solver's fallback code (`other_blocks`) is never an input, output or message block."""
    answer = "```code\ndef f(x):\n    return x\n```\n```message\nidentity\n```\n```output\n1\n```"
    assert parsing.other_blocks(answer) == ["def f(x):\n    return x"]


def test_label_lines_tags_and_calls_in_the_forms_models_write():
    """`# Output :` and an indented `# Output:` line count; a `<message>` tag's text is stripped; a
    call may be capitalised or have a blank before `(`, but `get_output(` is not `output(`; a
    blank-only `# Output:` value keeps one blank (so it is a wrong answer, not an empty one)."""
    value = parsing.labelled_value
    assert value("  # Output : 5\n", "output") == "5"
    assert value("    # input: 'a', 2\n", "input") == "'a', 2"
    assert value("# Output:   \n", "output") == " "
    assert parsing.induction_message("<message>\n  Add one.\n</message>") == "Add one."
    assert value("Output ( [1, 2] )", "output") == "[1, 2]"
    assert value("so get_output(3) is", "output") == "so get_output(3) is"  # the whole answer, no call
    # a stray `<output>` inside a tag's text does not start a second value (non-overlapping, as a regex scan)
    assert value("<output>1 <output>2</output>", "output") == "1 <output>2"


def test_parse_call_args_closes_the_call_on_its_own_line():
    """An input that ends in a comment is still one call (docs/deviations.md, trailing comment in an input)."""
    assert parsing.parse_call_args("5  # five") is not None


def test_import_lines_are_de_duplicated():
    """The same import written twice (at the top and inside f) is stored once."""
    tree = parsing.parse_program("import math\ndef f(x):\n    import math\n    return math.floor(x)")
    assert parsing.import_lines(tree) == ["import math"]


def test_renaming_counts_lines_as_the_tokenizer_does():
    """A form feed before a def and a U+2028 inside a string are not line breaks to the tokenizer,
    so they must not shift the columns or lines of the names being renamed."""
    assert_renamed({
        "def g(x):\n    return x\n\x0cdef h():\n    return g(1)\n": "def f(x):\n    return x\n\x0cdef h():\n    return f(1)",
        "def g(x):\n    s = '\u2028'; return g(x - 1) if x else s\n": "def f(x):\n    s = '\u2028'; return f(x - 1) if x else s",
    })


def test_renaming_leaves_every_kind_of_local_binding_alone():
    """Keyword-only, positional-only, `*args` and `**kwargs` parameters, `except ... as` and a
    dotted import (`import g.sub` binds g) inside another function are that function's own g;
    a class's keyword arguments are evaluated where the class stands and see the module's g."""
    assert_renamed({
        "def g(x):\n    return x\ndef h(*, g):\n    return g\n": "def f(x):\n    return x\ndef h(*, g):\n    return g",
        "def g(x):\n    return x\ndef h(g, /):\n    return g\n": "def f(x):\n    return x\ndef h(g, /):\n    return g",
        "def g(x):\n    return x\ndef h(*g, **k):\n    return g\ndef j(**g):\n    return g\n":
            "def f(x):\n    return x\ndef h(*g, **k):\n    return g\ndef j(**g):\n    return g",
        "def g(x):\n    return x\ndef h():\n    try:\n        pass\n    except ValueError as g:\n        return g\n":
            "def f(x):\n    return x\ndef h():\n    try:\n        pass\n    except ValueError as g:\n        return g",
        "def os(x):\n    return x\ndef h():\n    import os.path\n    return os.sep\n":
            "def f(x):\n    return x\ndef h():\n    import os.path\n    return os.sep",
        "def g(x):\n    return x\nclass C(dict, metaclass=g):\n    pass\n": "def f(x):\n    return x\nclass C(dict, metaclass=f):\n    pass",
    })


def test_prepare_program_imports_and_async_functions():
    """Stored imports are those of the renamed program (`import math as f`); an `async def` is not a
    candidate entry function nor a second top-level function."""
    prog = parsing.prepare_program("def math(x):\n    return x\nimport math\nr = math.floor(2.5)\n",
                                   f_replace_location="not_first", reject_multiple_functions=False)
    assert prog.imports == ["import math as f"]
    src = "async def helper(x):\n    return x\n\ndef main(x):\n    return x + 1"
    prog = parsing.prepare_program(src, f_replace_location="not_first", reject_multiple_functions=True)
    assert prog.source == src.replace("def main(", "def f(")


def test_clean_program_keeps_from_imports_and_calls_other_than_print():
    """Seeding's cleaning drops `print(...)` statements only, and keeps `from x import y` lines."""
    src = "from math import floor\ndef f(x):\n    xs = []\n    def push(v):\n        xs.append(v)\n    push(floor(x))\n    print(xs)\n    return xs"
    out = parsing.clean_program(src)
    assert out == "from math import floor\n\ndef f(x):\n    xs = []\n\n    def push(v):\n        xs.append(v)\n    push(floor(x))\n    return xs"
