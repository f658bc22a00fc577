"""The nano run's config, shared by `configs/nano_base.py` (pretraining) and `configs/nano.py`
(self-play), so the base model is trained on exactly the prompts self-play will show it."""

from __future__ import annotations

import dataclasses

from azr_jax.config import (
    AZRSection, Config, EvalSection, ModelSection, OptimSection, PretrainSection, RLSection, SamplingSection,
    SandboxSection, TrainSection,
)
from azr_jax.nano import BASE_DIR

PROMPT_DIR = BASE_DIR.parent / "prompts"

# Compact prompt templates (same placeholders and answer formats as the packaged ones), fewer
# references and induction inputs: the nano model's context and the CPU budget are small.
NANO_AZR = AZRSection(
    prompt_dir=str(PROMPT_DIR),
    n_references=1,
    num_inputs=8,
    seed_file=str(BASE_DIR / "seed_io.jsonl"),
    induction_seed_file=str(BASE_DIR / "seed_induction.jsonl"),
)

NANO_PRETRAIN = PretrainSection(
    corpus_seed=0, corpus_programs=6000, max_program_steps=3, vocab_size=1024, steps=1000,
    batch_size=16, seq_len=512, learning_rate=3e-3, warmup_steps=30, weight_decay=0.01, seed=0,
)


def nano_base_config() -> Config:
    return Config(
        name="nano_base",
        model=ModelSection(preset="nano", compute_dtype="float32", param_dtype="float32", scan_layers=False),
        azr=NANO_AZR,
        pretrain=NANO_PRETRAIN,
        eval=EvalSection(benchmark="nano", max_response_len=160),
    )


def nano_selfplay_config() -> Config:
    """Self-play from the shipped base model on a laptop CPU (the README's first command)."""
    return Config(
        name="nano",
        model=ModelSection(preset="nano", hf_dir=str(BASE_DIR), compute_dtype="float32", param_dtype="float32",
                           scan_layers=False),  # 4 layers on CPU: the loop's update is faster
        mesh=nano_base_config().mesh,
        sampling=SamplingSection(temperature=1.0, top_p=1.0, top_k=0, max_prompt_len=640, max_response_len=256,
                                 length_buckets=[128, 256, 384, 512, 640]),
        # 8 tasks per (role, task) batch: on 2 cores a step takes ~6 s, so 45 steps and the four
        # evaluations take about 6 minutes (docs/nano.md has the measurements).
        azr=dataclasses.replace(NANO_AZR, batch_size=8, n_solver_samples=4, buffer_cap=4096),
        sandbox=SandboxSection(timeout_s=5.0, workers=2),
        rl=RLSection(micro_batch_size=16),
        # Measured over 45 steps (docs/nano.md): 1e-3 wrecked the 1M-parameter model within a dozen
        # steps, 3e-4 drifted to 0.120 held-out, 1e-4 rose to 0.153 (base 0.133).
        optim=OptimSection(learning_rate=1e-4, schedule="constant", warmup_steps=5, grad_clip_norm=1.0),
        train=TrainSection(steps=45, seed=0, save_every=15, keep_checkpoints=2, audit_every=15, eval_every=15),
        eval=EvalSection(benchmark="nano", max_response_len=160),
        pretrain=NANO_PRETRAIN,
    )
