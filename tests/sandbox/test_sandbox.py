"""Semantics of the sandbox API: Job/JobResult, compare(), determinism, args modes, timeouts."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import time
import uuid

import pytest

from azr_jax.config import SandboxSection
from azr_jax.errors import UserError
from azr_jax.sandbox import Job, JobResult, Sandbox
from azr_jax.sandbox.literals import NotALiteral, canonical, literal_call_text, parse_literal, texts_equal

ADD = "def f(a, b=0):\n    return a + b\n"


@pytest.fixture(scope="module")
def sb():
    with Sandbox(SandboxSection(timeout_s=1.5, workers=2)) as s:
        yield s


# -- compare / literals (host side, no processes) ---------------------------------------------

@pytest.mark.parametrize("a,b,equal", [
    ("9", "9.0", True),
    ("{1, 2, 3}", "{3, 2, 1}", True),
    ("'abc'", '"abc"', True),
    ("(1, 2)", "(1, 2)", True),
    ("1, 2", "(1, 2)", True),  # a bare tuple, as in the reference's literal comparison
    ("{'a': [1, (2, 3)]}", "{'a': [1, (2, 3)]}", True),
    ("frozenset({1, 2})", "frozenset({2, 1})", True),
    ("set()", "set()", True),
    ("(1+2j)", "(1+2j)", True),
    ("-5", "-5", True),
    ("b'x'", "b'x'", True),
    ("'abc'", "abc", False),  # a name is not a literal
    ("[1, 2]", "(1, 2)", False),
    ("2", "sum([1, 1])", False),  # answers are never evaluated
    ("1", "__import__('os').getpid()", False),
    ("nan", "nan", False),
    ("...", "...", False),
    ("[" * 300 + "]" * 300, "[" * 300 + "]" * 300, False),  # nesting limit
])
def test_compare_semantics(sb, a, b, equal):
    assert sb.compare([(a, b)]) == [equal]
    assert texts_equal(a, b) is equal


def test_canonical_and_literal_parsing():
    assert canonical("{'b': 1,  'a' : (1,)}") == "{'b': 1, 'a': (1,)}"
    assert canonical('"x"') == "'x'"
    for bad in ("f(1)", "x", "1 + 1", "{[1]: 2}", "lambda: 0", "1 if 1 else 2", "'" + "a" * 2_000_000 + "'"):
        with pytest.raises(NotALiteral):
            parse_literal(bad)
    assert parse_literal("frozenset()") == frozenset()
    assert literal_call_text("[1,2],  k = {'a': 1}") == "[1, 2], k={'a': 1}"
    for bad in ("1) or (True", "*[1]", "**{'a': 1}", "x", "g(1)", "1); import os; (2"):
        with pytest.raises(NotALiteral):
            literal_call_text(bad)


def test_non_finite_complex_and_ints_too_long_to_print_are_not_literals():
    """`1e309j` is infj, like `1e309` not a literal; a hex, octal or binary literal can stand for an
    int whose decimal text is over Python's int-str digit limit (repr() raises ValueError), which
    broke callers that render the value (the answer-diversity key)."""
    too_long = "0x" + "f" * 9990
    for bad in ("1e309j", "-1e309j", "1+1e309j", "[1, 1e309j]", too_long, "-" + too_long, "0b" + "1" * 20_000,
                "[" + too_long + "]"):
        with pytest.raises(NotALiteral):
            parse_literal(bad)
    with pytest.raises(NotALiteral):
        literal_call_text("1, " + too_long)
    assert not texts_equal("1e309j", "1e309j") and not texts_equal(too_long, too_long)
    assert parse_literal("0x" + "f" * 3000) == 16 ** 3000 - 1  # 3612 digits: within the limit
    assert parse_literal("1e308j") == 1e308j


def test_literal_edge_cases():
    # Python `==` on values, as the reference compares: a string is not a number, True is 1
    assert not texts_equal("'1'", "1") and texts_equal("True", "1") and texts_equal("1", "1.0")
    # set() is the only call of set: set([1, 2]) is an expression, not the empty set
    with pytest.raises(NotALiteral):
        parse_literal("set([1, 2])")
    assert not texts_equal("set([1, 2])", "set()")
    for bad in ("1e309", "-1e309", "[1e309]", "-True", "+'a'"):  # infinite floats; signs on non-numbers
        with pytest.raises(NotALiteral):
            parse_literal(bad)
    # the nesting limit (100 levels, the sandbox's) counts tuples as well as lists
    nested_tuple = lambda n: "(" * n + "()" + ",)" * n  # noqa: E731
    assert parse_literal("[" * 100 + "]" * 100) is not None and parse_literal(nested_tuple(99)) is not None
    for bad in ("[" * 150 + "]" * 150, nested_tuple(150)):
        with pytest.raises(NotALiteral, match="nested"):
            parse_literal(bad)
    # a caller's own size bound, and the node budget of texts under the size bound
    text = "'" + "a" * 20_000 + "'"
    assert parse_literal(text) == "a" * 20_000
    with pytest.raises(NotALiteral, match="too long"):
        parse_literal(text, max_chars=10_000)
    with pytest.raises(NotALiteral, match="too large"):
        parse_literal("[" + "0," * 300_000 + "]")


def test_sets_and_dicts_of_colliding_hashes_are_refused_in_linear_time():
    """Ints k * (2**61 - 1) all hash alike, so a set of them takes quadratic time to build: a
    300 kB text of them is refused (before the check it took seconds), while equal keys such as
    1, 1.0 and True and ordinary large sets still parse."""
    from azr_jax.sandbox.literals import MAX_SHARED_HASHES

    def colliding(n):
        return [str(k * ((1 << 61) - 1)) for k in range(1, n + 1)]

    for text in ("{" + ", ".join(colliding(15_000)) + "}", "{" + ", ".join(f"{k}: 0" for k in colliding(15_000)) + "}",
                 "frozenset({" + ", ".join(colliding(MAX_SHARED_HASHES + 2)) + "})",
                 "frozenset([" + ", ".join(colliding(MAX_SHARED_HASHES + 2)) + "])"):
        with pytest.raises(NotALiteral, match="share a hash"):
            parse_literal(text)
    assert parse_literal("{" + ", ".join(colliding(MAX_SHARED_HASHES + 1)) + "}") == \
        {k * ((1 << 61) - 1) for k in range(1, MAX_SHARED_HASHES + 2)}
    assert parse_literal("{1: 'a', 1.0: 'b', True: 'c'}") == {1: "c"}
    assert parse_literal("{" + ", ".join(map(str, range(50_000))) + "}") == set(range(50_000))
    with pytest.raises(NotALiteral, match="unhashable"):
        parse_literal("{[1]: 2}")


def test_the_depth_limit_is_exact_for_every_container_and_argument():
    """A scalar inside 100 containers (the sandbox's MAX_DEPTH: its output check counts the same
    levels) parses, inside 101 it does not, whichever container is outermost; a frozenset(...)
    wrapper, a sign and a complex literal add no level, and a call's arguments count from 0 too."""
    def nest(outer, n, leaf="0"):  # `outer` around n - 1 tuples around `leaf`: n containers
        for _ in range(n - 1):
            leaf = f"({leaf},)"
        return outer.replace("X", leaf)

    for outer in ("[X]", "(X,)", "{X}", "{X: 0}", "{0: X}", "frozenset({X})", "frozenset([X])"):
        assert parse_literal(nest(outer, 100)) is not None, outer
        with pytest.raises(NotALiteral, match="nested"):
            parse_literal(nest(outer, 101))
    assert parse_literal(nest("[X]", 100, "-(-1-2j)")) is not None
    assert literal_call_text(nest("[X]", 100)) and literal_call_text("k=" + nest("[X]", 100))
    for call in (nest("[X]", 101), "1, k=" + nest("[X]", 101)):
        with pytest.raises(NotALiteral, match="nested"):
            literal_call_text(call)


def test_the_size_bounds_are_exact(monkeypatch):
    """max_chars and the node budget are the largest sizes accepted; one argument list shares one budget."""
    from azr_jax.sandbox import literals

    assert parse_literal("'abcdefgh'", max_chars=10) == "abcdefgh"
    with pytest.raises(NotALiteral, match="too long"):
        parse_literal("'abcdefgh'", max_chars=9)
    with pytest.raises(NotALiteral, match="too long"):  # the call text, like a value text, is held to MAX_TEXT_CHARS
        literal_call_text("'" + "a" * literals.MAX_TEXT_CHARS + "'")
    monkeypatch.setattr(literals, "MAX_NODES", 10)
    assert parse_literal("[" + "0, " * 9 + "]") == [0] * 9  # 10 nodes
    with pytest.raises(NotALiteral, match="too large"):
        parse_literal("[" + "0, " * 10 + "]")
    assert literal_call_text("[0, 0, 0, 0], [0, 0, 0, 0]") == "[0, 0, 0, 0], [0, 0, 0, 0]"
    with pytest.raises(NotALiteral, match="too large"):
        literal_call_text("[0, 0, 0, 0], [0, 0, 0, 0], 0")


def test_only_what_repr_prints_parses_and_to_its_own_value():
    """Signs and complex literals keep their sign; only `real +/- imaginary` of plain numbers is a
    complex literal (no other operator, no bool, no complex on the left); frozenset takes one
    argument and no keywords; a set stays a set (unhashable as a key); surrounding whitespace is
    not an indent; an argument frozenset(...) cannot build is not a literal (it raised TypeError)."""
    assert parse_literal("-5") == -5 and not texts_equal("-1", "1") and parse_literal("+2.5") == 2.5
    assert parse_literal("1-2j") == complex(1, -2) and not texts_equal("1-2j", "1+2j")
    for bad in ("~1", "not 1", "1j+1j", "(1+2j)+3j", "True+1j", "2*3j", "2**3j", "frozenset([1], [2])",
                "frozenset({1}, key=2)", "set(x=1)", "{{1}: 2}", "frozenset(1)", "frozenset(None)", "f'x'"):
        with pytest.raises(NotALiteral):
            parse_literal(bad)
        with pytest.raises(NotALiteral):
            literal_call_text(bad)
        assert not texts_equal(bad, bad)
    assert type(parse_literal("{2, 1}")) is set and canonical("{2, 1}") == "{1, 2}"
    assert parse_literal("  [1,\n 2]\n") == [1, 2] and texts_equal("\t1 ", "1")
    assert literal_call_text("3  # three") == "3"


