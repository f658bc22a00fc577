"""The uid blocks a root trainer's sandboxes lease: no two live sandboxes share a uid (in `none`
mode a job is killed with kill(-1) under its uid, which would reach the other's jobs too)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from azr_jax.errors import UserError
from azr_jax.sandbox import uids


def test_two_leases_in_one_process_get_different_blocks_and_a_released_one_is_reused(tmp_path):
    a, b = uids.lease_block(tmp_path), uids.lease_block(tmp_path)
    assert a.index != b.index
    a_range = range(a.uid(0), a.uid(uids.BLOCK_SIZE - 1) + 1)
    assert b.uid(0) not in a_range and b.uid(uids.BLOCK_SIZE - 1) not in a_range
    with pytest.raises(ValueError):
        a.uid(uids.BLOCK_SIZE)
    first = a.index
    a.release()
    c = uids.lease_block(tmp_path)
    assert c.index == first  # the pid's starting block is free again
    b.release(), c.release()


def test_a_block_held_by_another_process_is_skipped_and_freed_when_it_dies(tmp_path):
    """The old scheme derived the block from pid % 1000: two trainers 1000 pids apart collided."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from azr_jax.sandbox import uids; "
         f"b = uids.lease_block({str(tmp_path)!r}); print(b.index, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        held = int(holder.stdout.readline())
        ours = [uids.lease_block(tmp_path) for _ in range(3)]
        assert held not in [b.index for b in ours]
        for b in ours:
            b.release()
    finally:
        holder.kill()
        holder.wait()
    leases = []
    while True:  # the dead holder's lock went with it: some lease now gets its block
        leases.append(uids.lease_block(tmp_path))
        if leases[-1].index == held:
            break
        assert len(leases) <= uids.BLOCKS
    for b in leases:
        b.release()


def test_a_lease_directory_others_can_write_is_refused(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(UserError, match="writable by nobody else"):
        uids.lease_block(open_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="zygote uids are leased only when the trainer is root")
def test_two_root_sandboxes_at_once_run_their_zygotes_under_disjoint_uids():
    from azr_jax.config import SandboxSection
    from azr_jax.sandbox import Sandbox
    from azr_jax.sandbox.pool import REPEATS_PER_SLOT, SLOTS_PER_WORKER

    cfg = SandboxSection(isolation="none", workers=1, timeout_s=5)
    with Sandbox(cfg) as one, Sandbox(cfg) as two:
        slots = SLOTS_PER_WORKER
        ones = {one._uid(s, r) for s in range(slots) for r in range(REPEATS_PER_SLOT)}
        twos = {two._uid(s, r) for s in range(slots) for r in range(REPEATS_PER_SLOT)}
        assert len(ones) == len(twos) == slots * REPEATS_PER_SLOT and not ones & twos
        probe = "import os\ndef f(x):\n    return os.getuid()\n"
        from azr_jax.sandbox import Job

        got = [sb.run([Job(probe, ["0"], repeats=1)])[0].outputs[0] for sb in (one, two)]
        assert int(got[0]) in ones and int(got[1]) in twos
    # A host with more cores than a block has uids for is told so before anything starts.
    too_many = uids.BLOCK_SIZE // (SLOTS_PER_WORKER * REPEATS_PER_SLOT) + 1
    with pytest.raises(UserError, match="workers"):
        Sandbox(SandboxSection(isolation="none", workers=too_many))


def test_where_run_cannot_hold_the_leases_they_go_to_a_private_temp_directory(tmp_path, monkeypatch):
    """Some containers mount /run read-only: a root trainer's sandbox must still start."""
    monkeypatch.setattr(uids, "LEASE_DIR", tmp_path / "read-only" / "leases")
    (tmp_path / "read-only").mkdir(mode=0o500)
    monkeypatch.setattr(uids.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the first choice unusable another way
        (tmp_path / "read-only" / "leases").write_text("a file, not a directory")
    block = uids.lease_block()
    try:
        assert (tmp_path / "tmp" / f"azr-jax-sandbox-uids-{os.geteuid()}" / f"{block.index}.lock").exists()
    finally:
        block.release()


def test_a_lease_directory_of_another_user_or_open_to_its_group_is_refused(tmp_path, monkeypatch):
    """Write access for the group is refused as well as for others, and so is a directory some
    other user owns (it could plant or unlock lock files)."""
    group_dir = tmp_path / "group"
    group_dir.mkdir()
    group_dir.chmod(0o770)
    with pytest.raises(UserError, match="writable by nobody else"):
        uids.lease_block(group_dir)
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    monkeypatch.setattr(uids.os, "geteuid", lambda: os.stat(mine).st_uid + 1)
    with pytest.raises(UserError, match="owned by this user"):
        uids.lease_block(mine)
