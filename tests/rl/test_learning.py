"""End-to-end learning guard: the sampler + the real TRR++ estimator + the PPO update step turn a
random tiny policy into one that reliably earns a toy verifiable reward.

Reward: 1 if the completion contains TARGET, else 0. A random policy over 64 tokens hits it
in 3 tokens about 5% of the time; a sign, masking, logprob-alignment or baseline bug stalls or
reverses learning, so mean reward > 0.9 within the step bound is a strong end-to-end check.
"""

import jax
import jax.numpy as jnp
import numpy as np

from azr_jax.config import OptimSection, RLSection
from azr_jax.models import ModelConfig, init_params
from azr_jax.rl.advantages import REGISTRY
from azr_jax.rl.update import init_train_state, make_train_step
from azr_jax.sampling import SamplingSettings, generate, rollout_batch

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                  num_kv_heads=2, head_dim=8, max_position_embeddings=32)
TARGET = 42
PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]  # prompts 0, 1 form TRR++ group 0; 2, 3 group 1
N_SAMPLES = 16
MAX_STEPS = 30  # seeds 0, 1, 2 reach > 0.9 in 12-14 updates
BUCKETS = (8,)


def test_policy_learns_a_verifiable_reward_with_sampler_and_trrpp_update():
    rl = RLSection(estimator="trr++", micro_batch_size=64, entropy_coef=0.0, kl_coef=0.0)
    optim = OptimSection(learning_rate=1e-2, grad_clip_norm=1.0)
    params = jax.jit(lambda k: init_params(CFG, k))(jax.random.key(0))
    state = init_train_state(CFG, optim, params)
    train_step = make_train_step(CFG, rl, optim, compute_dtype=jnp.float32)
    settings = SamplingSettings(temperature=1.0, max_new_tokens=3)
    group_ids = np.repeat([0, 0, 1, 1], N_SAMPLES)

    history, gaps = [], []
    for step in range(MAX_STEPS):
        out = generate(state.params, CFG, PROMPTS, jax.random.key(100 + step), settings, n_samples=N_SAMPLES,
                       length_buckets=BUCKETS)
        rewards = np.array([float(TARGET in row) for row in out.as_lists()], np.float32)
        history.append(rewards.mean())
        if history[-1] > 0.9:
            break
        batch = rollout_batch(PROMPTS, out, N_SAMPLES, length_buckets=BUCKETS)
        batch["advantages"] = REGISTRY["trr++"](rewards, jnp.asarray(batch["loss_mask"]), group_ids, num_groups=2)
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        # On-policy: the update's own logprobs must match the sampler's. (approx_kl would be 0
        # whatever the sampler said: by default pi_old is the update's own recomputed logprob.)
        state, metrics = train_step(state, batch)
        gaps.append(float(metrics["logprob_gap_max"]))

    assert history[0] < 0.1, history
    assert history[-1] > 0.9, f"mean reward per step: {np.round(history, 2).tolist()}"
    assert max(abs(g) for g in gaps) < 1e-6, gaps  # sampler and trainer logprobs agree (fp32)
