"""`azr-jax bench sample|train|logits|attention`: flags resolve to the intended shape, the roofline arithmetic, and
one tiny end-to-end run of each printing the JSON record (values are timings: only their
presence and sign are checked, never their size)."""

import argparse
import json
import os

import pytest

from azr_jax.bench import cli as bench_cli
from azr_jax.bench.model_shape import model_config_from_args
from azr_jax.bench.sample import roofline_tokens_per_s
from azr_jax.errors import UserError
from azr_jax.models import get_preset

TINY = ["--preset", "qwen2.5-0.5b", "--layers", "1", "--hidden", "128", "--vocab", "256",
        "--batch", "2", "--prompt-len", "8", "--new-tokens", "4", "--repeats", "1"]


def _args(name, argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="bench")
    p = sub.add_parser(name)
    bench_cli.importlib.import_module(bench_cli.BENCHES[name][0]).add_arguments(p)
    p.add_argument("--out", default=None)
    return parser.parse_args([name, *argv])


def test_shape_flags_shrink_the_preset():
    cfg = model_config_from_args(_args("sample", TINY))
    base = get_preset("qwen2.5-0.5b")
    assert (cfg.num_layers, cfg.hidden_size, cfg.vocab_size) == (1, 128, 256)
    assert cfg.num_heads == 128 // base.head_dim and cfg.num_heads % cfg.num_kv_heads == 0
    over = model_config_from_args(_args("train", ["--set", "model.overrides.num_layers=3"]))
    assert over.num_layers == 3 and over.hidden_size == base.hidden_size
    with pytest.raises(UserError, match="--hidden 100 must be a multiple of the head_dim"):
        model_config_from_args(_args("sample", ["--hidden", "100"]))


def test_roofline_is_weight_plus_kv_bytes_over_bandwidth():
    cfg = get_preset("qwen2.5-0.5b")
    weights = cfg.num_params() * 2  # tied embeddings: the output head reads the table once per step
    kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
    # two tokens over a 100-token prompt, batch 4, 1 TB/s: the prefill draws the first, one
    # decode step the second (reading the weights and the KV of 101 tokens per row)
    want = 4 * 2 * 1e12 / (weights + 4 * 101 * kv)
    assert roofline_tokens_per_s(cfg, 4, 100, 2, 2, 1e12) == pytest.approx(want)
    # three tokens: two decode steps, over 101 and 102 tokens
    assert roofline_tokens_per_s(cfg, 4, 100, 3, 2, 1e12) == pytest.approx(4 * 3 * 1e12 / (2 * weights + 4 * 203 * kv))


def test_roofline_of_a_whole_call_adds_the_prefill_at_peak_flops():
    """The timer includes the prefill, so the bound must too (128 prompts of 512 tokens)."""
    cfg = get_preset("qwen2.5-1.5b")
    decode_only = roofline_tokens_per_s(cfg, 128, 512, 512, 2, 3.35e12)
    head = 2 * cfg.hidden_size * cfg.vocab_size  # the output head runs at the last prompt position only
    # forward = a third of flops_per_token; its attention part (4 L N H per key) counted causally:
    # position i of 512 attends to i keys, 512 * 513 / 2 in all, not 512 * 512
    attention_per_key = cfg.flops_per_token(1) / 3 - cfg.flops_per_token(0) / 3
    assert attention_per_key == 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim
    prefill_flops = 512 * (cfg.flops_per_token(0) / 3 - head) + head + attention_per_key * 512 * 513 / 2
    prefill_s = 128 * prefill_flops / 989e12
    decode_s = 128 * 512 / decode_only
    assert roofline_tokens_per_s(cfg, 128, 512, 512, 2, 3.35e12, 989e12) == pytest.approx(
        128 * 512 / (decode_s + prefill_s))


def test_time_it_reports_the_median_of_an_even_count_as_the_middle_mean(monkeypatch):
    from azr_jax.bench import common

    clock = iter([0.0, 1.0, 10.0, 13.0])  # two timed calls: 1 s and 3 s
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    assert common.time_it(lambda: None, warmup=0, repeats=2) == 2.0


