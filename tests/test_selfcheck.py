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


def test_every_failing_check_is_reported_and_fails_the_run(monkeypatch, capsys):
    """A check that crashes (not only one that fails its condition) is a FAIL line; the checks
    after it still run; the exit status is 1."""
    import argparse

    from azr_jax import selfcheck

    def crashes():
        raise RuntimeError("no accelerator")

    def fails():
        raise selfcheck.CheckFailed("logprobs differ")

    for name, fn in (("_check_model", crashes), ("_check_sampler", lambda: "fine"), ("_check_sandbox", fails),
                     ("_check_scoring", crashes)):
        monkeypatch.setattr(selfcheck, name, fn)
    assert selfcheck.main(argparse.Namespace(skip_sandbox=False)) == 1
    out, err = capsys.readouterr()
    status = [line[:14] for line in out.splitlines()]
    assert status == ["[FAIL] model  ", "[ok  ] sampler", "[FAIL] sandbox", "[FAIL] scoring"], out
    assert "RuntimeError: no accelerator" in out and "CheckFailed: logprobs differ" in out
    assert "selfcheck: 3 check(s) failed" in err


def test_the_sampler_check_fails_on_a_logprob_gap(monkeypatch):
    """Sampler and trainer logprobs 1e-3 apart (a real mismatch) fail the check; equal ones pass."""
    import types

    import numpy as np

    import azr_jax.sampling
    from azr_jax import selfcheck
    from azr_jax.rl import logprobs

    sampled = np.array([[-1.0, -2.0, -3.0]], np.float32)
    monkeypatch.setattr(azr_jax.sampling, "generate", lambda *a, **k: types.SimpleNamespace(
        lengths=np.array([3]), tokens=np.array([[9, 8, 7]]), logprobs=sampled))
    gap = [0.0]
    # the trainer's logprobs over prompt (4 tokens) + completion (3); the last one off by `gap`
    monkeypatch.setattr(logprobs, "token_logprobs", lambda params, batch, cfg: np.array(
        [[0, 0, 0, 0, -1.0, -2.0, -3.0 + gap[0]]], np.float32))
    assert "sampled 3 tokens" in selfcheck._check_sampler()
    gap[0] = 1e-3
    with pytest.raises(selfcheck.CheckFailed, match="sampler and trainer logprobs differ"):
        selfcheck._check_sampler()


class _FakeSandbox:
    """Runs the check's two jobs in-process: the first answers `answer` (deterministic or not), the
    second writes its argument's path when `escape` (a containment failure)."""

    answer, deterministic, escape = "[3, 2, 1]", True, False

    def __init__(self, cfg):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def isolation_report(self):
        return {"mode": "bwrap", "layers": {"namespaces": True, "seccomp": True}, "missing": []}

    def run(self, jobs):
        import ast

        from azr_jax.sandbox import JobResult

        if _FakeSandbox.escape:
            with open(ast.literal_eval(jobs[1].calls[0]), "w") as f:
                f.write("x")
        ok = JobResult(outputs=[_FakeSandbox.answer], errors=[None], deterministic=_FakeSandbox.deterministic,
                       matches=None, timed_out=False)
        return [ok, JobResult(outputs=[None], errors=["PermissionError"], deterministic=True, matches=None,
                              timed_out=False)]


@pytest.mark.parametrize("setting, message", [
    (None, None),
    (("escape", True), "a sandboxed program wrote to the host's"),
    (("deterministic", False), "simple program failed"),
    (("answer", "[1, 2, 3]"), "simple program failed"),
])
def test_the_sandbox_check_fails_on_an_escape_or_a_wrong_run(setting, message, monkeypatch, tmp_path):
    import tempfile

    import azr_jax.sandbox
    from azr_jax import selfcheck

    monkeypatch.setattr(azr_jax.sandbox, "Sandbox", _FakeSandbox)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    if setting:
        monkeypatch.setattr(_FakeSandbox, *setting)
    if message is None:
        assert "mode bwrap, layers: namespaces, seccomp; host files untouched" == selfcheck._check_sandbox()
    else:
        with pytest.raises(selfcheck.CheckFailed, match=message):
            selfcheck._check_sandbox()
    assert list(tmp_path.iterdir()) == []  # an escaped write does not outlive the check


@pytest.mark.parametrize("propose, solve, passes", [
    ({"valid": True, "reward": 0.5}, {"accuracy": 1.0, "reward": 1.0}, True),
    ({"valid": False, "reward": 0.5}, {"accuracy": 1.0, "reward": 1.0}, False),
    ({"valid": True, "reward": 1.0}, {"accuracy": 1.0, "reward": 1.0}, False),  # learnability of 2/2 solved is 0
    ({"valid": True, "reward": 0.5}, {"accuracy": 0.0, "reward": 1.0}, False),
    ({"valid": True, "reward": 0.5}, {"accuracy": 1.0, "reward": 0.0}, False),
])
def test_the_scoring_check_wants_the_known_rewards(propose, solve, passes, monkeypatch):
    import azr_jax.sandbox
    from azr_jax import selfcheck
    from azr_jax.azr import scoring

    monkeypatch.setattr(azr_jax.sandbox, "Sandbox", _FakeSandbox)
    monkeypatch.setattr(scoring, "score_records", lambda records, cfg, sb: (propose, solve))
    if passes:
        assert "solver answer scored 1.0" in selfcheck._check_scoring()
    else:
        with pytest.raises(selfcheck.CheckFailed):
            selfcheck._check_scoring()


def test_skip_sandbox_runs_only_the_model_and_sampler_checks(monkeypatch, capsys):
    """README: `--skip-sandbox` leaves out the sandbox and scoring checks (a machine without a
    usable sandbox); everything else still runs."""
    import argparse

    from azr_jax import selfcheck

    ran = []
    for name in ("_check_model", "_check_sampler", "_check_sandbox", "_check_scoring"):
        monkeypatch.setattr(selfcheck, name, lambda name=name: ran.append(name) or "fine")
    assert selfcheck.main(argparse.Namespace(skip_sandbox=True)) == 0
    assert ran == ["_check_model", "_check_sampler"]
    assert capsys.readouterr().out.splitlines()[-1] == "selfcheck: all checks passed"


def test_the_sandbox_check_lists_only_active_layers_and_names_the_missing_ones(monkeypatch, tmp_path):
    """A layer reported as False or as a reason it is off ("off (sandbox.seccomp=false)") is not
    an active layer; what the report says is missing is named in capitals."""
    import tempfile

    import azr_jax.sandbox
    from azr_jax import selfcheck

    report = {"mode": "none", "layers": {"rlimits": True, "namespaces": False, "seccomp": "off (sandbox.seccomp=false)"},
              "missing": ["namespaces", "seccomp"]}
    monkeypatch.setattr(azr_jax.sandbox, "Sandbox", _FakeSandbox)
    monkeypatch.setattr(_FakeSandbox, "isolation_report", lambda self: report)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    assert selfcheck._check_sandbox() == "mode none, layers: rlimits; MISSING: namespaces, seccomp; host files untouched"
