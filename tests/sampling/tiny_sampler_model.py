"""A tiny random decoder shared by the sampler tests (imported by the test modules)."""

import jax

from azr_jax.models import ModelConfig, init_params
from azr_jax.sampling import SamplingSettings, generate

CFG = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=8,
                  num_kv_heads=4, head_dim=8, max_position_embeddings=64)  # GQA; heads split 4 ways
BUCKETS = (8, 16)
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
GREEDY = SamplingSettings(temperature=0.0, max_new_tokens=8)


def make_params(seed: int = 0):
    # 3x the default init scale: logits spread enough that greedy choices have clear margins.
    # One jit for the whole init (eager per-leaf ops would each compile).
    init = jax.jit(lambda k: jax.tree.map(lambda w: 3 * w if w.ndim >= 2 else w, init_params(CFG, k)))
    return init(jax.random.key(seed))


def gen(params, settings=GREEDY, n=1, prompts=PROMPTS, key=1, **kw):
    return generate(params, CFG, prompts, jax.random.key(key), settings, n_samples=n, length_buckets=BUCKETS, **kw)
