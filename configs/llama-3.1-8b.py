"""AZR self-play on meta-llama/Llama-3.1-8B with the paper's settings (AZR_SPEC §4.4-4.5).

Pass the downloaded checkpoint: azr-jax train --config configs/llama-3.1-8b.py --set model.hf_dir=DIR
Lay it out with --mesh on a v5p-8, v6e-8 or gpu-8: by the estimate in docs/training.md ("Memory"),
the other topologies' chips cannot hold its training state and KV cache.
"""

from azr_jax.run_presets import paper_config

config = paper_config("llama-3.1-8b", "llama-3.1-8b",
                      # llama.sh: 64 seed triplets, a second top-level function allowed, the last top-level def becomes f
                      seed_size=64, reject_multiple_functions=False, f_replace_location="any_last")
