"""The AZR method on the host: prompts, parsing, AST policy, validation, rewards, task buffers.

Plain deterministic Python, no JAX. Modules:
- `prompts`: the six (role, task) prompt templates in R1 format, replaceable via `azr.prompt_dir`.
- `parsing`: answer/format extraction, fenced blocks, entry-function renaming (text and AST only).
- `checks`: the AST policy against banned modules and escape tricks.
- `validation`: completions -> sandbox jobs -> verdicts and gold outputs.
- `rewards`: the reward table of AZR_SPEC §3.
- `buffers`: per-task buffers with de-duplication, seeded sampling, a cap and JSON state.
- `scoring`: `score_records(records, cfg, sandbox)`, used by `azr-jax score` and the trainer.
"""
