"""`azr-jax bench packing`: the self-play-shaped batch is laid out like the trainer's rollouts, and
the benchmark prints one JSON record comparing the bucketed update with the padded one."""

import json

import pytest

from azr_jax.bench import cli as bench_cli
from azr_jax.bench.packing import self_play_like_batch
from tests.bench.test_bench_sample_train import _args

TINY = ["--layers", "1", "--vocab", "64", "--rows", "8", "--solver-len", "20", "30",
        "--proposer-len", "60", "90", "--response-bucket", "32", "--micro-batch", "4", "--repeats", "1"]


def test_batch_layout_is_the_rollout_layout():
    args = _args("packing", TINY)
    batch = self_play_like_batch(64, args)
    lengths = batch["mask"].sum(1)
    assert (20 <= lengths[:4]).all() and (lengths[:4] <= 30).all() and (60 <= lengths[4:]).all()
    width = batch["tokens"].shape[1]
    prompt_width = width - 32
    for r in range(8):
        n_resp = int(batch["loss_mask"][r].sum())
        assert n_resp == lengths[r] // 3
        assert batch["mask"][r, prompt_width - 1] == 1  # prompts end where the completion bucket starts
        assert batch["loss_mask"][r, prompt_width] == 1 and batch["loss_mask"][r, :prompt_width].sum() == 0
        assert list(batch["positions"][r][batch["mask"][r] == 1]) == list(range(lengths[r]))


def test_bench_packing_prints_one_record(capsys):
    assert bench_cli.main(_args("packing", TINY)) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["bench"] == "packing" and record["model"]["layers"] == 1
    assert record["packed_slots"] < record["padded_slots"] and record["real_tokens"] <= record["packed_slots"]
    # how busy the machine was, so a contended comparison can be told apart
    assert record["host_load_1min_start"] >= 0 and record["host_load_1min_end"] >= 0 and record["host_cpus"] >= 1
    assert record["seconds"] > 0 and record["baseline_seconds"] > 0 and record["ratio"] > 0


def test_cli_main_argv_picks_the_benchmark_flags(monkeypatch):
    """`azr_jax.cli.main(argv)` (not only the process's sys.argv) decides which flags load."""
    from azr_jax.cli import _lazy_parser

    monkeypatch.setattr("sys.argv", ["azr-jax"])
    argv = ["bench", "packing", "--rows", "4"]
    args = _lazy_parser(argv).parse_args(argv)
    assert args.bench == "packing" and args.rows == 4


@pytest.mark.parametrize("argv", [["train", "--repeats", "0"], ["packing", "--rows", "0"], ["executor", "--jobs", "0"],
                                  ["train", "--micro-batch", "0"], ["sample", "--batch", "-2"]])
def test_sizes_and_counts_must_be_positive(argv):
    """They used to fail deep inside the run (IndexError, ValueError) or, for --micro-batch 0,
    silently measure without micro-batching."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "azr_jax.cli", "bench", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "expects a positive integer" in r.stderr and "Traceback" not in r.stderr, r.stderr
