"""Isolated execution of untrusted, model-written Python (the only place model code is executed).

    from azr_jax.sandbox import Sandbox, Job, JobResult
    with Sandbox(cfg.sandbox) as sb:
        results = sb.run([Job(program, calls=["1, 2"], expected=["3"])])

See docs/sandbox.md for the semantics and the threat model.
"""

from azr_jax.sandbox.jobs import Job, JobResult
from azr_jax.sandbox.pool import Sandbox

__all__ = ["Job", "JobResult", "Sandbox"]
