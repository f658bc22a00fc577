"""Host-side `ast.parse` calls never overlap across threads (azr_jax/pyast.py: CPython 3.11's
AST constructor keeps its recursion counter in interpreter-wide state, so overlapping parses can
fail a valid text with `SystemError: AST constructor recursion depth mismatch`)."""

import ast
import threading
import time

from azr_jax.azr import buffers, parsing
from azr_jax.sandbox import literals


def test_host_parsers_take_turns(monkeypatch):
    real_parse = ast.parse
    state = {"active": 0, "most": 0}
    guard = threading.Lock()

    def slow_parse(*args, **kwargs):  # widens the window in which two parses could overlap
        with guard:
            state["active"] += 1
            state["most"] = max(state["most"], state["active"])
        try:
            time.sleep(0.005)
            return real_parse(*args, **kwargs)
        finally:
            with guard:
                state["active"] -= 1

    monkeypatch.setattr(ast, "parse", slow_parse)
    calls = [lambda: literals.parse_literal("[1, [2, 3]]"), lambda: parsing.parse_program("def f(x):\n    return x"),
             lambda: parsing.parse_call_args("1, 'a'"), lambda: buffers._normalise_code("f( 1 )", mode="eval")]
    results, errors = [], []

    def worker(call):
        try:
            for _ in range(10):
                results.append(call())
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(c,)) for c in calls for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 80 and all(r is not None for r in results)
    assert state["most"] == 1, "two host-side parses ran at the same time"
