# %% [markdown]
# # azr-jax quickstart: the pieces of one AZR step, by hand
#
# A runnable walkthrough (jupytext "percent" format: open it in Jupyter with jupytext, in VS Code,
# or run it with `python notebooks/quickstart.py`). The test suite executes it, so it stays true.
# It takes about a minute on a laptop CPU. The self-play loop (`azr-jax train`) does all of this
# for you; here each piece is called directly so you can see what goes in and out.

# %%
import jax
import jax.numpy as jnp
import numpy as np

from azr_jax.azr.buffers import TaskBuffers
from azr_jax.azr.prompts import Prompts
from azr_jax.azr.scoring import score_records
from azr_jax.config import Config, SandboxSection, apply_overrides
from azr_jax.models import ModelConfig, init_params
from azr_jax.rl import compute_advantages, init_train_state, make_train_step, token_logprobs, trrpp_group_id
from azr_jax.sampling import SamplingSettings, generate, rollout_batch
from azr_jax.sandbox import Sandbox

cfg = apply_overrides(Config(), ["azr.batch_size=4", "rl.micro_batch_size=4", "optim.learning_rate=1e-3"])

# %% [markdown]
# ## 1. Task buffers and a proposer prompt
# Buffers start from the identity triplet `def f(a): return a`; a deduction proposer sees K of
# their programs as references.

# %%
buffers = TaskBuffers.seeded(cfg.azr)
rng = np.random.default_rng(0)
references = buffers["deduction"].sample_references(cfg.azr.n_references, rng)
prompts = Prompts.from_config(cfg.azr)
prompt = prompts.propose("deduction", references=references)
print(prompt[-400:])
assert prompt.endswith("Assistant: <think>")

# %% [markdown]
# ## 2. Scoring: a proposal and the solver rollouts that measure its learnability
# The sandbox runs the proposed program twice (fresh processes), keeps its output as the gold,
# and scores the solver answers against it. Learnability = 1 − solve rate (here 1 of 2 solved).

# %%
proposal = {
    "id": "demo-propose", "role": "propose", "task": "deduction",
    "response": " I will double each item.</think> <answer>\n```python\ndef f(xs):\n"
                "    return [x * 2 for x in xs]\n```\n```input\n[1, 2, 3]\n```\n</answer>",
    "solver_responses": [" easy</think> <answer>```output\n[2, 4, 6]\n```</answer>",
                         " hmm</think> <answer>```output\n[1, 2, 3]\n```</answer>"],
}
with Sandbox(SandboxSection(timeout_s=5.0, workers=2)) as sandbox:
    [scored] = score_records([proposal], cfg, sandbox)
print(scored)
assert scored["valid"] and scored["problem"]["output"] == "[2, 4, 6]" and scored["reward"] == 0.5

# %% [markdown]
# ## 3. Sampling from a policy
# A tiny random decoder (the same code path as Qwen2.5 / Llama 3 / Qwen3). `generate` runs one
# jitted prefill and an on-device decode loop, and returns each chosen token's logprob.

# %%
model_cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=16)
params = init_params(model_cfg, jax.random.key(0))
prompt_tokens = [[1, 2, 3, 4], [5, 6, 7]]
settings = SamplingSettings(temperature=1.0, max_new_tokens=8)
completions = generate(params, model_cfg, prompt_tokens, jax.random.key(1), settings, n_samples=2)
print(completions.as_lists())

# %% [markdown]
# ## 4. TRR++ advantages and one update
# Rewards are whitened per (role, task) group; here a toy reward (does the completion contain
# token 7?) stands in for the sandbox verdicts. The trainer recomputes logprobs with the same
# function the sampler's logprobs agree with, then applies one jitted update.

# %%
batch = rollout_batch(prompt_tokens, completions, 2)
gap = np.abs(np.asarray(token_logprobs(params, batch, model_cfg)) - batch["old_logprobs"])
print("sampler vs trainer logprob gap:", float((gap * batch["loss_mask"]).max()))
assert float((gap * batch["loss_mask"]).max()) < 1e-4

rewards = np.array([float(7 in row) for row in completions.as_lists()], np.float32)
groups = np.full(len(rewards), trrpp_group_id("solve", "deduction"))
batch["advantages"] = compute_advantages(cfg.rl, rewards, batch["loss_mask"], groups, num_groups=6)
state = init_train_state(model_cfg, cfg.optim, params, total_steps=1)
train_step = make_train_step(model_cfg, cfg.rl, cfg.optim, total_steps=1, compute_dtype=jnp.float32)
state, metrics = train_step(state, {k: jnp.asarray(v) for k, v in batch.items()})
print({k: round(float(v), 4) for k, v in metrics.items()})
assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1
