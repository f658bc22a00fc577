"""`azr-jax bench train`: update-step tokens/s and MFU vs a torch forward + backward + AdamW step.

Both sides train the same model shape (random weights) on the same batch shape with a
policy-gradient loss on the second half of each row (the response), gradient clipping and AdamW.
The JAX side is the real `rl.update.make_train_step` (PPO clipped surrogate; `--micro-batch`
rows per forward/backward, gradients accumulated); the torch side is transformers' model with
the same surrogate written out, over the same micro-batches. The torch side runs first and frees
its GPU memory before the JAX side starts (JAX keeps what it allocates until the process ends);
a baseline that fails is recorded as `baseline_error`, the JAX figure is kept. Tokens/s counts
every position of the batch (prompt and response), as MFU's FLOPs do (`flops_per_token`:
6 x matmul params + attention, forward + backward; recomputation is not counted). Compilation is
excluded (one warm-up step). `--set model.remat=full|dots` recomputes each layer in the backward
pass (long sequences do not fit otherwise); the torch side then turns on transformers' gradient
checkpointing, which recomputes whole layers (the counterpart of `full`).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from azr_jax.bench.common import device_info, peak_numbers, positive_int, time_it
from azr_jax.bench.model_shape import (add_shape_arguments, dtype_from_args, model_config_from_args, model_shape_record,
                                       remat_from_args)


def add_update_arguments(parser: argparse.ArgumentParser, *, batch: int, new_tokens: int, micro_help: str) -> None:
    """The model shape and batch flags of the update benchmarks (`bench train`, `logits`, `attention`)."""
    add_shape_arguments(parser, default_preset="qwen2.5-0.5b")
    parser.add_argument("--batch", type=positive_int, default=batch, help="rows per step")
    parser.add_argument("--prompt-len", type=positive_int, default=64, help="prompt tokens per row (no loss)")
    parser.add_argument("--new-tokens", type=positive_int, default=new_tokens, help="response tokens per row (in the loss)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed steps (median is reported)")
    parser.add_argument("--micro-batch", type=positive_int, default=None, help=micro_help)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_update_arguments(parser, batch=8, new_tokens=64,
                         micro_help="rows per forward/backward on both sides, gradients accumulated (default: --batch); "
                                    "bounds the float32 logits, batch x length x vocab x 4 bytes per copy")
    parser.add_argument("--no-baseline", action="store_true", help="skip the torch step")


def _batch(cfg, args):
    rng = np.random.default_rng(0)
    rows, total = args.batch, args.prompt_len + args.new_tokens
    loss_mask = np.zeros((rows, total), np.int32)
    loss_mask[:, args.prompt_len:] = 1
    return {
        "tokens": rng.integers(0, cfg.vocab_size, size=(rows, total)).astype(np.int32),
        "positions": np.tile(np.arange(total, dtype=np.int32), (rows, 1)),
        "mask": np.ones((rows, total), np.int32),
        "loss_mask": loss_mask,
        "advantages": (rng.standard_normal((rows, 1)) * loss_mask).astype(np.float32),
    }


def jax_update(cfg, args, dtype: str, remat: str, batch: dict, *, logits_chunk: int = 0, attention_chunk: int = 0):
    """(seconds per update step, the compiled step's scratch bytes or None) of
    `rl.update.make_train_step` on `batch` (`--micro-batch` rows per forward/backward)."""
    import jax
    import jax.numpy as jnp

    from azr_jax.config import OptimSection, RLSection
    from azr_jax.models import init_params
    from azr_jax.rl.logprobs import token_logprobs
    from azr_jax.rl.update import init_train_state, make_train_step

    cd = jnp.dtype(dtype)
    rl = RLSection(micro_batch_size=_micro(args), entropy_coef=0.0, logits_chunk=logits_chunk,
                   attention_chunk=attention_chunk)
    optim = OptimSection(learning_rate=1e-6)
    state = init_train_state(cfg, optim, jax.jit(lambda k: init_params(cfg, k))(jax.random.key(0)))
    step = make_train_step(cfg, rl, optim, compute_dtype=cd, remat=remat)
    dev = {k: jnp.asarray(v) for k, v in batch.items()}
    # On-policy old logprobs (ratio 1), as in the first PPO epoch of a real step.
    dev["old_logprobs"] = jax.jit(lambda p, b: token_logprobs(p, b, cfg, cd, logits_chunk=logits_chunk,
                                                              attention_chunk=attention_chunk))(state.params, dev)
    # The activations and logits of one step (params, optimizer state and batch are arguments).
    compiled = step.lower(state, dev).compile()
    memory = compiled.memory_analysis()
    temp_bytes = None if memory is None else int(memory.temp_size_in_bytes)
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], dev)
        jax.block_until_ready(metrics["loss"])

    return time_it(call, warmup=1, repeats=args.repeats), temp_bytes


def _torch_side(cfg, args, dtype: str, remat: str, batch: dict) -> tuple[float, str]:
    import torch
    import transformers

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf_cfg = transformers.AutoConfig.for_model(
        **{**cfg.to_hf_config(), "eos_token_id": None, "bos_token_id": None, "pad_token_id": 0})
    # float32 master weights with autocast on accelerators, like the JAX side's compute_dtype.
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32).to(device).train()
    if remat != "none":  # renamed in transformers 5.2x; the GPU machines' 5.17 has only the old name
        # Called at once, not kept: a bound method held in a local keeps the model alive.
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    ids = torch.tensor(batch["tokens"], dtype=torch.long, device=device)
    mask = torch.tensor(batch["loss_mask"][:, 1:], dtype=torch.float32, device=device)
    adv = torch.tensor(batch["advantages"][:, 1:], dtype=torch.float32, device=device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    micro = _micro(args)

    def call():
        for lo in range(0, ids.shape[0], micro):  # token-mean over the whole batch, as the JAX side
            rows = slice(lo, lo + micro)
            with autocast:
                logits = model(input_ids=ids[rows]).logits[:, :-1].float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[rows, 1:, None])[..., 0]
            ratio = torch.exp(logp - logp.detach())
            loss = torch.maximum(-adv[rows] * ratio, -adv[rows] * ratio.clamp(0.8, 1.28))
            ((loss * mask[rows]).sum() / mask.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return time_it(call, warmup=1, repeats=args.repeats), device


def _free_torch_memory() -> None:
    """Hand torch's cached GPU memory back before the JAX side allocates its own. Called once
    `_torch_side` has returned or its exception was handled: until then its frame (and, on an
    error, the traceback) still holds the model, the optimizer and the activations."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _micro(args) -> int:
    micro = args.micro_batch or args.batch
    if args.batch % micro:
        from azr_jax.errors import UserError

        raise UserError(f"--micro-batch {micro} must divide --batch {args.batch}")
    return micro


def run(args: argparse.Namespace) -> dict:
    info = device_info()
    cfg = model_config_from_args(args)
    dtype = dtype_from_args(args, info["device"])
    remat = remat_from_args(args)
    batch = _batch(cfg, args)
    seq_len = args.prompt_len + args.new_tokens
    n_tokens = args.batch * seq_len
    flops_per_token = cfg.flops_per_token(seq_len)

    _micro(args)  # a bad --micro-batch is said before anything runs
    peak_flops, _ = peak_numbers(info["device_kind"])
    if dtype != "bfloat16":  # the peaks are bf16 dense figures: a float32 step has another ceiling
        peak_flops = None
    baseline: dict = {}
    if not args.no_baseline:
        print("bench train: torch forward + backward + AdamW", file=sys.stderr)
        try:
            torch_s, torch_device = _torch_side(cfg, args, dtype, remat, batch)
            baseline = {"baseline_seconds": torch_s, "baseline_device": torch_device}
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: keep the JAX figure
            baseline = {"baseline_error": f"{type(e).__name__}: {e}"[:500]}
        _free_torch_memory()
    print(f"bench train: jax update step, {cfg.num_params() / 1e6:.1f}M params, {dtype}, remat {remat}",
          file=sys.stderr)
    jax_s, _ = jax_update(cfg, args, dtype, remat, batch)
    result = {
        "bench": "train", **info, "model": model_shape_record(cfg), "dtype": dtype,
        "batch": args.batch, "micro_batch": _micro(args), "seq_len": seq_len, "loss_tokens_per_row": args.new_tokens,
        "remat": remat, "repeats": args.repeats,
        "seconds": jax_s, "tokens_per_s": n_tokens / jax_s, "flops_per_token": flops_per_token,
        "achieved_flops_per_s": flops_per_token * n_tokens / jax_s,
        "mfu": None if peak_flops is None else flops_per_token * n_tokens / jax_s / peak_flops,  # no CPU peak
    }
    # Any remat but none turns on transformers' whole-layer gradient checkpointing: with `dots`
    # torch recomputes more than JAX does, so the label says so.
    label = "torch fwd+bwd+AdamW (transformers model" + (", gradient checkpointing)" if remat != "none" else ")")
    if "baseline_seconds" in baseline:
        torch_s = baseline["baseline_seconds"]
        result.update(baseline=label, **baseline,
                      baseline_tokens_per_s=n_tokens / torch_s, ratio=torch_s / jax_s,
                      baseline_mfu=None if peak_flops is None else flops_per_token * n_tokens / torch_s / peak_flops)
    elif baseline:
        result.update(baseline=label, **baseline)
    return result
