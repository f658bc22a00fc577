"""Safe, bounded parsing of value texts, canonical text, and structural equality.

Value texts are what the sandbox reports (`repr` of plain builtin data) and what solvers answer.
They are parsed here with `ast` (which never executes anything) into plain values, accepting
only literals: None/bool/int/float/complex/str/bytes constants (finite numbers, ints that
repr() can print), tuples, lists, dicts, sets, `set()`, `frozenset(...)` and signed numbers. No
names, calls (other than those two), attributes or operators, so a text can never run code or
produce an object with a custom `__eq__`.
"""

from __future__ import annotations

import ast
import cmath

from azr_jax import pyast

MAX_TEXT_CHARS = 1_000_000
MAX_NODES = 200_000
MAX_DEPTH = 100
# Set elements / dict keys whose hash another one already has: equal values (1 and 1.0) or
# chance collisions stay far below this; only a crafted text reaches it.
MAX_SHARED_HASHES = 256


class NotALiteral(ValueError):
    """The text is not a plain, bounded Python literal."""


# Below this many bits an int has fewer decimal digits than any int-str limit Python allows
# (at least 640), so only larger ones are rendered to check (not every literal on the scoring path).
_PRINTABLE_BITS = 2_000


def _printable(value: int) -> bool:
    """Whether `repr(value)` is within Python's int-str digit limit (`sys.set_int_max_str_digits`)."""
    try:
        repr(value)
    except ValueError:
        return False
    return True


def _hash_spread(keys: list) -> list:
    """`keys`, checked in linear time before a set or dict is built of them: many keys with one
    hash (ints k * (2**61 - 1) all share one) make building it quadratic, tens of seconds of
    the trainer's CPU for a text of a megabyte."""
    try:
        shared = len(keys) - len({hash(k) for k in keys})
    except TypeError:
        raise NotALiteral("unhashable set element or dict key") from None
    if shared > MAX_SHARED_HASHES:
        raise NotALiteral(f"{shared} set elements or dict keys share a hash with another one")
    return keys


def _build(node: ast.AST, depth: int, budget: list[int]):
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise NotALiteral("literal too large or too deeply nested")
    if isinstance(node, ast.Constant):
        value = node.value
        if value is Ellipsis:
            raise NotALiteral("'...' is not a value")
        if isinstance(value, (float, complex)) and not cmath.isfinite(value):
            raise NotALiteral("non-finite number")  # `1e309j` is infj: its repr is no literal
        if isinstance(value, int) and value.bit_length() > _PRINTABLE_BITS and not _printable(value):
            # A hex, octal or binary literal can stand for an int whose decimal text is over
            # Python's int-str digit limit: repr() of it raises ValueError.
            raise NotALiteral("int too long to print")
        return value
    # Signs, complex literals and the frozenset(...) wrapper add no nesting level: the depth
    # counted here must equal the container depth the sandbox checks outputs against.
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _build(node.operand, depth, budget)
        if type(operand) not in (int, float, complex):
            raise NotALiteral("sign applied to a non-number")
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        # Only complex literals such as `1+2j` / `-1-0j` (what repr(complex) prints).
        left = _build(node.left, depth, budget)
        right = _build(node.right, depth, budget)
        if type(left) not in (int, float) or type(right) is not complex:
            raise NotALiteral("only complex literals may use + or -")
        return left + right if isinstance(node.op, ast.Add) else left - right
    if isinstance(node, ast.Tuple):
        return tuple(_build(e, depth + 1, budget) for e in node.elts)
    if isinstance(node, ast.List):
        return [_build(e, depth + 1, budget) for e in node.elts]
    if isinstance(node, ast.Set):
        return set(_hash_spread([_build(e, depth + 1, budget) for e in node.elts]))
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise NotALiteral("'**' in a dict literal")
        keys = _hash_spread([_build(k, depth + 1, budget) for k in node.keys])
        return dict(zip(keys, [_build(v, depth + 1, budget) for v in node.values]))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        # repr(set()) == 'set()', repr(frozenset({1})) == 'frozenset({1})'
        if node.func.id == "set" and not node.args:
            return set()
        if node.func.id == "frozenset" and len(node.args) <= 1:
            if not node.args:
                return frozenset()
            # frozenset([...]) of colliding hashes is as quadratic as the set literal
            elements = _build(node.args[0], depth, budget)
            return frozenset(_hash_spread(list(elements)) if isinstance(elements, (list, tuple)) else elements)
    raise NotALiteral(f"not a literal: {type(node).__name__}")


def _parse_expr(text: str, mode: str = "eval", max_chars: int | None = None) -> ast.AST:
    if not isinstance(text, str):
        raise NotALiteral(f"expected text, got {type(text).__name__}")
    if len(text) > (MAX_TEXT_CHARS if max_chars is None else max_chars):
        raise NotALiteral("text too long")
    try:
        return pyast.parse(text.strip(), mode=mode)
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError) as e:
        raise NotALiteral(f"does not parse: {type(e).__name__}") from None


def parse_literal(text: str, max_chars: int | None = None):
    """Plain value of a literal text (at most `max_chars`, default MAX_TEXT_CHARS); raises NotALiteral otherwise."""
    tree = _parse_expr(text, max_chars=max_chars)
    try:
        return _build(tree.body, 0, [MAX_NODES])
    except (TypeError, ValueError, MemoryError, RecursionError, OverflowError) as e:
        if isinstance(e, NotALiteral):
            raise
        raise NotALiteral(f"bad literal: {type(e).__name__}") from None  # e.g. {[1]: 2}


def canonical(text: str) -> str:
    """The canonical text (`repr`) of a literal text's value."""
    return repr(parse_literal(text))


def values_equal(a, b) -> bool:
    """Python `==` on two plain values (literals cannot carry a custom `__eq__`)."""
    try:
        return bool(a == b)
    except (RecursionError, MemoryError, ValueError, TypeError):
        return False


def texts_equal(a: str, b: str) -> bool:
    """Structural equality of two value texts; a text that is not a literal equals nothing."""
    try:
        return values_equal(parse_literal(a), parse_literal(b))
    except NotALiteral:
        return False


def parse_call_args(call: str) -> tuple[list[ast.AST], list[ast.keyword]]:
    """Split an argument-list source `1, [2], k=3` into its argument nodes.

    The text must form exactly one call `f(<call>)`; `1) or (True` (injection) is rejected.
    """
    tree = _parse_expr("f(" + call + "\n)")
    node = tree.body
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "f"):
        raise NotALiteral("arguments do not form a single call f(...)")
    return node.args, node.keywords


def literal_call_text(call: str) -> str:
    """Canonical text of an argument list whose arguments must all be literals."""
    args, keywords = parse_call_args(call)
    budget = [MAX_NODES]
    parts = []
    try:
        for a in args:
            if isinstance(a, ast.Starred):
                raise NotALiteral("'*' unpacking in a literal argument list")
            parts.append(repr(_build(a, 0, budget)))
        for kw in keywords:
            if kw.arg is None:
                raise NotALiteral("'**' unpacking in a literal argument list")
            parts.append(f"{kw.arg}={_build(kw.value, 0, budget)!r}")
    except (TypeError, ValueError, MemoryError, RecursionError, OverflowError) as e:
        if isinstance(e, NotALiteral):
            raise
        raise NotALiteral(f"bad literal: {type(e).__name__}") from None
    return ", ".join(parts)
