"""Prompt + completion rows laid out the way the trainer reads them (docs/architecture.md, RL).

Each row is `[left padding | prompt | completion | right padding]`: the prompt left-padded to a
length bucket, the completion right-padded to the response width. Positions are
`cumsum(mask) - 1`, the same positions the sampler used, which is what makes the trainer's
recomputed logprobs equal the sampler's. `old_logprobs[t]` is the sampler's log p(tokens[t]).
"""

from __future__ import annotations

import numpy as np

from azr_jax.sampling.buckets import DEFAULT_LENGTH_BUCKETS, bucket_length


def rollout_batch(prompt_tokens, completions, n_samples: int, *, pad_id: int = 0,
                  length_buckets=DEFAULT_LENGTH_BUCKETS) -> dict[str, np.ndarray]:
    """numpy dict with `tokens`, `positions`, `mask`, `loss_mask`, `old_logprobs` ([B*n, T]).

    Row i*n + j is sample j of prompt i (the `Completions` order). T = prompt bucket + the
    completions' width.
    """
    prompts = [list(p) for p in prompt_tokens]
    rows, width = completions.tokens.shape
    if rows != len(prompts) * n_samples:
        raise ValueError(f"{rows} completion rows for {len(prompts)} prompts x {n_samples} samples")
    prompt_len = bucket_length(max(len(p) for p in prompts), length_buckets)
    total = prompt_len + width
    tokens = np.full((rows, total), pad_id, np.int32)
    mask = np.zeros((rows, total), np.int32)
    loss_mask = np.zeros((rows, total), np.int32)
    old_logprobs = np.zeros((rows, total), np.float32)
    for r in range(rows):
        p, n = prompts[r // n_samples], int(completions.lengths[r])
        tokens[r, prompt_len - len(p):prompt_len] = p
        mask[r, prompt_len - len(p):prompt_len + n] = 1
        tokens[r, prompt_len:prompt_len + n] = completions.tokens[r, :n]
        loss_mask[r, prompt_len:prompt_len + n] = 1
        old_logprobs[r, prompt_len:prompt_len + n] = completions.logprobs[r, :n]
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return {"tokens": tokens, "positions": positions, "mask": mask, "loss_mask": loss_mask,
            "old_logprobs": old_logprobs}
