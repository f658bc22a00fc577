"""The AST policy: dotted banned names, aliases, dynamic imports and escape tricks."""

import ast

import pytest

from azr_jax.azr.checks import banned_match, check_program, check_tree
from azr_jax.config import AZRSection

BANNED = AZRSection().banned_words


def verdict(src):
    v = check_tree(ast.parse(src), BANNED)
    return None if v is None else v.code


@pytest.mark.parametrize(
    "src, code",
    [
        ("import random", "banned_import"),
        ("import numpy.random as r", "banned_import"),  # a single word matches any component
        ("from os.path import basename", "banned_import"),  # dotted entries: the reference never matches these
        ("import os.path", "banned_import"),
        ("from os import path", "banned_import"),
        ("from os import environ as e", "banned_import"),
        ("import os\nx = os.environ['HOME']", "banned_import"),
        ("import os as o\ny = o.path.join('a', 'b')", "banned_import"),
        ("import sys\nsys.exit(3)", "banned_import"),
        ("from sys import exit", "banned_import"),
        ("from os import *\ndef f(x):\n    return environ.get('HOME', x)", "banned_import"),  # os.environ, bare
        ("from sys import *\ndef f(x):\n    exit(x)", "banned_import"),
        ("import os\nv = getattr(os, 'environ')", "banned_import"),
        ("x = __import__('random')", "banned_builtin"),
        ("import importlib\nm = importlib.import_module('math')", "banned_import"),
        ("import builtins", "banned_import"),
        ("import sys\nm = sys.modules", "banned_import"),
        ("y = ().__class__.__base__.__subclasses__()", "escape_attribute"),
        ("g = globals()['__builtins__']", "escape_attribute"),
        ("g = globals()", "banned_builtin"),
        ("t = getattr(len, '__globals__')", "escape_attribute"),
        ("def f(x):\n    return input()", "banned_builtin"),
        ("def f(x):\n    return compile(x, 'a', 'single')", "banned_builtin"),
        # rebinding a builtin to itself does not make it the program's own name
        ("eval = eval\ndef f(x):\n    return eval(x)", "banned_builtin"),
        ("def f(x, exec=exec):\n    return exec(x)", "banned_builtin"),
        ("def f(x):\n    c = compile\n    return c(x, 'a', 'eval')", "banned_builtin"),
        # the same module reached through another module's attribute, or under a second name
        ("import shutil\ndef f(x):\n    return shutil.os.environ.get(x)", "banned_import"),
        ("from shutil import os as o\ndef f(x):\n    return o.environ.get(x)", "banned_import"),
        ("import posixpath\ndef f(x):\n    return posixpath.exists(x)", "banned_import"),
        ("from ntpath import exists", "banned_import"),
        # the C module behind a banned one: _ctypes made a job dumpable to read its own memory
        ("import _ctypes\ndef f(x):\n    return _ctypes.dlopen(None, 0)", "banned_import"),
        ("from _ctypes import dlopen", "banned_import"),
        ("import _frozen_importlib as i\ndef f(x):\n    return i._gcd_import(x)", "banned_import"),
        ("import _random\ndef f(x):\n    return _random.Random().random()", "banned_import"),
        ("from _thread import start_new_thread", "banned_import"),
        ("import posix\ndef f(x):\n    return posix.environ.get(x)", "banned_import"),
        ("def f(x):\n    return len.__self__.eval(x)", "escape_attribute"),  # __self__ of a builtin: the builtins module
        ("def f(x):\n    return vars(len.__self__)['__import__']('os')", "escape_attribute"),
        # always refused, whatever the configured list says
        ("import ctypes", "banned_import"),
        ("import gc\ndef f(x):\n    return gc.get_objects()", "banned_import"),
        ("from random import *\ndef f(x):\n    return randint(0, x)", "banned_import"),
        ("def f(x):\n    breakpoint()\n    return x", "banned_builtin"),
        ("def f(x):\n    return f.__code__.co_consts", "escape_attribute"),
        # an imported `input` is another module's reader, not the program's own name
        ("from fileinput import input\ndef f(x):\n    return list(input())", "banned_builtin"),
        ("import fileinput as input\ndef f(x):\n    return input.input()", "banned_builtin"),
    ],
)
def test_rejected(src, code):
    assert verdict(src) == code


@pytest.mark.parametrize(
    "src",
    [
        "import os\ndef f(parts):\n    return os.sep.join(parts)",  # `os` itself is not on the list
        "import posix\ndef f(x):\n    return posix.getcwd() + x",  # nor is `posix`, the C module behind it
        "def f(xs):\n    # no random or time involved\n    return xs[::-1]",  # comments are not code
        "def f(time, logging=False):\n    calendar = [time * 2]\n    return calendar",  # identifiers are not modules
        "def f(input):\n    return input + 1",  # a parameter named like a builtin is the program's own
        "def f(s):\n    clean_input = lambda t: t.strip()\n    return clean_input(s)",  # the reference bans any 'input('
        "import string\ndef f(w):\n    return string.ascii_lowercase.index(w)",
        "from math import *\ndef f(x):\n    return floor(x)",  # nothing under math is banned
        "class A:\n    def __init__(self):\n        self.time = 1\ndef f(x):\n    return A().time + x",
    ],
)
def test_accepted(src):
    assert verdict(src) is None


