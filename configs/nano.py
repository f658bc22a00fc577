"""The nano AZR run: self-play from the shipped nano base model on a laptop CPU, no downloads.

    azr-jax train --config configs/nano.py --workdir runs/nano

Evaluates greedily on the held-out nano benchmark before and after training; summary.json holds
base_solve_rate / final_solve_rate (overall and per task type). See docs/nano.md.
"""

from azr_jax.nano.run_config import nano_selfplay_config

config = nano_selfplay_config()
