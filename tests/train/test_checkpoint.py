"""Orbax checkpoints: save/restore round trip, keep-last-K, corrupt and missing checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from azr_jax.checkpoint import Checkpoints, abstract_like
from azr_jax.errors import UserError


def _state(scale):
    """Params and an AdamW state after one update whose gradient depends on `scale` (a fresh
    state is all zeros, so restoring one in place of another would go unnoticed)."""
    params = {"w": jnp.full((4, 3), float(scale)), "b": jnp.arange(3, dtype=jnp.float32)}
    opt = optax.adamw(1e-3)
    grads = jax.tree.map(lambda p: p * 0.5 + 1.0, params)
    _, opt_state = opt.update(grads, opt.init(params), params)
    return {"params": params, "opt_state": opt_state}


def test_round_trip_keeps_last_k_and_host_record(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck", keep=2, writer=True)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"step": step, "buffers": {"deduction": [{"program": "def f(a): return a"}]}})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    state, host = ckpt.restore(3, abstract_like(_state(0)))
    assert np.array_equal(state["params"]["w"], np.full((4, 3), 3.0))
    for got, want in zip(jax.tree.leaves(state["opt_state"]), jax.tree.leaves(_state(3)["opt_state"])):
        np.testing.assert_array_equal(got, want)  # the moments and the count, not a fresh state
    assert float(jax.tree.leaves(state["opt_state"])[0]) == 1  # AdamW's step count
    assert jax.tree.structure(state) == jax.tree.structure(_state(0))  # optax NamedTuples survive
    assert host["buffers"]["deduction"][0]["program"] == "def f(a): return a"
    ckpt.close()


def test_missing_step_is_a_user_error(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck", writer=True)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.wait()
    with pytest.raises(UserError, match=r"no complete checkpoint for step 5 .*available: \[1\]"):
        ckpt.restore(5, abstract_like(_state(0)))
    ckpt.close()


@pytest.mark.parametrize("part", [False, True], ids=["whole state", "params alone"])
def test_corrupt_checkpoint_is_a_user_error(tmp_path, part):
    ckpt = Checkpoints(tmp_path / "ck", writer=True)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.close()
    for f in (tmp_path / "ck" / "1" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    reader, target = Checkpoints(tmp_path / "ck"), abstract_like(_state(0))
    with pytest.raises(UserError, match="corrupt or incompatible"):
        reader.restore_part(1, {"params": target["params"]}) if part else reader.restore(1, target)


@pytest.mark.parametrize("part", [False, True], ids=["whole state", "params alone"])
def test_damaged_array_bytes_are_a_user_error(tmp_path, part):
    """Orbax's array data carry no checksum of their own: 64 bytes overwritten in the middle of
    the data file read back as other weights, silently (NaN among them in a real run)."""
    state = {"params": {"w": jax.random.normal(jax.random.key(0), (64, 1024))}, "step": jnp.int32(3)}
    ckpt = Checkpoints(tmp_path / "ck", writer=True)
    ckpt.save(1, state, {"step": 1})
    ckpt.close()
    target = abstract_like(state)
    restored, host = Checkpoints(tmp_path / "ck").restore(1, target)
    assert np.array_equal(restored["params"]["w"], state["params"]["w"]) and host == {"step": 1}
    data = max((f for f in (tmp_path / "ck" / "1" / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2:len(damaged) // 2 + 64] = b"\xff" * 64
    data.write_bytes(bytes(damaged))
    reader = Checkpoints(tmp_path / "ck")
    with pytest.raises(UserError, match=r"ck/1 is corrupt: params/w read back other values than were saved"):
        reader.restore_part(1, {"params": target["params"]}) if part else reader.restore(1, target)


def test_checksums_see_every_element_and_dtype():
    from azr_jax import checkpoint
    from azr_jax.checkpoint import state_checksums

    tree = {"f32": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "bf16": jnp.ones(3, jnp.bfloat16),
            "i8": jnp.array([1, -1], jnp.int8), "flag": jnp.array([True, False]), "key": jax.random.key(1)}
    sums = state_checksums(tree)
    assert sorted(sums) == ["bf16", "f32", "flag", "i8", "key"] and all(0 <= v < 2**32 for v in sums.values())
    swapped = dict(tree, f32=tree["f32"][:, ::-1])  # the same values in another order
    assert state_checksums(swapped)["f32"] != sums["f32"]
    one_bit = dict(tree, bf16=tree["bf16"].at[2].set(jnp.bfloat16(1.0078125)))  # the last mantissa bit
    assert state_checksums(one_bit)["bf16"] != sums["bf16"]
    # Two sign flips, or x and -x swapped, cancelled in a sum of raw bit patterns (2**31 twice).
    values = jnp.arange(1.0, 9.0)
    flipped = values.at[jnp.array([2, 5])].multiply(-1.0)
    assert state_checksums({"a": values}) != state_checksums({"a": flipped})
    assert state_checksums({"a": jnp.array([4.0, -4.0, 7.0])}) != state_checksums({"a": jnp.array([-4.0, 4.0, 7.0])})
    assert state_checksums({"a": jnp.zeros((0, 3))}) == {"a": 0}


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
def test_checksums_are_the_same_for_any_layout_and_gather_nothing():
    """Integer sums: the same checksum whatever the layout, computed shard by shard."""
    from jax.sharding import NamedSharding, PartitionSpec

    from azr_jax import checkpoint
    from azr_jax.checkpoint import state_checksums
    from azr_jax.sharding import make_mesh

    values = jax.random.normal(jax.random.key(2), (16, 64))
    mesh = make_mesh({"x": 2, "y": 4})  # the project's meshes (axes of type Auto)
    laid_out = jax.device_put(values, NamedSharding(mesh, PartitionSpec(None, "y")))  # split along columns
    assert state_checksums({"a": laid_out}) == state_checksums({"a": np.asarray(values)})
    # flattening the array gathered all of it onto every device
    hlo = jax.jit(lambda a: jax.tree.leaves(checkpoint._checksums([a]))[0]).lower(laid_out).compile().as_text()
    assert "all-gather" not in hlo


def test_incompatible_shapes_are_a_user_error(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck", writer=True)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.close()
    other = {"params": {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}}
    other["opt_state"] = optax.adamw(1e-3).init(other["params"])
    with pytest.raises(UserError, match=r"incompatible with this config: opt_state/0/mu/w: saved \(4, 3\), "
                                         r"expected \(5, 3\); .*; params/w: saved \(4, 3\), expected \(5, 3\); delete it"):
        Checkpoints(tmp_path / "ck").restore(1, abstract_like(other))
    # past three problems, the first three (in name order) and how many more
    other = {"params": {"w": jnp.zeros((5, 3)), "b": jnp.zeros(4)}}
    other["opt_state"] = optax.adamw(1e-3).init(other["params"])
    with pytest.raises(UserError, match=r"this config: opt_state/0/mu/b: saved \(3,\), expected \(4,\); "
                                         r"opt_state/0/mu/w: [^;]*; opt_state/0/nu/b: [^;]* \(\+3 more\); delete it"):
        Checkpoints(tmp_path / "ck").restore(1, abstract_like(other))


def test_another_optimizer_names_the_missing_and_extra_state(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck", writer=True)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.close()
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    other = {"params": params, "opt_state": optax.sgd(1e-3, momentum=0.9).init(params)}
    with pytest.raises(UserError) as err:
        Checkpoints(tmp_path / "ck").restore(1, abstract_like(other))
    message = str(err.value)
    assert "opt_state/0/trace/b: not in the checkpoint" in message
    assert "opt_state/0/count: in the checkpoint only" in message


def test_a_fresh_manager_restores_what_another_saved(tmp_path):
    # a resumed run opens the directory anew: the metadata check must accept its own checkpoints
    ckpt = Checkpoints(tmp_path / "ck", writer=True)
    ckpt.save(2, _state(2), {"step": 2})
    ckpt.close()
    state, host = Checkpoints(tmp_path / "ck").restore(2, abstract_like(_state(0)))
    assert host == {"step": 2}
    assert np.array_equal(state["params"]["w"], np.full((4, 3), 2.0))
    assert jax.tree.structure(state) == jax.tree.structure(_state(0))


def test_a_save_killed_mid_write_does_not_break_keeping_the_last_k(tmp_path):
    import shutil

    ckpt = Checkpoints(tmp_path / "ck", keep=2, writer=True)
    ckpt.save(4, _state(4), {"step": 4})
    ckpt.close()
    # What a SIGKILL during the save of step 5 leaves behind.
    shutil.copytree(tmp_path / "ck" / "4", tmp_path / "ck" / "5.orbax-checkpoint-tmp-123")
    resumed = Checkpoints(tmp_path / "ck", keep=2, writer=True)
    assert resumed.all_steps() == [4]
    for step in (5, 6, 7):
        resumed.save(step, _state(step), {"step": step})
    resumed.close()
    assert Checkpoints(tmp_path / "ck", keep=2, writer=True).all_steps() == [6, 7]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["6", "7"]


def test_a_reader_leaves_a_save_in_progress_alone(tmp_path):
    """`azr-jax eval --run` beside a live run opens the same directory: the temporary directory
    of the trainer's save in progress must survive it (removing it crashed the trainer)."""
    ckpt = Checkpoints(tmp_path / "ck", writer=True)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.close()
    in_progress = tmp_path / "ck" / "2.orbax-checkpoint-tmp-7"
    in_progress.mkdir()
    reader = Checkpoints(tmp_path / "ck")
    assert reader.latest_step() == 1
    state, _ = reader.restore(1, abstract_like(_state(0)))
    reader.close()
    assert in_progress.is_dir() and np.array_equal(state["params"]["w"], np.full((4, 3), 1.0))


