"""AZR self-play on Qwen/Qwen2.5-1.5B with the paper's settings (AZR_SPEC §4.4-4.5).

Pass the downloaded checkpoint: azr-jax train --config configs/qwen2.5-1.5b.py --set model.hf_dir=DIR
Lay it out on a machine with --mesh (v4-8, v5p-8, v5e-8, v6e-8, gpu-8); see docs/training.md.
"""

from azr_jax.run_presets import paper_config

config = paper_config("qwen2.5-1.5b", "qwen2.5-1.5b")
