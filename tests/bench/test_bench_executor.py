"""`azr-jax bench executor`: one JSON record with the configured isolation, both baselines
(isolation=none; the same isolation without the seccomp filter) and the hanging batch."""

import json

import pytest

from azr_jax.bench import cli as bench_cli
from tests.bench.test_bench_sample_train import _args

SMALL = ["--set", "sandbox.isolation=none", "--set", "sandbox.workers=1", "--jobs", "8",
         "--hang-jobs", "4", "--hang-fraction", "0.25", "--hang-timeout-s", "0.5"]


def test_bench_executor_record_has_both_baselines(capsys):
    assert bench_cli.main(_args("executor", SMALL)) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["bench"] == "executor" and record["isolation"]["mode"] == "none"
    assert record["valid_jobs"] == 8 and record["validations_per_s"] > 0
    assert record["baseline_validations_per_s"] > 0 and record["seccomp_off_validations_per_s"] > 0
    # The ratio comes from the unrounded rates; the record's rates are rounded to 0.1.
    ratio = record["validations_per_s"] / record["seccomp_off_validations_per_s"]
    assert record["seccomp_ratio"] == pytest.approx(ratio, rel=0.01, abs=0.001)
    hang = record["hang_batch"]
    assert hang["never_terminate"] == 1 and hang["timed_out"] == 1


def test_bench_executor_without_seccomp_has_no_seccomp_baseline(capsys):
    assert bench_cli.main(_args("executor", SMALL + ["--set", "sandbox.seccomp=false"])) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["isolation"]["layers"]["seccomp"] == "off (sandbox.seccomp=false)"
    assert "seccomp_off_validations_per_s" not in record and record["baseline_validations_per_s"] > 0


@pytest.mark.parametrize("flag, value, message", [
    ("--hang-fraction", "2", "expects a number in (0, 1]"),  # more hanging jobs than jobs: wrong counts
    ("--hang-fraction", "0", "expects a number in (0, 1]"),
    ("--hang-fraction", "-0.5", "expects a number in (0, 1]"),
    ("--hang-timeout-s", "0", "expects a positive number"),
])
def test_hang_settings_out_of_range_are_refused(flag, value, message):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "azr_jax.cli", "bench", "executor", flag, value],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


class _ModelSandbox:
    """A stand-in for the sandbox pool on a made-up clock: its first run pays 100 s of start-up
    (zygotes), each job then costs 0.04 s (0.02 s without seccomp, 0.01 s with isolation none), a
    program that never ends its `timeout_s` (and times out), corpus program 12 takes 0.6 s (past a
    0.5 s timeout) and corpus program 0 fails."""

    clock = 0.0

    def __init__(self, cfg):
        self.cfg, self.workers, self.started = cfg, 1, False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def isolation_report(self):
        return {"mode": self.cfg.isolation, "seccomp": self.cfg.seccomp}

    def run(self, jobs):
        import types

        from azr_jax.bench.executor_programs import NEVER_ENDS, PROGRAMS

        if not self.started:
            _ModelSandbox.clock += 100.0
            self.started = True
        cost = 0.01 if self.cfg.isolation == "none" else 0.04 if self.cfg.seccomp else 0.02
        results = []
        for job in jobs:
            takes = float("inf") if job.program == NEVER_ENDS[0] else 0.6 if job.program == PROGRAMS[12][0] else cost
            timed_out = takes > self.cfg.timeout_s
            _ModelSandbox.clock += min(takes, self.cfg.timeout_s)
            results.append(types.SimpleNamespace(ok=not timed_out and job.program != PROGRAMS[0][0], timed_out=timed_out))
        return results


def _modelled_record(monkeypatch, capsys, argv):
    import types

    from azr_jax.bench import executor

    monkeypatch.setattr(executor, "Sandbox", _ModelSandbox)
    monkeypatch.setattr(executor, "time", types.SimpleNamespace(perf_counter=lambda: _ModelSandbox.clock))
    assert bench_cli.main(_args("executor", ["--set", "sandbox.isolation=bwrap", *argv])) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_executor_record_arithmetic(monkeypatch, capsys):
    r = _modelled_record(monkeypatch, capsys, ["--jobs", "10", "--hang-jobs", "16", "--hang-fraction", "0.125",
                                               "--hang-timeout-s", "0.5"])
    # 10 validations: 0.4 s with the filter (the 100 s start-up is the warm-up's, not timed)
    assert r["jobs"] == 10 and r["valid_jobs"] == 9 and r["validations_per_s"] == 25.0
    assert r["isolation"] == {"mode": "bwrap", "seccomp": True}
    assert r["baseline_validations_per_s"] == 100.0 and r["ratio"] == 0.25  # candidate / isolation=none
    assert r["seccomp_off_validations_per_s"] == 50.0 and r["seccomp_ratio"] == 0.5  # candidate / filter off
    hang = r["hang_batch"]
    # 16 jobs, 2 never end (jobs 0 and 8) and the slow program 12 times out too (0.5 s each), 13
    # take 0.04 s: 2.02 s; the same batch without the hanging ones: 1.1 s
    assert (hang["jobs"], hang["never_terminate"], hang["timed_out"], hang["timeout_s"]) == (16, 2, 3, 0.5)
    assert hang["wall_s"] == pytest.approx(2.02) and hang["wall_in_timeouts"] == pytest.approx(4.04)
    assert hang["wall_without_hangs_s"] == pytest.approx(1.1)
    assert hang["extra_wall_in_timeouts"] == pytest.approx(1.84)  # (2.02 - 1.1) / 0.5
    assert hang["serial_would_be_s"] == 1.0  # the 2 hanging jobs one after another


