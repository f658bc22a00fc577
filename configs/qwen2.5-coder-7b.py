"""AZR self-play on Qwen/Qwen2.5-Coder-7B with the paper's settings (AZR_SPEC §4.4-4.5).

Pass the downloaded checkpoint: azr-jax train --config configs/qwen2.5-coder-7b.py --set model.hf_dir=DIR
Lay it out with --mesh on a v5p-8, v6e-8 or gpu-8: by the estimate in docs/training.md ("Memory"),
the other topologies' chips cannot hold its training state and KV cache.
"""

from azr_jax.run_presets import paper_config

config = paper_config("qwen2.5-coder-7b", "qwen2.5-coder-7b")
