"""`azr-jax repro model`: parity report on a random checkpoint, exit codes, one-line errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import transformers

from azr_jax import cli
from azr_jax.repro import build_batch, row_lengths

VOCAB = 512


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random 2-layer Qwen2 (float32) with a tiny byte-level BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      tie_word_embeddings=False, eos_token_id=2, bos_token_id=None)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(d)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([f"def f{i}(x):\n    return x * {i}\n" for i in range(50)],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(d / "tokenizer.json"))
    return d


def _run(args, capsys):
    rc = cli.main(["repro", "model", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_row_lengths_and_left_padded_batch():
    assert row_lengths(24, 3) == [24, 20, 16]
    # Shorter than 2 x batch: every row after the first is still padded (they were all full).
    assert row_lengths(4, 3) == [4, 3, 2] and row_lengths(3, 5) == [3, 2, 1, 1, 1]
    tokens, mask, positions, lengths = build_batch([5, 6, 7], 6, 2)
    assert lengths == [6, 5]
    assert mask.tolist() == [[1] * 6, [0] + [1] * 5]
    assert positions.tolist() == [[0, 1, 2, 3, 4, 5], [0, 0, 1, 2, 3, 4]]
    assert tokens[0].tolist() == [5, 6, 7, 5, 6, 7] and tokens[1, 0] == 0  # short text repeats


def test_parity_report_json_and_exit_codes(checkpoint, capsys, tmp_path):
    rc, out, err = _run(["--hf-dir", str(checkpoint), "--seq-len", "24", "--batch", "3", "--json"], capsys)
    assert rc == 0, err
    report = json.loads(out)
    assert report["tokens_from"] == "builtin code sample"
    assert report["lengths"] == [24, 20, 16] and report["real_tokens"] == 60
    assert report["dtype"] == "float32" and report["seq_len"] == 24 and report["architecture"] == "qwen2"
    assert 0 < report["max_abs_logit_diff"] < 1e-4  # float32, 24 positions
    assert report["mean_abs_logit_diff"] <= report["max_abs_logit_diff"]
    assert report["top1_agreement"] == 1.0
    assert len(report["hidden_max_abs_diff"]) == 3 and report["hidden_max_abs_diff"][0] == 0.0  # L + 1 states
    assert report["passed"] and report["tolerance"] == 1e-3

    # Same input, tolerance below the measured difference: text report, FAIL, exit code 1.
    text = tmp_path / "code.py"
    text.write_text("def g(y):\n    return [y * k for k in range(10)]\n")
    rc, out, err = _run(["--hf-dir", str(checkpoint), "--seq-len", "24", "--batch", "3", "--text-file", str(text),
                         "--tolerance", "1e-12"], capsys)
    assert rc == 1
    assert f"tokens from text:{text}" in out and "FAIL: max |logit diff|" in out
    assert "top-1 agreement" in out and "hidden states per layer" in out


def test_a_small_bug_under_the_absolute_bar_fails_relative_to_the_logit_scale(checkpoint, tmp_path, capsys,
                                                                             monkeypatch):
    """A random checkpoint's logits are small (std ~0.2): a 10 % rope_theta error on one side
    moved them by less than the 1e-3 bar, and repro passed it."""
    from azr_jax import repro

    off = tmp_path / "theta"
    shutil.copytree(checkpoint, off)
    config = json.loads((off / "config.json").read_text())
    theta = config.get("rope_theta") or config["rope_parameters"]["rope_theta"]
    if "rope_parameters" in config:
        config["rope_parameters"]["rope_theta"] = 0.9 * theta
    config["rope_theta"] = 0.9 * theta
    (off / "config.json").write_text(json.dumps(config))
    reference = repro._reference_outputs
    monkeypatch.setattr(repro, "_reference_outputs", lambda hf_dir, *a: reference(str(off), *a))
    rc, out, err = _run(["--hf-dir", str(checkpoint), "--seq-len", "64", "--batch", "3", "--json"], capsys)
    report = json.loads(out)
    assert report["max_abs_logit_diff"] < report["tolerance"] == 1e-3  # the absolute bar alone passes it
    assert report["max_logit_diff_over_scale"] > report["relative_tolerance"] == 5e-4
    assert rc == 1 and not report["passed"]
    # Without the bug the same batch is ~1e-6 of the scale.
    monkeypatch.setattr(repro, "_reference_outputs", reference)
    rc, out, err = _run(["--hf-dir", str(checkpoint), "--seq-len", "64", "--batch", "3", "--json"], capsys)
    assert rc == 0 and json.loads(out)["max_logit_diff_over_scale"] < 1e-5


def test_random_tokens_when_checkpoint_has_no_tokenizer(checkpoint, tmp_path, capsys):
    d = tmp_path / "notok"
    shutil.copytree(checkpoint, d)
    (d / "tokenizer.json").unlink()
    rc, out, _ = _run(["--hf-dir", str(d), "--seq-len", "8", "--batch", "1", "--json"], capsys)
    assert rc == 0 and json.loads(out)["tokens_from"] == "random"
    rc, out, err = _run(["--hf-dir", str(d), "--text-file", str(d / "config.json")], capsys)
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [f"azr-jax: error: no tokenizer in {d}: expected tokenizer.json or tokenizer.model"]


def _truncate(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _set_config(**changes):
    def edit(d):
        config = json.loads((d / "config.json").read_text())
        config.update(changes)
        (d / "config.json").write_text(json.dumps(config))
    return edit


BAD = {
    "missing config.json": (lambda d: (d / "config.json").unlink(), "has no config.json"),
    "unsupported architecture": (_set_config(model_type="mistral", architectures=["MistralForCausalLM"]),
                                 "unsupported HF model_type 'mistral'"),
    "truncated safetensors": (_truncate, "truncated or not a safetensors file"),
    "shape mismatch": (_set_config(hidden_size=96), "has shape"),
    "missing tensor": (_set_config(num_hidden_layers=4), "lacks tensor model.layers.2"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_is_one_stderr_line(case, checkpoint, tmp_path, capsys):
    corrupt, message = BAD[case]
    d = tmp_path / "bad"
    shutil.copytree(checkpoint, d)
    corrupt(d)
    rc, out, err = _run(["--hf-dir", str(d)], capsys)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("azr-jax: error: ") and message in lines[0], err


def test_bad_arguments(checkpoint, tmp_path, capsys):
    rc, _, err = _run(["--hf-dir", str(checkpoint), "--text-file", str(tmp_path / "none.txt")], capsys)
    assert rc == 2 and err.strip().splitlines() == [f"azr-jax: error: --text-file not found: {tmp_path / 'none.txt'}"]
    for seq_len in ("0", "1"):  # one position leaves nothing to pad
        rc, _, err = _run(["--hf-dir", str(checkpoint), "--seq-len", seq_len], capsys)
        assert rc == 2 and "--seq-len must be at least 2" in err and len(err.strip().splitlines()) == 1
    for tolerance in ("-1", "nan"):  # failed (exit 1, "tolerance": null) as if parity were broken
        with pytest.raises(SystemExit) as stop:
            _run(["--hf-dir", str(checkpoint), "--tolerance", tolerance], capsys)
        assert stop.value.code == 2 and "--tolerance: expects a number >= 0" in capsys.readouterr().err
    # A negative seed: numpy's ValueError traceback after the checkpoint had loaded, exit 1 (a FAIL).
    with pytest.raises(SystemExit) as stop:
        _run(["--hf-dir", str(checkpoint), "--random-tokens", "--seed", "-1"], capsys)
    assert stop.value.code == 2 and "--seed: expects an integer >= 0, got -1" in capsys.readouterr().err
    # Both token sources: refused (the file was silently ignored, even a missing one).
    with pytest.raises(SystemExit) as stop:
        _run(["--hf-dir", str(checkpoint), "--text-file", str(tmp_path / "none.txt"), "--random-tokens"], capsys)
    assert stop.value.code == 2 and "not allowed with argument --text-file" in capsys.readouterr().err


def test_a_bad_text_file_is_refused_before_the_checkpoint_loads(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before --text-file was checked")

    monkeypatch.setattr("azr_jax.models.checkpoint_hf.from_pretrained", never)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"caf\xe9\n")
    for text_file, said in [(tmp_path / "none.txt", f"not found: {tmp_path / 'none.txt'}"),
                            (tmp_path, f"{tmp_path} is a directory; give a text file"),
                            (latin1, f"{latin1} is not UTF-8 text")]:
        rc, out, err = _run(["--hf-dir", str(tmp_path), "--text-file", str(text_file)], capsys)
        assert rc == 2 and out == "" and err == f"azr-jax: error: --text-file {said}\n"


def test_installed_command_prints_one_line_for_a_missing_directory(tmp_path):
    """The real entry point, in a fresh process: no traceback, exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "azr_jax.cli", "repro", "model", "--hf-dir", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"azr-jax: error: checkpoint directory {tmp_path / 'nope'} does not exist"]


