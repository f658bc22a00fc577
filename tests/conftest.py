"""Test-wide setup: 8 fake CPU devices so mesh tests (2x4, 8x1) run anywhere."""

import os

import pytest

# Must be set before JAX initialises its backend; harmless for single-device tests.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



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
