"""`azr-jax bench sample`: sampler tokens/s vs transformers `generate` with a static cache.

Both sides get the same model shape (random weights), batch, prompt length and number of new
tokens on the same machine, sample at the same temperature with no top-k/top-p, and never stop
early (no EOS), so both produce exactly batch x new_tokens tokens. Times include prefill and
exclude compilation (one warm-up call each). On accelerators the figure is also given as a
fraction of the roofline of a whole call: every decode step must read all weights once plus the
KV cache written so far at the HBM bandwidth, and the prefill's FLOPs run at the peak at best.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from azr_jax.bench.common import device_info, non_negative_float, peak_numbers, positive_int, time_it
from azr_jax.bench.model_shape import add_shape_arguments, dtype_from_args, model_config_from_args, model_shape_record
from azr_jax.sampling.buckets import bucket_batch

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_shape_arguments(parser, default_preset="qwen2.5-0.5b", remat=False)
    parser.add_argument("--batch", type=positive_int, default=8, help="prompts per call")
    parser.add_argument("--prompt-len", type=positive_int, default=64, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=positive_int, default=64, help="tokens generated per row")
    parser.add_argument("--temperature", type=non_negative_float, default=1.0, help="0 = greedy")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed calls (median is reported)")
    parser.add_argument("--no-baseline", action="store_true", help="skip transformers.generate")
    parser.add_argument("--baseline-compile", action="store_true",
                        help="let transformers compile the baseline's decode step (on CUDA it does by default "
                             "with a static cache; off here unless asked, so the record says which was timed)")


def roofline_tokens_per_s(cfg, batch: int, prompt_len: int, new_tokens: int, dtype_bytes: int,
                          hbm_bytes_per_s: float, peak_flops: float | None = None) -> float:
    """Upper bound on tokens/s of a whole call (prefill + decode), as the timer measures it.

    The prefill draws the first token; decode steps t = 1 .. new_tokens - 1 each read every
    weight once (the embedding row gather aside) and the KV of the prompt_len + t tokens of
    each row, at `hbm_bytes_per_s`. The prefill's FLOPs run at `peak_flops` at best (at 128
    prompts of 512 tokens that is no longer negligible): the forward pass over the prompt,
    with the output head at its last position only, as the sampler applies it, and attention
    counted causally (position i attends to i keys): the least work a prefill must do.
    """
    weight_bytes = (cfg.num_params() - cfg.vocab_size * cfg.hidden_size * (0 if cfg.tie_word_embeddings else 1)) * dtype_bytes
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * dtype_bytes
    steps = new_tokens - 1
    context = prompt_len * steps + new_tokens * steps / 2  # sum over steps of prompt_len + t
    seconds = (steps * weight_bytes + batch * context * kv_per_token) / hbm_bytes_per_s
    if peak_flops:  # forward only: a third of the training matmul FLOPs per token, less the head but once
        head = 2 * cfg.hidden_size * cfg.vocab_size
        matmuls = prompt_len * (cfg.flops_per_token(0) // 3 - head) + head
        per_key = (cfg.flops_per_token(1) - cfg.flops_per_token(0)) // 3  # forward QK^T and AV, one query-key pair
        attention = per_key * prompt_len * (prompt_len + 1) // 2
        seconds += batch * (matmuls + attention) / peak_flops
    return batch * new_tokens / seconds if seconds > 0 else float("inf")


def _jax_side(cfg, args, dtype: str, prompts: list[list[int]]) -> float:
    import jax
    import jax.numpy as jnp

    from azr_jax.models import init_params
    from azr_jax.sampling import SamplingSettings, generate

    jdtype = jnp.dtype(dtype)
    params = init_params(cfg, jax.random.key(0), dtype=jdtype)
    settings = SamplingSettings(temperature=args.temperature, max_new_tokens=args.new_tokens)
    # Exact buckets: the benchmark measures the requested shape, not a padded one.
    buckets = (args.prompt_len, args.new_tokens)
    rng = jax.random.key(1)

    def call():
        out = generate(params, cfg, prompts, rng, settings, compute_dtype=jdtype, length_buckets=buckets)
        if out.lengths.min() != args.new_tokens:  # every row must decode the whole budget, or tokens/s lies
            raise RuntimeError(f"a row stopped after {out.lengths.min()} of {args.new_tokens} tokens")
        return out

    return time_it(call, warmup=1, repeats=args.repeats)


def _torch_side(cfg, args, dtype: str, prompts: list[list[int]]) -> tuple[float, str]:
    import torch
    import transformers

    torch.manual_seed(0)
    # No EOS (every row runs to new_tokens); bos/pad ids must lie inside a shrunken vocabulary.
    hf_cfg = transformers.AutoConfig.for_model(
        **{**cfg.to_hf_config(), "eos_token_id": None, "bos_token_id": None, "pad_token_id": 0})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=getattr(torch, dtype)).to(device).train(False)
    ids = torch.tensor(prompts, dtype=torch.long, device=device)
    attn = torch.ones_like(ids)

    def call():
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=attn, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                do_sample=args.temperature > 0, temperature=args.temperature or None, top_k=0, top_p=1.0,
                cache_implementation="static", pad_token_id=0, disable_compile=not args.baseline_compile,
            )
        if device == "cuda":
            torch.cuda.synchronize()
        if out.shape != (args.batch, args.prompt_len + args.new_tokens):
            raise RuntimeError(f"transformers.generate returned shape {tuple(out.shape)}")
        return out

    return time_it(call, warmup=1, repeats=args.repeats), device


def run(args: argparse.Namespace) -> dict:
    info = device_info()
    cfg = model_config_from_args(args)
    dtype = dtype_from_args(args, info["device"])
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, cfg.vocab_size, size=(args.batch, args.prompt_len)).tolist()
    n_tokens = args.batch * args.new_tokens

    print(f"bench sample: jax sampler, {cfg.num_params() / 1e6:.1f}M params, {dtype}", file=sys.stderr)
    jax_s = _jax_side(cfg, args, dtype, prompts)
    result = {
        "bench": "sample", **info, "model": model_shape_record(cfg), "dtype": dtype,
        "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "temperature": args.temperature, "repeats": args.repeats,
        "seconds": jax_s, "tokens_per_s": n_tokens / jax_s,
    }
    padded = bucket_batch(args.batch, 1)
    if padded != args.batch:  # the sampler pads the batch to a bucket; transformers does not
        result["rows_decoded"] = padded
    print(f"bench sample: jax side {jax_s:.3f}s, {result['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    peak_flops, hbm = peak_numbers(info["device_kind"])
    if hbm is not None:
        roof = roofline_tokens_per_s(cfg, args.batch, args.prompt_len, args.new_tokens, _DTYPE_BYTES[dtype], hbm,
                                     peak_flops)
        result.update(roofline_tokens_per_s=roof, roofline_fraction=result["tokens_per_s"] / roof)
    else:
        result.update(roofline_tokens_per_s=None, roofline_fraction=None)  # no bandwidth figure for CPUs
    if not args.no_baseline:
        compiled = "compiled" if args.baseline_compile else "not compiled"
        print(f"bench sample: transformers.generate (static cache, {compiled})", file=sys.stderr)
        result["baseline"] = f"transformers.generate(cache_implementation='static'), {compiled}"
        try:
            torch_s, torch_device = _torch_side(cfg, args, dtype, prompts)
            result.update(baseline_seconds=torch_s, baseline_tokens_per_s=n_tokens / torch_s,
                          baseline_device=torch_device, ratio=torch_s / jax_s)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory or a compile error: keep the JAX figure
            result["baseline_error"] = f"{type(e).__name__}: {e}"[:500]
    return result
