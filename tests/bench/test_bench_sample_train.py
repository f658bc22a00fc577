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


@pytest.mark.parametrize("name,key", [("train", "rl.logits_chunk=512"), ("train", "rl.micro_batch_size=2"),
                                      ("sample", "model.remat=full"), ("logits", "model.compute_dtype=float32"),
                                      ("packing", "model.hf_dir=/ckpt")])
def test_a_set_key_the_benchmark_does_not_read_is_refused(name, key):
    """They were accepted and silently not applied: `bench train --set rl.logits_chunk=512`
    timed the whole output head, and the record did not say so."""
    with pytest.raises(UserError, match=f"--set {key.split('=')[0]} is not used by bench {name}, which reads "
                                        "model.preset, model.overrides, model.scan_layers"):
        model_config_from_args(_args(name, ["--set", key]))
    # the keys it reads are taken
    cfg = model_config_from_args(_args(name, ["--set", "model.overrides.num_layers=3", "--set", "model.scan_layers=false"]))
    assert (cfg.num_layers, cfg.scan_layers) == (3, False)


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


def test_time_it_leaves_out_the_warm_up_calls_and_reports_the_median(monkeypatch):
    """The warm-up calls (compilation) are not timed, and the figure is the median of the timed
    calls, not their mean (one slow outlier must not move it)."""
    from azr_jax.bench import common

    clock = [0.0]
    durations = iter([100.0, 100.0, 1.0, 9.0, 2.0])  # two slow warm-ups (compiling), then 1 s, 9 s, 2 s

    def call():
        clock[0] += next(durations)

    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])
    assert common.time_it(call, warmup=2, repeats=3) == 2.0  # median of 1, 9, 2 (the mean would be 4)
    assert next(durations, "all called") == "all called"  # 2 warm-ups + 3 timed calls, no more


def test_bench_argument_types_accept_their_bounds_and_refuse_infinity():
    from argparse import ArgumentTypeError

    from azr_jax.bench.common import fraction, non_negative_float, positive_float, positive_int

    assert fraction("1") == 1.0  # every program hangs: a valid (if extreme) --hang-fraction
    assert non_negative_float("0") == 0.0  # --temperature 0 is greedy decoding
    assert positive_int("1") == 1 and positive_float("0.5") == 0.5
    for parse, text in ((positive_float, "inf"), (positive_float, "nan"), (fraction, "1.5"), (positive_int, "0"),
                        (positive_int, "two")):
        with pytest.raises(ArgumentTypeError, match="expects"):
            parse(text)


def test_shape_flags_keep_heads_divisible_and_the_mlp_ratio():
    base = get_preset("qwen2.5-0.5b")  # 14 query heads, 2 KV heads, head_dim 64, MLP 4864 / 896
    cfg = model_config_from_args(_args("sample", ["--hidden", "192"]))
    # 3 query heads: 2 KV heads do not divide them, 1 does
    assert (cfg.num_heads, cfg.num_kv_heads) == (3, 1) and base.num_kv_heads == 2
    # the preset's MLP ratio (5.43) at 128: 695 rounded to the nearest multiple of 64, 704
    assert model_config_from_args(_args("sample", ["--hidden", "128"])).intermediate_size == 704
    # a ratio that rounds to 0 multiples of 64 still keeps one (not a zero-width MLP)
    tiny = model_config_from_args(_args("sample", ["--set", "model.overrides.intermediate_size=32", "--hidden", "64"]))
    assert tiny.intermediate_size == 64


def test_preset_and_scan_layers_come_from_the_config_unless_a_flag_says():
    chosen = model_config_from_args(_args("sample", ["--set", "model.preset=qwen2.5-1.5b"]))
    assert chosen.hidden_size == get_preset("qwen2.5-1.5b").hidden_size  # not the bench's default 0.5b
    flag = model_config_from_args(_args("sample", ["--set", "model.preset=qwen2.5-1.5b", "--preset", "qwen2.5-0.5b"]))
    assert flag.hidden_size == get_preset("qwen2.5-0.5b").hidden_size  # --preset wins
    assert model_config_from_args(_args("sample", ["--set", "model.scan_layers=false"])).scan_layers is False
    assert model_config_from_args(_args("sample", [])).scan_layers is True


