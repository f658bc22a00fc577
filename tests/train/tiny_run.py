"""A tiny self-play setup for the trainer tests: a byte-level BPE tokenizer trained here and a
one-layer random Qwen2-shaped policy, small enough for a step to take seconds on one CPU."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "def f(a):\n    return a\n", "def f(x, y):\n    return x + y\n", "```python\nprint(f(1))\n```\n",
    "<think> reasoning </think> <answer> 42 </answer>", "```input\n'Hello world'\n```\n```output\n3\n```",
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.",
]


def make_tokenizer(directory: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    from azr_jax.azr.prompts import load_templates

    # Trained on the prompt templates themselves so prompts stay a few hundred tokens long.
    tok.train_from_iterator(CORPUS + list(load_templates().values()) * 4, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return directory / "tokenizer.json"


def tiny_overrides(tokenizer: Path, workers: int = 2) -> list[str]:
    """`--set` items for a tiny run: 2 prompts per (role, task) batch, short prompts/responses."""
    model = {"vocab_size": 1024, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
             "num_kv_heads": 1, "head_dim": 16, "max_position_embeddings": 8192}
    return [
        "name=tiny", "model.preset=qwen2.5-0.5b", f"model.tokenizer={tokenizer}",
        f"model.overrides={json.dumps(model)}", "model.compute_dtype=float32",
        'mesh.shape={"data": 1, "fsdp": -1, "tensor": 1}',
        "azr.batch_size=2", "azr.n_references=2", "azr.n_solver_samples=2", "azr.num_inputs=2",
        "sampling.max_prompt_len=1024", "sampling.max_response_len=8", "sampling.length_buckets=[16, 128, 256, 512, 1024]",
        "rl.micro_batch_size=4", "optim.learning_rate=1e-3", "train.steps=2", "train.save_every=1",
        "train.audit_every=1", f"sandbox.workers={workers}", "sandbox.timeout_s=5",
        "eval.max_items=3", "eval.max_response_len=8",
    ]