def test_job_validation():
    with pytest.raises(ValueError, match="args_mode must be one of"):
        Job(ADD, ["1"], args_mode="python")
    with pytest.raises(ValueError, match="expected has 1 entries for 2 calls"):
        Job(ADD, ["1", "2"], expected=["1"])
    with pytest.raises(ValueError, match="repeats must be in 1..16, got 0"):
        Job(ADD, ["1"], repeats=0)
    with pytest.raises(ValueError, match="repeats must be in 1..16, got 17"):  # one zygote uid per repeat when root
        Job(ADD, ["1"], repeats=17)
    with pytest.raises(ValueError, match="calls_per_input must be 1 or 2, got 3"):
        Job(ADD, ["1"], calls_per_input=3)
    with pytest.raises(ValueError, match="expected has 3 entries for 2 calls"):
        Job(ADD, ["1", "2"], expected=["1", "2", "3"])
    with pytest.raises(ValueError, match="calls_per_input must be 1 or 2, got 0"):
        Job(ADD, ["1"], calls_per_input=0)


def test_a_job_result_is_ok_only_without_any_failure():
    """One failed call, a nondeterministic run or a job-level error (also with no calls) is not ok."""
    base = dict(outputs=["1", "2"], errors=[None, None], deterministic=True, matches=None, timed_out=False)
    assert JobResult(**base).ok
    assert not JobResult(**{**base, "outputs": ["1", None], "errors": [None, "E: x"]}).ok
    assert not JobResult(**{**base, "deterministic": False}).ok
    assert not JobResult(outputs=[], errors=[], deterministic=True, matches=None, timed_out=False, error="SyntaxError: x").ok


# -- running jobs ------------------------------------------------------------------------------

def test_outputs_matches_and_order(sb):
    jobs = [Job(ADD, ["1, 2", "'a', b='b'", "[1], [2.5]"], expected=["3", "'ab'", "[1, 9]"]),
            Job("def f(x):\n    return {x: (x, None, True, b'z', 1.5, 2j, frozenset({x}))}", ["7"]),
            Job(ADD, ["10"], expected=["10.0"])]
    r = sb.run(jobs)
    assert r[0] == JobResult(outputs=["3", "'ab'", "[1, 2.5]"], errors=[None] * 3, deterministic=True,
                             matches=[True, True, False], timed_out=False, error=None)
    assert r[0].ok
    assert r[1].outputs == ["{7: (7, None, True, b'z', 1.5, 2j, frozenset({7}))}"] and r[1].matches is None
    assert r[2].matches == [True]  # 10 == 10.0 structurally


def test_expression_vs_literal_args(sb):
    prog = "K = 5\ndef f(x):\n    return x\n"
    r_expr, r_lit = sb.run([
        Job(prog, ["[1] * 3", "K + 1", "1) or (True"], args_mode="expression"),
        Job(prog, ["[1] * 3", "(1, {'a': {2}})", "1) or (True", "K"], args_mode="literal"),
    ])
    assert r_expr.outputs == ["[1, 1, 1]", "6", None] and r_expr.errors[2].startswith("bad_args")
    assert r_lit.outputs == [None, "(1, {'a': {2}})", None, None]
    assert [e.split(":")[0] if e else e for e in r_lit.errors] == ["bad_args", None, "bad_args", "bad_args"]


def test_host_and_sandbox_agree_on_what_they_accept(sb):
    """Outputs at the sandbox's depth limit whose text has signs or frozenset wrappers, and a
    call whose text ends in a comment (the host's parse accepts it, so the sandbox must too)."""
    nest = "def f(n, leaf):\n    v = leaf\n    for _ in range(n):\n        v = [v]\n    return v\n"
    frozen = "def f(n):\n    v = frozenset()\n    for _ in range(n):\n        v = frozenset([v])\n    return v\n"
    r_neg, r_cplx, r_frozen, r_comment = sb.run([
        Job(nest, ["100, -1"]), Job(nest, ["100, -1-2j"]), Job(frozen, ["60"]),
        Job("def f(x):\n    return x * 2\n", ["3  # three"]),
    ])
    assert r_neg.outputs == ["[" * 100 + "-1" + "]" * 100], r_neg
    assert r_cplx.outputs == ["[" * 100 + "(-1-2j)" + "]" * 100], r_cplx
    assert r_frozen.ok and r_frozen.outputs[0].count("frozenset") == 61, r_frozen
    assert r_comment.outputs == ["6"], r_comment


def test_errors_are_failures(sb):
    progs = {
        "raise ValueError('bad')": "ValueError: bad",
        "raise StopIteration": "StopIteration",
        "raise Exception('no error word')": "Exception: no error word",
        "import sys; sys.exit(0)": "SystemExit: 0",
        "return 1 // x": "ZeroDivisionError: integer division or modulo by zero",
        "return object()": "unrepresentable: object",
        "return float('inf')": "unrepresentable: non-finite float",
    }
    jobs = [Job(f"def f(x):\n    {body}\n", ["0"], expected=["1"]) for body in progs]
    for (body, err), r in zip(progs.items(), sb.run(jobs)):
        assert r.errors == [err] and r.outputs == [None] and r.matches == [False] and r.error is None, (body, r)
        assert not r.ok


def test_job_level_errors(sb):
    r_syntax, r_import, r_nof, r_exit = sb.run([
        Job("def f(x) return x", ["1"]),
        Job("import no_such_module_azr\ndef f(x):\n    return x", ["1", "2"]),
        Job("def g(x):\n    return x", ["1"]),
        Job("import os\nos._exit(3)", ["1"]),
    ])
    assert r_syntax.error.startswith("SyntaxError") and r_syntax.errors == [r_syntax.error]
    assert "ModuleNotFoundError" in r_import.error and r_import.outputs == [None, None]
    assert r_nof.error == "program does not define a function f"
    assert r_exit.error == "exited before reporting (exit status 3)"


def _forking_job(children: int, mib: int) -> Job:
    """A job whose `children` forked processes each hold `mib` MiB for 0.3 s."""
    return Job(f"""
import os, time
def f(x):
    kids = []
    for _ in range({children}):
        pid = os.fork()
        if pid == 0:
            block = b'x' * ({mib} << 20)
            time.sleep(0.3)
            os._exit(0)
        kids.append(pid)
    for k in kids:
        os.waitpid(k, 0)
    return {children}
""", ["0"])


@pytest.mark.parametrize("isolation", ["auto", "none"])
def test_job_memory_is_capped_across_processes(isolation):
    """memory_mb caps each process (RLIMIT_AS) and the job's processes together (polled resident
    memory): five forked children of 60 MiB each fail a 200 MiB job, one process of 120 MiB and a
    job of three 40 MiB children stay within it."""
    single = "import time\ndef f(x):\n    block = b'x' * (120 << 20)\n    time.sleep(0.1)\n    return len(block) >> 20\n"
    with Sandbox(SandboxSection(isolation=isolation, timeout_s=10, workers=2, memory_mb=200)) as s:
        if s.isolation_report()["mode"] == "none" and os.geteuid() != 0:
            # Jobs then run under the user's own uid, whose other processes count against
            # RLIMIT_NPROC: the forks themselves may be refused.
            pytest.skip("none mode as an unprivileged user")
        over, under, alone = s.run([_forking_job(5, 60), _forking_job(3, 40), Job(single, ["0"])])
    assert over.error == "memory" and over.outputs == [None] and not over.timed_out, over
    assert under.outputs == ["3"], under
    assert alone.outputs == ["120"], alone


def test_determinism(sb):
    r_acc, r_counter, r_set, r_ok = sb.run([
        Job("def f(x, seen=[]):\n    seen.append(x)\n    return len(seen)\n", ["1"]),
        Job("N = [0]\ndef f(x):\n    N[0] += 1\n    return N[0]\n", ["1", "2"]),
        Job("def f(x):\n    return ''.join({'w%d ' % i for i in range(40)})\n", ["0"]),  # hash-seed dependent
        Job("def f(x):\n    return sorted({'w%d' % i for i in range(40)})[:2]\n", ["0"], repeats=3),
    ])
    assert not r_acc.deterministic and r_acc.errors == ["nondeterministic"] and r_acc.outputs == [None]
    assert not r_counter.deterministic and r_counter.errors == ["nondeterministic"] * 2
    assert not r_set.deterministic
    assert r_ok.deterministic and r_ok.outputs == ["['w0', 'w1']"]


def test_the_largest_limits_the_config_accepts_still_judge_jobs():
    """The host waits for an answer with poll(), whose timeout is int milliseconds: a timeout_s
    past ~2.1e6 s made every job a sandbox failure; a memory_mb or max_file_mb whose bytes
    overflow a 64-bit rlimit failed every job as the program's error. Config load refuses those;
    the largest values it accepts must still run a job."""
    from azr_jax.config import MAX_SANDBOX_TIMEOUT_S, Config, apply_overrides

    with pytest.raises(UserError, match="'sandbox.timeout_s' must be at most"):
        apply_overrides(Config(), ["sandbox.timeout_s=3e6"])
    with pytest.raises(UserError, match="'sandbox.memory_mb' must be < 2"):
        apply_overrides(Config(), [f"sandbox.memory_mb={2**43}"])
    largest = SandboxSection(timeout_s=MAX_SANDBOX_TIMEOUT_S, memory_mb=2**43 - 1, max_file_mb=2**43 - 1, workers=1)
    with Sandbox(largest) as s:
        [r] = s.run([Job(ADD, ["1, 2"], expected=["3"])])
    assert r.matches == [True] and not r.sandbox_fault, r


@pytest.mark.parametrize("kw, match", [
    # A misspelt mode ran every job with no namespaces (as none), behind a missing-layers warning.
    ({"isolation": "bwarp"}, r"'sandbox.isolation' must be one of \['auto', 'bwrap', 'unshare', 'none'\], got 'bwarp'"),
    ({"timeout_s": float("nan")}, "'sandbox.timeout_s' must be a finite number"),  # was a ValueError traceback
    ({"workers": -1}, "'sandbox.workers' must be >= 0"),  # was a ValueError from the semaphore
])
def test_a_section_built_in_python_gets_the_checks_of_config_load(kw, match):
    with pytest.raises(UserError, match=match):
        Sandbox(SandboxSection(**kw))