def test_dtype_defaults_by_platform_and_the_shape_record():
    from azr_jax.bench.model_shape import dtype_from_args, model_shape_record

    args = _args("sample", [])
    assert dtype_from_args(args, "cpu") == "float32" and dtype_from_args(args, "gpu") == "bfloat16"
    assert dtype_from_args(_args("sample", ["--dtype", "bfloat16"]), "cpu") == "bfloat16"  # the flag wins
    cfg = get_preset("qwen2.5-0.5b")
    record = model_shape_record(cfg)
    assert (record["heads"], record["kv_heads"], record["head_dim"]) == (14, 2, 64)
    assert (record["layers"], record["hidden"], record["mlp"], record["vocab"]) == (24, 896, 4864, cfg.vocab_size)
    assert record["params"] == cfg.num_params() and record["scan_layers"] is True


def test_roofline_of_an_untied_model_leaves_out_the_embedding_table():
    """Decoding gathers one embedding row per token but reads the whole (separate) output head:
    an untied model's embedding table is not streamed from HBM at each step."""
    cfg = get_preset("qwen2.5-0.5b").replace(tie_word_embeddings=False)
    table = cfg.vocab_size * cfg.hidden_size
    weights = (cfg.num_params() - table) * 2
    kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
    assert roofline_tokens_per_s(cfg, 4, 100, 2, 2, 1e12) == pytest.approx(4 * 2 * 1e12 / (weights + 4 * 101 * kv))


def _gpu(kind="NVIDIA H100 80GB HBM3"):
    return lambda: {"device": "gpu", "device_kind": kind, "device_count": 1}


def test_bench_sample_record_arithmetic(monkeypatch, capsys):
    """Stubbed timings (JAX 2 s, transformers 8 s) on a pretend H100: the record's rates, ratio,
    roofline and dtype follow from them (batch 3 x 4 new tokens = 12 tokens per call)."""
    from azr_jax.bench import sample

    seen = []
    monkeypatch.setattr(sample, "device_info", _gpu())
    monkeypatch.setattr(sample, "_jax_side", lambda cfg, args, dtype, prompts: seen.append(prompts) or 2.0)
    monkeypatch.setattr(sample, "_torch_side", lambda cfg, args, dtype, prompts: seen.append(prompts) or (8.0, "cuda"))
    args = _args("sample", [*TINY, "--batch", "3"])
    assert bench_cli.main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["dtype"] == "bfloat16"  # an accelerator's default
    assert r["seconds"] == 2.0 and r["tokens_per_s"] == 6.0  # 12 generated tokens (prompt tokens not counted)
    assert r["baseline_seconds"] == 8.0 and r["baseline_tokens_per_s"] == 1.5 and r["baseline_device"] == "cuda"
    assert r["ratio"] == 4.0  # baseline seconds / JAX seconds: > 1 means JAX is faster
    roof = roofline_tokens_per_s(model_config_from_args(args), 3, 8, 4, 2, 3.35e12, 989e12)  # bf16: 2 bytes
    assert r["roofline_tokens_per_s"] == pytest.approx(roof) and r["roofline_fraction"] == pytest.approx(6.0 / roof)
    assert r["rows_decoded"] == 4  # the sampler pads 3 rows to the 4-row bucket
    assert seen[0] == seen[1] and len(seen[0]) == 3 and {len(p) for p in seen[0]} == {8}  # same prompts both sides

    # GH200: a FLOP peak but no bandwidth figure, so no roofline; 4 rows need no padding
    monkeypatch.setattr(sample, "device_info", _gpu("NVIDIA GH200 480GB"))
    assert bench_cli.main(_args("sample", [*TINY, "--batch", "4", "--no-baseline"])) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["roofline_tokens_per_s"] is None and r["roofline_fraction"] is None
    assert "rows_decoded" not in r and "baseline" not in r and r["tokens_per_s"] == 8.0


def test_bench_sample_jax_side_measures_the_requested_shape_and_refuses_short_rows(monkeypatch):
    """The sampler gets exact length buckets and the asked temperature; a row that stops early
    would inflate tokens/s, so it is an error."""
    import types

    import numpy as np

    import azr_jax.sampling
    from azr_jax.bench import sample

    calls, lengths = [], [4, 4]

    def fake_generate(params, cfg, prompts, rng, settings, **kw):
        calls.append((settings, kw))
        return types.SimpleNamespace(lengths=np.array(lengths))

    monkeypatch.setattr(azr_jax.sampling, "generate", fake_generate)
    args = _args("sample", [*TINY, "--temperature", "0"])
    cfg = model_config_from_args(args)
    assert sample._jax_side(cfg, args, "float32", [[1] * 8] * 2) >= 0
    settings, kw = calls[0]
    assert len(calls) == 2  # one warm-up, one timed call (--repeats 1)
    assert settings.temperature == 0 and settings.max_new_tokens == 4 and kw["length_buckets"] == (8, 4)
    lengths[1] = 3
    with pytest.raises(RuntimeError, match="a row stopped after 3 of 4 tokens"):
        sample._jax_side(cfg, args, "float32", [[1] * 8] * 2)


