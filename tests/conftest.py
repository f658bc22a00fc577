"""Test-wide setup: 8 fake CPU devices so mesh tests (2x4, 8x1) run anywhere, a compilation cache
for the session, and the session's own test count."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from cpu_flags import xla_flags

# Must be set before JAX initialises its backend; harmless for single-device tests. On CPU,
# compiled without LLVM's optimisation passes, which take most of the suite's compile time
# (cpu_flags.py); on an accelerator (launch/gpu/bench_one_gpu.sh) as a user's programs are.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", xla_flags(8, optimise=os.environ["JAX_PLATFORMS"] != "cpu"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Many tests (and the CLI subprocesses they start, which inherit this) compile the same small
# programs again; a compilation cache shared by the whole session compiles each once. It starts
# empty every session, so no earlier run's programs are reused.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _compilation_cache = tempfile.mkdtemp(prefix="azr_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _compilation_cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _compilation_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")



@pytest.fixture
def report_unraisable(monkeypatch):
    """`report(exc)` hands `exc` to sys.unraisablehook the way Python does for an exception no
    caller can receive (here, from a finaliser); the hook is Python's own, not pytest's (which
    turns reports into warnings), so a test can read what it prints or install its own."""
    import sys

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)

    def report(exc):
        class Finaliser:
            def __del__(self):
                raise exc

        Finaliser()

    return report


_COLLECTED = pytest.StashKey[int]()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    config.stash[_COLLECTED] = len(items)  # before -k, -m, --deselect or --lf take any away


@pytest.fixture
def whole_suite_count(request) -> int | None:
    """How many tests this session runs when it is the whole suite, as a bare `pytest` collects it;
    None when it runs part of it (some paths, -k, --lf ...)."""
    config = request.config
    root = config.rootpath
    if any(Path(arg).resolve() not in (root, root / "tests") for arg in config.args):
        return None
    collected = config.stash.get(_COLLECTED, None)
    return collected if collected == len(request.session.items) else None