def test_limits_over_the_hosts_hard_limits_are_refused_at_start(monkeypatch):
    """A sandboxed job cannot raise a hard rlimit it inherits: a larger limit failed every job's
    setup from inside the job ("not allowed to raise maximum limit"), scored as the program's
    runtime error (-1 for a correct proposal). The sandbox refuses it before it starts."""
    import resource

    from azr_jax.sandbox import pool

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        with pytest.raises(UserError, match=rf"'sandbox.max_open_files' is {hard + 1}, over .* largest usable value is {hard}$"):
            Sandbox(SandboxSection(max_open_files=hard + 1, workers=1))
    real = resource.getrlimit
    fake = {resource.RLIMIT_NPROC: 100, resource.RLIMIT_AS: 512 << 20, resource.RLIMIT_CPU: 30}
    monkeypatch.setattr(pool.resource, "getrlimit", lambda res: (0, fake[res]) if res in fake else real(res))
    for cfg, match in ((SandboxSection(max_processes=99, workers=1), "'sandbox.max_processes' is 99, .* is 98$"),
                       (SandboxSection(memory_mb=513, workers=1), "'sandbox.memory_mb' is 513, .* is 512$"),
                       (SandboxSection(timeout_s=30.0, workers=1), "'sandbox.timeout_s' is 30.0, .* is 29$")):
        with pytest.raises(UserError, match=match):
            Sandbox(cfg)
    assert pool._job_limits(SandboxSection(max_processes=98, memory_mb=512, timeout_s=29.5)) == {
        "cpu_s": 30, "file_bytes": 16 << 20, "open_files": 64, "processes": 100, "memory_bytes": 512 << 20}


def test_a_check_with_one_call_per_input_calls_f_once_and_has_the_whole_time_limit(sb):
    """A solver's answer is checked by calling f once, as the reference checks it: twice, an
    accumulator read as nondeterministic (the reference takes the first value), and a call that
    needs over half of `sandbox.timeout_s` (1.5 s here) timed out."""
    accumulator = "def f(x, seen=[]):\n    seen.append(x)\n    return len(seen)\n"
    slow = "import time\ndef f(x):\n    t = time.monotonic() + x\n    while time.monotonic() < t:\n        pass\n    return x\n"
    once, twice, slow_once, slow_twice = sb.run([
        Job(accumulator, ["1"], repeats=1, calls_per_input=1, expected=["1"]),
        Job(accumulator, ["1"], repeats=1, expected=["1"]),
        Job(slow, ["0.9"], repeats=1, calls_per_input=1, expected=["0.9"]),
        Job(slow, ["0.9"], repeats=1, expected=["0.9"]),
    ])
    assert once.deterministic and once.matches == [True], once
    assert not twice.deterministic and twice.errors == ["nondeterministic"], twice
    assert slow_once.matches == [True] and not slow_once.timed_out, slow_once
    assert slow_twice.timed_out, slow_twice


@pytest.mark.parametrize("isolation", ["bwrap", "unshare", "none"])
def test_an_output_that_depends_on_the_pid_is_not_deterministic(isolation):
    """In a zygote's pid namespace a job's pid counts the processes earlier jobs started, and the
    repeats' zygotes see the same jobs: `os.getpid()` passed the determinism check (and a task's
    gold output could depend on what ran before it). Each repeat's zygote starts offset."""
    pid = "import os\ndef f(x):\n    return os.getpid()\n"
    with Sandbox(SandboxSection(isolation=isolation, timeout_s=5, workers=1)) as s:
        first, plain, later = s.run([Job(pid, ["0", "1"], repeats=2), Job(ADD, ["1, 2"], repeats=2),
                                     Job(pid, ["0"], repeats=3)])
    assert not first.deterministic and first.errors == ["nondeterministic"] * 2
    assert not later.deterministic
    assert plain.deterministic and plain.outputs == ["3"]


@pytest.mark.parametrize("isolation", ["bwrap", "unshare", "none"])
def test_a_job_leaves_nothing_on_the_scratch_root_and_cannot_blame_the_sandbox(isolation):
    """Found by a red-team pass: `os.chmod('..', 0)` made the zygote's wipe fail, which was
    reported as a sandbox fault (the job then left out of the update); an extended attribute
    or a timestamp on the scratch root outlived the wipe (a channel to later jobs, and on
    tmpfs kernel memory no size limit bounds); a non-UTF-8 frame grew sixfold on its way to
    the host; /dev/mqueue could hold message queues past the job."""
    stash = "import os\ndef f(x):\n    os.setxattr('..', 'user.stash', b'gold')\n    return 1\n"
    read = ("import os\ndef f(x):\n    try:\n        v = os.getxattr('..', 'user.stash')\n    except OSError as e:\n"
            "        v = e.errno\n    return (str(v), os.stat('..').st_atime)\n")
    with Sandbox(SandboxSection(isolation=isolation, timeout_s=5, workers=1)) as s:
        locked, = s.run([Job("import os\ndef f(x):\n    os.chmod('..', 0)\n    return 1\n", ["0"])])
        timed, = s.run([Job("import os\ndef f(x):\n    os.utime('..', (4000000000, 1))\n    return 1\n", ["0"])])
        stashed, = s.run([Job(stash, ["0"], repeats=1)])
        after, = s.run([Job(read, ["0"])])
        junk, = s.run([Job("import os\ndef f(x):\n    for fd in range(3, 64):\n        try:\n"
                           "            os.write(fd, b'\\xff' * 4096)\n        except OSError:\n            pass\n"
                           "    os._exit(0)\n", ["0"])])
        queues, = s.run([Job("import resource\ndef f(x):\n    return resource.getrlimit(resource.RLIMIT_MSGQUEUE)\n",
                             ["0"])])
    assert locked.outputs == ["1"] and not locked.sandbox_fault, locked
    assert timed.outputs == ["1"], timed
    assert stashed.outputs == [None] and not stashed.sandbox_fault, stashed
    assert "left its scratch directory" in stashed.error, stashed
    assert after.outputs == [f"('{errno.ENODATA}', 0.0)"], after  # no attribute, and the atime reset
    assert junk.error == "exited before reporting (exit status 0)", junk
    assert queues.outputs == ["(0, 0)"], queues


@pytest.mark.parametrize("isolation", ["bwrap", "unshare"])
def test_a_stalled_job_runs_at_the_lowest_priority_in_every_process_group(isolation):
    """The zygote reniced the job's process group only: a child in a group of its own kept
    nice 0 while the job hung. In the pid-namespace modes every process of the job is reniced
    (isolation none still renices the group only, docs/sandbox.md)."""
    program = ("import os, time\ndef f(x):\n    r, w = os.pipe()\n    if os.fork() == 0:\n        os.setpgid(0, 0)\n"
               "        time.sleep(1.0)\n        os.write(w, str(os.getpriority(os.PRIO_PROCESS, 0)).encode())\n"
               "        os._exit(0)\n    os.wait()\n    return int(os.read(r, 8))\n")
    with Sandbox(SandboxSection(isolation=isolation, timeout_s=8, workers=1)) as s:
        r, = s.run([Job(program, ["0"], repeats=1)])
    assert r.outputs == ["19"], r


@contextlib.contextmanager
def tagged_sleepers():
    """(the exec line of a 60 s sleeper carrying a fresh tag, a function listing the live
    sleepers); they are killed on the way out whatever the test found."""
    tag = f"azr_sleeper_{uuid.uuid4().hex}"
    sleeper = f"os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{tag}'])"
    try:
        yield sleeper, lambda: subprocess.run(["pgrep", "-f", tag], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["pkill", "-KILL", "-f", tag], capture_output=True)


