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


def test_a_failing_check_fails_under_python_O_too():
    # The checks must not be `assert`s: `python -O` (or PYTHONOPTIMIZE, set in some images)
    # strips those, and every check then "passed". A full forward shifted by 1e-3 must fail.
    code = (
        "import argparse, sys\n"
        "import azr_jax.models as models\n"
        "from azr_jax import selfcheck\n"
        "forward = models.forward\n"
        "def shifted(*args, **kwargs):\n"
        "    out = forward(*args, **kwargs)\n"
        "    return (out[0] + (1e-3 if kwargs.get('cache') is None else 0.0),) + tuple(out[1:])\n"
        "models.forward = shifted\n"
        "selfcheck._check_sampler = lambda: 'not run by this test'\n"  # the model check is the one that fails
        "sys.exit(selfcheck.main(argparse.Namespace(skip_sandbox=True)))\n"
    )
    r = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "[FAIL] model" in r.stdout and "differs from the full forward" in r.stdout
