"""Orbax checkpoints of a training run.

One checkpoint per saved step under `WORKDIR/checkpoints/<step>/`, with two items:
- `state`: the device pytree (params and optimizer state), saved by every process for its own
  shards (`StandardSave`), restored straight into the target shardings;
- `host`: a JSON document with everything else the next step depends on: the step number, the
  RNG key data, the task buffers and the data-pipeline state (written by the primary process).

Saves are asynchronous (the next step runs while the previous one is written); Orbax writes
into a temporary directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoint as the newest complete one. The last `keep` checkpoints are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from azr_jax.errors import UserError


class Checkpoints:
    """Save / find / restore the checkpoints of one run directory."""

    def __init__(self, directory: str | Path, *, keep: int = 3, save_every: int = 1,
                 async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=1,  # the trainer decides when to save (every N steps, SIGTERM, end)
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.save_every = save_every
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "host"))

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints (unfinished temporary directories are not listed)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, host: dict) -> None:
        """Start an asynchronous save; returns once the device arrays are copied off the step."""
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)),
            force=True,
        )

    def wait(self) -> None:
        """Block until every pending save is complete on disk."""
        self._manager.wait_until_finished()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore `step` into the structure/shardings of `abstract_state` (a pytree of
        `jax.ShapeDtypeStruct`, e.g. from `abstract_like`). Raises UserError if it is unreadable."""
        if step not in self.all_steps():
            raise UserError(
                f"no complete checkpoint for step {step} in {self.directory}; available: {self.all_steps()}"
            )
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), host=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # truncated files, wrong shapes, missing items: say which checkpoint
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"checkpoint {self.directory / str(step)} is corrupt or incompatible with this config "
                f"({type(e).__name__}: {reason[:200]}); delete it or resume an older step with --resume-step"
            ) from None
        host = restored.host
        if not isinstance(host, dict) or host.get("step") != step:
            raise UserError(f"checkpoint {self.directory / str(step)} is corrupt: its host record does not match")
        return restored.state, host

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a pytree of arrays: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