def test_a_none_mode_zygote_never_sends_kill_minus_one_as_root():
    """After a job, a none-mode zygote of a root trainer ends what the job left with kill(-1) as
    its dedicated uid; as root that would end every process on the machine, so it is skipped
    there (the host also refuses a zygote that is not its dedicated uid). The zygote's source is
    run in a fresh interpreter with a stand-in `os` that records the calls instead of sending
    them, as uid 0 and as a dedicated uid."""
    import sys
    from pathlib import Path

    import azr_jax.sandbox

    source, _main = (Path(azr_jax.sandbox.__file__).parent / "zygote.py").read_text().split('\nif __name__ == "__main__":')
    probe = """
import types
calls = []
_reap = lambda: None
CONFIG["kill_all_uid"] = True
for uid in (0, 3000007):
    os = types.SimpleNamespace(kill=lambda pid, sig: calls.append(("kill", pid)),
                               killpg=lambda pid, sig: calls.append(("killpg", pid)), getuid=lambda uid=uid: uid)
    _kill_everything(12345, False)
print(calls)
"""
    out = subprocess.run([sys.executable, "-c", source + probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[('killpg', 12345), ('killpg', 12345), ('kill', -1)]", out.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="isolation none gives jobs a dedicated uid only when root")
def test_in_mode_none_as_root_no_process_of_a_job_outlives_the_sandbox():
    """A job that starts a process in a session of its own and then kills its zygote escaped the
    zygote's final kill and the host's session kill: four such processes were still running
    after the sandbox closed. The host now kills every process of the dedicated uid."""
    with tagged_sleepers() as (sleeper, running):
        program = ("import os, signal, sys\ndef f(x):\n    if os.fork() == 0:\n        os.setsid()\n"
                   f"        {sleeper}\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 1\n")
        with Sandbox(SandboxSection(isolation="none", timeout_s=5, workers=1)) as s:
            r, = s.run([Job(program, ["0"], repeats=1)])
        assert r.error == "the sandbox's zygote died during the job", r
        time.sleep(0.3)
        assert running() == ""


def test_a_module_a_job_writes_into_the_trainers_working_directory_is_never_imported_by_a_zygote(monkeypatch):
    """`python -c` puts the working directory first on sys.path, and zygotes used to start in the
    trainer's, importing `json` (and `struct`, `select`, ...) before removing it from the path.
    In none mode a job can write there when it is world-writable (or, as an unprivileged trainer,
    its own): a job wrote `json.py` into it and killed its zygote, and the zygote started in its
    place ran that file. Zygotes now start in `/` and clear the path before importing anything."""
    import tempfile

    cwd = tempfile.mkdtemp(prefix="azr-world-writable-cwd-")
    try:
        os.chmod(cwd, 0o777)
        monkeypatch.chdir(cwd)
        marker = os.path.join(cwd, "planted_module_ran")
        planted_source = f"open({marker!r}, 'w').close()\nraise SystemExit(1)\n"
        plant = ("import os, signal\ndef f(x):\n"
                 f"    path = {os.path.join(cwd, 'json.py')!r}\n"
                 f"    open(path, 'w').write({planted_source!r})\n"
                 "    os.chmod(path, 0o644)\n"
                 "    os.kill(os.getppid(), signal.SIGKILL)\n"
                 "    return x\n")
        with Sandbox(SandboxSection(isolation="none", timeout_s=5, workers=1)) as s:
            planted, = s.run([Job(plant, ["0"], repeats=1)])
            after, = s.run([Job(ADD, ["1, 2"], repeats=1)])
        assert os.path.exists(os.path.join(cwd, "json.py")), planted  # the job did write it
        assert not os.path.exists(marker), "a zygote imported the json.py a job wrote into its working directory"
        assert after.outputs == ["3"] and not after.sandbox_fault, after
    finally:
        subprocess.run(["rm", "-rf", cwd], capture_output=True)


@pytest.mark.parametrize("isolation", ["bwrap", "unshare"])
def test_a_job_cannot_open_a_pty(isolation):
    """Ptys count against the host's global limit: four jobs opening /dev/ptmx took 3071 (bwrap)
    and 4095 (unshare, the host's own /dev/ptmx) of the host's 4096. In unshare mode the
    cover needs a root trainer (its zygote mounts it before dropping root)."""
    if isolation == "unshare" and os.geteuid() != 0:
        pytest.skip("unshare mode covers /dev/ptmx only with a root trainer")
    program = ("import os\ndef f(x):\n    try:\n        fd = os.open('/dev/ptmx', os.O_RDWR | os.O_NOCTTY)\n"
               "    except OSError:\n        return 'refused'\n    return 'pty' if os.isatty(fd) else 'no pty'\n")
    with Sandbox(SandboxSection(isolation=isolation, timeout_s=5, workers=1)) as s:
        r, = s.run([Job(program, ["0"])])
    assert r.outputs in (["'refused'"], ["'no pty'"]), r


@pytest.mark.parametrize("isolation", ["bwrap", "unshare", "none"])
def test_a_job_cannot_reach_a_host_unix_socket(isolation):
    """The network namespace does not cover filesystem sockets: where a job sees the host's files
    (unshare, none), it connected to any world-connectable one (a red-team pass reached a
    listener in /tmp). The filter now refuses `socket` for every family."""
    import shutil
    import socket
    import stat
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="azr-host-socket-", dir="/tmp"))  # reachable by any uid
    os.chmod(folder, 0o777)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(folder / "s"))
    os.chmod(folder / "s", stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)
    listener.listen(16)  # every run of the call connects (it runs twice per repeat)
    program = (f"import socket\ndef f(x):\n    try:\n        c = socket.socket(socket.AF_UNIX)\n"
               f"        c.connect({str(folder / 's')!r})\n    except OSError as e:\n        return e.errno\n"
               f"    return 'connected'\n")
    try:
        with Sandbox(SandboxSection(isolation=isolation, timeout_s=5, workers=1)) as s:
            r, = s.run([Job(program, ["0"])])
    finally:
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)
    assert r.outputs != [None] and r.outputs[0] != "'connected'", r  # an errno, read in the job


def test_state_does_not_leak_between_jobs(sb):
    sb.run([Job("import math, builtins\nmath.pi = 3\nbuiltins.abs = lambda x: 7\ndef f(x):\n    return 0", ["0"])] * 4)
    r = sb.run([Job("import math\ndef f(x):\n    return (math.pi, abs(-1))", ["0"])] * 4)
    assert {x.outputs[0] for x in r} == {"(3.141592653589793, 1)"}


STATEFUL = "seen = set()\ndef f(x):\n    seen.add(x)\n    return len(seen)\n"


def test_each_call_sees_the_programs_fresh_module_state(sb):
    """The calls of one job do not share the program's globals, so an output does not depend on
    which calls ran before it (the reference runs each input as a snippet of its own); the two
    runs of one call still share them, so a global counter stays nondeterministic."""
    fwd, rev, lit, counter = sb.run([
        Job(STATEFUL, [str(i) for i in range(10)]),
        Job(STATEFUL, [str(i) for i in reversed(range(10))]),
        Job(STATEFUL, ["7", "8", "9"], args_mode="literal", expected=["1", "1", "1"], repeats=1),
        Job("N = [0]\ndef f(x):\n    N[0] += 1\n    return N[0]\n", ["0", "1"]),
    ])
    assert fwd.ok and fwd.outputs == ["1"] * 10, fwd
    assert rev.ok and rev.outputs == ["1"] * 10, rev
    assert lit.ok and lit.matches == [True, True, True], lit
    assert counter.errors == ["nondeterministic"] * 2


def test_a_calls_module_state_is_freed_before_the_next_call():
    """Fresh module state per call must not pile up copies of it: each call's namespace is freed
    (also when a class, a reference cycle, holds the data) before the next call loads its own,
    so the job still holds one copy at a time (160 MiB under a 256 MiB address-space limit)."""
    with Sandbox(SandboxSection(timeout_s=10, workers=1, memory_mb=256)) as s:
        plain, in_class = s.run([
            Job("DATA = bytes(160 << 20)\ndef f(x):\n    return len(DATA) + x\n", ["0", "1", "2"]),
            Job("class T:\n    DATA = bytes(160 << 20)\ndef f(x):\n    return len(T.DATA) + x\n", ["0", "1", "2"]),
        ])
    n = 160 << 20
    assert plain.ok and plain.outputs == [str(n), str(n + 1), str(n + 2)], plain
    assert in_class.ok and in_class.outputs == [str(n), str(n + 1), str(n + 2)], in_class


@pytest.mark.parametrize("isolation", ["bwrap", "unshare", "none"])
def test_one_zygote_keeps_nothing_a_job_left_in_its_scratch_root(isolation):
    """Two jobs on the same zygote: files the first leaves anywhere in the scratch root (in bwrap
    all of /tmp), not only in its own job directory, are gone for the second."""
    from azr_jax.sandbox import pool

    with Sandbox(SandboxSection(isolation=isolation, timeout_s=10, workers=1)) as s:
        z = pool._Zygote(s.plan, s._uid(0, 9))
        try:
            def run(program):
                job = Job(program, ["0"], repeats=1)
                return pool._parse_answer(z.request(s._request(job, ["0"]), lambda: None), 1)

            # A tree deeper than Python's recursion limit (the wipe once recursed and broke on it).
            first = run("import os\ndef f(x):\n    open('../left_behind', 'w').write('x')\n"
                        "    os.makedirs('../tree/a/b', exist_ok=True)\n"
                        "    if not os.path.isdir('deep'):\n        start = os.getcwd()\n"
                        "        for i in range(1100):\n            os.mkdir('deep')\n            os.chdir('deep')\n"
                        "        os.chdir(start)\n    return sorted(os.listdir('..'))")
            assert first[0][1] == ["job", "left_behind", "tree"], first
            second = run("import os\ndef f(x):\n    return sorted(os.listdir('..'))")
            assert second[0][1] == ["job"], second
        finally:
            z.close()


# A job that reads its own memory: made dumpable again (the zygote is not), /proc/self/mem gives
# every writable mapping it inherited from the process it was forked from.
MEMORY_READER = """
import ctypes
def f(x):
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    needle = (x[::-1] * 3).encode()  # a text the job's own request does not hold
    hits = 0
    with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', buffering=0) as mem:
        for line in maps.read().splitlines():
            span, perms = line.split()[:2]
            lo, hi = (int(a, 16) for a in span.split('-'))
            if perms.startswith('rw') and hi - lo < 256 << 20:
                try:
                    mem.seek(lo)
                    hits += mem.read(hi - lo).count(needle)
                except OSError:
                    pass
    return hits
"""


@pytest.mark.parametrize("isolation", ["bwrap", "unshare"])
def test_a_job_cannot_read_an_earlier_jobs_output_from_its_zygotes_memory(isolation):
    """The zygote once read every request and result frame itself: their freed memory, inherited
    by every later job forked from it, gave an induction solver's program the hidden outputs of
    the proposal validated on the same zygote. Agents forked per job keep the zygote pristine
    (with a pid namespace of its own, where it is pid 1)."""
    from azr_jax.sandbox import pool

    with Sandbox(SandboxSection(isolation=isolation, timeout_s=10, workers=1)) as s:
        if isolation == "bwrap" and not pool.isolation._bwrap_supports("--as-pid-1"):
            pytest.skip("this bwrap cannot make the zygote pid 1: jobs are served by the zygote itself")
        z = pool._Zygote(s.plan, s._uid(0, 9))
        try:
            def run(program, arg):
                job = Job(program, [repr(arg)], repeats=1, calls_per_input=1)
                return pool._parse_answer(z.request(s._request(job, [repr(arg)]), lambda: None), 1)[0]

            seen, unseen = uuid.uuid4().hex, uuid.uuid4().hex
            first = run("def f(x):\n    return x[::-1] * 3\n", seen)  # its output only in its frame
            assert first[0] == "ok" and first[1] == seen[::-1] * 3, first
            baseline = run(MEMORY_READER, unseen)
            assert baseline[0] == "ok", baseline
            assert run(MEMORY_READER, seen) == baseline  # no more copies of the first job's output
        finally:
            z.close()


