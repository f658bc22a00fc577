"""AZR self-play on Qwen/Qwen3-4B-Base with the paper's settings (AZR_SPEC §4.4-4.5).

Pass the downloaded checkpoint: azr-jax train --config configs/qwen3-4b-base.py --set model.hf_dir=DIR
Lay it out with --mesh on a v5p-8, v6e-8 or gpu-8: by the estimate in docs/training.md ("Memory"),
the other topologies' chips cannot hold its training state and KV cache.
The reference removes the <think> / </think> tokens from the Qwen3 tokenizer before this run;
this config uses the checkpoint's tokenizer as it is (docs/deviations.md, "Prompts and seeding").
"""

from azr_jax.run_presets import paper_config

config = paper_config("qwen3-4b-base", "qwen3-4b-base",
                      # qwen3_4b.sh: a second top-level function allowed, the last top-level def becomes f, micro batch 8
                      reject_multiple_functions=False, f_replace_location="any_last", micro_batch_size=8)