def test_json_report_of_a_broken_checkpoint_is_strict_json():
    # A checkpoint whose weights hold NaN gives NaN differences; `--json` prints them as null
    # (json.dumps would write the bare NaN token, which strict JSON readers reject).
    from azr_jax.repro import _json_safe

    report = {"max_abs_logit_diff": float("nan"), "hidden_max_abs_diff": [0.0, float("inf")], "passed": False}
    text = json.dumps(_json_safe(report), allow_nan=False)
    assert json.loads(text) == {"max_abs_logit_diff": None, "hidden_max_abs_diff": [0.0, None], "passed": False}


def test_rows_take_their_tokens_from_different_offsets():
    """Row i starts 7 tokens further into the (repeated) text: rows holding the same tokens would
    hide a bug that mixes rows up."""
    tokens, _, _, lengths = build_batch([1, 2, 3, 4, 5], 4, 2)
    assert lengths == [4, 3]
    # row 1: tokens 7..9 of 1 2 3 4 5 1 2 3 4 5 ..., left-padded by one
    assert tokens.tolist() == [[1, 2, 3, 4], [0, 3, 4, 5]]


def test_compare_counts_the_real_tokens_only():
    import numpy as np

    from azr_jax.repro import compare

    mask = np.array([[0, 1, 1]])  # position 0 is padding: far off there, and another argmax
    ref = np.array([[[0.0, 100.0], [1.0, 3.0], [2.0, 0.0]]])
    ours = np.array([[[100.0, 0.0], [1.5, 3.0], [2.0, 0.0]]])
    ref_hidden = [np.array([[[5.0, 5.0], [0.0, 0.0], [0.0, 0.0]]]), np.array([[[0.0, 0.0], [4.0, -8.0], [2.0, 2.0]]])]
    ours_hidden = [np.array([[[0.0, 0.0], [0.25, 0.0], [0.0, 0.0]]]), np.array([[[0.0, 0.0], [4.0, -6.0], [2.0, 2.0]]])]
    r = compare(ours, ref, ours_hidden, ref_hidden, mask)
    assert r["real_tokens"] == 2 and r["top1_agreement"] == 1.0
    assert r["max_abs_logit_diff"] == 0.5 and r["mean_abs_logit_diff"] == 0.125  # one 0.5 among 4 real logits
    # std of the real reference logits 1, 3, 2, 0: mean 1.5, variance (0.25 + 2.25 + 0.25 + 2.25) / 4
    assert r["logit_scale"] == pytest.approx(1.25 ** 0.5)
    assert r["max_logit_diff_over_scale"] == pytest.approx(0.5 / 1.25 ** 0.5)
    # layer 0 is all zeros at the real tokens: its difference counts as is (scale 1); layer 1: 2 / 8
    assert r["hidden_max_abs_diff"] == [0.25, 2.0] and r["hidden_max_rel_diff"] == [0.25, 0.25]
    # constant reference logits (std 0): a difference of 2 is infinitely far, not a ZeroDivisionError
    flat = compare(ours, np.ones_like(ref), ours_hidden, ref_hidden, mask)
    assert flat["logit_scale"] == 0.0 and flat["max_logit_diff_over_scale"] == float("inf")