def test_host_removes_a_scratch_tree_of_any_depth_and_mode(tmp_path):
    """What a zygote that died mid-job leaves to the host: deeper than Python's recursion limit,
    with a directory chmod-ed to 000."""
    from azr_jax.sandbox.pool import _remove_tree

    root = tmp_path / "scratch"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(2500):  # relative to an open directory: the full path grows past PATH_MAX
        os.mkdir("dd", dir_fd=fd)
        deeper = os.open("dd", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(fd)
    os.mkdir(root / "locked")
    os.chmod(root / "locked", 0)
    _remove_tree(str(root))
    assert not root.exists()


def test_a_path_without_the_system_tools_keeps_the_isolation_and_the_cleanup(sb, tmp_path, monkeypatch):
    """A trainer started with a PATH of its virtual environment only (cron, a systemd unit) still
    finds bwrap / unshare, chmod and rm: `auto` used to fall back to `none` and leave the
    scratch directories behind."""
    from azr_jax.sandbox.pool import _remove_tree

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory
    with Sandbox(SandboxSection(timeout_s=1.5, workers=1)) as stripped:
        assert stripped.isolation_report()["mode"] == sb.isolation_report()["mode"]
        assert stripped.run([Job(ADD, ["2, 3"])])[0].outputs == ["5"]
    root = tmp_path / "scratch"
    (root / "locked").mkdir(parents=True)
    os.chmod(root / "locked", 0)
    _remove_tree(str(root))
    assert not root.exists()


def test_timeouts_among_quick_jobs_are_reported_per_job(sb):
    # How long a batch with hanging jobs takes (they run in parallel: about one timeout for four
    # loops on two workers) is measured by `azr-jax bench executor`'s hang batch, not asserted here.
    loops = [Job("def f(x):\n    while True:\n        pass\n", ["0"]) for _ in range(4)]
    quick = [Job(ADD, ["1, 1"]) for _ in range(12)]
    results = sb.run(loops[:2] + quick[:6] + loops[2:] + quick[6:])
    assert [r.timed_out for r in results] == [True] * 2 + [False] * 6 + [True] * 2 + [False] * 6
    assert all(r.error == "timeout" and r.errors == ["timeout"] for r in results if r.timed_out)
    assert all(r.outputs == ["2"] for r in results if not r.timed_out)


def test_a_broken_zygote_is_not_the_programs_fault(monkeypatch, caplog):
    """A zygote that breaks (here: its first answer says it could not fork) is replaced and the
    job runs again; a correct program is not reported as failing or timing out."""
    from azr_jax.sandbox import pool

    real = pool._Zygote.request
    broken = {"left": 1}

    def flaky(self, req, on_stall):
        if broken["left"]:
            broken["left"] -= 1
            self.close()
            return {"status": "sandbox_error", "detail": "OSError: [Errno 11] Resource temporarily unavailable"}
        return real(self, req, on_stall)

    monkeypatch.setattr(pool._Zygote, "request", flaky)
    with Sandbox(SandboxSection(timeout_s=1.5, workers=1)) as s, caplog.at_level(logging.WARNING, "azr_jax.sandbox"):
        (r,) = s.run([Job(ADD, ["1, 1"])])
    assert r.outputs == ["2"] and r.error is None and not r.timed_out, r
    assert any("running the job again" in m for m in caplog.messages), caplog.messages


def test_close_with_cancel_answers_the_queued_jobs_at_once(monkeypatch):
    """A second stop signal must not wait for every queued job: close(cancel=True) leaves the
    running ones to their timeout and answers the rest as sandbox faults."""
    import threading

    from azr_jax.sandbox import pool

    started = threading.Event()
    real = pool._Zygote.request

    def request(self, req, on_stall):
        started.set()
        return real(self, req, on_stall)

    monkeypatch.setattr(pool._Zygote, "request", request)
    loop = Job("def f(x):\n    while True:\n        pass\n", ["0"])
    s = Sandbox(SandboxSection(timeout_s=2, workers=1))
    out = {}
    runner = threading.Thread(target=lambda: out.setdefault("results", s.run([loop] * 12)))
    runner.start()
    assert started.wait(30)  # the first job runs; the others wait in the queue
    t0 = time.monotonic()
    s.close(cancel=True)
    runner.join(timeout=60)
    assert not runner.is_alive() and time.monotonic() - t0 < 20  # not 12 timeouts of 2 s
    results = out["results"]
    cancelled = [r for r in results if r.error == "sandbox closed before the job ran"]
    # One worker runs up to SLOTS_PER_WORKER jobs at once (a stalled job yields its turn).
    assert len(cancelled) >= 12 - pool.SLOTS_PER_WORKER and all(r.sandbox_fault for r in cancelled)
    with pytest.raises(RuntimeError, match="closed"):
        s.run([loop])


def test_leaving_the_with_block_on_an_error_cancels_the_queued_jobs(monkeypatch):
    """Ctrl-C in `azr-jax score` left through `with Sandbox(...)`, whose close waited for every
    queued check (48 s for 40 looping answers); and a worker outliving the close could start a
    zygote nothing would close."""
    from azr_jax.sandbox import pool

    calls = []
    monkeypatch.setattr(pool.Sandbox, "close", lambda self, cancel=False: calls.append(cancel))
    with Sandbox(SandboxSection(workers=1)):
        pass
    with pytest.raises(KeyboardInterrupt):
        with Sandbox(SandboxSection(workers=1)):
            raise KeyboardInterrupt
    assert calls[:2] == [False, True]
    monkeypatch.undo()
    s = Sandbox(SandboxSection(workers=1))
    s.close()
    with pytest.raises(RuntimeError, match="the sandbox is closed"):
        s._zygote(0, 0)
    assert all(not zs for zs in s._zygotes)


def test_a_start_failure_is_logged_with_its_cause(monkeypatch, caplog):
    """Jobs that no sandbox could take are scored sandbox_error; the log says why, once."""
    from azr_jax.sandbox import pool

    with Sandbox(SandboxSection(timeout_s=1.5, workers=1)) as s:  # started for real, then broken
        def no_start(*a, **k):
            raise pool.SandboxStartError("mkdtemp: [Errno 2] No such file or directory")

        monkeypatch.setattr(pool, "_Zygote", no_start)
        for zs in s._zygotes:  # the warm zygotes are gone too
            for z in zs.values():
                z.close()
        with caplog.at_level(logging.WARNING, "azr_jax.sandbox"):
            results = s.run([Job(ADD, ["1, 1"]) for _ in range(3)])
    assert all(r.sandbox_fault for r in results)
    starts = [m for m in caplog.messages if "failed to start" in m]
    assert len(starts) == 1 and "No such file or directory" in starts[0], caplog.messages


def test_waits_on_descriptors_past_select_s_limit():
    """select() refuses fd >= 1024; a host with many workers opens that many pipes."""
    import resource

    from azr_jax.sandbox.pool import _readable

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= 1500:  # room for descriptor 1500 (CI runs as root, where the hard limit allows it)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    r, w = os.pipe()
    high = os.dup2(r, 1500)
    try:
        assert not _readable(high, 0.05)
        os.write(w, b"x")
        assert _readable(high, 1.0)
    finally:
        for fd in (r, w, high):
            os.close(fd)


def test_isolation_report(sb):
    rep = sb.isolation_report()
    assert rep["mode"] in ("bwrap", "unshare", "none") and rep["workers"] == 2
    assert rep["layers"]["rlimits"] is True and rep["layers"]["clean_env"] is True
    assert rep["missing"] == [k for k, v in rep["layers"].items() if v is False]


def test_none_mode_warns_once_naming_layers(caplog):
    from azr_jax.sandbox import isolation

    isolation._WARNED.discard("none")
    with caplog.at_level(logging.WARNING, logger="azr_jax.sandbox"):
        with Sandbox(SandboxSection(isolation="none", workers=1)) as s1, Sandbox(SandboxSection(isolation="none", workers=1)) as s2:
            assert s1.run([Job(ADD, ["2, 3"])])[0].outputs == ["5"]
            assert s2.isolation_report()["mode"] == "none"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "network_namespace" in warnings[0] and "read_only_filesystem" in warnings[0]


@pytest.mark.parametrize("mode", ["bwrap", "unshare"])
def test_empty_files_in_a_scratch_tmpfs_count_against_the_job_memory(mode):
    """The scratch tmpfs's size cap bounds data, not files: 600 000 empty links pinned ~600 MiB
    of kernel memory under a 256 MiB job. Each file now counts 1 KiB against memory_mb (here 64
    MiB: ~65 000 files), where the job used to finish with all 100 000 made. In unshare mode the
    links went to the host's /tmp, uncounted and never wiped, before a root trainer's zygotes got
    a /tmp of their own."""
    if mode == "unshare" and os.geteuid() != 0:
        pytest.skip("unshare mode has a /tmp of its own only when the trainer is root (CI is)")
    program = ("import os\ndef f(x):\n    for i in range(100000):\n        os.symlink('x', '/tmp/l%d' % i)\n"
               "    return len(os.listdir('/tmp'))\n")
    with Sandbox(SandboxSection(isolation=mode, timeout_s=20, workers=1, memory_mb=64)) as s:
        (r,) = s.run([Job(program, ["0"], repeats=1)])
    assert r.error == "memory" and not r.timed_out, r


def test_a_deep_frozenset_output_is_too_deep_not_forged(sb):
    """frozenset 100 levels deep passed the child's depth check, but its repr opens 201
    brackets, past Python's parser limit: the host read it as a forged output. (60 levels, 121
    brackets, are accepted: test_host_and_sandbox_agree_on_what_they_accept.)"""
    program = "def f(n):\n    x = frozenset()\n    for _ in range(n):\n        x = frozenset({x})\n    return x\n"
    shallow, deep = sb.run([Job(program, ["40"], repeats=1), Job(program, ["100"], repeats=1)])
    assert shallow.outputs[0] is not None and shallow.outputs[0].count("frozenset") == 41, shallow
    assert deep.outputs == [None] and deep.errors[0].startswith("unrepresentable: too deep"), deep


@pytest.mark.parametrize("isolation", ["bwrap", "unshare"])
def test_the_namespaces_hold_without_the_seccomp_filter(isolation):
    """Each layer must hold on its own: with the filter on, `socket` is refused before a missing
    network namespace or bwrap's --disable-userns could show. With `sandbox.seccomp=false` a job
    still sees only its own loopback interface, cannot reach a host listener on 127.0.0.1 and,
    in bwrap, cannot make a nested user namespace."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    program = (
        "import ctypes, socket\ndef f(port):\n    try:\n        socket.create_connection(('127.0.0.1', port), timeout=1).close()\n"
        "        reached = 'connected'\n    except OSError:\n        reached = 'blocked'\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n    userns = libc.unshare(0x10000000) == 0  # CLONE_NEWUSER\n"
        "    return (sorted(name for _, name in socket.if_nameindex()), reached, userns)\n")
    try:
        with Sandbox(SandboxSection(isolation=isolation, timeout_s=5, workers=1, seccomp=False)) as s:
            r, = s.run([Job(program, [str(listener.getsockname()[1])], repeats=1, calls_per_input=1)])
    finally:
        listener.close()
    assert r.outputs[0] is not None, r
    interfaces, reached, userns = parse_literal(r.outputs[0])
    assert interfaces == ["lo"] and reached == "blocked", r
    if isolation == "bwrap":
        assert userns is False, r


@pytest.mark.parametrize("isolation", ["bwrap", "unshare"])
def test_the_scratch_tmpfs_has_a_size_limit(isolation):
    """Data a job writes to its scratch tmpfs is in no process's resident memory (the memory
    poll does not see it); only the tmpfs's size (pool.TMPFS_BYTES, 64 MiB) bounds it. Without
    it, files under RLIMIT_FSIZE each filled the host's memory up to half its size."""
    from azr_jax.sandbox import pool

    if isolation == "unshare" and os.geteuid() != 0:
        pytest.skip("unshare mode has a /tmp of its own only when the trainer is root (CI is)")
    program = ("import errno\ndef f(n):\n    try:\n        for i in range(n):\n"
               "            with open('/tmp/f%d' % i, 'wb') as fh:\n                fh.write(bytes(8 << 20))\n"
               "    except OSError as e:\n        return errno.errorcode.get(e.errno, e.errno)\n    return 'written'\n")
    n = (pool.TMPFS_BYTES >> 23) + 4  # 8 MiB files, 32 MiB past the limit
    with Sandbox(SandboxSection(isolation=isolation, timeout_s=10, workers=1)) as s:
        r, = s.run([Job(program, [str(n)], repeats=1)])
    assert r.outputs == ["'ENOSPC'"], r


