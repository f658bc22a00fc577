"""`ast.parse` for the host process, one thread at a time.

CPython 3.11 keeps the AST constructor's recursion counter in interpreter-wide state and checks
it when a parse finishes (python/cpython#106905). When two threads build ASTs at once — a garbage
collection inside one parse can run Python code and hand the GIL to another thread — the counter
of one is overwritten by the other, and a valid text fails with `SystemError: AST constructor
recursion depth mismatch`. The host parses from several threads (sandbox workers read result
frames while the scorer parses programs and answers), so every host-side parse goes through
`parse`, which holds one process-wide lock. Seen in practice: a correct induction proposal scored
invalid (reason `sandbox_error`) in the test suite once `jax` had been imported.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse(source: str, mode: str = "exec") -> ast.AST:
    """`ast.parse(source, mode=mode)`, serialised across threads (module doc)."""
    with _LOCK:
        return ast.parse(source, mode=mode)