class _FakeGenerateModel:
    """A transformers model whose generate records its keyword arguments and returns zeros of
    `shape[0]`, or of the full prompt + new_tokens length when that is None."""

    def __init__(self, asked, shape):
        self.asked, self.shape = asked, shape

    def to(self, device):
        return self

    def train(self, mode):
        return self

    def generate(self, **kw):
        import torch

        self.asked.append(kw)
        return torch.zeros(self.shape[0] or (kw["input_ids"].shape[0], kw["input_ids"].shape[1] + kw["max_new_tokens"]))


def test_bench_sample_torch_side_asks_for_the_same_work(monkeypatch):
    """transformers.generate is told to produce exactly new_tokens per row (no early stop), with a
    static cache, sampling only when the temperature is > 0, and compiled only when asked."""
    import torch
    import transformers

    from azr_jax.bench import sample

    asked, shape = [], [None]
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config",
                        lambda *a, **k: _FakeGenerateModel(asked, shape))
    prompts = [[1] * 8] * 2
    for extra, compiled, sampled in (([], False, True), (["--temperature", "0", "--baseline-compile"], True, False)):
        args = _args("sample", [*TINY, *extra])
        asked.clear()
        seconds, device = sample._torch_side(model_config_from_args(args), args, "float32", prompts)
        kw = asked[-1]
        assert seconds >= 0 and device == "cpu" and len(asked) == 2  # warm-up + 1 timed call
        assert kw["max_new_tokens"] == kw["min_new_tokens"] == 4 and kw["cache_implementation"] == "static"
        assert kw["do_sample"] is sampled and kw["disable_compile"] is not compiled
        assert tuple(kw["input_ids"].shape) == (2, 8)
    shape[0] = (2, 11)  # one token short
    with pytest.raises(RuntimeError, match="returned shape"):
        sample._torch_side(model_config_from_args(args), args, "float32", prompts)


def test_bench_train_record_arithmetic(monkeypatch, capsys):
    """Stubbed timings (JAX 0.5 s, torch 2 s) on a pretend H100 in bfloat16: tokens/s counts every
    position (2 rows x 12), MFU divides by the bf16 peak, the ratio is baseline / JAX."""
    from azr_jax.bench import train

    monkeypatch.setattr(train, "device_info", _gpu())
    monkeypatch.setattr(train, "jax_update", lambda *a, **k: (0.5, None))
    monkeypatch.setattr(train, "_torch_side", lambda *a: (2.0, "cuda"))
    monkeypatch.setattr(train, "_free_torch_memory", lambda: None)
    args = _args("train", [*TINY, "--dtype", "bfloat16"])
    assert bench_cli.main(args) == 0
    r = json.loads(capsys.readouterr().out)
    fpt = model_config_from_args(args).flops_per_token(12)  # over the whole 8 + 4 row
    assert r["seq_len"] == 12 and r["loss_tokens_per_row"] == 4 and r["flops_per_token"] == fpt
    assert r["seconds"] == 0.5 and r["tokens_per_s"] == 48.0
    assert r["achieved_flops_per_s"] == pytest.approx(fpt * 24 / 0.5)
    assert r["mfu"] == pytest.approx(fpt * 24 / 0.5 / 989e12)
    assert r["baseline_seconds"] == 2.0 and r["baseline_tokens_per_s"] == 12.0 and r["ratio"] == 4.0
    assert r["baseline_mfu"] == pytest.approx(fpt * 24 / 2.0 / 989e12)
    assert r["baseline"] == "torch fwd+bwd+AdamW (transformers model)"
    # remat=dots also turns on torch's whole-layer checkpointing: the label must say so
    assert bench_cli.main(_args("train", [*TINY, "--set", "model.remat=dots"])) == 0
    assert json.loads(capsys.readouterr().out)["baseline"].endswith(", gradient checkpointing)")