@pytest.mark.skipif(os.geteuid() != 0, reason="isolation none gives jobs a dedicated uid only when root")
def test_in_mode_none_as_root_a_jobs_daemon_dies_with_the_job():
    """In mode none a root trainer's zygote kills every process of its uid when a job ends: a
    process the job started in a session of its own (outside the job's process group) must not
    run on after the job, while the sandbox is still open."""
    with tagged_sleepers() as (sleeper, running):
        program = ("import os, sys\ndef f(x):\n    if os.fork() == 0:\n        os.setsid()\n        if os.fork() == 0:\n"
                   f"            {sleeper}\n        os._exit(0)\n    os.wait()\n    return 1\n")
        with Sandbox(SandboxSection(isolation="none", timeout_s=5, workers=1)) as s:
            r, = s.run([Job(program, ["0"], repeats=1)])
            time.sleep(0.5)  # time for a surviving daemon to exec (a killed one never shows)
            left = running()
        assert r.outputs == ["1"], r
        assert left == "", left


@pytest.mark.skipif(os.geteuid() != 0, reason="isolation none gives jobs a dedicated uid only when root")
def test_in_mode_none_a_zygote_that_kept_root_is_refused(monkeypatch):
    """A zygote whose uid drop was lost would run its jobs as root, and its kill(-1) after each
    job, meant for a uid nobody else uses, would end every process on the machine."""
    from azr_jax.sandbox import isolation

    real = isolation.zygote_command

    def without_the_uid_drop(plan, uid, scratch, repeat):
        argv, config, popen = real(plan, uid, scratch, repeat)
        return argv, config, {k: v for k, v in popen.items() if k not in ("user", "group", "extra_groups")}

    monkeypatch.setattr(isolation, "zygote_command", without_the_uid_drop)
    with pytest.raises(UserError, match=r"the zygote runs as uid 0, not its dedicated uid \d+"):
        Sandbox(SandboxSection(isolation="none", timeout_s=5, workers=1)).__enter__()


@pytest.mark.parametrize("mode", ["bwrap", "unshare", "none"])
def test_the_zygote_starts_with_a_clean_environment(mode, monkeypatch):
    """The trainer's environment (credentials) never reaches a zygote: its process starts with
    the sandbox's own few variables. (The jobs clear os.environ, but a forked job still holds the
    zygote's original environment strings in its memory.)"""
    from azr_jax.sandbox import isolation

    monkeypatch.setenv("AZR_TRAINER_SECRET", "hunter2")
    plan = isolation.Plan(mode=mode, python="/usr/bin/python3", as_root=False)
    for uid in (None, 3_000_123):
        _, _, popen = isolation.zygote_command(plan, uid, "/tmp/scratch", repeat=1)
        assert popen["env"] == {**isolation.CLEAN_ENV, "PYTHONHASHSEED": isolation.hash_seed(1)}


@pytest.mark.parametrize("as_root", [True, False])
def test_the_isolation_report_names_each_modes_layers(as_root):
    """What each mode claims (isolation_report, the missing-layers warning): pinned, so a layer a
    mode provides cannot silently drop out of its report, nor a missing one be claimed."""
    from azr_jax.sandbox import isolation

    common = {"rlimits": True, "uid_drop": True if as_root else "not needed (not root)", "clean_env": True,
              "no_new_privs": True, "seccomp": True}
    ns = dict.fromkeys(("network_namespace", "pid_namespace", "ipc_namespace", "mount_namespace"), True)
    assert isolation.layers_for("bwrap", as_root) == {
        **common, "user_namespace": True, **ns, "read_only_filesystem": True, "private_tmp": True}
    assert isolation.layers_for("unshare", as_root) == {
        **common, "user_namespace": not as_root, **ns, "read_only_filesystem": False, "private_tmp": as_root}
    assert isolation.layers_for("none", as_root) == {
        **common, "user_namespace": False, **dict.fromkeys(ns, False), "read_only_filesystem": False,
        "private_tmp": False}
    off = isolation.layers_for("none", as_root, seccomp="off (sandbox.seccomp=false)")
    assert off["no_new_privs"] is False and off["seccomp"] == "off (sandbox.seccomp=false)"
    assert isolation.layers_for("bwrap", as_root, seccomp=False)["no_new_privs"] is True  # bwrap sets it


def test_the_repeat_and_call_limits_are_inclusive():
    """MAX_REPEATS (one zygote uid per repeat) and 1 call per input are allowed values, not only bounds."""
    from azr_jax.sandbox.jobs import MAX_REPEATS

    assert Job(ADD, ["1"], repeats=MAX_REPEATS).repeats == MAX_REPEATS
    assert Job(ADD, ["1"], repeats=1, calls_per_input=1).calls_per_input == 1


def test_a_call_that_fails_only_the_second_time_is_nondeterministic(sb):
    """A call whose first in-process run returns and whose second raises disagreed with itself:
    `nondeterministic`, not the second run's exception as if the call simply failed."""
    program = "def f(x, runs=[]):\n    runs.append(x)\n    if len(runs) > 1:\n        raise ValueError('second')\n    return x\n"
    r, = sb.run([Job(program, ["1"], repeats=1)])
    assert not r.deterministic and r.errors == ["nondeterministic"] and r.outputs == [None], r


def test_output_limits_are_enforced_in_the_sandbox(sb):
    """An output text over MAX_OUTPUT_CHARS is refused by the child itself (the host would read
    it as forged), and a result pipe carrying more than MAX_FRAME_BYTES is cut off by the zygote
    (it buffers the frame: unbounded, a job could grow the zygote's memory, which no limit
    covers, without end)."""
    from azr_jax.sandbox import pool

    big = f"def f(x):\n    return 'x' * {pool.MAX_OUTPUT_CHARS + 1}\n"
    flood = ("import os\ndef f(x):\n    chunk = b'x' * (1 << 20)\n    for fd in range(3, 64):\n        try:\n"
             f"            for _ in range({(pool.MAX_FRAME_BYTES >> 20) + 2}):\n                os.write(fd, chunk)\n"
             "        except OSError:\n            pass\n    os._exit(0)\n")
    r_big, r_flood = sb.run([Job(big, ["0"], repeats=1), Job(flood, ["0"], repeats=1)])
    assert r_big.errors == ["unrepresentable: output too large"], r_big
    assert r_flood.error == "output too large", r_flood


def test_the_host_refuses_a_result_frame_over_its_size_limit():
    """The zygote cuts frames off at MAX_FRAME_BYTES; the host holds them to it as well (a frame
    that is valid JSON included), so a frame decoded there is never larger."""
    from azr_jax.sandbox import pool
    from azr_jax.sandbox.literals import NotALiteral

    frame = '["error", "' + "x" * pool.MAX_FRAME_BYTES + '"]'
    with pytest.raises(NotALiteral, match="too large"):
        pool.parse_result_frame(frame)
    assert pool.parse_result_frame('["error", "' + "x" * 1000 + '"]')[0] == "error"


def test_a_job_cannot_run_more_processes_than_max_processes():
    """RLIMIT_NPROC: forks past `max_processes` (plus the zygote and its reaper) are refused."""
    program = ("import os, time\ndef f(n):\n    made = 0\n    for _ in range(n):\n        try:\n"
               "            if os.fork() == 0:\n                time.sleep(30)\n                os._exit(0)\n"
               "            made += 1\n        except OSError:\n            pass\n    return made\n")
    with Sandbox(SandboxSection(isolation="bwrap", timeout_s=10, workers=1, max_processes=4)) as s:
        r, = s.run([Job(program, ["12"], repeats=1, calls_per_input=1)])
    assert r.outputs[0] is not None and int(r.outputs[0]) <= 4, r


def test_mode_none_renices_a_stalled_job():
    """Without a pid namespace the zygote renices the job's process group, which exists only
    because the job's process starts a session of its own."""
    # 2 s against the 0.25 s stall mark: room for a loaded machine to schedule the zygote.
    program = "import os, time\ndef f(x):\n    time.sleep(2.0)\n    return os.getpriority(os.PRIO_PROCESS, 0)\n"
    with Sandbox(SandboxSection(isolation="none", timeout_s=8, workers=1)) as s:
        r, = s.run([Job(program, ["0"], repeats=1, calls_per_input=1)])
    assert r.outputs == ["19"], r


