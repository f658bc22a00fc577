"""The AST policy: a cheap static rejection of proposals that use forbidden modules or tricks.

This is the first of the sandbox's layers (DESIGN §6), not a security boundary on its own: it
keeps tasks honest (no randomness, clocks, environment reads) and turns obvious escape attempts
into a clear reason code before anything runs. The reference checks only `import X` statements
against single words (AZR_SPEC §2.3), so `os.path`, `__import__('random')` and `importlib` all
pass there; here dotted names are resolved through import aliases.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

# Modules or dotted names that are refused whatever the configured list says: each one is a
# route around a static check (dynamic imports, the builtins module, the interpreter's module
# table and importers, raw memory, the garbage collector's object graph).
ALWAYS_BANNED = ("importlib", "builtins", "ctypes", "sys.modules", "gc",
                 "sys.meta_path", "sys.path_hooks", "sys.path_importer_cache")  # `sys.meta_path[0].load_module('builtins')`

# Builtins that run or fetch code by name, read the terminal, or stop in a debugger. The builtins
# namespace's `__loader__` and `__spec__` are its importer (`__loader__.load_module('builtins')`).
BANNED_BUILTINS = frozenset({"eval", "exec", "compile", "__import__", "breakpoint", "input", "globals", "__builtins__",
                             "__loader__", "__spec__"})
# The only banned builtin a program may reuse as its own name (`def f(input)` is common and
# harmless). For the others any use is refused, because the binding itself may be the builtin
# (`eval = eval`, `def f(x, exec=exec)`), which a scope-free check cannot tell apart.
OWN_NAME_OK = frozenset({"input"})

# Attributes that lead from ordinary objects to interpreter internals (classic sandbox escapes).
ESCAPE_ATTRIBUTES = frozenset({
    "__subclasses__", "__globals__", "__builtins__", "__code__", "__closure__", "__import__",
    "__loader__", "__spec__", "f_globals", "f_locals", "f_back", "f_builtins", "gi_frame",
    "cr_frame", "tb_frame",
    "__self__",  # a builtin function's __self__ is the builtins module (`len.__self__.eval`)
})

# Modules that are another module under a second name: `import posixpath` is `os.path`, and the
# C modules behind banned ones do their work (`_ctypes` reads and writes raw memory: a job made
# itself dumpable with it and read /proc/self/mem; `_frozen_importlib` imports by name).
MODULE_SYNONYMS = {
    "posixpath": "os.path", "ntpath": "os.path", "posix": "os",
    "_ctypes": "ctypes", "_imp": "importlib", "_frozen_importlib": "importlib",
    "_frozen_importlib_external": "importlib", "_random": "random", "_thread": "threading",
    "_datetime": "datetime", "_posixsubprocess": "subprocess", "_multiprocessing": "multiprocessing",
    "_hashlib": "hashlib", "_md5": "hashlib", "_sha1": "hashlib", "_sha256": "hashlib",
    "_sha512": "hashlib", "_sha3": "hashlib", "_blake2": "hashlib",
}

_ATTR_BUILTINS = ("getattr", "setattr", "hasattr", "delattr")


@dataclass(frozen=True)
class Violation:
    code: str  # banned_import | banned_builtin | escape_attribute
    detail: str


def banned_match(dotted: str, banned: list[str] | tuple[str, ...]) -> str | None:
    """The banned entry that `dotted` (a module or attribute path) falls under, if any.

    A dotted entry (`os.path`) matches wherever its components appear in a row: the path itself,
    everything below it, and the same module reached through another one's attribute
    (`shutil.os.environ`); a single word (`random`) matches any component, as in the reference
    (`foo.random` is refused too).
    """
    parts = dotted.split(".")
    if parts[0] in MODULE_SYNONYMS:
        parts = MODULE_SYNONYMS[parts[0]].split(".") + parts[1:]
    for entry in banned:
        if "." in entry:
            words = entry.split(".")
            if any(parts[i:i + len(words)] == words for i in range(len(parts) - len(words) + 1)):
                return entry
        elif entry in parts:
            return entry
    return None


def _dotted(node: ast.AST) -> list[str] | None:
    """`a.b.c` as ['a', 'b', 'c'] when the chain is rooted at a plain name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def _bound_names(tree: ast.AST) -> set[str]:
    """Names the program itself binds (parameters, assignments, defs, handlers). Imports are not
    counted: `from fileinput import input` binds another module's object, not the program's own."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def _module_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted module path it stands for, from every import in the program."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{module}.{alias.name}" if module else alias.name
    return aliases


def check_tree(tree: ast.AST, banned: list[str] | tuple[str, ...]) -> Violation | None:
    """The first policy violation in `tree`, or None if it is acceptable."""
    banned = tuple(banned) + ALWAYS_BANNED
    aliases = _module_aliases(tree)
    bound = _bound_names(tree)

    def resolve(parts: list[str]) -> str | None:
        root = aliases.get(parts[0])
        return ".".join([root] + parts[1:]) if root else None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                hit = banned_match(alias.name, banned)
                if hit:
                    return Violation("banned_import", f"import {alias.name} ({hit})")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            hit = banned_match(module, banned) if module else None
            if hit:
                return Violation("banned_import", f"from {module} import ... ({hit})")
            for alias in node.names:
                if alias.name == "*":  # brings in the banned names under bare names no check resolves
                    under = next((e for e in banned if module and e.startswith(module + ".")), None)
                    if under:
                        return Violation("banned_import", f"from {module} import * ({under})")
                    continue
                full = f"{module}.{alias.name}" if module else alias.name
                hit = banned_match(full, banned)
                if hit:
                    return Violation("banned_import", f"from {module} import {alias.name} ({hit})")
        elif isinstance(node, ast.Attribute):
            if node.attr in ESCAPE_ATTRIBUTES:
                return Violation("escape_attribute", f".{node.attr}")
            parts = _dotted(node)
            full = resolve(parts) if parts else None
            hit = banned_match(full, banned) if full else None
            if hit:
                return Violation("banned_import", f"{'.'.join(parts)} ({hit})")
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in BANNED_BUILTINS and not (node.id in OWN_NAME_OK and node.id in bound):
                return Violation("banned_builtin", node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # `globals()['__builtins__']`, `getattr(x, '__subclasses__')` and similar spellings.
            if node.value in ESCAPE_ATTRIBUTES or node.value == "__import__":
                return Violation("escape_attribute", repr(node.value))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _ATTR_BUILTINS:
            if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                parts = _dotted(node.args[0])
                full = resolve(parts) if parts else None
                if full:
                    hit = banned_match(f"{full}.{node.args[1].value}", banned)
                    if hit:
                        return Violation("banned_import", f"{node.func.id}({'.'.join(parts)}, {node.args[1].value!r}) ({hit})")
    return None


def check_program(program: ast.Module, call_args: list[ast.Expression], banned: list[str] | tuple[str, ...]) -> Violation | None:
    """Check a program together with the calls that will be made on it (`f(<input>)`): inputs are
    code too, and they see the program's imports."""
    combined = ast.Module(body=list(program.body) + [ast.Expr(value=c.body) for c in call_args], type_ignores=[])
    return check_tree(combined, banned)