def test_bench_train_batch_puts_the_loss_on_the_response_only():
    import numpy as np

    from azr_jax.bench.train import _batch

    args = _args("train", TINY)  # 2 rows, 8 prompt + 4 response tokens
    b = _batch(model_config_from_args(args), args)
    assert b["loss_mask"].tolist() == [[0] * 8 + [1] * 4] * 2
    assert (b["advantages"][:, :8] == 0).all() and (b["advantages"][:, 8:] != 0).all()
    assert (b["mask"] == 1).all() and (b["positions"] == np.arange(12)).all()


def test_bench_train_jax_update_builds_the_step_it_is_asked_for(monkeypatch):
    """`--micro-batch`, remat, the chunk settings and the dtype reach the real step, and the chunk
    settings the old logprobs' pass too (unchunked it would need the memory chunking saves); the
    scratch memory comes from the compiled step's temp size (None without a memory analysis);
    one warm-up, then the timed steps."""
    import types

    import jax.numpy as jnp

    from azr_jax.bench import train
    from azr_jax.rl import logprobs, update

    built, runs, old_logprobs = {}, [], []
    analyses = [types.SimpleNamespace(temp_size_in_bytes=1234, argument_size_in_bytes=99), None]

    class FakeStep:
        def lower(self, state, batch):
            return self

        def compile(self):
            return self

        def memory_analysis(self):
            return analyses.pop(0)

        def __call__(self, state, batch):
            runs.append(batch["old_logprobs"].shape)
            return state, {"loss": jnp.zeros(())}

    def fake_make(cfg, rl, optim, *, compute_dtype, remat):
        built.update(rl=rl, compute_dtype=compute_dtype, remat=remat)
        return FakeStep()

    monkeypatch.setattr(update, "make_train_step", fake_make)
    monkeypatch.setattr(logprobs, "token_logprobs",
                        lambda p, b, *a, **k: old_logprobs.append(k) or jnp.zeros(b["tokens"].shape))
    args = _args("train", [*TINY, "--micro-batch", "1"])
    batch = train._batch(model_config_from_args(args), args)
    seconds, temp = train.jax_update(model_config_from_args(args), args, "float32", "full", batch,
                                     logits_chunk=16, attention_chunk=8)
    rl = built["rl"]
    assert (rl.micro_batch_size, rl.logits_chunk, rl.attention_chunk, rl.entropy_coef) == (1, 16, 8, 0.0)
    assert built["remat"] == "full" and built["compute_dtype"] == jnp.float32
    assert temp == 1234 and seconds >= 0 and runs == [(2, 12)] * 2
    assert old_logprobs == [{"logits_chunk": 16, "attention_chunk": 8}]
    assert train.jax_update(model_config_from_args(args), args, "float32", "none", batch)[1] is None


def test_bench_train_torch_side_micro_batches_and_checkpoints(monkeypatch):
    """The torch step runs the same micro-batches as the JAX one (2 rows, --micro-batch 1: one row
    per forward), under bfloat16 autocast for --dtype bfloat16, clips the gradients and steps
    AdamW once per update and, with remat, turns on transformers' gradient checkpointing."""
    import torch
    import transformers

    from azr_jax.bench import train

    real, real_clip, real_step = (transformers.AutoModelForCausalLM.from_config, torch.nn.utils.clip_grad_norm_,
                                  torch.optim.AdamW.step)
    models, rows, updates = [], [], []

    def tracked(*a, **k):
        model = real(*a, **k)
        model.register_forward_pre_hook(
            lambda m, a, kw: rows.append((kw["input_ids"].shape[0], torch.is_autocast_enabled("cpu"))), with_kwargs=True)
        models.append(model)
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", tracked)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, norm: updates.append(("clip", norm)) or real_clip(p, norm))
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self: updates.append("step") or real_step(self))
    for remat, dtype in (("none", "float32"), ("full", "bfloat16")):
        args = _args("train", [*TINY, "--micro-batch", "1", "--set", f"model.remat={remat}"])
        rows.clear(), updates.clear()
        cfg = model_config_from_args(args)
        seconds, device = train._torch_side(cfg, args, dtype, remat, train._batch(cfg, args))
        assert seconds >= 0 and device == "cpu"
        # (warm-up + 1 timed step) x 2 micro-batches of 1 row, autocast only for bfloat16
        assert rows == [(1, dtype == "bfloat16")] * 4
        assert updates == [("clip", 1.0), "step"] * 2
        # what transformers' is_gradient_checkpointing (renamed is_activation_checkpointing) reads
        assert any(getattr(m, "gradient_checkpointing", False) for m in models[-1].modules()) is (remat != "none")