def test_mode_none_removes_its_scratch_directories_on_close():
    """Where the scratch root is a directory on the host's disk (no private /tmp), closing the
    sandbox removes it, with whatever a job left there."""
    with Sandbox(SandboxSection(isolation="none", timeout_s=5, workers=1)) as s:
        r, = s.run([Job("def f(x):\n    open('../left', 'w').write('x')\n    return 1\n", ["0"], repeats=1)])
        dirs = [z.host_scratch for zs in s._zygotes for z in zs.values()]
    assert r.outputs == ["1"] and dirs and all(dirs), (r, dirs)
    assert not [d for d in dirs if os.path.exists(d)]


def test_a_jobs_standard_descriptors_are_dev_null(sb):
    """The child's fds 0-2 are /dev/null before the program runs: inherited, 1 is the zygote's
    pipe to the host, and `os.write(1, ...)` (print goes to sys.stdout, which is replaced
    separately) wrote straight into the host's frame stream."""
    program = ("import os, stat\ndef f(x):\n    return [(stat.S_ISCHR(os.fstat(fd).st_mode), os.readlink('/proc/self/fd/%d' % fd))"
               " for fd in (0, 1, 2)]\n")
    r, = sb.run([Job(program, ["0"], repeats=1)])
    assert r.outputs == [repr([(True, "/dev/null")] * 3)], r


@pytest.mark.skipif(os.geteuid() != 0, reason="zygotes run under a dropped uid only when the trainer is root")
@pytest.mark.parametrize("isolation", ["bwrap", "unshare", "none"])
def test_a_root_trainers_job_keeps_none_of_roots_groups(isolation):
    """The dropped uid comes with its own gid and no supplementary groups: in unshare mode the
    zygote drops root itself, and kept gid 0 / root's groups (files readable by group root)
    when setgid or setgroups was skipped."""
    program = "import os\ndef f(x):\n    return (os.getuid(), os.getgid(), os.getegid(), os.getgroups())\n"
    groups = os.getgroups()
    os.setgroups(groups + [0, 4242])  # a trainer with supplementary groups (CI's has none)
    try:
        with Sandbox(SandboxSection(isolation=isolation, timeout_s=5, workers=1)) as s:
            r, = s.run([Job(program, ["0"], repeats=1)])
    finally:
        os.setgroups(groups)
    assert r.outputs[0] is not None, r
    uid, gid, egid, groups = parse_literal(r.outputs[0])
    assert uid >= 1000 and gid == egid == uid and groups == [], r


@pytest.mark.parametrize("isolation", ["bwrap", "unshare"])
def test_a_job_runs_in_namespaces_of_its_own(isolation):
    """Each namespace the report claims is one the host is not in: seen directly (the seccomp
    filter otherwise hides a missing one: a job without an IPC namespace of its own would put
    its System V objects in the host's, were shmget not refused as well)."""
    names = ("ipc", "net", "pid", "mnt", "uts", "user")
    program = f"import os\ndef f(x):\n    return [os.readlink('/proc/self/ns/' + n) for n in {names!r}]\n"
    with Sandbox(SandboxSection(isolation=isolation, timeout_s=5, workers=1)) as s:
        r, = s.run([Job(program, ["0"], repeats=1)])
        layers = s.isolation_report()["layers"]
    assert r.outputs[0] is not None, r
    seen = dict(zip(names, parse_literal(r.outputs[0])))
    for name, layer in (("ipc", "ipc_namespace"), ("net", "network_namespace"), ("pid", "pid_namespace"),
                        ("mnt", "mount_namespace"), ("uts", None), ("user", "user_namespace")):
        own = seen[name] != os.readlink(f"/proc/self/ns/{name}")
        assert own is (True if layer is None else layers[layer] is True), (name, seen[name], layers)


def test_memory_mb_caps_each_processs_address_space(sb):
    """RLIMIT_AS: one mapping larger than memory_mb is refused at once (the memory poll would
    only see it once its pages are touched, and polls every MEMORY_POLL_S)."""
    program = ("import mmap\ndef f(mb):\n    try:\n        m = mmap.mmap(-1, mb << 20)\n    except OSError:\n"
               "        return 'refused'\n    m.close()\n    return 'mapped'\n")
    limit = sb.isolation_report()["limits"]["memory_mb"]
    over, under = sb.run([Job(program, [str(limit + 64)], repeats=1), Job(program, ["16"], repeats=1)])
    assert over.outputs == ["'refused'"] and under.outputs == ["'mapped'"], (over, under)


def test_a_call_that_succeeds_in_one_repeat_and_fails_in_another_is_nondeterministic(sb):
    """Runs that disagree on the outcome (a value in one, an exception in the other: here by
    the hash seed, which differs per repeat) are nondeterministic, not the failure of one run."""
    from azr_jax.sandbox import isolation

    code = "print([hash('k%d' % i) & 1 for i in range(64)])"
    parities = [parse_literal(subprocess.run(
        [sb.plan.python, "-S", "-c", code], capture_output=True, text=True, check=True,
        env={**isolation.CLEAN_ENV, "PYTHONHASHSEED": isolation.hash_seed(r)}).stdout) for r in (0, 1)]
    key = next(f"k{i}" for i in range(64) if parities[0][i] != parities[1][i])
    program = f"def f(x):\n    if hash({key!r}) & 1:\n        raise ValueError('odd')\n    return x\n"
    r, = sb.run([Job(program, ["1"], repeats=2)])
    assert not r.deterministic and r.errors == ["nondeterministic"] and r.outputs == [None], r


def test_a_job_out_of_cpu_time_timed_out(sb):
    """SIGXCPU (RLIMIT_CPU, which threads running at once can reach before the wall-clock
    deadline; here the job lowers its own) reads as a timeout."""
    program = ("import resource\ndef f(x):\n    resource.setrlimit(resource.RLIMIT_CPU, (1, resource.getrlimit("
               "resource.RLIMIT_CPU)[1]))\n    while True:\n        pass\n")
    with Sandbox(SandboxSection(timeout_s=10, workers=1)) as s:
        r, = s.run([Job(program, ["0"], repeats=1, calls_per_input=1)])
    assert r.timed_out and r.error == "timeout", r


def test_a_forged_output_text_over_the_output_limit_is_refused(sb):
    """The host holds the texts of a result frame to MAX_OUTPUT_CHARS as the child does: a frame
    forged on the result pipe cannot pass a longer output off as one `f` returned."""
    from azr_jax.sandbox import pool

    text = repr("x" * (pool.MAX_OUTPUT_CHARS + 10))
    program = ("import json, os\ndef f(x):\n"
               f"    frame = json.dumps(['done', [['ok', {text!r}, {text!r}]]]).encode()\n"
               "    for fd in range(3, 64):\n        try:\n            os.write(fd, frame)\n        except OSError:\n"
               "            pass\n    os._exit(0)\n")
    r, = sb.run([Job(program, ["0"], repeats=1)])
    assert r.outputs == [None] and r.errors == ["unrepresentable: forged output text"], r


def test_a_zygote_silent_past_the_deadline_is_a_timeout(monkeypatch):
    """A zygote that does not answer by the job's deadline plus the grace period (here the job
    stopped it: isolation none runs the job in the zygote's uid, without a pid namespace) gives
    a timeout, not a dead-zygote verdict and a second run."""
    from azr_jax.sandbox import pool

    monkeypatch.setattr(pool, "GRACE_S", 0.3)
    program = "import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGSTOP)\n    return 1\n"
    with Sandbox(SandboxSection(isolation="none", timeout_s=1, workers=1)) as s:
        r, = s.run([Job(program, ["0"], repeats=1, calls_per_input=1)])
    assert r.timed_out and r.error == "timeout", r


# -- the host side of the protocol, with stand-in zygotes (no processes) -------------------------

def _answer(*calls, **fields):
    """A zygote's answer carrying the result frame ["done", calls]."""
    import json

    return {"status": "exited", "signal": None, "exit": 0, "frame": json.dumps(["done", [list(c) for c in calls]]),
            **fields}


def _scripted_sandbox(answers):
    """A Sandbox whose zygotes answer `answers` in turn; returns it and the requests they got."""
    from azr_jax.sandbox import pool

    class Zygote:
        def request(self, req, on_stall):
            requests.append(req)
            return answers.pop(0)

    requests = []
    s = pool.Sandbox.__new__(pool.Sandbox)
    s.cfg, s._closed = SandboxSection(timeout_s=1.5), True  # closed: __del__ has nothing to stop
    s._zygote = lambda slot, repeat: Zygote()
    return s, requests


def _execute(s, job):
    import threading

    from azr_jax.sandbox import pool

    return s._execute(0, job, pool._Permit(threading.Semaphore(1)))


def test_the_host_retries_a_dead_zygote_once_and_then_blames_the_program():
    """A zygote that died during the job is replaced and the job runs again; twice in a row, the
    program is the likely killer: a job error, never a sandbox fault (rows left out of the update)."""
    died = {"status": "zygote_died", "detail": "zygote died during the job"}
    s, requests = _scripted_sandbox([died, _answer(("ok", "2", "2"))])
    r = _execute(s, Job(ADD, ["1, 1"], repeats=1))
    assert r.outputs == ["2"] and r.ok and len(requests) == 2, r
    s, _ = _scripted_sandbox([died, dict(died)])
    r = _execute(s, Job(ADD, ["1, 1"], repeats=1))
    assert r.error == "the sandbox's zygote died during the job" and not r.sandbox_fault and not r.timed_out, r
    s, _ = _scripted_sandbox([{"status": "sandbox_error", "detail": "fork"}] * 2)
    r = _execute(s, Job(ADD, ["1, 1"], repeats=1))
    assert r.sandbox_fault and r.error == "sandbox failure: fork", r


