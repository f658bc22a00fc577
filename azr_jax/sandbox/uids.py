"""Blocks of unprivileged uids for the zygotes of a root trainer, leased so no two sandboxes share one.

A root trainer runs every zygote as its own uid. In `none` mode a job is killed with
`kill(-1)` under that uid, so a uid shared with another sandbox (another trainer on the host,
or a second `Sandbox` in this process) would let one kill the other's jobs. Each `Sandbox`
therefore holds an exclusive `flock` on one block's lock file for its lifetime; the kernel drops
the lock when the holder exits, however it exits, so a crashed trainer leaves nothing stale.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from azr_jax.errors import UserError

UID_BASE = 3_000_000  # unprivileged uids used by nobody else
BLOCK_SIZE = 100_000  # uids per sandbox: 6 250 slots of 16 repeats (1 562 workers)
BLOCKS = 1000  # the highest uid is then 103 million, far below the kernel's 2**32 - 2
LEASE_DIR = Path("/run/azr-jax-sandbox-uids")  # root-only: nobody else can plant files in it


def _fallback_dir() -> Path:
    """Where the leases go when /run cannot hold them (a read-only /run in some containers)."""
    return Path(tempfile.gettempdir()) / f"azr-jax-sandbox-uids-{os.geteuid()}"


class UidBlock:
    """One leased block; `uid(k)` is its k-th uid. `release()` (or process exit) frees it."""

    def __init__(self, index: int, lock_file):
        self.index = index
        self._lock_file = lock_file

    def uid(self, k: int) -> int:
        if not 0 <= k < BLOCK_SIZE:
            raise ValueError(f"uid offset {k} is outside a block of {BLOCK_SIZE}")
        return UID_BASE + self.index * BLOCK_SIZE + k

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the only descriptor drops the flock
            self._lock_file = None


def lease_block(lease_dir: Path | None = None) -> UidBlock:
    """Take the first free block, starting from one picked by pid (so hosts with several
    trainers rarely probe far). Without `lease_dir`: /run/azr-jax-sandbox-uids, or a directory in
    the temp dir where /run is not writable. Raises UserError when it is unusable or full."""
    if lease_dir is None:
        try:
            LEASE_DIR.mkdir(mode=0o700, exist_ok=True)
            lease_dir = LEASE_DIR
        except OSError:
            lease_dir = _fallback_dir()
    lease_dir = Path(lease_dir)
    try:
        lease_dir.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(lease_dir)
    except OSError as e:
        raise UserError(f"the sandbox cannot lease uids for its zygotes in {lease_dir}: {e}") from None
    # In the temp dir anyone may have made it first: it must be ours and closed to others.
    if info.st_uid != os.geteuid() or info.st_mode & 0o022 or not os.path.isdir(lease_dir) or os.path.islink(lease_dir):
        raise UserError(f"the sandbox's uid lease directory {lease_dir} must be a directory owned by this "
                        f"user and writable by nobody else")
    start = os.getpid() % BLOCKS
    for step in range(BLOCKS):
        index = (start + step) % BLOCKS
        try:
            fd = os.open(lease_dir / f"{index}.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise UserError(f"the sandbox cannot lease uids for its zygotes in {lease_dir}: {e}") from None
        lock_file = os.fdopen(fd, "w")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            continue
        return UidBlock(index, lock_file)
    raise UserError(f"all {BLOCKS} sandbox uid blocks in {lease_dir} are held by running sandboxes")