def test_inputs_are_checked_with_the_programs_aliases():
    program = ast.parse("import os\ndef f(x):\n    return x")
    bad = ast.parse("f(os.environ)", mode="eval")
    ok = ast.parse("f([1, 2])", mode="eval")
    assert check_program(program, [ok], BANNED) is None
    assert check_program(program, [bad], BANNED).code == "banned_import"
    assert check_program(ast.parse("def f(x):\n    return x"), [ast.parse("f(__import__('os'))", mode="eval")], BANNED).code == "banned_builtin"


def test_banned_match_semantics():
    assert banned_match("os.path.join", ["os.path"]) == "os.path"
    assert banned_match("os.pathlib", ["os.path"]) is None
    assert banned_match("a.random.b", ["random"]) == "random"
    assert banned_match("randomness", ["random"]) is None
    assert banned_match("shutil.os.environ.get", ["os.environ"]) == "os.environ"  # anywhere in the path
    assert banned_match("shutil.os.environment", ["os.environ"]) is None  # whole components only
    assert banned_match("my.os", ["os.path"]) is None
    assert banned_match("posixpath.join", ["os.path"]) == "os.path"
    assert banned_match("posixpath", ["os.path"]) == "os.path"
    assert check_tree(ast.parse("import gc"), []).code == "banned_import"  # ALWAYS_BANNED with an empty list


@pytest.mark.parametrize("attr", [
    "__subclasses__", "__globals__", "__builtins__", "__code__", "__closure__", "__import__", "__loader__", "__spec__",
    "f_globals", "f_locals", "f_back", "f_builtins", "gi_frame", "cr_frame", "tb_frame", "__self__",
])
def test_every_escape_attribute_is_refused(attr):
    """Each attribute that leads to interpreter internals is refused as `x.attr` and as a string."""
    assert verdict(f"def f(x):\n    return x.{attr}") == "escape_attribute"
    assert verdict(f"def f(x):\n    return getattr(x, {attr!r})") == "escape_attribute"


@pytest.mark.parametrize("module", [
    "_imp", "_frozen_importlib_external", "_datetime", "_posixsubprocess", "_multiprocessing",
    "_hashlib", "_md5", "_sha1", "_sha256", "_sha512", "_sha3", "_blake2",
])
def test_the_c_module_behind_a_banned_module_is_banned(module):
    """`import _sha256` is `hashlib`, `_posixsubprocess` is `subprocess`, `_imp` is `importlib`, ..."""
    assert verdict(f"import {module}") == "banned_import"


@pytest.mark.parametrize(
    "src",
    [
        "import math, random",  # every name of one import statement
        "import sys\ndef f(x):\n    return hasattr(sys, 'modules')",
        "import os\ndef f(x):\n    setattr(os, 'environ', {})\n    return x",
        "import os\ndef f(x):\n    delattr(os, 'environ')\n    return x",
        # a dotted import binds its root, through which a banned module is reached
        "import email.utils\ndef f(x):\n    return email.utils.time.time() + x",
    ],
)
def test_more_banned_imports(src):
    """Banned modules reached through a second import name, the other attribute builtins, or the
    root a dotted import binds."""
    assert verdict(src) == "banned_import"


def test_the_builtins_namespace_by_name_is_banned():
    """`__builtins__` read as a plain name is the builtins namespace (eval, __import__...)."""
    assert verdict("def f(x):\n    return __builtins__['len'](x)") == "banned_builtin"


@pytest.mark.parametrize(
    "src",
    [
        "def f(s):\n    input = s.split()\n    return input[0]",  # assigned
        "def input(s):\n    return s\ndef f(s):\n    return input(s)",  # defined
        "def f(s):\n    try:\n        return int(s)\n    except ValueError as input:\n        return str(input)",
        "def f(xs):\n    for eval in xs:\n        pass\n    return len(xs)",  # a banned builtin's name only written is no use of it
    ],
)
def test_the_program_may_bind_input_itself(src):
    """`input` is the program's own when it binds the name in any way; a banned builtin's name that
    is only bound, never read, is not a use of the builtin."""
    assert verdict(src) is None


def test_dotted_entries_are_matched_through_from_import_aliases():
    """A configured `os.path.join` is reached through `from os import path as p` (`p.join`); a
    star import is refused only for a module with a banned entry under it (`copy` is not `copyreg`)."""
    assert check_tree(ast.parse("from os import path as p\ndef f(x):\n    return p.join(x, x)"), ["os.path.join"]).code == "banned_import"
    assert check_tree(ast.parse("from os import path as p\ndef f(x):\n    return p.sep + x"), ["os.path.join"]) is None
    assert check_tree(ast.parse("from copy import *\ndef f(x):\n    return deepcopy(x)"), ["copyreg.pickle"]) is None
    assert check_tree(ast.parse("from copyreg import *\ndef f(x):\n    return x"), ["copyreg.pickle"]).code == "banned_import"


@pytest.mark.parametrize(
    "src, code",
    [
        # the builtins namespace's own __loader__ and __spec__ (BuiltinImporter) need no import
        ("def f(x):\n    return __loader__.load_module('builtins').eval(x)", "banned_builtin"),
        ("def f(x):\n    return __spec__.loader.load_module('gc').get_objects()", "banned_builtin"),
        ("import sys\ndef f(x):\n    return sys.meta_path[0].load_module('builtins').eval(x)", "banned_import"),
        ("import sys\ndef f(x):\n    return sys.path_hooks[0]", "banned_import"),
        ("from sys import path_importer_cache", "banned_import"),
    ],
)
def test_the_import_machinery_is_refused(src, code):
    """The interpreter's importers load modules by name, as `__import__` does: `__loader__` and
    `__spec__` as plain names and `sys.meta_path`, `sys.path_hooks`, `sys.path_importer_cache`."""
    assert verdict(src) == code