@pytest.mark.parametrize("fraction, hanging", [("1", 4), ("0.1", 1)])
def test_bench_executor_hang_counts_at_the_extremes(fraction, hanging, monkeypatch, capsys):
    """Every program hanging, and a share that rounds to none (at least one hangs); --no-baseline
    leaves the baselines out."""
    r = _modelled_record(monkeypatch, capsys, ["--no-baseline", "--jobs", "2", "--hang-jobs", "4",
                                               "--hang-fraction", fraction, "--hang-timeout-s", "0.5"])
    assert not any(k.startswith(("baseline", "seccomp", "ratio")) for k in r), sorted(r)
    assert r["hang_batch"]["never_terminate"] == r["hang_batch"]["timed_out"] == hanging  # program 12 not in 4 jobs


def test_bench_out_file_holds_the_printed_record(monkeypatch, capsys, tmp_path):
    """--out gets the line printed on stdout; a --out that cannot be written is refused before the
    benchmark runs, not after it; the host load is read before and after the run."""
    from azr_jax.bench import executor
    from azr_jax.errors import UserError

    ran, loads = [], iter([1.5, 2.5])
    monkeypatch.setattr(executor, "run", lambda args: ran.append(args) or {"bench": "executor", "validations_per_s": 3.0})
    monkeypatch.setattr(bench_cli, "_load_average", lambda: next(loads))
    out = tmp_path / "record.json"
    assert bench_cli.main(_args("executor", ["--out", str(out)])) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed and json.loads(printed)["validations_per_s"] == 3.0
    assert (json.loads(printed)["host_load_1min_start"], json.loads(printed)["host_load_1min_end"]) == (1.5, 2.5)
    with pytest.raises(UserError, match="does not exist"):
        bench_cli.main(_args("executor", ["--out", str(tmp_path / "missing" / "record.json")]))
    assert len(ran) == 1


def test_a_set_key_outside_the_sandbox_section_is_refused():
    """`bench executor --set model.preset=nano` was accepted and silently not applied."""
    from azr_jax.bench import executor
    from azr_jax.errors import UserError

    with pytest.raises(UserError, match="--set model.preset is not used by bench executor, which reads sandbox"):
        executor.run(_args("executor", ["--set", "model.preset=nano"]))


def test_bench_executor_defaults_are_the_documented_ones():
    """docs/sandbox.md: 400 validations; a 100-job batch of which 5 % never end, timeout 2 s."""
    args = _args("executor", [])
    assert (args.jobs, args.hang_jobs, args.hang_fraction, args.hang_timeout_s) == (400, 100, 0.05, 2.0)


def test_the_hanging_programs_are_spread_over_the_batch(monkeypatch, capsys):
    """--hang-fraction 0.3 of 10 jobs: 3 never end, at jobs 0, 3 and 6 (every 10 // 3rd job), not
    bunched together where they would hold the same workers."""
    from azr_jax.bench.executor_programs import NEVER_ENDS

    batches = []

    class Recording(_ModelSandbox):
        def run(self, jobs):
            batches.append([job.program == NEVER_ENDS[0] for job in jobs])
            return super().run(jobs)

    monkeypatch.setitem(globals(), "_ModelSandbox", Recording)  # what _modelled_record installs
    r = _modelled_record(monkeypatch, capsys, ["--no-baseline", "--jobs", "2", "--hang-jobs", "10",
                                               "--hang-fraction", "0.3", "--hang-timeout-s", "0.5"])
    assert r["hang_batch"]["never_terminate"] == 3
    assert [i for i, hangs in enumerate(batches[-1]) if hangs] == [0, 3, 6]


def test_a_closed_stdout_is_one_line_and_the_record_still_goes_to_out(tmp_path):
    """`azr-jax bench ... --out FILE | head -c1`: the reader is gone before the record is printed.
    It was a BrokenPipeError traceback, and --out, written after the print, was never written."""
    import os
    import subprocess
    import sys

    out = tmp_path / "record.json"
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads stdout
    try:
        proc = subprocess.run([sys.executable, "-m", "azr_jax.cli", "bench", "executor", *SMALL, "--no-baseline",
                               "--out", str(out)], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "azr-jax: error: standard output was closed before all of the output was written (broken pipe)")
    assert "Traceback" not in proc.stderr
    assert json.loads(out.read_text())["bench"] == "executor"
