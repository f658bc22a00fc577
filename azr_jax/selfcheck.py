"""`azr-jax selfcheck`: a one-minute end-to-end check of the installed stack.

Each check exercises the real code path on a tiny random model or a tiny program and prints
one line; the command exits non-zero if any check fails. It is what to run first on a new
machine (or a new TPU VM) before launching a long job.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable


class CheckFailed(Exception):
    pass


def _require(condition: bool, message) -> None:
    """A check's condition (not `assert`, which `python -O` / PYTHONOPTIMIZE strips)."""
    if not condition:
        raise CheckFailed(message)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-sandbox", action="store_true", help="skip the sandbox and scoring checks")


def _check_model() -> str:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from azr_jax.models import ModelConfig, forward, init_cache, init_params

    cfg = ModelConfig(architecture="qwen2", vocab_size=128, hidden_size=64, intermediate_size=128,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0,
                      rope_scaling=None, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      attention_bias=True, qk_norm=False, max_position_embeddings=256)
    params = init_params(cfg, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 12)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(12, dtype=jnp.int32), (2, 12))
    full, _ = forward(params, tokens, positions, config=cfg)
    cache = init_cache(cfg, 2, 16, jnp.float32)
    pre, cache = forward(params, tokens[:, :8], positions[:, :8], config=cfg, cache=cache)
    steps = [pre]
    for t in range(8, 12):
        step, cache = forward(params, tokens[:, t:t + 1], positions[:, t:t + 1], config=cfg, cache=cache)
        steps.append(step)
    diff = float(jnp.max(jnp.abs(jnp.concatenate(steps, axis=1) - full)))
    _require(diff < 1e-4, f"prefill+decode differs from the full forward by {diff:.2e}")
    return f"{cfg.num_params():,} params on {jax.devices()[0].platform}; cached decode == full forward (max |diff| {diff:.1e})"


def _check_sampler() -> str:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from azr_jax.models import ModelConfig, init_params
    from azr_jax.rl.logprobs import token_logprobs
    from azr_jax.sampling import SamplingSettings, generate

    cfg = ModelConfig(architecture="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                      num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, rope_theta=10000.0,
                      rope_scaling=None, rms_norm_eps=1e-6, tie_word_embeddings=False,
                      attention_bias=False, qk_norm=False, max_position_embeddings=128)
    params = init_params(cfg, jax.random.key(1))
    prompt = [3, 5, 7, 11]
    out = generate(params, cfg, [prompt], jax.random.key(2), SamplingSettings(temperature=1.0, max_new_tokens=8))
    n = int(out.lengths[0])
    seq = np.asarray(prompt + out.tokens[0, :n].tolist(), np.int32)[None]
    batch = {"tokens": jnp.asarray(seq), "positions": jnp.arange(seq.shape[1], dtype=jnp.int32)[None],
             "mask": jnp.ones_like(jnp.asarray(seq))}
    trainer_lp = np.asarray(token_logprobs(params, batch, cfg))[0, len(prompt):]
    gap = float(np.max(np.abs(trainer_lp - out.logprobs[0, :n])))
    _require(gap < 1e-4, f"sampler and trainer logprobs differ by {gap:.2e}")
    return f"sampled {n} tokens; sampler vs trainer logprob gap {gap:.1e}"


def _check_sandbox() -> str:
    import os
    import tempfile

    from azr_jax.config import SandboxSection
    from azr_jax.sandbox import Job, Sandbox

    # A path the trainer can write to; a contained program's write must not reach it.
    target = os.path.join(tempfile.gettempdir(), f"azr_selfcheck_{os.getpid()}")
    with Sandbox(SandboxSection(timeout_s=5.0, workers=2)) as sb:
        report = sb.isolation_report()
        ok, escape = sb.run([
            Job(program="def f(a):\n    return sorted(a)[::-1]", calls=["[3, 1, 2]"]),
            Job(program="def f(p):\n    open(p, 'w').write('x')\n    return 1", calls=[repr(target)]),
        ])
    _require(ok.outputs == ["[3, 2, 1]"] and ok.deterministic, f"simple program failed: {ok}")
    if os.path.exists(target):
        os.unlink(target)  # the check fails either way; the file should not outlive it
        raise CheckFailed(f"a sandboxed program wrote to the host's {target}")
    active = [k for k, v in report.get("layers", {}).items() if v is True]
    missing = report.get("missing") or []
    note = f"; MISSING: {', '.join(missing)}" if missing else ""
    return f"mode {report.get('mode')}, layers: {', '.join(active)}{note}; host files untouched"


def _check_scoring() -> str:
    from azr_jax.azr.scoring import score_records
    from azr_jax.config import Config, SandboxSection
    from azr_jax.sandbox import Sandbox

    cfg = Config()
    records = [
        {"id": "p", "role": "propose", "task": "deduction",
         "response": " plan</think> <answer>\n```python\ndef f(x):\n    return x * 2\n```\n```input\n21\n```\n</answer>",
         "solver_responses": [" t</think> <answer>```output\n42\n```</answer>", " t</think> <answer>```output\n41\n```</answer>"]},
        {"id": "s", "role": "solve", "task": "deduction",
         "response": " 21*2</think> <answer>```output\n42\n```</answer>",
         "problem": {"program": "def f(x):\n    return x * 2", "input": "21", "output": "42", "imports": []}},
    ]
    with Sandbox(SandboxSection(timeout_s=5.0, workers=2)) as sb:
        propose, solve = score_records(records, cfg, sb)
    _require(propose["valid"] and propose["reward"] == 0.5, propose)
    _require(solve["accuracy"] == 1.0 and solve["reward"] == 1.0, solve)
    return "proposal validated (learnability 0.5), solver answer scored 1.0"


def main(args: argparse.Namespace) -> int:
    checks: list[tuple[str, Callable[[], str]]] = [("model", _check_model), ("sampler", _check_sampler)]
    if not args.skip_sandbox:
        checks += [("sandbox", _check_sandbox), ("scoring", _check_scoring)]
    failed = 0
    for name, fn in checks:
        t0 = time.perf_counter()
        try:
            detail = fn()
            status = "ok  "
        except Exception as e:  # report every failing check, then exit non-zero
            detail, status = f"{type(e).__name__}: {e}", "FAIL"
            failed += 1
        print(f"[{status}] {name:8s} {detail} ({time.perf_counter() - t0:.1f}s)", flush=True)
    print("selfcheck: all checks passed" if not failed else f"selfcheck: {failed} check(s) failed",
          file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0
