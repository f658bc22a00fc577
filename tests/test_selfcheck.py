"""`azr-jax selfcheck` (`bash launch/local.sh selfcheck`) on a fresh install passes end to end."""

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_selfcheck_passes():
    r = subprocess.run([sys.executable, "-m", "azr_jax.cli", "selfcheck"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert [l[6:].split()[0] for l in lines if l.startswith("[ok  ]")] == ["model", "sampler", "sandbox", "scoring"]
    assert lines[-1] == "selfcheck: all checks passed"
