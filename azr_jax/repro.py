"""`azr-jax repro`: parity reports of azr-jax against the PyTorch reference stack.

`azr-jax repro model --hf-dir DIR` loads one Hugging Face checkpoint twice (azr-jax, and
transformers on CPU torch), runs the same left-padded, mixed-length token batch through both
and reports how far the logits and every layer's hidden states differ over the real tokens.
The exit code is 1 when the largest logit difference exceeds `--tolerance`, or when it exceeds
`--relative-tolerance` times the reference logits' standard deviation (by default in float32
only: bfloat16 has no relative bar unless one is given).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from azr_jax.bench.common import non_negative_float, non_negative_int
from azr_jax.errors import UserError
from azr_jax.jsonl import check_input_file

CODE_SAMPLE = "repro_code_sample.txt"
# Largest |logit difference| accepted by default. float32: DESIGN.md §5 (~1e-5..1e-4 over tens of
# tokens, up to ~1e-3 from RoPE angle rounding at long context; real bugs move logits >= 3e-2).
# bfloat16: both stacks round activations to 8 bits of mantissa, in different places; SmolLM2-135M
# at 3 x 256 tokens differs by up to 1.33 (mean 0.14, top-1 agreement 0.974), measured with
# `azr-jax repro model --hf-dir <SmolLM2 dir> --dtype bfloat16 --json`.
DEFAULT_TOLERANCE = {"float32": 1e-3, "bfloat16": 2.0}
# float32 also fails above this max |logit diff| / std(reference logits): a random-init checkpoint's
# logits are small (std ~0.2), so a 10 % rope_theta error moved them by 2.8e-4, under the
# absolute bar, while float32 rounding there is ~1e-6 of the scale. Correct real models sit
# near 2e-5 of theirs (SmolLM2-135M: 1.4e-4 over a std of 6.6 at 3 x 256 tokens; 4e-5 at 2 x 4096). bfloat16 rounding is larger than many
# bugs, so it has no relative bar: bf16 reports how far the two bf16 stacks are apart, and
# correctness is what the float32 run checks.
DEFAULT_RELATIVE_TOLERANCE = {"float32": 5e-4, "bfloat16": None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="repro_command", metavar="WHAT")
    sub.required = True
    p = sub.add_parser("model", help="logits/hidden-state parity of an HF checkpoint vs transformers",
                       description="Load an HF checkpoint in azr-jax and in transformers (CPU torch), run the "
                                   "same left-padded batch through both, and report the differences.")
    p.add_argument("--hf-dir", required=True, help="checkpoint directory (config.json + safetensors)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="parameter and compute dtype on both sides (default float32)")
    p.add_argument("--seq-len", type=int, default=256, help="padded sequence length (default 256)")
    p.add_argument("--batch", type=int, default=3,
                   help="rows; row i holds seq_len - i * (seq_len // (2 * batch)) real tokens (default 3)")
    tokens = p.add_mutually_exclusive_group()  # giving both silently used random tokens
    tokens.add_argument("--text-file", help="text to tokenize (default: a Python code sample shipped with azr-jax)")
    tokens.add_argument("--random-tokens", action="store_true",
                   help="use random token ids instead of text (the default when the checkpoint has no tokenizer)")
    # A negative seed was a numpy traceback (exit 1, as if parity failed) after the checkpoint loaded.
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for --random-tokens (>= 0)")
    p.add_argument("--tolerance", type=non_negative_float, default=None,
                   help="fail (exit 1) above this max |logit diff| (default 1e-3 float32, 2.0 bfloat16)")
    p.add_argument("--relative-tolerance", type=non_negative_float, default=None,
                   help="float32: also fail above this max |logit diff| / std of the reference logits "
                        "(default 5e-4; catches bugs in small-logit random checkpoints)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a text report")


def main(args: argparse.Namespace) -> int:
    if args.repro_command == "model":
        return model_parity_main(args)
    raise UserError(f"unknown repro command {args.repro_command!r}")


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def row_lengths(seq_len: int, batch: int) -> list[int]:
    """Mixed real lengths, longest first: seq_len, then shorter by seq_len / (2 * batch) each (at
    least 1, so every row after the first is padded however short seq_len is; never below 1)."""
    step = max(1, seq_len // (2 * batch))
    return [max(seq_len - i * step, 1) for i in range(batch)]


def _read_text_file(path: Path) -> str:
    check_input_file(path, "--text-file", "a text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--text-file {path} is not UTF-8 text") from None


def _token_stream(model, args) -> tuple[list[int], str]:
    if args.random_tokens or (args.text_file is None and not model.has_tokenizer()):
        rng = np.random.default_rng(args.seed)
        return rng.integers(0, model.config.vocab_size, size=args.seq_len * args.batch).tolist(), "random"
    if args.text_file is not None:
        path = Path(args.text_file)
        text = _read_text_file(path)
        source = f"text:{path}"
    else:
        text = resources.files("azr_jax").joinpath(CODE_SAMPLE).read_text(encoding="utf-8")
        source = "builtin code sample"
    ids = model.tokenizer.encode(text)
    if not ids:
        raise UserError(f"{source} has no tokens")
    if max(ids) >= model.config.vocab_size:
        raise UserError(f"the tokenizer emits id {max(ids)}, outside the model's vocabulary ({model.config.vocab_size})")
    return ids, source


def build_batch(stream: list[int], seq_len: int, batch: int):
    """Left-padded tokens, mask, positions [B, T]; row i takes its tokens from a different offset."""
    lengths = row_lengths(seq_len, batch)
    needed = seq_len + 7 * batch
    stream = (stream * (needed // len(stream) + 1))[:needed]  # repeat short texts
    tokens = np.zeros((batch, seq_len), np.int32)
    mask = np.zeros((batch, seq_len), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, seq_len - n:] = stream[7 * i: 7 * i + n]
        mask[i, seq_len - n:] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int32)
    return tokens, mask, positions, lengths


# ----------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------


def _reference_outputs(hf_dir: str, dtype: str, tokens, mask, positions):
    try:
        import torch
        import transformers
    except ImportError as e:  # missing, or a version conflict: say which
        raise UserError(f"azr-jax repro needs torch and transformers ({e}): pip install 'azr-jax[test]', "
                        f"CPU torch first (pip install torch==2.13.0+cpu --extra-index-url "
                        f"https://download.pytorch.org/whl/cpu)") from None
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch_dtype, attn_implementation="eager")
    model.train(False)  # inference mode: dropout off
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(mask).long(),
                    position_ids=torch.from_numpy(positions).long(), output_hidden_states=True)
    return out.logits.float().numpy(), [h.float().numpy() for h in out.hidden_states]


def compare(ours_logits, ref_logits, ours_hidden, ref_hidden, mask) -> dict:
    """Difference statistics over the real (mask == 1) tokens."""
    real = mask.astype(bool)
    diff = np.abs(ours_logits - ref_logits)[real]
    top1 = (ours_logits.argmax(-1) == ref_logits.argmax(-1))[real]
    scale = float(ref_logits[real].std())
    hidden = [float(np.abs(o - r)[real].max()) for o, r in zip(ours_hidden, ref_hidden)]
    # Relative to the layer's largest activation: some models carry residual outliers in the
    # thousands, where a 1e-2 absolute difference is float32 rounding.
    hidden_scale = [float(np.abs(r)[real].max()) or 1.0 for r in ref_hidden]
    return {
        "real_tokens": int(real.sum()),
        "max_abs_logit_diff": float(diff.max()),
        "logit_scale": scale,  # std of the reference logits
        "max_logit_diff_over_scale": float(diff.max()) / scale if scale > 0 else float("inf"),
        "mean_abs_logit_diff": float(diff.mean()),
        "top1_agreement": float(top1.mean()),
        "hidden_max_abs_diff": hidden,
        "hidden_max_rel_diff": [d / s for d, s in zip(hidden, hidden_scale)],
    }


def model_parity(args: argparse.Namespace) -> dict:
    import jax.numpy as jnp

    from azr_jax.models.checkpoint_hf import from_pretrained

    if args.seq_len < 2 or args.batch < 1:  # one position leaves no room for the padding under test
        raise UserError(f"--seq-len must be at least 2 and --batch positive (got {args.seq_len}, {args.batch})")
    if args.text_file is not None:
        _read_text_file(Path(args.text_file))  # a bad --text-file said now, not after loading the checkpoint
    model = from_pretrained(args.hf_dir, dtype=jnp.dtype(args.dtype))
    stream, source = _token_stream(model, args)
    tokens, mask, positions, lengths = build_batch(stream, args.seq_len, args.batch)
    logits, _, hidden = model._run(tokens, mask, return_hidden=True)
    ours_logits = np.asarray(logits, np.float32)
    ours_hidden = list(np.asarray(hidden, np.float32))
    ref_logits, ref_hidden = _reference_outputs(args.hf_dir, args.dtype, tokens, mask, positions)
    tolerance = DEFAULT_TOLERANCE[args.dtype] if args.tolerance is None else args.tolerance
    report = {"repro": "model", "hf_dir": str(args.hf_dir), "architecture": model.config.architecture,
              "dtype": args.dtype, "seq_len": args.seq_len, "batch": args.batch, "lengths": lengths,
              "tokens_from": source}
    report.update(compare(ours_logits, ref_logits, ours_hidden, ref_hidden, mask))
    relative = DEFAULT_RELATIVE_TOLERANCE[args.dtype] if args.relative_tolerance is None else args.relative_tolerance
    report["tolerance"] = tolerance
    report["relative_tolerance"] = relative
    report["passed"] = bool(report["max_abs_logit_diff"] <= tolerance and
                            (relative is None or report["max_logit_diff_over_scale"] <= relative))
    return report


def format_report(r: dict) -> str:
    lines = [
        f"azr-jax vs transformers: {r['hf_dir']} ({r['architecture']}, {r['dtype']})",
        f"  batch {r['batch']} x seq_len {r['seq_len']}, left-padded lengths {r['lengths']}, tokens from {r['tokens_from']}",
        f"  real tokens           {r['real_tokens']}",
        f"  max |logit diff|      {r['max_abs_logit_diff']:.3e}",
        f"  mean |logit diff|     {r['mean_abs_logit_diff']:.3e}",
        f"  logit scale (std)     {r['logit_scale']:.3e}   max |logit diff| / scale {r['max_logit_diff_over_scale']:.1e}",
        f"  top-1 agreement       {r['top1_agreement']:.4f}",
        "  hidden states per layer (0 = embeddings, last = final norm): max |diff|, relative to max |value|",
    ]
    lines += [f"    {i:3d}  {d:.3e}  {rel:.1e}"
              for i, (d, rel) in enumerate(zip(r["hidden_max_abs_diff"], r["hidden_max_rel_diff"]))]
    verdict = "PASS" if r["passed"] else "FAIL"
    relative = ("" if r["relative_tolerance"] is None else
                f", / scale {r['max_logit_diff_over_scale']:.1e} vs {r['relative_tolerance']:.1e}")
    lines.append(f"  {verdict}: max |logit diff| {r['max_abs_logit_diff']:.3e} vs tolerance {r['tolerance']:.1e}{relative}")
    if r["dtype"] == "bfloat16":
        lines.append("  (bfloat16 rounding hides smaller bugs: this says how far the two bf16 stacks are apart; "
                     "the float32 run checks correctness)")
    return "\n".join(lines)


def _json_safe(value):
    """`value` with non-finite floats as None: a broken checkpoint's NaN is not valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def model_parity_main(args: argparse.Namespace) -> int:
    report = model_parity(args)
    if args.json:
        print(json.dumps(_json_safe(report), allow_nan=False))
    else:
        print(format_report(report))
    sys.stdout.flush()
    return 0 if report["passed"] else 1