def _fake_model(vocab_size, ids=None):
    """What `_token_stream` reads of a model: its vocabulary size and its tokenizer (if `ids`)."""
    from types import SimpleNamespace

    return SimpleNamespace(config=SimpleNamespace(vocab_size=vocab_size), has_tokenizer=lambda: ids is not None,
                           tokenizer=SimpleNamespace(encode=lambda text: ids))


def _token_args(**changes):
    import argparse

    return argparse.Namespace(**{"random_tokens": False, "text_file": None, "seed": 0, "seq_len": 50, "batch": 2,
                                 **changes})


def test_random_tokens_are_seeded_and_inside_the_vocabulary():
    from azr_jax.repro import _token_stream

    # asked for with a tokenizer at hand: 50 x 2 ids, of a vocabulary of 2 (ids 0 and 1 only)
    ids, source = _token_stream(_fake_model(2, ids=[1]), _token_args(random_tokens=True))
    assert source == "random" and len(ids) == 100 and set(ids) == {0, 1}
    assert _token_stream(_fake_model(2), _token_args(seed=0))[0] == ids  # no tokenizer: the same seed, the same ids
    assert _token_stream(_fake_model(2), _token_args(seed=1))[0] != ids


def test_text_the_model_cannot_take_is_one_user_error(tmp_path):
    from azr_jax.errors import UserError
    from azr_jax.repro import _token_stream

    assert _token_stream(_fake_model(4, ids=[0, 3]), _token_args()) == ([0, 3], "builtin code sample")
    with pytest.raises(UserError, match=r"emits id 4, outside the model's vocabulary \(4\)"):  # ids 0..3 fit
        _token_stream(_fake_model(4, ids=[0, 4]), _token_args())
    with pytest.raises(UserError, match="builtin code sample has no tokens"):
        _token_stream(_fake_model(4, ids=[]), _token_args())
    latin1 = tmp_path / "latin1.py"
    latin1.write_bytes(b"# caf\xe9\n")
    with pytest.raises(UserError, match=f"--text-file {latin1} is not UTF-8 text"):
        _token_stream(_fake_model(4, ids=[1]), _token_args(text_file=str(latin1)))