def test_stderr_of_a_restore_is_replayed_when_it_works_and_dropped_when_it_fails(capfd):
    import os

    from azr_jax.checkpoint import _stderr_held_back

    with _stderr_held_back():
        os.write(2, b"an orbax warning\n")
    with pytest.raises(RuntimeError):
        with _stderr_held_back():
            os.write(2, b"traceback of a failed read\n")
            raise RuntimeError("corrupt")
    assert capfd.readouterr().err == "an orbax warning\n"
    # A Ctrl-C during a (minutes-long) restore is no failed read: the trainer's "stopping now"
    # line, logged meanwhile, must reach the terminal.
    with pytest.raises(KeyboardInterrupt):
        with _stderr_held_back():
            os.write(2, b"received SIGINT before the first step: stopping now\n")
            raise KeyboardInterrupt
    assert capfd.readouterr().err == "received SIGINT before the first step: stopping now\n"


def test_late_closed_loop_reports_of_a_failed_read_are_dropped_and_nothing_else(tmp_path, capfd, report_unraisable):
    """Orbax's reads that outlive a failed restore report "Event loop is closed" through
    sys.unraisablehook (TensorStore's callback threads) after the one-line error was decided;
    a restore installs a filter for exactly those reports."""
    import sys

    from azr_jax.checkpoint import _drop_closed_loop_tracebacks

    ckpt = Checkpoints(tmp_path / "ck", writer=True)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.close()
    Checkpoints(tmp_path / "ck").restore(1, abstract_like(_state(0)))  # any restore installs it
    assert getattr(sys.unraisablehook, "drops_closed_loop", False)
    hook = sys.unraisablehook
    _drop_closed_loop_tracebacks()
    assert sys.unraisablehook is hook  # installed once

    report_unraisable(RuntimeError("Event loop is closed"))
    assert capfd.readouterr().err == ""
    report_unraisable(RuntimeError("something else"))
    report_unraisable(ValueError("Event loop is closed"))
    err = capfd.readouterr().err
    assert "RuntimeError: something else" in err and "ValueError: Event loop is closed" in err


