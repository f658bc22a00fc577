"""Rollout generation: jitted prefill + on-device decode loop with a KV cache.

`generate(params, config, prompt_tokens, rng, settings, n_samples=...) -> Completions`;
`SamplingSettings` says how (temperature, top-p/top-k, EOS, stop sequences, budgets);
`rollout_batch` lays prompts + completions out for the trainer; `logprob_gap` measures how far
the sampler's logprobs are from the trainer's.
"""

from azr_jax.sampling.rollout_batch import rollout_batch
from azr_jax.sampling.sampler import Completions, generate, logprob_gap
from azr_jax.sampling.settings import SamplingSettings

__all__ = ["Completions", "SamplingSettings", "generate", "logprob_gap", "rollout_batch"]