def test_bfloat16_has_its_own_bars(checkpoint, capsys):
    """bfloat16: an absolute bar of 2.0 and none relative to the scale (bf16 rounding is larger
    than many bugs; the float32 run checks correctness)."""
    rc, out, err = _run(["--hf-dir", str(checkpoint), "--seq-len", "8", "--batch", "2", "--dtype", "bfloat16",
                         "--json"], capsys)
    report = json.loads(out)
    assert (report["tolerance"], report["relative_tolerance"]) == (2.0, None)
    assert rc == 0 and report["passed"], err


def test_a_given_relative_tolerance_is_used(checkpoint, capsys):
    """--relative-tolerance 0: any difference fails (the batch of the first test: above 0, under 1e-3)."""
    rc, out, err = _run(["--hf-dir", str(checkpoint), "--seq-len", "24", "--batch", "3", "--relative-tolerance", "0",
                         "--json"], capsys)
    report = json.loads(out)
    assert report["relative_tolerance"] == 0 and 0 < report["max_abs_logit_diff"] < report["tolerance"]
    assert rc == 1 and not report["passed"]


def test_a_batch_of_no_rows_is_one_line(checkpoint, capsys):
    rc, out, err = _run(["--hf-dir", str(checkpoint), "--batch", "0"], capsys)
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == ["azr-jax: error: --seq-len must be at least 2 and --batch positive (got 256, 0)"]


