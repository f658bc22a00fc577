"""Greedy evaluation of a policy on solver tasks, scored by the training scorer.

    result = evaluate(params, policy, cfg, sandbox)           # cfg.eval picks the benchmark
    result["solve_rate"]            # mean over task types of the per-type mean accuracy
    result["per_task"]["deduction"] # per-type mean accuracy

`policy` is anything with `.config` (ModelConfig), `.tokenizer`, `.mesh`, `.rules`,
`.compute_dtype`, `.pad_id`, `.stop_ids` — the trainer's `train_setup.Policy`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

import jax
import numpy as np

from azr_jax.errors import UserError
from azr_jax.eval.benchmarks import load_benchmark
from azr_jax.eval.summary import solve_rate_stderr

log = logging.getLogger(__name__)


def placed_params(policy):
    """`policy.params` laid out on the policy's mesh (as the trainer's state holds them)."""
    from azr_jax.models import param_shardings

    return jax.device_put(policy.params, param_shardings(policy.config, policy.mesh, policy.rules))


def generate_texts(params, policy, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                   generate_fn: Callable | None = None, temperature: float = 0.0, n_samples: int = 1,
                   seed: int = 0, progress: Callable[[str], None] | None = None, top_p: float = 1.0,
                   top_k: int = 0, max_rows: int | None = None, prefill_chunk: int = 0) -> tuple[list[str], list[bool]]:
    """Completions of `prompts` (decoded, special tokens dropped): `n_samples` per prompt,
    consecutive, in prompt order; greedy at temperature 0 (`top_p`/`top_k` then do nothing);
    and for each, whether the length budget cut it off (no EOS or stop sequence). `max_rows`
    bounds the rows one generate call decodes, as `sampling.max_rows` does in training, and
    `prefill_chunk` the prompt pass's chunk (`sampling.prefill_chunk`).
    `progress` gets a line per batch."""
    import time

    from azr_jax.sampling import SamplingSettings

    if generate_fn is None:
        from azr_jax.sampling import generate as generate_fn
    settings = SamplingSettings(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                                eos_ids=policy.stop_ids)
    texts, cut_off = [], []
    t0 = time.perf_counter()
    context = getattr(policy.config, "max_position_embeddings", None)
    too_long = 0
    for start in range(0, len(prompts), batch_size):
        ids = policy.tokenizer.encode_batch(prompts[start: start + batch_size])
        if context is not None:
            too_long += sum(len(i) + max_new_tokens > context for i in ids)
        # One key, rows numbered across batches: a sample's draws depend on its item's place in
        # the benchmark, not on batch_size.
        out = generate_fn(params, policy.config, ids, jax.random.key(seed), settings, n_samples=n_samples,
                          mesh=policy.mesh, rules=policy.rules, compute_dtype=policy.compute_dtype,
                          pad_id=policy.pad_id, max_rows=max_rows, prefill_chunk=prefill_chunk,
                          first_row=start * n_samples)
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        texts.extend(policy.tokenizer.decode(tokens[i, : lengths[i]].tolist(), skip_special_tokens=True)
                     for i in range(len(tokens)))
        cut_off.extend(not bool(f) for f in np.asarray(out.finished))
        if progress is not None:
            done = min(start + batch_size, len(prompts))
            progress(f"generated {done}/{len(prompts)} prompts x {n_samples} ({time.perf_counter() - t0:.0f}s)")
    if too_long:  # generated anyway (a benchmark's long items are part of it), but not silently
        log.warning("%d of %d prompts plus the answer budget (%d tokens) run past the model's "
                    "max_position_embeddings (%d): those answers come from positions it was not trained on",
                    too_long, len(prompts), max_new_tokens, context)
    return texts, cut_off


def score_items(items: list[dict], responses: list[str], cfg, sandbox, samples: int = 1) -> dict:
    """Accuracy of `responses` (`samples` consecutive ones per item) on `items` with
    `azr.scoring.score_records` (the trainer's scorer); a response counts as right only when its
    format is also right (`format_ok`). An item's accuracy is the mean over its samples; with samples > 1, `pass_at_k` counts an item when any sample is right. On several
    processes (multi-host) this is a collective: every process calls it with the same arguments,
    sandbox-checks its share of the answers and returns the same result."""
    from azr_jax.azr.scoring import score_records
    from azr_jax.distributed import share_results

    if not items:  # a rate of 0.0 over nothing would read as a measured result
        raise UserError("the benchmark holds no items")
    if len(responses) != len(items) * samples:
        raise ValueError(f"{len(responses)} responses for {len(items)} items x {samples} samples")
    records = [{"id": f"{it['id']}#{j}" if samples > 1 else it["id"], "role": "solve", "task": it["task"],
                "response": responses[i * samples + j], "problem": it["problem"]}
               for i, it in enumerate(items) for j in range(samples)]
    def score(recs: list[dict]) -> list[dict]:
        # Each process checks its strided share with its own sandbox; all receive every verdict.
        return share_results(recs, lambda share: score_records(share, cfg, sandbox) if share else [])

    scored = score(records)
    broken = [i for i, s in enumerate(scored) if s.get("reason") == "sandbox_error"]
    if broken:  # the sandbox failed to check these answers: one more try before counting them
        for i, s in zip(broken, score([records[i] for i in broken])):
            scored[i] = s
        broken = [i for i in broken if scored[i].get("reason") == "sandbox_error"]
        if broken:
            log.warning("evaluation: %d answer(s) could not be checked because the sandbox broke (reason "
                        "sandbox_error); they count as wrong, so the solve rate is a lower bound; see the "
                        "sandbox warnings above", len(broken))
    unchecked = Counter(b // samples for b in broken)  # item -> its samples the sandbox never checked
    # Solved = right answer in the R1 format, as the reference's validation counts it (the
    # training scorer checks answers whatever the format; docs/deviations.md).
    accs = [[float(s["accuracy"] or 0.0) if s["format_ok"] else 0.0 for s in scored[i * samples:(i + 1) * samples]]
            for i in range(len(items))]

    def by_task(values: list[float]) -> dict:
        per_task: dict[str, list[float]] = {}
        for it, v in zip(items, values):
            per_task.setdefault(it["task"], []).append(v)
        return {task: float(np.mean(v)) for task, v in per_task.items()}

    rates = by_task([float(np.mean(a)) for a in accs])
    result = {
        "solve_rate": float(np.mean(list(rates.values()))) if rates else 0.0,
        "per_task": rates,
        "format_rate": float(np.mean([bool(s["format_ok"]) for s in scored])) if scored else 0.0,
        "n_items": len(items),
        "sandbox_errors": len(broken),  # answers never checked (counted as wrong); should be 0
        "items": [{"id": it["id"], "task": it["task"], "accuracy": float(np.mean(a)) if samples > 1 else a[0],
                   "format_ok": scored[i * samples]["format_ok"]} | ({"accuracies": a} if samples > 1 else {})
                  | ({"sandbox_errors": unchecked[i]} if unchecked[i] else {})
                  for i, (it, a) in enumerate(zip(items, accs))],
    }
    result["solve_rate_stderr"] = solve_rate_stderr(result)
    if samples > 1:
        best = by_task([max(a) for a in accs])
        result["pass_at_k"] = {"k": samples, "solve_rate": float(np.mean(list(best.values()))) if best else 0.0,
                               "per_task": best}
    return result


def evaluate(params, policy, cfg, sandbox, *, items: list[dict] | None = None, batch_size: int = 64,
             generate_fn: Callable | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Solve rate of `params` on `items` (default: the `cfg.eval` benchmark): greedy pass@1, or
    with `eval.samples` = k > 1 the mean accuracy of k samples at `eval.temperature` plus pass@k."""
    from azr_jax.azr.prompts import Prompts

    items = load_benchmark(cfg.eval) if items is None else items
    prompts = Prompts.from_config(cfg.azr)
    texts = [prompts.solve(it["task"], it["problem"]) for it in items]
    k = cfg.eval.samples
    responses, cut_off = generate_texts(params, policy, texts, max_new_tokens=cfg.eval.max_response_len,
                               batch_size=batch_size, generate_fn=generate_fn, temperature=cfg.eval.temperature,
                               n_samples=k, progress=progress, top_p=cfg.sampling.top_p, top_k=cfg.sampling.top_k,
                               max_rows=cfg.sampling.max_rows, prefill_chunk=cfg.sampling.prefill_chunk)
    if progress is not None:
        progress(f"checking {len(responses)} answers in the sandbox")
    result = score_items(items, responses, cfg, sandbox, samples=k)
    # Answers the length budget cut off (eval.max_response_len): wrong for want of tokens, which
    # a too-small budget turns into a lower solve rate.
    result.update(benchmark=cfg.eval.benchmark, samples=k, temperature=cfg.eval.temperature, cut_off=sum(cut_off))
    for i, it in enumerate(result["items"]):
        if k == 1:
            it["response"] = responses[i]
        else:
            it["responses"] = responses[i * k:(i + 1) * k]
        if any(cut_off[i * k:(i + 1) * k]):
            it["cut_off"] = sum(cut_off[i * k:(i + 1) * k])
    return result