def test_an_answer_the_host_cannot_parse_is_the_programs_failure(monkeypatch):
    """Whatever the host's parsing of a job's outputs raises (here MemoryError) fails the job,
    not the sandbox: the row still counts."""
    from azr_jax.sandbox import pool

    def out_of_memory(text, max_chars=None):
        raise MemoryError

    monkeypatch.setattr(pool, "parse_literal", out_of_memory)
    s, _ = _scripted_sandbox([_answer(("ok", "1", "1"))])
    r = _execute(s, Job(ADD, ["1"], repeats=1))
    assert r.error == "unrepresentable: MemoryError" and not r.sandbox_fault, r


def test_the_host_sends_literal_arguments_as_it_rendered_them():
    """In literal mode the zygote gets the host's canonical text (a trailing comment would
    otherwise swallow the closing parenthesis of the zygote's call), and is told it is literal."""
    s, requests = _scripted_sandbox([_answer(("ok", "1", "1"), ("skip",))])
    r = _execute(s, Job(ADD, ["[1,2],  b = {'a': 1}  # note", "x"], args_mode="literal", repeats=1))
    assert requests[0]["calls"] == ["[1, 2], b={'a': 1}", None] and requests[0]["literal_args"] is True
    assert r.errors[1].startswith("bad_args") and r.outputs[0] == "1", r


def test_a_call_that_returns_is_checked_across_repeats_even_when_another_call_fails():
    """Repeats stop early only when no call returned a value: one failing call does not spare
    the others their determinism check."""
    s, requests = _scripted_sandbox([_answer(("ok", "1", "1"), ("err", "ValueError: x", 0)),
                                     _answer(("ok", "2", "2"), ("err", "ValueError: x", 0))])
    r = _execute(s, Job(ADD, ["1", "2"], repeats=2))
    assert len(requests) == 2 and not r.deterministic and r.errors == ["nondeterministic", "ValueError: x"], r
    s, requests = _scripted_sandbox([_answer(("err", "ValueError: x", 0))])
    assert _execute(s, Job(ADD, ["1"], repeats=3)).errors == ["ValueError: x"] and len(requests) == 1


def test_the_host_refuses_every_malformed_result_frame():
    """The frame is the one thing a job can forge: only ["done", calls] and ["error", text], each
    call ["skip"], ["ok", text, text] or ["err", text, 0 | 1], pass."""
    from azr_jax.sandbox import pool

    assert pool.parse_result_frame('["done", [["skip"], ["ok", "1", "1"], ["err", "E", 1]]]') == \
        ("done", (("skip",), ("ok", "1", "1"), ("err", "E", 1)))
    assert pool.parse_result_frame('["error", "E"]') == ("error", "E")
    for bad in ('["error", "E", "x"]', '["error", ["E"]]', '["done", [["skip", 1]]]', '["done", [["ok", 1, "1"]]]',
                '["done", [["ok", "1", 1]]]', '["done", [["err", "E", 2]]]', '["done", [["err", ["E"], 0]]]',
                '["done", [["err", "E"]]]', '["done", [[]]]', '["done", [["what"]]]', '["done", ["skip"]]',
                '["dome", [["skip"]]]', '["done", [["skip"]], 0]', '"done"', '[["done"], [["skip"]]]', "[1, 2"):
        with pytest.raises(NotALiteral):
            pool.parse_result_frame(bad)


def test_the_host_reads_a_result_frame_into_per_call_outcomes():
    """The call count must match; an in-process disagreement reads `nondeterministic`; the job
    cannot claim the host's own timeout verdict; a timeout, CPU-time signal or killed job is classified."""
    import json
    import signal

    from azr_jax.sandbox import pool

    def parse(frame, n=2, **fields):
        return pool._parse_answer({"status": "exited", "signal": None, "exit": 0, "frame": json.dumps(frame), **fields}, n)

    assert parse(["done", [["ok", "[1,2]", "[1, 2]"], ["err", "E: x", 1]]]) == \
        [("ok", [1, 2], "[1, 2]"), ("err", "nondeterministic", True)]
    assert parse(["done", [["ok", "1", "2"], ["err", "E: x", 0]]]) == [("err", "nondeterministic", True), ("err", "E: x", False)]
    assert parse(["done", [["skip"]] * 3]) == "malformed result frame" == parse(["done", [["skip"]]])
    assert parse(["error", "timeout"]) == "forged timeout report" and parse(["error", "memory"]) == "memory"
    assert pool._parse_answer({"status": "timeout"}, 2) == "timeout"
    assert parse("", signal=int(signal.SIGXCPU)) == "timeout" and parse("", signal=int(signal.SIGKILL)) == "killed by SIGKILL"
    assert parse("", exit=3) == "exited before reporting (exit status 3)"


def test_the_host_combines_repeats_per_call():
    """Any run's in-process disagreement, values that differ between runs, or a value in one run
    and an error in another make a call nondeterministic; runs that all fail give the first
    run's error; a call with too few runs, or with an argument error, is not judged on its runs."""
    from azr_jax.sandbox import pool

    ok1, ok2, err = ("ok", 1, "1"), ("ok", 2, "2"), ("err", "E: x", False)
    nondet = ("err", "nondeterministic", True)

    def combine(*runs_per_call, arg_errors=None, expected=None):
        return pool._combine([list(r) for r in runs_per_call], arg_errors or [None] * len(runs_per_call), expected)

    r = combine([ok1, ok1, ok1], [err, err, ("err", "E: y", False)], expected=["1.0", "1"])
    assert r.outputs == ["1", None] and r.errors == [None, "E: x"] and r.deterministic and r.matches == [True, False]
    for runs in ([err, nondet], [nondet, err], [ok1, ok1, ok2], [ok1, err], [err, ok1]):
        r = combine(runs)
        assert r.errors == ["nondeterministic"] and not r.deterministic and r.outputs == [None], runs
    r = combine([ok1, ok1], [ok1], [("skip",)], arg_errors=[None, None, "bad_args: x"])
    assert r.outputs == ["1", None, None] and r.errors == [None, "frame does not match the calls", "bad_args: x"], r


def test_a_zygotes_answer_is_read_whole_and_its_death_or_silence_classified(monkeypatch):
    """Over a real pipe, with no zygote behind it: an answer over MAX_FRAME_BYTES (the frame
    inside it is JSON-escaped once more) is read whole; a zygote gone before the job's deadline
    died (the job runs again), gone after it or silent past the grace period is a timeout; a
    sandbox_error answer is passed on and the zygote, like one that asks to be recycled, replaced."""
    import io
    import json
    import struct
    import threading

    from azr_jax.sandbox import pool

    class Proc:
        def __init__(self, fd):
            self.stdout, self.stdin = os.fdopen(fd, "rb", buffering=0), io.BytesIO()

    closed = []
    monkeypatch.setattr(pool._Zygote, "close", lambda self: closed.append(self))  # nothing to stop
    monkeypatch.setattr(pool, "GRACE_S", 0.1)

    def zygote(*answers, end=True):
        r, w = os.pipe()
        z = pool._Zygote.__new__(pool._Zygote)
        z.proc = Proc(r)
        readers.callback(z.proc.stdout.close)

        def write():
            for a in answers:
                data = memoryview(struct.pack(">I", len(a)) + a)
                while data:
                    data = data[os.write(w, data):]
            if end:
                os.close(w)

        threading.Thread(target=write, daemon=True).start()
        return z, w

    with contextlib.ExitStack() as readers:
        big = json.dumps({"status": "exited", "frame": "x" * pool.MAX_FRAME_BYTES}).encode()
        z, _ = zygote(big)
        assert len(z._recv(time.monotonic() + 30)["frame"]) == pool.MAX_FRAME_BYTES
        z, _ = zygote()
        assert z.request({"timeout_s": 30.0}, lambda: None)["status"] == "zygote_died" and closed == [z]
        z, _ = zygote()
        assert z.request({"timeout_s": 0.0}, lambda: None) == {"status": "timeout"}
        z, w = zygote(end=False)
        stalls = []
        assert z.request({"timeout_s": 0.2}, lambda: stalls.append(1)) == {"status": "timeout"} and stalls == [1]
        os.close(w)
        closed.clear()
        for answer, replaced in (({"status": "sandbox_error", "detail": "fork"}, True), ({"status": "exited"}, False),
                                 ({"status": "scratch", "recycle": True}, True)):
            z, _ = zygote(json.dumps(answer).encode())
            assert z.request({"timeout_s": 30.0}, lambda: None) == answer and closed == ([z] if replaced else []), answer
            closed.clear()


def test_readable_by_jobs_is_what_a_root_trainers_none_or_unshare_jobs_may_read():
    """Those jobs run as a uid of their own: it reads a file others may read on a path others may
    traverse, and a directory's files by name when others may traverse it. bwrap jobs and an
    unprivileged trainer's are not asked about; unshare's jobs have a /tmp of their own."""
    import shutil
    import tempfile
    from pathlib import Path

    from azr_jax.sandbox.isolation import Plan, readable_by_jobs

    none, unshare = (Plan(mode=m, python="", as_root=True) for m in ("none", "unshare"))
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        workdir, gold = base / "run", base / "run" / "gold.json"
        workdir.mkdir()
        gold.write_text("{}")
        for path, mode in ((base, 0o755), (workdir, 0o711), (gold, 0o644)):
            os.chmod(path, mode)
        assert readable_by_jobs(none, workdir) and readable_by_jobs(none, gold)
        assert not readable_by_jobs(Plan(mode="bwrap", python="", as_root=True), gold)
        assert not readable_by_jobs(Plan(mode="none", python="", as_root=False), gold)
        assert not readable_by_jobs(unshare, gold)  # under /tmp
        assert readable_by_jobs(unshare, "/etc/passwd")
        os.chmod(gold, 0o640)
        assert not readable_by_jobs(none, gold) and readable_by_jobs(none, workdir)
        os.chmod(gold, 0o644)
        os.chmod(workdir, 0o754)  # listable, not traversable
        assert not readable_by_jobs(none, workdir) and not readable_by_jobs(none, gold)
        os.chmod(workdir, 0o711)
        os.chmod(base, 0o750)  # a parent closed to others closes everything under it
        assert not readable_by_jobs(none, workdir) and not readable_by_jobs(none, gold)
        assert not readable_by_jobs(none, base / "missing")
    finally:
        shutil.rmtree(base)