def _report(**changes):
    return {"hf_dir": "ckpt", "architecture": "qwen2", "dtype": "float32", "batch": 2, "seq_len": 8,
            "lengths": [8, 6], "tokens_from": "random", "real_tokens": 14, "max_abs_logit_diff": 2e-5,
            "mean_abs_logit_diff": 1e-6, "logit_scale": 0.5, "max_logit_diff_over_scale": 4e-5,
            "top1_agreement": 1.0, "hidden_max_abs_diff": [0.0, 3e-6], "hidden_max_rel_diff": [0.0, 1.5e-6],
            "tolerance": 1e-3, "relative_tolerance": 5e-4, "passed": True, **changes}


def test_the_text_report_gives_each_layer_and_the_verdict_against_both_bars():
    from azr_jax.repro import format_report

    lines = format_report(_report()).splitlines()
    assert lines[-3:] == ["      0  0.000e+00  0.0e+00", "      1  3.000e-06  1.5e-06",
                          "  PASS: max |logit diff| 2.000e-05 vs tolerance 1.0e-03, / scale 4.0e-05 vs 5.0e-04"]
    # bfloat16: no relative bar, and a note that its rounding hides smaller bugs
    lines = format_report(_report(dtype="bfloat16", tolerance=2.0, relative_tolerance=None, passed=False)).splitlines()
    assert lines[-2] == "  FAIL: max |logit diff| 2.000e-05 vs tolerance 2.0e+00"
    assert lines[-1].startswith("  (bfloat16 rounding hides smaller bugs")


def test_a_difference_at_the_tolerance_passes_and_two_positions_are_enough(monkeypatch):
    """--tolerance and --relative-tolerance fail *above* the bar: identical outputs pass at 0 and
    0; --seq-len 2 (one real token and one padding slot in row 2) is the shortest batch allowed."""
    import argparse
    from types import SimpleNamespace

    import numpy as np

    from azr_jax import repro
    from azr_jax.models import checkpoint_hf

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 2, 5)).astype(np.float32)  # as both sides report them
    hidden = rng.standard_normal((3, 2, 2, 4)).astype(np.float32)
    model = SimpleNamespace(config=SimpleNamespace(vocab_size=5, architecture="qwen2"), has_tokenizer=lambda: False,
                            _run=lambda tokens, mask, return_hidden: (logits, None, hidden))
    monkeypatch.setattr(checkpoint_hf, "from_pretrained", lambda hf_dir, dtype: model)
    monkeypatch.setattr(repro, "_reference_outputs", lambda *a: (logits, list(hidden)))
    args = argparse.Namespace(hf_dir="ckpt", dtype="float32", seq_len=2, batch=2, text_file=None, random_tokens=False,
                              seed=0, tolerance=0.0, relative_tolerance=0.0, json=True)
    report = repro.model_parity(args)
    assert report["lengths"] == [2, 1] and report["max_abs_logit_diff"] == 0.0
    assert (report["tolerance"], report["relative_tolerance"]) == (0.0, 0.0)  # given as 0, not the defaults
    assert report["passed"] is True


def test_a_closed_stdout_is_one_line(monkeypatch, capsys):
    """`azr-jax repro model --json | head -c1`: one error line, not a BrokenPipeError traceback."""
    from azr_jax import repro

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    report = {"passed": True, "max_abs_logit_diff": 0.0}
    monkeypatch.setattr(repro, "model_parity", lambda args: report)
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["repro", "model", "--hf-dir", "ckpt", "--json"]) == 2
    assert capsys.readouterr().err == (
        "azr-jax: error: standard output was closed before all of the output was written (broken pipe)\n")
