"""Which OS isolation layers are available, and the command line that starts a sandboxed zygote.

Modes, strongest first (config `sandbox.isolation`: auto | bwrap | unshare | none):
- bwrap: bubblewrap with user/net/pid/ipc/uts/mount namespaces, read-only binds of only what
  Python needs, a size-limited tmpfs as scratch, a clean environment, no_new_privs.
- unshare: util-linux `unshare` with net/pid/ipc/uts/mount namespaces; the rest of the filesystem
  stays as it is (write protection then rests on the dropped uid when the trainer is root).
- none: plain processes with rlimits only.
In every mode the zygote installs a seccomp filter on itself (seccomp.py) unless
`sandbox.seccomp=false`; where it cannot, the layer is reported missing.
When the trainer runs as root, every zygote runs under its own unprivileged uid (RLIMIT_NPROC
does not apply to root, and root can write anywhere), from a block leased in uids.py.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from azr_jax.sandbox import seccomp as seccomp_filter

LOG = logging.getLogger("azr_jax.sandbox")

ZYGOTE_SOURCE = (Path(__file__).with_name("zygote.py")).read_text()
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
# Where system tools live when the trainer's PATH lacks them (cron, a systemd unit, a PATH of
# the virtual environment only): without this, `auto` would fall back to isolation `none`.
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ALL_LAYERS = (
    "rlimits", "uid_drop", "user_namespace", "network_namespace", "pid_namespace",
    "ipc_namespace", "mount_namespace", "read_only_filesystem", "private_tmp", "clean_env",
    "no_new_privs", "seccomp",
)
_WARNED: set[str] = set()


@dataclass
class Plan:
    """How to start zygotes on this machine."""

    mode: str  # bwrap | unshare | none
    python: str  # interpreter run inside the sandbox (stdlib only, `-s -S`, clean environment)
    as_root: bool
    layers: dict = field(default_factory=dict)
    tmpfs_bytes: int = 0
    seccomp: bytes | None = None  # the BPF filter each zygote installs on itself (seccomp.py)

    def missing(self) -> list[str]:
        return [k for k, v in self.layers.items() if v is False]


def _others_may(path: str | os.PathLike, permission: int) -> bool:
    """True if an arbitrary unprivileged uid has `permission` (an S_I*OTH bit) on `path` and can
    reach it (every parent dir is o+x)."""
    p = Path(path)
    try:
        return bool(p.stat().st_mode & permission) and all(d.stat().st_mode & stat.S_IXOTH for d in p.parents)
    except OSError:
        return False


def readable_by_jobs(plan: Plan, path: str | os.PathLike) -> bool:
    """Whether this plan's jobs can read `path` (a file, or the files of a directory by name).

    Only a root trainer's unshare and none jobs are asked about: they run as a uid of their own,
    which reads whatever any other user may. bwrap shows a job only what Python needs, and an
    unprivileged trainer's jobs run as that user, who can read its files anyway (docs/sandbox.md).
    """
    if plan.mode == "bwrap" or not plan.as_root:
        return False
    p = Path(path).resolve()
    if plan.mode == "unshare" and (p == Path("/tmp") or Path("/tmp") in p.parents):
        return False  # the zygote mounts a /tmp of its own over the host's (zygote._mount_private_tmp)
    return _others_may(p, stat.S_IXOTH if p.is_dir() else stat.S_IROTH)


def sandbox_python(as_root: bool) -> str:
    """The interpreter for the sandbox: the trainer's own base Python if a dropped uid can run it."""
    candidates = [os.path.realpath(getattr(sys, "_base_executable", sys.executable) or sys.executable)]
    for name in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3")):
        if name:
            candidates.append(os.path.realpath(name))
    for c in candidates:
        if os.path.isfile(c) and (not as_root or _others_may(c, stat.S_IXOTH)):
            return c
    raise RuntimeError(
        "no Python interpreter an unprivileged uid can execute was found for the sandbox "
        f"(tried {candidates}); install python3 under /usr or make the interpreter world-executable"
    )


def _python_prefix(python: str) -> str:
    return str(Path(python).resolve().parent.parent)


def system_tool(name: str) -> str | None:
    """The absolute path of a system tool: from PATH, else from the usual system directories."""
    return shutil.which(name) or shutil.which(name, path=_SYSTEM_PATH)


