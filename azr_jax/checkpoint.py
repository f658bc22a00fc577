"""Orbax checkpoints of a training run.

One checkpoint per saved step under `WORKDIR/checkpoints/<step>/`, with two items:
- `state`: the device pytree (params and optimizer state), saved by every process for its own
  shards (`StandardSave`), restored straight into the target shardings;
- `host`: a JSON document with everything else the next step depends on: the step number, the
  RNG key data, the task buffers and the data-pipeline state (written by the primary process),
  and a checksum of every array of `state`, checked after each restore.

Saves are asynchronous (the next step runs while the previous one is written); Orbax writes
into a temporary directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoint as the newest complete one. The last `keep` checkpoints are kept.

Going back to an older step (`train --resume-step N`) deletes the newer checkpoints. A
`rollback.json` written before the first deletion and removed after the last makes that
crash-safe: while it exists, step N counts as the newest checkpoint, so a run killed half-way
(SIGKILL, a lost host) resumes from N, not from what is left of the abandoned continuation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from azr_jax.errors import UserError
from azr_jax.jsonl import write_text_atomically


class Checkpoints:
    """Save / find / restore the checkpoints of one run directory."""

    def __init__(self, directory: str | Path, *, keep: int = 3, save_every: int = 1,
                 async_save: bool = True, writer: bool = False):
        """`writer`: the training run that owns the directory. Only it creates the directory and
        removes what a save killed mid-write left (`<step>.orbax-checkpoint-tmp-*`; left in place,
        pruning the re-saved step later removes that directory instead and keeps one too many).
        A reader (`azr-jax eval --run` beside a live run) must not: that may be a save in progress."""
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
            save_interval_steps=1,  # the trainer decides when to save (every N steps, SIGTERM, end)
            enable_async_checkpointing=async_save,
            create=writer,
            cleanup_tmp_directories=writer,
        )
        self.save_every = save_every
        _shorten_orbax_save_errors()
        # A failed save (a full disk) ends Orbax's other writes on a closed event loop too.
        _drop_closed_loop_tracebacks()
        # Handlers registered up front, so a fresh manager (a resumed run) can read a checkpoint's
        # metadata before restoring it.
        handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
        for item, handler, save, restore in (
                ("state", ocp.StandardCheckpointHandler(), ocp.args.StandardSave, ocp.args.StandardRestore),
                ("host", ocp.JsonCheckpointHandler(), ocp.args.JsonSave, ocp.args.JsonRestore)):
            handlers.add(item, save, handler)
            handlers.add(item, restore, handler)
        # The manager lists the steps and stats each; a running trainer pruning one meanwhile (a
        # reader beside it) made that a FileNotFoundError traceback. Listed again, it is gone.
        for attempt in range(3):
            try:
                self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=handlers)
                break
            except FileNotFoundError as e:
                if attempt == 2:
                    raise UserError(f"the checkpoints in {self.directory} kept changing while they were listed "
                                    f"({e.strerror}: {e.filename}); run the command again") from None

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints (unfinished temporary directories are not listed)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint, or the step an unfinished `delete_after` goes back to."""
        pending = self.pending_rollback()
        if pending is not None:
            return pending
        steps = self.all_steps()
        return steps[-1] if steps else None

    @property
    def _rollback_file(self) -> Path:
        return self.directory / "rollback.json"

    def pending_rollback(self) -> int | None:
        """The step of a `delete_after` that was interrupted (None: none was)."""
        return pending_rollback(self.directory)

    def delete_after(self, step: int) -> list[int]:
        """Delete the checkpoints newer than `step` (a run resumed from an older step abandons
        them; kept, they would collide with its saves and win the next plain resume). Every
        process calls it (Orbax deletes on the primary one and synchronizes)."""
        newer = [s for s in self.all_steps() if s > step]
        primary = jax.process_index() == 0
        if newer and primary:
            write_text_atomically(self._rollback_file, json.dumps({"step": step, "abandoned": newer}) + "\n",
                                  durable=True)
        for s in newer:
            self._manager.delete(s)
        if primary:
            self._rollback_file.unlink(missing_ok=True)
        return newer

    def save(self, step: int, state: Any, host: dict) -> None:
        """Start an asynchronous save; returns once the device arrays are copied off the step.
        The host record also gets each array's checksum (`state_checksums`), checked on restore:
        Orbax's data files carry none, and damaged bytes were read back as weights (NaN among them)."""
        host = {**host, CHECKSUMS_KEY: state_checksums(state)}
        self._writing(lambda: self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)),
            force=True,
        ))

    def check(self) -> None:
        """Raise (UserError) if an asynchronous save has failed since the last look: cheap, so
        the trainer looks every step instead of computing on until the next save. A save still
        running is not waited for; a finished one's failure is raised by the wait."""
        if not self._manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Block until every pending save is complete on disk."""
        self._writing(self._manager.wait_until_finished)

    def _writing(self, write: Callable[[], Any]) -> Any:
        """`write()`, with a failed save (a full disk, a lost mount) said as one UserError."""
        try:
            return write()
        except UserError:
            raise
        except Exception as e:
            reason = _first_line(e)
            raise UserError(
                f"saving a checkpoint under {self.directory} failed ({type(e).__name__}: {reason[:300]}); the "
                f"complete checkpoints before it are kept: make room or fix the directory, then run the same "
                f"command to resume"
            ) from None

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore `step` into the structure/shardings of `abstract_state` (a pytree of
        `jax.ShapeDtypeStruct`, e.g. from `abstract_like`). Raises UserError if it is unreadable."""
        self._check_step(step)
        self._check_shapes(step, abstract_state)
        restored = self._read(step, lambda: self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), host=ocp.args.JsonRestore())))
        host = restored.host
        if not isinstance(host, dict) or host.get("step") != step:
            raise UserError(f"checkpoint {self.directory / str(step)} is corrupt: its host record does not match")
        self._check_checksums(step, restored.state, host.pop(CHECKSUMS_KEY, None))
        return restored.state, host

    def restore_part(self, step: int, abstract_part: dict) -> dict:
        """Only the top-level entries of the saved state that `abstract_part` names (e.g.
        `{"params": ...}`): a policy read for evaluation or export leaves the optimizer's moments
        (twice the params under Adam) on disk. Same checks and errors as `restore`."""
        self._check_step(step)
        self._check_shapes(step, abstract_part, partial=True)
        restore_args = jax.tree.map(
            lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype), abstract_part)
        # The standard handler restores whole items; the PyTree handler reads the same files and
        # can skip entries.
        with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
            part = self._read(step, lambda: reader.restore(
                self.directory / str(step) / "state",
                args=ocp.args.PyTreeRestore(item=abstract_part, restore_args=restore_args, partial_restore=True)))
        host = self._read(step, lambda: self._manager.restore(step, args=ocp.args.Composite(host=ocp.args.JsonRestore())))
        saved = host.host.get(CHECKSUMS_KEY) if isinstance(host.host, dict) else None
        self._check_checksums(step, part, saved)
        return part

    def _check_checksums(self, step: int, restored: Any, saved: dict | None) -> None:
        """Compare the restored arrays with the checksums saved beside them (a checkpoint written
        before they were recorded has none, and is not checked)."""
        if not isinstance(saved, dict):
            return
        got = state_checksums(restored)
        bad = sorted(k for k in got if k in saved and saved[k] != got[k])
        if bad:
            more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
            raise UserError(
                f"checkpoint {self.directory / str(step)} is corrupt: {', '.join(bad[:3])}{more} "
                f"read back other values than were saved (checksum); delete it, or use an older step "
                f"(train --resume-step N, eval --step N)")

    def _check_step(self, step: int) -> None:
        if step not in self.all_steps():
            raise UserError(
                f"no complete checkpoint for step {step} in {self.directory}; available: {self.all_steps()}"
            )

    def _read(self, step: int, read: Callable[[], Any]) -> Any:
        """`read()`, with a failure said as one UserError naming the checkpoint."""
        # A corrupt checkpoint fails one read while the others still run; they then fail in their
        # own threads, printing tracebacks on stderr. Held back here: replayed when the restore
        # works, dropped (after the other reads have ended) when it does not.
        try:
            with _stderr_held_back():
                try:
                    return read()
                except Exception:
                    time.sleep(1.0)  # most other reads end meanwhile
                    raise
        except Exception as e:  # truncated files, wrong shapes, missing items: say which checkpoint
            if not (self.directory / str(step)).is_dir():
                # Gone, not corrupt: a running trainer prunes all but its last keep_checkpoints,
                # possibly while `eval --run` or `convert` reads the one it listed as newest.
                raise UserError(
                    f"checkpoint {self.directory / str(step)} was removed while it was being read (a running "
                    f"trainer keeps only its last train.keep_checkpoints); run the command again for the newest, "
                    f"or {_NAME_THE_STEP}; available: {saved_steps(self.directory)}"
                ) from None
            reason = _first_line(e)
            reason = reason.split(" See full TensorStore details")[0]  # the rest is a repr, not a reason
            raise UserError(
                f"checkpoint {self.directory / str(step)} is corrupt or incompatible with this config "
                f"({type(e).__name__}: {reason[:200]}); delete it, or use an older step (train --resume-step N, eval --step N)"
            ) from None

    def _check_shapes(self, step: int, abstract_state: Any, *, partial: bool = False) -> None:
        """Compare the saved arrays' names and shapes with the restore target before reading any
        data, so a config change (another model size, optimizer) is named leaf by leaf, and no
        half-started Orbax read is left behind. Unreadable metadata is left to `restore`.
        `partial`: only the target's top-level entries are compared."""
        # A corrupt file fails these reads on Orbax's threads too, sometimes before the error
        # reaches here: the filter goes in first.
        _drop_closed_loop_tracebacks()
        try:
            saved = _shapes_by_path(self._manager.item_metadata(step).state)
        except Exception:
            return
        if not saved:
            return
        wanted = _shapes_by_path(abstract_state)
        if partial:
            saved = {k: v for k, v in saved.items() if k.split("/")[0] in abstract_state}
        problems = [f"{k}: saved {saved[k]}, expected {wanted[k]}"
                    for k in sorted(saved.keys() & wanted.keys()) if saved[k] != wanted[k]]
        problems += [f"{k}: not in the checkpoint" for k in sorted(wanted.keys() - saved.keys())]
        problems += [f"{k}: in the checkpoint only" for k in sorted(saved.keys() - wanted.keys())]
        if problems:
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            raise UserError(
                f"checkpoint {self.directory / str(step)} is incompatible with this config: "
                f"{'; '.join(problems[:3])}{more}; delete it, or use an older step (train --resume-step N, eval --step N)"
            )

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()