def test_peak_numbers_tell_the_h100_and_h200_variants_apart():
    """JAX names the SXM H100 "NVIDIA H100 80GB HBM3"; a PCIe card peaks ~25 % lower and has
    HBM2e, so reading every H100 as SXM would understate its MFU and bandwidth use."""
    from azr_jax.bench.common import peak_numbers

    assert peak_numbers("NVIDIA H100 80GB HBM3") == (989e12, 3.35e12)
    assert peak_numbers("NVIDIA H100 PCIe") == (756e12, 2.0e12)
    assert peak_numbers("NVIDIA H100 NVL") == (835e12, 3.9e12)
    assert peak_numbers("NVIDIA H200") == (989e12, 4.8e12)
    assert peak_numbers("NVIDIA GH200 480GB") == (989e12, None)  # not an H200: no bandwidth figure
    assert peak_numbers("NVIDIA H200 NVL") == (835e12, 4.8e12)
    assert peak_numbers("TPU v5 lite") == (197e12, 0.819e12)
    assert peak_numbers("cpu") == (None, None)


def test_a_failing_sample_baseline_keeps_the_jax_figure(monkeypatch, capsys):
    """A compile error or out-of-memory on the torch side used to lose the whole record."""
    from azr_jax.bench import sample

    def broken(*a, **k):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(sample, "_torch_side", broken)
    assert bench_cli.main(_args("sample", TINY)) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tokens_per_s"] > 0 and record["baseline_error"] == "RuntimeError: CUDA out of memory"
    assert "not compiled" in record["baseline"] and "ratio" not in record


def test_the_train_baseline_model_is_gone_when_its_memory_is_handed_back(monkeypatch, capsys):
    """With remat, a bound method of the model kept in a local held the whole torch model (its
    GPU memory) when empty_cache() ran, and so through the JAX side's run."""
    import gc
    import weakref

    import transformers

    from azr_jax.bench import train

    made, alive_at_free = [], []
    real_from_config, real_free = transformers.AutoModelForCausalLM.from_config, train._free_torch_memory

    def tracked(*a, **k):
        model = real_from_config(*a, **k)
        made.append(weakref.ref(model))
        return model

    def free():
        gc.collect()
        alive_at_free.append(made[0]() is not None)
        real_free()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", tracked)
    monkeypatch.setattr(train, "_free_torch_memory", free)
    assert bench_cli.main(_args("train", TINY + ["--set", "model.remat=full"])) == 0
    assert json.loads(capsys.readouterr().out)["remat"] == "full"
    assert alive_at_free == [False]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sample", "train"])
def test_bench_prints_one_json_record_with_baseline(name, capsys):
    assert bench_cli.main(_args(name, TINY)) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["bench"] == name and record["device"] == "cpu"
    assert record["tokens_per_s"] > 0 and record["baseline_tokens_per_s"] > 0
    assert record["ratio"] == pytest.approx(record["baseline_seconds"] / record["seconds"])
    assert record["model"]["layers"] == 1 and record["batch"] == 2
    if name == "train":
        assert record["baseline"] == "torch fwd+bwd+AdamW (transformers model)"  # remat none: no checkpointing
    # Set before JAX starts, so a torch baseline can share the accelerator (bench sample runs it second).
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_mfu_is_not_measured_against_the_bf16_peak_for_float32(monkeypatch, capsys):
    """The peaks are bf16 dense figures; a float32 step on an H100 was divided by them."""
    from azr_jax.bench import train as bench_train

    monkeypatch.setattr(bench_train, "device_info", lambda: {"device": "gpu", "device_kind": "NVIDIA H100 80GB HBM3"})
    monkeypatch.setattr(bench_train, "jax_update", lambda *a, **k: (0.5, None))
    for dtype, has_mfu in (("float32", False), ("bfloat16", True)):
        assert bench_cli.main(_args("train", [*TINY, "--dtype", dtype, "--no-baseline"])) == 0
        record = json.loads(capsys.readouterr().out)
        assert (record["mfu"] is not None) == has_mfu, (dtype, record["mfu"])


