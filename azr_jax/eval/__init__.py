"""Evaluation: greedy solving of benchmark tasks, scored exactly as training scores solvers.

`evaluate` lives in `azr_jax.eval.evaluate` (imports JAX); `load_benchmark` and the summary
helpers are plain Python.
"""