CHECKSUMS_KEY = "array_checksums"


def _mix(x):
    """A bijective 32-bit integer hash (lowbias32): every input bit moves about half the output
    bits, so changes in several elements do not cancel in the sum the way raw bit patterns do
    (two flipped sign bits add 2**32)."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
    x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


@jax.jit
def _checksums(leaves: list) -> list:
    """Per array: the sum over its elements of mix(bit pattern xor mix(flat index)), modulo
    2**32. Integer sums do not depend on the order of the reduction, so the same values give
    the same checksum under any sharding or device; the index makes the order count (two
    swapped elements change it). The flat index is built from per-axis iotas, not by
    flattening, which would gather a sharded array onto every device."""
    def one(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if x.dtype == jnp.bool_:
            x = x.astype(jnp.uint8)
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
        words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)  # 8 bytes: a trailing axis of 2 words
        index = jnp.zeros(words.shape, jnp.uint32)
        stride = 1
        for axis in reversed(range(words.ndim)):
            index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(stride % 2**32)
            stride *= words.shape[axis]
        return jnp.sum(_mix(words ^ _mix(index)), dtype=jnp.uint32)
    return [one(x) for x in leaves]


def state_checksums(tree: Any) -> dict[str, int]:
    """`{"params/w": checksum}` for every array of `tree` (see `_checksums`). Every process of a
    multi-host job calls it (the sums are collectives over the global arrays)."""
    paths, leaves = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            paths.append(_path_name(path))
            leaves.append(jnp.asarray(leaf))
    return {p: int(v) for p, v in zip(paths, jax.device_get(_checksums(leaves)))}


def _path_name(path) -> str:
    def name(entry):
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)
    return "/".join(name(e) for e in path)


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    """`{"opt_state/0/mu/w": shape}`: paths spelled alike for live pytrees (named tuples, dicts)
    and Orbax's saved-tree metadata (where named tuples come back as dicts)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_name(path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}


