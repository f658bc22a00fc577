"""Building blocks of the experiment presets in `configs/`: the paper's hyper-parameters and the
mesh layouts of the machines we run on.

The config files stay one readable call each (`configs/qwen2.5-7b.py`), while the numbers they
share live here once. Sources: AZR_SPEC §4.4 (per-model run scripts) and §4.5 (paper Table 3).
"""

from __future__ import annotations

import dataclasses

from azr_jax.config import (
    AZRSection, Config, EvalSection, MeshSection, ModelSection, OptimSection, RLSection, SamplingSection,
    TrainSection,
)
from azr_jax.errors import UserError

# Mesh layouts: device count of each machine and the (data, fsdp, tensor) split we use there.
# fsdp shards the weights and optimizer state over every chip; `tensor` > 1 (set per model size
# below) splits heads/MLP for the sampler's decode steps on models whose weights dominate memory.
TOPOLOGIES = {
    "v4-8": 4,  # 4 TPU v4 chips (megacore: one JAX device per chip)
    "v5p-8": 4,  # 4 TPU v5p chips
    "v5e-8": 8,  # 8 TPU v5e chips (16 GiB HBM each)
    "v6e-8": 8,  # 8 TPU v6e chips (32 GiB HBM each)
    "gpu-8": 8,  # one 8-GPU node
}


def mesh_shape(topology: str, tensor: int = 1) -> dict:
    """The mesh shape of `topology` with `tensor`-way model parallelism and fsdp over the rest."""
    if topology not in TOPOLOGIES:
        raise UserError(f"unknown mesh topology '{topology}'; known: {sorted(TOPOLOGIES)}")
    devices = TOPOLOGIES[topology]
    tensor = min(tensor, devices)
    if devices % tensor:
        raise UserError(f"tensor={tensor} does not divide the {devices} devices of {topology}")
    return {"data": 1, "fsdp": devices // tensor, "tensor": tensor}


def paper_config(name: str, preset: str, *, tensor: int = 1, reject_multiple_functions: bool = True,
                 f_replace_location: str = "not_first", seed_size: int = 256, micro_batch_size: int = 16) -> Config:
    """The paper's self-play run (AZR_SPEC §4.4-4.5) for one base model.

    Decisions on the reference's ambiguous points (docs/training.md, "Decisions"):
    one-step lag of solver tasks (as the code does), boundary proposer reward -0.5 (as the code
    does; the paper's formula reads 0), buffers capped at 16384 dropping the *oldest* entries
    (the reference keeps the oldest, which freezes "newest task" sampling once full), 8
    learnability rollouts at T = 1.0 (the paper; master's greedy rollouts collapse the reward).
    Each config file names the Hugging Face model it was published for: download it yourself
    and pass its directory with `--set model.hf_dir=DIR` (nothing is fetched at run time).
    """
    return Config(
        name=name,
        model=ModelSection(preset=preset, hf_dir=None, compute_dtype="bfloat16", param_dtype="float32",
                           remat="full", overrides={}),
        mesh=MeshSection(shape={"data": 1, "fsdp": -1, "tensor": tensor}),
        # max_rows: no generation call decodes more rows than one rollout batch; the learnability
        # rollouts (8 per valid proposal, up to 512 rows) run in calls of 64, drawing the same
        # samples, with a KV cache an eighth the size (docs/training.md, "Memory").
        # prefill_chunk: a 6144-token prompt bucket goes through the model 1024 positions at a
        # time (its attention scores per head: 1024 x 6144 instead of 6144 x 6144).
        sampling=SamplingSection(temperature=1.0, top_p=1.0, top_k=0, max_prompt_len=6144,
                                 max_response_len=8096, max_rows=64, prefill_chunk=1024),
        azr=AZRSection(
            task_types=["abduction", "deduction", "induction"], batch_size=64, n_references=6,
            n_solver_samples=8, learnability_temperature=1.0, num_inputs=10, boundary_reward=-0.5,
            solver_task_lag=True, buffer_cap=16384, buffer_eviction="drop_oldest", pred_data_mix="max_new",
            reject_multiple_functions=reject_multiple_functions, f_replace_location=f_replace_location,
            seed_size=seed_size,
        ),
        rl=RLSection(estimator="trr++", whiten_stats="token", clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=3.0,
                     entropy_coef=0.001, kl_coef=0.0, micro_batch_size=micro_batch_size,
                     loss_agg="token-mean-per-micro-batch",  # the reference's weighting (AZR_SPEC §4.2)
                     # Rows reach 6144 + 8096 positions: one copy of their float32 logits over a
                     # 152k vocabulary is 8.7 GB per row; chunks of 1024 keep 0.6 GB of it live.
                     # The attention scores are 14 240^2 x 4 bytes = 0.8 GB per head and row
                     # (23 GB for a 7B's 28 heads); chunks of 1024 queries keep 1.6 GB live.
                     logits_chunk=1024, attention_chunk=1024),
        optim=OptimSection(learning_rate=1e-6, schedule="constant", warmup_steps=0, weight_decay=0.0,
                           b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=1.0),
        train=TrainSection(steps=500, seed=0, save_every=10, keep_checkpoints=3, log_every=1, eval_every=10,
                           audit_every=10),
        # Answers get the rollouts' token budget (the reference's code benchmarks decode up to
        # 8096 tokens too): a policy that learns to reason longer is not cut off at evaluation.
        eval=EvalSection(max_response_len=8096),
    )


def with_mesh(cfg: Config, topology: str) -> Config:
    """`cfg` laid out on `topology`, keeping its tensor-parallel degree."""
    tensor = int(cfg.mesh.shape.get("tensor", 1))
    return dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, shape=mesh_shape(topology, tensor)))
