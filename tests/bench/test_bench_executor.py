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