def _first_line(e: Exception) -> str:
    """An exception's message cut to its first line (Orbax's carry reprs and tracebacks)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class _OneLineOrbaxErrors(logging.Filter):
    """Orbax's save threads log each failure with its traceback: one failed write on a full disk
    put about 300 lines on stderr. Each such record keeps its first line; the reason reaches the
    user as the trainer's one-line error (`Checkpoints._writing`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and (_in_orbax(record.pathname) or _logged_from_orbax()):
            if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
                # A second Ctrl-C while the trainer waits for its last save: Orbax reports the
                # interrupted wait as "Save Finalize thread failed"; the stop is the trainer's to say.
                return False
            record.msg, record.args = record.getMessage().splitlines()[0][:300], None
            record.exc_info = record.exc_text = record.stack_info = None
        return True


def _in_orbax(path: str) -> bool:
    return "orbax" in path.replace("\\", "/").split("/")


def _logged_from_orbax() -> bool:
    """Whether the record being filtered was logged by Orbax's code, by the calling frames. The
    record's `pathname` says so only when the "absl" logger is absl's own class: `azr-jax train`
    sets that logger's level before absl is imported, so it is a plain `logging.Logger`, whose
    records name absl's `logging/__init__.py` as their source, and the filter let Orbax's
    tracebacks through."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        if path != __file__.replace("\\", "/") and not path.endswith("logging/__init__.py"):
            return _in_orbax(path)  # the first frame outside logging (stdlib's or absl's)
        frame = frame.f_back
    return False


def _shorten_orbax_save_errors() -> None:
    """Install `_OneLineOrbaxErrors` on the logger Orbax writes to (absl's), once."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _OneLineOrbaxErrors) for f in logger.filters):
        logger.addFilter(_OneLineOrbaxErrors())


def _drop_closed_loop_tracebacks() -> None:
    """When a checkpoint read fails, Orbax's other reads can end later than any wait here, on an
    event loop already closed; TensorStore's callback threads then report "Event loop is
    closed" through sys.unraisablehook, burying the one-line error. Installed before every
    restore, this drops those reports, and only those."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.drops_closed_loop = True
    sys.unraisablehook = hook


# A damaged rollback record leaves the newest step unknown: every command that reads one asks for it.
_NAME_THE_STEP = "name the step to use (train --resume-step N; eval or convert --run WORKDIR --step N)"


def check_checkpoint_directory(directory: str | Path) -> None:
    """UserError if something other than a directory is where the checkpoints belong (reading
    `rollback.json` under a file said the record was unreadable, and asked for --resume-step)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is not a directory, and the run's checkpoints belong there: move it away, "
                        f"or use another run directory")