@pytest.mark.slow
def test_bench_train_passes_remat_to_both_sides(capsys):
    """`--set model.remat=full` (needed for long sequences on one GPU) reaches the JAX step and
    turns on gradient checkpointing in the torch baseline; the record says which."""
    assert bench_cli.main(_args("train", [*TINY, "--set", "model.remat=full"])) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["remat"] == "full" and record["tokens_per_s"] > 0 and record["baseline_tokens_per_s"] > 0
    assert record["baseline"] == "torch fwd+bwd+AdamW (transformers model, gradient checkpointing)"
    with pytest.raises(UserError, match="'model.remat' must be one of"):
        bench_cli.main(_args("train", [*TINY, "--set", "model.remat=everything"]))


@pytest.mark.slow
def test_bench_train_micro_batches_both_sides_and_keeps_the_jax_figure_when_the_baseline_fails(capsys, monkeypatch):
    # Micro-batches bound the float32 logits (batch x length x vocab) at real model sizes; a
    # baseline that runs out of memory must not lose the JAX side's record.
    from azr_jax.bench import train as bench_train

    assert bench_cli.main(_args("train", [*TINY, "--micro-batch", "1"])) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["micro_batch"] == 1 and record["batch"] == 2 and record["baseline_device"] == "cpu"
    assert record["baseline_tokens_per_s"] > 0

    def out_of_memory(*args):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(bench_train, "_torch_side", out_of_memory)
    assert bench_cli.main(_args("train", TINY)) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tokens_per_s"] > 0 and record["baseline_error"] == "RuntimeError: CUDA out of memory"
    assert "ratio" not in record
    with pytest.raises(UserError, match="must divide"):
        bench_cli.main(_args("train", [*TINY, "--micro-batch", "3"]))


@pytest.mark.slow
def test_bench_logits_compares_the_chunked_head_with_the_whole_one(capsys):
    """Both sides' compiled scratch memory (a compiler figure, not a timing: with a 4096-token
    vocabulary over 256 positions the whole head's float32 logits dominate it) and their times."""
    argv = ["--preset", "qwen2.5-0.5b", "--layers", "1", "--hidden", "128", "--vocab", "4096",
            "--batch", "2", "--prompt-len", "16", "--new-tokens", "240", "--logits-chunk", "16", "--repeats", "1"]
    assert bench_cli.main(_args("logits", argv)) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["bench"] == "logits" and record["logits_chunk"] == 16 and record["seq_len"] == 256
    assert record["seconds"] > 0 and record["baseline_seconds"] > 0
    assert record["temp_bytes"] * 2 < record["baseline_temp_bytes"], record
    assert record["memory_ratio"] == pytest.approx(record["baseline_temp_bytes"] / record["temp_bytes"])


@pytest.mark.slow
def test_bench_attention_compares_chunked_queries_with_all_at_once(capsys):
    """As `bench logits`, for `rl.attention_chunk`: with 8 heads over 2048 positions (and a small
    MLP) the float32 scores, 134 MB per copy, dominate the unchunked step's scratch memory."""
    argv = ["--preset", "qwen2.5-0.5b", "--layers", "1", "--hidden", "512", "--vocab", "256",
            "--set", "model.overrides.intermediate_size=256", "--batch", "1", "--prompt-len", "48",
            "--new-tokens", "2000", "--attention-chunk", "128", "--repeats", "1"]
    assert bench_cli.main(_args("attention", argv)) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["bench"] == "attention" and record["attention_chunk"] == 128 and record["seq_len"] == 2048
    assert record["baseline"] == "all queries at once (rl.attention_chunk=0)"
    assert record["seconds"] > 0 and record["baseline_seconds"] > 0
    assert record["temp_bytes"] * 2 < record["baseline_temp_bytes"], record


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_negative_or_non_finite_sample_temperature_is_an_argument_error(value, capsys):
    """It used to pass argparse and fail only after JAX had started and the model was built."""
    from azr_jax.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["bench", "sample", "--temperature", value])
    assert stop.value.code == 2 and "--temperature: expects a number >= 0" in capsys.readouterr().err