def test_the_params_alone_restore_as_in_the_whole_state(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck", writer=True)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.save(2, _state(2), {"step": 2})
    ckpt.close()
    reader = Checkpoints(tmp_path / "ck")
    target = abstract_like(_state(0))
    part = reader.restore_part(2, {"params": target["params"]})
    assert list(part) == ["params"]  # no optimizer state read
    whole, _ = reader.restore(2, target)
    for name in ("w", "b"):
        assert np.array_equal(part["params"][name], whole["params"][name])
    assert np.array_equal(part["params"]["w"], np.full((4, 3), 2.0))  # step 2, not step 1
    with pytest.raises(UserError, match=r"incompatible with this config: params/w: saved \(4, 3\), expected \(5, 3\)"):
        reader.restore_part(2, {"params": {"w": jax.ShapeDtypeStruct((5, 3), jnp.float32),
                                           "b": jax.ShapeDtypeStruct((3,), jnp.float32)}})
    with pytest.raises(UserError, match=r"no complete checkpoint for step 7"):
        reader.restore_part(7, {"params": target["params"]})
    reader.close()



def test_going_back_is_recorded_until_every_newer_checkpoint_is_deleted(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck", keep=5, writer=True)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"step": step})
    ckpt.wait()
    deleted = []

    def killed_after_one(step):  # the process dies after its first deletion
        if deleted:
            raise SystemExit("killed")
        deleted.append(step)
        real_delete(step)

    real_delete, ckpt._manager.delete = ckpt._manager.delete, killed_after_one
    with pytest.raises(SystemExit):
        ckpt.delete_after(1)
    assert deleted == [2]
    # The next run sees step 1 as the newest, although step 3 is still complete on disk.
    again = Checkpoints(tmp_path / "ck", keep=5, writer=True)
    assert again.all_steps() == [1, 3] and again.pending_rollback() == 1 and again.latest_step() == 1
    assert again.delete_after(1) == [3]
    assert again.pending_rollback() is None and again.latest_step() == 1
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["1"]
    again.close()


def test_a_damaged_rollback_record_is_a_user_error(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck", writer=True)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.close()
    (tmp_path / "ck" / "rollback.json").write_text('{"abandoned": [2]}')
    with pytest.raises(UserError, match=r"rollback.json has no step: name the step to use \(train --resume-step N; "
                                        r"eval or convert --run WORKDIR --step N\)"):
        Checkpoints(tmp_path / "ck").latest_step()


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() != 0,
                    reason="mounts a small tmpfs (root only)")
def test_a_save_that_fills_the_disk_is_one_line_and_seen_before_the_next_save(tmp_path, capfd, caplog):
    """An asynchronous save that failed (a full disk) went unnoticed until the next save, which
    then died with some 300 lines of Orbax tracebacks and no one-line error."""
    import subprocess

    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        ckpt = Checkpoints(disk / "ck", keep=2, writer=True)
        big = {"w": jax.random.normal(jax.random.key(0), (512, 1024))}  # 2 MB of incompressible floats
        ckpt.save(1, big, {"step": 1})
        with pytest.raises(UserError, match=r"saving a checkpoint under .*ck failed \(.*(RESOURCE_EXHAUSTED|No space)"):
            for _ in range(300):  # the trainer's per-step look, until the save has ended
                ckpt.check()
                __import__("time").sleep(0.1)
        ckpt.close()  # the failure is said once
        assert ckpt.all_steps() == []  # nothing half-written counts as a checkpoint
        err = capfd.readouterr().err
        assert "Traceback" not in err and len(err.splitlines()) < 20, err
        orbax = [r for r in caplog.records if r.name == "absl" and r.levelname == "ERROR"]
        assert orbax and all(r.exc_info is None and "\n" not in r.getMessage() for r in orbax)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_failed_wait_or_save_is_a_user_error_naming_the_directory(tmp_path, monkeypatch):
    ckpt = Checkpoints(tmp_path / "ck", keep=2, writer=True)

    def fail(*args, **kwargs):
        raise ValueError("RESOURCE_EXHAUSTED: no space left\nand a long repr")

    monkeypatch.setattr(ckpt._manager, "wait_until_finished", fail)
    with pytest.raises(UserError, match=r"ck failed \(ValueError: RESOURCE_EXHAUSTED: no space left\); the complete"):
        ckpt.check()
    monkeypatch.setattr(ckpt._manager, "save", fail)
    with pytest.raises(UserError, match="saving a checkpoint under"):
        ckpt.save(1, _state(1), {"step": 1})


def test_a_host_record_of_another_step_is_refused(tmp_path):
    """A checkpoint directory whose host record names another step (a copied or renamed step
    directory) would resume the buffers and pipeline of that other step with these weights."""
    ckpt = Checkpoints(tmp_path / "ck", writer=True)
    ckpt.save(1, _state(1), {"step": 5})
    ckpt.close()
    with pytest.raises(UserError, match=r"ck/1 is corrupt: its host record does not match"):
        Checkpoints(tmp_path / "ck").restore(1, abstract_like(_state(0)))


def test_a_reader_of_a_missing_directory_creates_nothing(tmp_path):
    """`eval --run` with a mistyped path must not leave an empty checkpoint directory behind."""
    reader = Checkpoints(tmp_path / "run" / "checkpoints")
    assert reader.latest_step() is None and reader.all_steps() == []
    reader.close()
    assert not (tmp_path / "run").exists()


def test_checksums_see_elements_swapped_across_axes():
    """The flat index must weigh each axis by its stride: with every axis weighted 1, elements
    (0, 1) and (1, 0) share an index and swapping them went unseen."""
    from azr_jax.checkpoint import state_checksums

    a = jnp.arange(6, dtype=jnp.float32).reshape(2, 3)
    swapped = a.at[0, 1].set(a[1, 0]).at[1, 0].set(a[0, 1])
    assert state_checksums({"a": a}) != state_checksums({"a": swapped})


@pytest.mark.parametrize("text, match", [('{"step": true}', "has no step"), ('{"step": 1.5}', "has no step"),
                                         ('{"step": 2', "is unreadable"), ("", "is unreadable")])
def test_a_rollback_record_that_names_no_step_is_a_user_error(tmp_path, text, match):
    """A record cut off by a crash, or not naming a whole step, is one line asking for the step."""
    from azr_jax.checkpoint import pending_rollback

    (tmp_path / "rollback.json").write_text(text)
    with pytest.raises(UserError, match=f"rollback.json {match}.*name the step to use"):
        pending_rollback(tmp_path)


def test_saved_steps_lists_complete_checkpoint_directories_only(tmp_path):
    """What `train` checks before it decides fresh start or resume: a save in progress (or
    killed) and other files are no checkpoints."""
    from azr_jax.checkpoint import saved_steps

    assert saved_steps(tmp_path / "missing") == []
    for name in ("10", "2", "3.orbax-checkpoint-tmp-5", "notes", "\u00b2", "\u0663"):  # '²', an Arabic-Indic 3
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("")
    assert saved_steps(tmp_path) == [2, 10]


def test_each_checksum_is_filed_under_its_own_array():
    """The damaged-checkpoint error names arrays by these keys: a list of 12 layers (scan_layers
    off) flattens in index order, which is not the sorted order of the names ("10" < "2")."""
    from azr_jax.checkpoint import state_checksums

    layers = [jnp.full((2,), float(i)) for i in range(12)]
    sums = state_checksums({"layers": layers})
    assert all(sums[f"layers/{i}"] == state_checksums({"x": layer})["x"] for i, layer in enumerate(layers))


def _lowbias32(x):
    """The mix `_checksums` documents, on NumPy uint64 holding 32-bit values (the product of two
    32-bit values fits; `& 0xFFFFFFFF` is the uint32 wrap-around)."""
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & 0xFFFFFFFF
    x = ((x ^ (x >> 15)) * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_checksums_follow_the_documented_formula():
    """A restore compares the checksums a checkpoint was saved with to ones computed now: another
    formula (a round of the mix dropped, the index unmixed) would call every older checkpoint
    corrupt. Per array: the sum modulo 2**32 of mix(bit pattern xor mix(row-major flat index)),
    a 2-byte dtype's bit patterns widened to 32 bits."""
    from azr_jax.checkpoint import state_checksums

    def reference(words):
        words = words.astype(np.uint64).ravel()
        return int(_lowbias32(words ^ _lowbias32(np.arange(words.size, dtype=np.uint64))).sum() % 2**32)

    f32 = np.array([[1.5, -2.0, 0.0], [3.25, -0.5, 1e-3]], np.float32)
    bf16 = jnp.array([1.0, -3.0, 0.5], jnp.bfloat16)
    assert state_checksums({"f32": f32, "bf16": bf16}) == {
        "f32": reference(f32.view(np.uint32)), "bf16": reference(np.asarray(bf16).view(np.uint16))}


def test_a_rollback_record_that_cannot_be_read_is_a_user_error(tmp_path):
    """An OSError other than a missing file (here a directory in its place, as a permission
    error would be) leaves the newest step unknown just as a damaged record does."""
    from azr_jax.checkpoint import pending_rollback

    (tmp_path / "rollback.json").mkdir()
    with pytest.raises(UserError, match="rollback.json is unreadable .*name the step to use"):
        pending_rollback(tmp_path)


def test_a_file_where_the_checkpoints_belong_is_named_as_such(tmp_path):
    """A file named `checkpoints` in a run directory was reported as an unreadable rollback record
    of an interrupted --resume-step, and `train` asked for --resume-step N (by then config.json
    was written and the model loaded)."""
    from azr_jax.checkpoint import pending_rollback
    from azr_jax.config import load_config
    from azr_jax.train_setup import check_workdir

    (tmp_path / "checkpoints").write_text("")
    for check in (lambda: pending_rollback(tmp_path / "checkpoints"),  # eval --run, convert --run
                  lambda: check_workdir(load_config("configs/nano.py"), tmp_path, write=True)):
        with pytest.raises(UserError, match=r"checkpoints is not a directory, and the run's checkpoints belong "
                                            r"there: move it away, or use another run directory"):
            check()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]  # nothing written


def test_saved_steps_are_in_step_order(tmp_path):
    """`train` takes the last one as the newest checkpoint: numeric order ("10" sorts before "9"
    as text), whatever order the directory lists its entries in."""
    from azr_jax.checkpoint import saved_steps

    for step in (30, 4, 100, 9, 10, 1, 55, 7, 20, 3):
        (tmp_path / str(step)).mkdir()
    assert saved_steps(tmp_path) == [1, 3, 4, 7, 9, 10, 20, 30, 55, 100]


def _absl_records(monkeypatch, source_file: str, error: str = "ValueError") -> list:
    """What an ERROR with a traceback logged through absl from `source_file` becomes, when the
    "absl" logger is a plain `logging.Logger`: `azr-jax train` sets its level before absl is
    imported, so absl's own logger class is never used for it."""
    import logging

    import absl.logging as absl_logging

    from azr_jax.checkpoint import _OneLineOrbaxErrors

    plain = logging.Logger("absl")
    plain.addFilter(_OneLineOrbaxErrors())
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    plain.addHandler(handler)
    monkeypatch.setattr(absl_logging, "_absl_logger", plain)
    code = ("from absl import logging\n"
            "try:\n"
            f"    raise {error}('RESOURCE_EXHAUSTED: Failed writing\\na long repr')\n"
            f"except {error}:\n"
            "    logging.exception('save failed: %s', 'RESOURCE_EXHAUSTED\\nmore')\n")
    exec(compile(code, source_file, "exec"), {})
    return records


def test_orbax_tracebacks_are_cut_to_one_line_under_the_trainers_plain_absl_logger(monkeypatch):
    """A save on a full disk under `azr-jax train` put some 500 lines of Orbax tracebacks on
    stderr: the records named absl's logging module as their source, not Orbax, and kept them."""
    [record] = _absl_records(monkeypatch, "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py")
    assert record.exc_info is None and record.getMessage() == "save failed: RESOURCE_EXHAUSTED"
    [other] = _absl_records(monkeypatch, "/venv/site-packages/somelib/module.py")  # not Orbax's: kept whole
    assert other.exc_info is not None and other.getMessage() == "save failed: RESOURCE_EXHAUSTED\nmore"


def test_a_failed_saves_closed_event_loop_reports_are_dropped(tmp_path, monkeypatch):
    """A failed save ends Orbax's other writes on a closed event loop, and each reported
    "Event loop is closed" with a traceback (17 of them in one full-disk nano run): the filter
    was installed for restores only."""
    import sys
    import types

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    Checkpoints(tmp_path / "ck", writer=True).close()
    report = lambda exc: types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None,  # noqa: E731
                                               err_msg=None, object=None)
    sys.unraisablehook(report(RuntimeError("Event loop is closed")))
    sys.unraisablehook(report(RuntimeError("something else")))
    assert [str(u.exc_value) for u in seen] == ["something else"]


def test_a_second_ctrl_c_during_the_last_save_is_not_reported_as_a_failed_save(monkeypatch):
    """Orbax logged the interrupted wait as "Save Finalize thread (save_finalize) failed", with the
    KeyboardInterrupt's traceback, under the trainer's "stopping now" line."""
    assert _absl_records(monkeypatch, "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py",
                         error="KeyboardInterrupt") == []


def test_a_checksum_mismatch_names_the_first_three_arrays_in_name_order_and_counts_the_rest():
    from pathlib import Path
    from types import SimpleNamespace

    from azr_jax.checkpoint import state_checksums

    tree = {name: jnp.arange(3.0) for name in ("d", "a", "c", "b")}
    sums = state_checksums(tree)
    check = lambda saved: Checkpoints._check_checksums(SimpleNamespace(directory=Path("ck")), 2, tree, saved)  # noqa: E731
    check(sums)  # all equal: nothing to say
    check({"a": sums["a"]})  # arrays without a saved checksum are not compared
    with pytest.raises(UserError, match=r"ck/2 is corrupt: b, c, d read back other values"):
        check({k: v + 1 if k != "a" else v for k, v in sums.items()})
    with pytest.raises(UserError, match=r"corrupt: a, b, c \(\+1 more\) read back"):
        check({k: v + 1 for k, v in sums.items()})
    # name order, not the tree's order (a named tuple flattens in field order)
    from typing import NamedTuple

    class Moments(NamedTuple):
        z: jax.Array
        a: jax.Array

    tree = {"m": Moments(jnp.zeros(2), jnp.ones(2))}
    with pytest.raises(UserError, match=r"corrupt: m/a, m/z read back"):
        check({k: v + 1 for k, v in state_checksums(tree).items()})


def test_read_failures_and_missing_metadata_are_said_in_one_line(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from azr_jax import checkpoint
    from azr_jax.checkpoint import _first_line

    assert _first_line(RuntimeError()) == "RuntimeError"  # a message-less error is named by its type
    assert _first_line(RuntimeError("  first\nsecond")) == "first"
    monkeypatch.setattr(checkpoint.time, "sleep", lambda s: None)
    ck = SimpleNamespace(directory=tmp_path)
    (tmp_path / "4").mkdir()  # there, so a failed read is the checkpoint's, not a removal's

    def read():
        raise ValueError("bad chunk See full TensorStore details: {'driver': 'zarr', ...}")

    with pytest.raises(UserError) as err:
        Checkpoints._read(ck, 4, read)
    assert "(ValueError: bad chunk); delete it" in str(err.value) and "TensorStore" not in str(err.value)
    # No saved metadata (or unreadable metadata): nothing to compare, the restore itself decides.
    for metadata in (lambda step: SimpleNamespace(state=None), lambda step: 1 / 0):
        ck._manager = SimpleNamespace(item_metadata=metadata)
        Checkpoints._check_shapes(ck, 4, {"params": {"w": jnp.zeros(2)}})


def test_a_fifo_where_the_checkpoints_belong_is_not_a_directory(tmp_path):
    import os

    from azr_jax.checkpoint import check_checkpoint_directory

    os.mkfifo(tmp_path / "checkpoints")
    with pytest.raises(UserError, match="checkpoints is not a directory"):
        check_checkpoint_directory(tmp_path / "checkpoints")
    check_checkpoint_directory(tmp_path / "missing")  # not there yet: fine


@pytest.mark.parametrize("part", [False, True], ids=["whole state", "params alone"])
def test_a_checkpoint_removed_while_being_read_is_said_as_removed_not_corrupt(tmp_path, monkeypatch, part):
    """A running trainer (keep_checkpoints=1) deletes the step `eval --run` or `convert` listed as
    the newest once it has saved the next: the read then fails on missing files, which was said as
    "corrupt ...; delete it". Simulated by removing the step's directory as the read starts."""
    import shutil

    import orbax.checkpoint as ocp

    from azr_jax import checkpoint

    monkeypatch.setattr(checkpoint.time, "sleep", lambda s: None)
    writer = Checkpoints(tmp_path / "ck", keep=2, writer=True)
    for step in (1, 2):
        writer.save(step, _state(step), {"step": step})
    writer.close()
    reader, target = Checkpoints(tmp_path / "ck"), abstract_like(_state(0))

    def pruned_first(read):
        def wrapped(*args, **kwargs):
            shutil.rmtree(tmp_path / "ck" / "1", ignore_errors=True)
            return read(*args, **kwargs)
        return wrapped

    if part:
        monkeypatch.setattr(ocp.Checkpointer, "restore", pruned_first(ocp.Checkpointer.restore))
    else:
        monkeypatch.setattr(reader._manager, "restore", pruned_first(reader._manager.restore))
    with pytest.raises(UserError, match=r"ck/1 was removed while it was being read .*run the command again.*"
                                        r"available: \[2\]") as err:
        reader.restore_part(1, {"params": target["params"]}) if part else reader.restore(1, target)
    assert "corrupt" not in str(err.value)


def test_a_checkpoint_pruned_while_a_reader_lists_the_steps_is_left_out(tmp_path, monkeypatch):
    """Orbax's manager lists the step directories, then stats each: a running trainer pruning one
    in between made opening a reader (eval --run, convert) a FileNotFoundError traceback."""
    import shutil

    from orbax.checkpoint._src.path import step as orbax_step

    writer = Checkpoints(tmp_path / "ck", keep=2, writer=True)
    for step in (1, 2):
        writer.save(step, _state(step), {"step": step})
    writer.close()
    listed = orbax_step.build_step_metadatas

    def pruned_once_listed(paths, build):
        for metadata in listed(paths, build):
            if metadata.step == 1 and (tmp_path / "ck" / "1").is_dir():  # found; the trainer then removes it, once
                shutil.rmtree(tmp_path / "ck" / "1")
            yield metadata

    monkeypatch.setattr(orbax_step, "build_step_metadatas", pruned_once_listed)
    reader = Checkpoints(tmp_path / "ck")
    assert reader.all_steps() == [2] and reader.latest_step() == 2
    reader.close()
    # Still changing after three listings: one line, not a traceback.
    from azr_jax import checkpoint

    def gone(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "ck" / "7"))

    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", gone)
    with pytest.raises(UserError, match=r"ck kept changing while they were listed \(No such file or directory: "
                                        r".*ck/7\); run the command again"):
        Checkpoints(tmp_path / "ck")