def pending_rollback(directory: str | Path) -> int | None:
    """The step of an interrupted `delete_after` in checkpoint `directory` (None: none was)."""
    check_checkpoint_directory(directory)
    path = Path(directory) / "rollback.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}); it records an interrupted "
                        f"--resume-step: {_NAME_THE_STEP}") from None
    step = record.get("step") if isinstance(record, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
        raise UserError(f"{path} has no step: {_NAME_THE_STEP}")
    return step


def saved_steps(directory: str | Path) -> list[int]:
    """The steps of the complete checkpoints in `directory`, read from the directory names alone
    (no Orbax manager, which logs about what it finds): a save in progress or killed is a
    `<step>.orbax-checkpoint-tmp-*` directory."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if _is_number(p.name) and p.is_dir())


def _is_number(name: str) -> bool:
    """ASCII digits only: str.isdigit also takes '²' (int() then raises) and '٣' (read as 3)."""
    return name.isascii() and name.isdigit()


@contextlib.contextmanager
def _stderr_held_back():
    """File descriptor 2 (what native threads write to) goes to a temporary file inside the
    block; written to the real stderr after it, or dropped if the block failed (an Exception).
    A stop (Ctrl-C, SIGTERM) is not a failure: what was written meanwhile, the trainer's own
    "stopping now" line among it, is kept."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        raised = False
        try:
            yield
        except Exception:
            raised = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read()
            if text and not raised:
                os.write(2, text)


def abstract_like(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a pytree of arrays: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
