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


def test_batch_layout_with_clipped_responses_and_prompts_across_buckets():
    """5 rows: 2 solver rows (the smaller half) of exactly 2 tokens, 3 proposer rows of exactly 600.
    A 2-token row still has one response token; a 600-token row's response (200) is cut to the
    32-slot completion bucket; the prompt bucket (640) holds the longest prompt (568)."""
    args = _args("packing", [*TINY[:4], "--rows", "5", "--solver-len", "2", "2", "--proposer-len", "600", "600",
                             "--response-bucket", "32"])
    batch = self_play_like_batch(64, args)
    assert batch["tokens"].shape == (5, 640 + 32)
    assert batch["mask"].sum(1).tolist() == [2, 2, 600, 600, 600]
    assert batch["loss_mask"].sum(1).tolist() == [1, 1, 32, 32, 32]
    assert (batch["loss_mask"][:, :640] == 0).all() and (batch["mask"][:, 639] == 1).all()
    assert (batch["advantages"][batch["loss_mask"] == 0] == 0).all()  # no advantage outside the response
    again = self_play_like_batch(64, args)  # a fixed seed: the same batch in every run
    assert all((again[k] == batch[k]).all() for k in batch)


def test_packing_refuses_a_length_range_with_min_above_max():
    from azr_jax.bench import packing
    from azr_jax.errors import UserError

    with pytest.raises(UserError, match="--solver-len MIN MAX needs MIN <= MAX, got 30 20"):
        packing.run(_args("packing", [*TINY, "--solver-len", "30", "20"]))
    with pytest.raises(UserError, match="--proposer-len MIN MAX needs MIN <= MAX, got 90 60"):
        packing.run(_args("packing", [*TINY, "--proposer-len", "90", "60"]))


def test_bench_packing_record_arithmetic(monkeypatch, capsys):
    """Both update steps stubbed (padded: 3 s, bucketed: 2 s): the record's seconds, rates and
    ratio follow from them, and each side got the batch and settings it should."""
    import jax.numpy as jnp
    import numpy as np

    from azr_jax.bench import packing
    from azr_jax.rl import bucketed, update

    seen, last = {}, []

    def fake_step(name, seconds):
        def step(state, feed):
            seen[name] = feed
            last.append(seconds)
            return state, {"loss": jnp.zeros(())}
        return step

    def make_padded(cfg, rl, optim, *, compute_dtype, remat="none"):
        seen["padded_rl"], seen["padded_remat"] = rl, remat
        return fake_step("padded", 3.0)

    def make_bucketed(cfg, rl, optim, *, length_buckets, compute_dtype, remat="none"):
        seen["bucketed_rl"], seen["buckets"], seen["bucketed_remat"] = rl, length_buckets, remat
        return fake_step("bucketed", 2.0)

    def fake_time_it(fn, *, warmup, repeats):
        seen.setdefault("timed", []).append((warmup, repeats))
        fn()
        return last[-1]

    monkeypatch.setattr(update, "make_train_step", make_padded)
    monkeypatch.setattr(update, "init_train_state", lambda *a: None)
    monkeypatch.setattr(bucketed, "make_bucketed_train_step", make_bucketed)
    monkeypatch.setattr(packing, "time_it", fake_time_it)
    argv = [*TINY, "--solver-len", "24", "24", "--set", "model.remat=full"]  # MIN == MAX is a valid range
    assert bench_cli.main(_args("packing", argv)) == 0
    r = json.loads(capsys.readouterr().out)
    batch = self_play_like_batch(64, _args("packing", argv))
    real = int(batch["mask"].sum())  # prompt and response tokens of every row
    assert batch["mask"].sum(1)[:4].tolist() == [24] * 4
    assert r["real_tokens"] == real and r["padded_slots"] == 8 * 160  # prompt bucket 128 + completion 32
    # longest rows first, 4 per micro-batch: the proposer rows (<= 90) and the solver rows each fit 128
    assert r["packed_slots"] == 2 * 4 * 128
    assert r["seconds"] == 2.0 and r["real_tokens_per_s"] == real / 2.0
    assert r["baseline_seconds"] == 3.0 and r["baseline_real_tokens_per_s"] == real / 3.0
    assert r["ratio"] == 1.5  # padded / bucketed: > 1 means bucketing is faster
    # each side's timed steps (--repeats 1) come after a warm-up step, which compiles its bucket widths
    assert seen["timed"] == [(1, 1), (1, 1)]
    assert seen["padded_rl"].micro_batch_size == seen["bucketed_rl"].micro_batch_size == 4
    # model.remat reaches both sides (it was silently ignored) and the record says which was timed
    assert seen["padded_remat"] == seen["bucketed_remat"] == r["remat"] == "full"
    assert 160 in seen["buckets"] and set(packing.BUCKETS) <= set(seen["buckets"])  # never wider than padded
    # the bucketed side gets host arrays (its packing is part of its time), the padded side device arrays
    assert all(isinstance(v, np.ndarray) for v in seen["bucketed"].values())
    assert not any(isinstance(v, np.ndarray) for v in seen["padded"].values())
    assert (np.asarray(seen["padded"]["tokens"]) == seen["bucketed"]["tokens"]).all()  # the same batch


def test_bench_packing_defaults_are_the_documented_ones():
    """docs/benchmarks.md: 48 rows (solver rows of 150-230 tokens, proposer rows of 330-560) in
    micro-batches of 16 on the nano preset, 30 720 padded slots (48 x (384 + a 256-slot
    completion bucket))."""
    args = _args("packing", [])
    assert (args.rows, tuple(args.solver_len), tuple(args.proposer_len)) == (48, (150, 230), (330, 560))
    assert (args.micro_batch, args.response_bucket, args._default_preset) == (16, 256, "nano")
    assert self_play_like_batch(1024, args)["tokens"].size == 30_720


def test_batch_tokens_are_real_ids_only_where_the_mask_is():
    batch = self_play_like_batch(64, _args("packing", TINY))
    real = batch["mask"] == 1
    assert (batch["tokens"][real] >= 1).all() and (batch["tokens"][real] < 64).all()  # never the pad id 0
    assert (batch["tokens"][~real] == 0).all() and (batch["positions"][~real] == 0).all()