@pytest.mark.parametrize("name, key", [("logits", "logits_chunk"), ("attention", "attention_chunk")])
def test_chunked_bench_record_arithmetic(name, key, monkeypatch, capsys):
    """Stubbed update steps: the unchunked baseline (3 s, 400 bytes) vs the chunked side (2 s,
    100 bytes); each side gets its own setting of rl.<key> and nothing else."""
    from azr_jax.bench import logits

    sides = []
    figures = {0: (3.0, 400)}

    def fake_update(cfg, args, dtype, remat, batch, **chunks):
        sides.append(chunks)
        return figures.get(chunks[key], (2.0, 100))

    monkeypatch.setattr(logits, "jax_update", fake_update)
    argv = [*TINY, f"--{key.replace('_', '-')}", "16"]
    assert bench_cli.main(_args(name, argv)) == 0
    r = json.loads(capsys.readouterr().out)
    assert sides == [{key: 0}, {key: 16}] and r[key] == 16 and r["seq_len"] == 12
    assert r["seconds"] == 2.0 and r["temp_bytes"] == 100
    assert r["baseline_seconds"] == 3.0 and r["baseline_temp_bytes"] == 400
    assert r["ratio"] == 1.5 and r["memory_ratio"] == 4.0  # baseline / chunked: > 1 means chunking helps
    assert r["baseline"].endswith(f"(rl.{key}=0)")
    for temp in (None, 0):  # no memory analysis (or nothing in it): no memory ratio, not an error
        figures[16] = (2.0, temp)
        assert bench_cli.main(_args(name, argv)) == 0
        assert json.loads(capsys.readouterr().out)["memory_ratio"] is None


def test_peak_numbers_know_each_tpu_by_the_name_jax_gives_it():
    """JAX calls a v5e "TPU v5 lite", a v5p "TPU v5" and a v6e "TPU v6 lite": each must find its
    own chip's bf16 peak and HBM bandwidth (a missed name has no MFU, a wrong one a wrong MFU)."""
    from azr_jax.bench.common import peak_numbers

    assert peak_numbers("TPU v4") == (275e12, 1.2e12)
    assert peak_numbers("TPU v5") == peak_numbers("TPU v5p") == (459e12, 2.765e12)
    assert peak_numbers("TPU v5 lite") == peak_numbers("TPU v5e") == (197e12, 0.819e12)
    assert peak_numbers("TPU v6 lite") == peak_numbers("TPU v6e") == (918e12, 1.638e12)


def test_the_update_benchmarks_defaults_are_the_documented_ones():
    """docs/benchmarks.md: `bench attention` is 1 row of 64 + 1984 positions in chunks of 256
    queries; `bench logits` chunks of 128 positions over 2 rows of 64 + 960."""
    attention = _args("attention", [])
    assert (attention.batch, attention.prompt_len, attention.new_tokens, attention.attention_chunk) == (1, 64, 1984, 256)
    logits = _args("logits", [])
    assert (logits.batch, logits.prompt_len, logits.new_tokens, logits.logits_chunk) == (2, 64, 960, 128)
    assert attention.micro_batch is logits.micro_batch is None  # the whole batch at once


def test_a_config_file_picks_the_preset_and_the_shape_flags_win_over_its_overrides():
    # --config's model.preset, not the bench's default (qwen2.5-0.5b), and its model.remat
    from azr_jax.bench.model_shape import remat_from_args

    args = _args("train", ["--config", "configs/qwen2.5-1.5b.py"])
    assert model_config_from_args(args).hidden_size == get_preset("qwen2.5-1.5b").hidden_size
    assert remat_from_args(args) == "full"
    # the shrink flags come after model.overrides
    both = _args("train", ["--set", "model.overrides.num_layers=3", "--set", "model.overrides.vocab_size=300",
                           "--layers", "1", "--vocab", "256"])
    cfg = model_config_from_args(both)
    assert (cfg.num_layers, cfg.vocab_size) == (1, 256)


