"""Greedy evaluation of a policy on solver tasks, scored by the training scorer.

    result = evaluate(params, policy, cfg, sandbox)           # cfg.eval picks the benchmark
    result["solve_rate"]            # mean over task types of the per-type mean accuracy
    result["per_task"]["deduction"] # per-type mean accuracy

`policy` is anything with `.config` (ModelConfig), `.tokenizer`, `.mesh`, `.rules`,
`.compute_dtype`, `.pad_id`, `.stop_ids` — the trainer's `train_setup.Policy`.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from azr_jax.eval.benchmarks import load_benchmark


def placed_params(policy):
    """`policy.params` laid out on the policy's mesh (as the trainer's state holds them)."""
    from azr_jax.models import param_shardings

    return jax.device_put(policy.params, param_shardings(policy.config, policy.mesh, policy.rules))


def generate_texts(params, policy, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                   generate_fn: Callable | None = None) -> list[str]:
    """Greedy completions of `prompts` (decoded, special tokens dropped), in order."""
    from azr_jax.sampling import SamplingSettings

    if generate_fn is None:
        from azr_jax.sampling import generate as generate_fn
    settings = SamplingSettings(temperature=0.0, max_new_tokens=max_new_tokens, eos_ids=policy.stop_ids)
    texts = []
    for start in range(0, len(prompts), batch_size):
        ids = policy.tokenizer.encode_batch(prompts[start: start + batch_size])
        out = generate_fn(params, policy.config, ids, jax.random.key(0), settings, mesh=policy.mesh,
                          rules=policy.rules, compute_dtype=policy.compute_dtype, pad_id=policy.pad_id)
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        texts.extend(policy.tokenizer.decode(tokens[i, : lengths[i]].tolist(), skip_special_tokens=True)
                     for i in range(len(tokens)))
    return texts


def score_items(items: list[dict], responses: list[str], cfg, sandbox) -> dict:
    """Accuracy of `responses` on `items` with `azr.scoring.score_records` (the trainer's scorer)."""
    from azr_jax.azr.scoring import score_records

    records = [{"id": it["id"], "role": "solve", "task": it["task"], "response": r, "problem": it["problem"]}
               for it, r in zip(items, responses)]
    scored = score_records(records, cfg, sandbox)
    per_task: dict[str, list[float]] = {}
    for it, s in zip(items, scored):
        per_task.setdefault(it["task"], []).append(float(s["accuracy"] or 0.0))
    rates = {task: float(np.mean(v)) for task, v in per_task.items()}
    return {
        "solve_rate": float(np.mean(list(rates.values()))) if rates else 0.0,
        "per_task": rates,
        "format_rate": float(np.mean([bool(s["format_ok"]) for s in scored])) if scored else 0.0,
        "n_items": len(items),
        "items": [{"id": it["id"], "accuracy": s["accuracy"], "format_ok": s["format_ok"]}
                  for it, s in zip(items, scored)],
    }


def evaluate(params, policy, cfg, sandbox, *, items: list[dict] | None = None, batch_size: int = 64,
             generate_fn: Callable | None = None) -> dict:
    """Greedy pass@1 of `params` on `items` (default: the `cfg.eval` benchmark)."""
    from azr_jax.azr.prompts import Prompts

    items = load_benchmark(cfg.eval) if items is None else items
    prompts = Prompts.from_config(cfg.azr)
    texts = [prompts.solve(it["task"], it["problem"]) for it in items]
    responses = generate_texts(params, policy, texts, max_new_tokens=cfg.eval.max_response_len,
                               batch_size=batch_size, generate_fn=generate_fn)
    result = score_items(items, responses, cfg, sandbox)
    result["benchmark"] = cfg.eval.benchmark
    for it, r in zip(result["items"], responses):
        it["response"] = r
    return result