def tool_path(name: str) -> str:
    """`system_tool(name)`, or the bare name when it is found nowhere."""
    return system_tool(name) or name  # a missing tool then fails where it is run, as before


@functools.lru_cache(maxsize=None)
def _bwrap_supports(flag: str) -> bool:
    try:
        out = subprocess.run([tool_path("bwrap"), "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in out.stdout + out.stderr


@functools.lru_cache(maxsize=None)
def _unshare_supports(flag: str) -> bool:
    try:
        out = subprocess.run([tool_path("unshare"), "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in out.stdout


def bwrap_argv(plan: Plan) -> list[str]:
    argv = [
        tool_path("bwrap"), "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--clearenv",
        "--setenv", "PATH", CLEAN_ENV["PATH"], "--setenv", "LANG", CLEAN_ENV["LANG"],
        "--setenv", "HOME", "/tmp", "--ro-bind", "/usr", "/usr",
    ]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    prefix = _python_prefix(plan.python)
    if not prefix.startswith("/usr"):
        argv += ["--ro-bind", prefix, prefix]
    # A read-only /dev (device nodes such as /dev/null still work): its tmpfs would otherwise be
    # unbounded scratch space, shared by every job of the zygote.
    # /dev/ptmx (a link to the writable /dev/pts/ptmx) is /dev/null, read-only: ptys count against
    # the host's global pty limit, and a few jobs took all of it.
    argv += ["--proc", "/proc", "--dev", "/dev", "--ro-bind", "/dev/null", "/dev/ptmx", "--remount-ro", "/dev"]
    if plan.tmpfs_bytes:
        argv += ["--size", str(plan.tmpfs_bytes)]
    argv += ["--tmpfs", "/tmp", "--chdir", "/tmp"]
    # bwrap's own root (/, /etc and the mount points) is a tmpfs of its own: writable, without
    # a size limit, and never wiped between the zygote's jobs. Read-only once everything is
    # mounted, so /tmp is the only place a program can write.
    argv += ["--remount-ro", "/"]
    if _bwrap_supports("--disable-userns"):
        argv += ["--disable-userns"]  # no nested user namespaces (a common kernel attack surface)
    if _bwrap_supports("--as-pid-1"):
        # The zygote itself is pid 1: no bwrap reaper holding the zygote's pipes to the host as
        # fds a job of the same uid could open through /proc/1/fd, and a job cannot kill pid 1.
        argv += ["--as-pid-1"]
    return argv + ["--"]


def private_tmp(plan: Plan) -> bool:
    """Whether the zygote's /tmp is a tmpfs of its own, its scratch root: bwrap's, or in unshare
    mode as root one the zygote mounts in its mount namespace before it drops root."""
    return plan.mode == "bwrap" or (plan.mode == "unshare" and plan.as_root)


def hash_seed(repeat: int) -> str:
    """PYTHONHASHSEED of the zygote serving run `repeat` of a job.

    Fixed and different per repeat: hash-dependent programs (set order of strings, `hash()`) give
    different results in the two runs and fail the determinism check, while every verdict and gold
    output is the same from one trainer run to the next (reproducible metrics).
    """
    return str(1 + repeat)


def zygote_command(plan: Plan, uid: int | None, scratch: str, repeat: int = 0) -> tuple[list[str], dict, dict]:
    """(argv, zygote config, extra Popen kwargs) for one zygote.

    `uid` is the unprivileged uid to run as when the trainer is root (else None); `scratch` is the
    scratch root as the zygote sees it; `repeat` picks the hash seed (see `hash_seed`).
    """
    config = {"scratch": scratch, "pidns": plan.mode in ("bwrap", "unshare"), "drop_uid": None,
              "scratch_tmpfs": private_tmp(plan),  # the scratch root is a tmpfs of its own
              "kill_all_uid": False, "seccomp": plan.seccomp.hex() if plan.seccomp else None,
              "pid_skew": repeat,  # zygote._burn_pids: pid-dependent outputs differ between repeats
              # each job adds this one on top (seccomp.child_filter_program); same architecture
              "child_seccomp": seccomp_filter.child_filter_program().hex() if plan.seccomp else None}
    seed = hash_seed(repeat)
    popen: dict = {"env": {**CLEAN_ENV, "PYTHONHASHSEED": seed}, "start_new_session": True}
    # -s -S -B instead of -I: -I implies -E, which would ignore PYTHONHASHSEED; the
    # environment is cleared anyway, so no other PYTHON* variable can reach the interpreter.
    py = [plan.python, "-s", "-S", "-B", "-c", ZYGOTE_SOURCE]
    if plan.mode == "bwrap":
        argv = bwrap_argv(plan)[:-1] + ["--setenv", "PYTHONHASHSEED", seed, "--"] + py
        if uid is not None:  # bwrap runs unprivileged under the dropped uid (its own user namespace)
            popen.update(user=uid, group=uid, extra_groups=[])
    elif plan.mode == "unshare":
        argv = [tool_path("unshare"), "--net", "--pid", "--fork", "--mount-proc", "--ipc", "--uts", "--kill-child"]
        if uid is None:
            # Unprivileged: namespaces need a user namespace. Map our uid to itself so the zygote
            # holds no capabilities there (as mapped root it could ptrace its own children's
            # siblings and itself be ptraced by them).
            argv.append("--map-current-user" if _unshare_supports("--map-current-user") else "--map-root-user")
        else:
            config["drop_uid"] = uid  # the zygote drops root itself, inside the namespaces
        if private_tmp(plan):
            config["private_tmp_bytes"] = plan.tmpfs_bytes  # the zygote first mounts its own /tmp
        argv += py
    else:
        argv = py
        if uid is not None:
            popen.update(user=uid, group=uid, extra_groups=[])
            config["kill_all_uid"] = True
    return argv, config, popen


def layers_for(mode: str, as_root: bool, seccomp: bool | str = True) -> dict:
    """`seccomp`: True (installed), False (wanted but unavailable) or why it is off."""
    bw, un = mode == "bwrap", mode == "unshare"
    return {
        "rlimits": True,
        "uid_drop": True if as_root else "not needed (not root)",
        "user_namespace": bw or (un and not as_root),
        "network_namespace": bw or un,
        "pid_namespace": bw or un,
        "ipc_namespace": bw or un,
        "mount_namespace": bw or un,
        "read_only_filesystem": bw,
        "private_tmp": bw or (un and as_root),
        "clean_env": True,
        "no_new_privs": bw or seccomp is True,  # the zygote sets it to install its filter
        "seccomp": seccomp,
    }


def make_plan(mode: str, tmpfs_bytes: int, seccomp: bool = True) -> Plan:
    """`seccomp`: whether to filter syscalls (config `sandbox.seccomp`)."""
    as_root = os.geteuid() == 0
    python = sandbox_python(as_root)
    program = seccomp_filter.filter_program() if seccomp else None
    if not seccomp:
        state: bool | str = "off (sandbox.seccomp=false)"
    else:
        state = program is not None  # False: no filter for this architecture
    return Plan(mode=mode, python=python, as_root=as_root, layers=layers_for(mode, as_root, state),
                tmpfs_bytes=tmpfs_bytes if (mode == "bwrap" and _bwrap_supports("--size"))
                or (mode == "unshare" and as_root) else 0,
                seccomp=program)


def without_seccomp(plan: Plan) -> Plan:
    """The same plan with the filter marked unavailable (its installation failed here)."""
    return Plan(mode=plan.mode, python=plan.python, as_root=plan.as_root,
                layers=layers_for(plan.mode, plan.as_root, False), tmpfs_bytes=plan.tmpfs_bytes, seccomp=None)


def candidate_modes(requested: str) -> list[str]:
    if requested != "auto":
        return [requested]
    modes = []
    if system_tool("bwrap"):
        modes.append("bwrap")
    if system_tool("unshare"):
        modes.append("unshare")
    return modes + ["none"]


def warn_missing(plan: Plan, failures: dict[str, str]) -> None:
    """Log ONE warning per process and mode naming each missing layer."""
    missing = plan.missing()
    if not missing or plan.mode in _WARNED:
        return
    _WARNED.add(plan.mode)
    why = "; ".join(f"{m} unavailable: {msg}" for m, msg in failures.items())
    LOG.warning(
        "sandbox isolation '%s' is missing layers: %s%s", plan.mode, ", ".join(missing),
        f" ({why})" if why else "",
    )