@pytest.mark.parametrize("name, key", [("logits", "logits_chunk"), ("attention", "attention_chunk")])
def test_chunked_bench_record_says_what_was_run_and_refuses_a_bad_micro_batch_first(name, key, monkeypatch, capsys):
    """The record names the batch, micro-batch (--batch when not given), dtype, remat and repeats
    both sides ran with; a --micro-batch that does not divide --batch is refused before either
    side runs (not after the baseline's minutes)."""
    from azr_jax.bench import logits

    ran = []
    monkeypatch.setattr(logits, "jax_update", lambda cfg, args, dtype, remat, batch, **chunks: ran.append(
        (dtype, remat)) or (2.0, 100))
    argv = [*TINY, "--dtype", "bfloat16", "--set", "model.remat=dots", "--repeats", "2"]
    for micro, expected in (([], 2), (["--micro-batch", "1"], 1)):
        assert bench_cli.main(_args(name, argv + micro)) == 0
        r = json.loads(capsys.readouterr().out)
        assert (r["batch"], r["micro_batch"], r["repeats"]) == (2, expected, 2)
        assert (r["dtype"], r["remat"]) == ("bfloat16", "dots") and ran[-2:] == [("bfloat16", "dots")] * 2
    ran.clear()
    with pytest.raises(UserError, match="--micro-batch 3 must divide --batch 2"):
        bench_cli.main(_args(name, argv + ["--micro-batch", "3"]))
    assert ran == []


def test_bench_sample_both_sides_sample_the_whole_distribution_in_the_asked_dtype(monkeypatch):
    """No top-k or top-p on either side (transformers' generate defaults to top_k=50), the
    temperature as asked (None when greedy, which generate needs), every prompt position
    attended; the JAX side's weights and compute in --dtype."""
    import types

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers

    import azr_jax.sampling
    from azr_jax.bench import sample

    asked = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config",
                        lambda *a, **k: _FakeGenerateModel(asked, [None]))
    for temperature, want in (("0.7", 0.7), ("0", None)):
        args = _args("sample", [*TINY, "--temperature", temperature])
        sample._torch_side(model_config_from_args(args), args, "float32", [[1] * 8] * 2)
        kw = asked[-1]
        assert (kw["top_k"], kw["top_p"], kw["temperature"]) == (0, 1.0, want)
        assert kw["attention_mask"].tolist() == [[1] * 8] * 2 and kw["pad_token_id"] == 0

    seen = []

    def fake_generate(params, cfg, prompts, rng, settings, **kw):
        seen.append(({leaf.dtype for leaf in jax.tree_util.tree_leaves(params)}, kw["compute_dtype"], settings))
        return types.SimpleNamespace(lengths=np.array([4, 4]))

    monkeypatch.setattr(azr_jax.sampling, "generate", fake_generate)
    args = _args("sample", [*TINY, "--temperature", "0.7"])
    sample._jax_side(model_config_from_args(args), args, "bfloat16", [[1] * 8] * 2)
    param_dtypes, compute_dtype, settings = seen[-1]
    assert param_dtypes == {jnp.dtype("bfloat16")} and compute_dtype == jnp.bfloat16 and settings.temperature == 0.7


def test_bench_sample_record_in_float32_keeps_its_temperature_and_4_byte_roofline(monkeypatch, capsys):
    """--dtype float32 on an accelerator: the roofline streams 4-byte weights and KV; the record
    carries the temperature both sides sampled at."""
    from azr_jax.bench import sample
    from azr_jax.bench.sample import roofline_tokens_per_s

    monkeypatch.setattr(sample, "device_info", _gpu())
    monkeypatch.setattr(sample, "_jax_side", lambda cfg, args, dtype, prompts: 2.0)
    args = _args("sample", [*TINY, "--dtype", "float32", "--temperature", "0.5", "--no-baseline"])
    assert bench_cli.main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["dtype"] == "float32" and r["temperature"] == 0.5
    roof = roofline_tokens_per_s(model_config_from_args(args), 2, 8, 4, 4, 3.35e12, 989e12)
    assert r["roofline_tokens_per_s"] == pytest.approx(roof)


def test_bench_train_refuses_a_bad_micro_batch_before_either_side_runs(monkeypatch):
    """Without the early check the torch side ran first, its UserError became a baseline_error,
    and only the JAX side's record failed, minutes later."""
    from azr_jax.bench import train

    ran = []
    monkeypatch.setattr(train, "_torch_side", lambda *a: ran.append("torch") or (2.0, "cpu"))
    monkeypatch.setattr(train, "jax_update", lambda *a, **k: ran.append("jax") or (0.5, None))
    with pytest.raises(UserError, match="--micro-batch 3 must divide --batch 2"):
        bench_cli.main(_args("train", [*TINY, "--micro-batch", "3"]))
    assert ran == []
