"""The in-sandbox server ("zygote"): forks one fresh child per job from a pristine state.

This file is NOT imported by the trainer. Its source is passed to `python -s -S -B -c` inside the
sandbox (bubblewrap / unshare namespaces / plain process), so it may use only the standard
library. The zygote itself never runs model code: for each request it forks a child, the child
applies resource limits, executes the program and calls `f`, writes one result frame to a
private pipe and `_exit`s. The zygote enforces the wall-clock deadline, kills everything the
job left behind, wipes the job's scratch directory and answers the host.

Host <-> zygote frames: 4-byte big-endian length + UTF-8 JSON, on the zygote's stdin/stdout.
Child -> zygote: one JSON array of strings and arrays, on a pipe only the child holds (JSON, not
a Python literal: the host decodes it in C in linear time, and only the value texts inside, each
at most `max_output_chars`, go through its bounded literal parser; never trusted).
"""

import sys

# `python -c` puts the working directory first on sys.path. It goes before anything is imported
# from a path: a `json.py` where the zygote starts (the host starts it in `/`; it once started in
# the trainer's working directory, which a none-mode job could write when it was world-writable:
# every zygote started after such a job ran its file) or, later, in a job's scratch directory
# must not shadow a standard module.
sys.path[:] = [p for p in sys.path if p not in ("", ".")]

import builtins  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402

# Pre-imported so children start fast; a fork shares them, and the zygote never runs model code,
# so every child starts from the same pristine modules (`math.pi = 3` dies with its child).
PREIMPORT = (
    "collections", "itertools", "functools", "math", "re", "heapq", "bisect", "string", "typing",
    "operator", "copy", "json", "fractions", "decimal", "statistics", "dataclasses", "enum",
    "array", "numbers", "cmath", "textwrap", "unicodedata", "abc", "contextlib", "collections.abc",
)

# Captured before any model code can rebind the builtins (children use these references).
_repr, _type, _len, _isinstance, _str = builtins.repr, builtins.type, builtins.len, builtins.isinstance, builtins.str
_float_is_finite = __import__("math").isfinite
_write, _exit, _close = os.write, os._exit, os.close
_json_dumps = json.dumps
_gc_collect = __import__("gc").collect

_CHILD_FILTER = None  # installs the jobs' extra seccomp filter (set up by _install_seccomp)

PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes)
PLAIN_CONTAINERS = (list, tuple, set, frozenset, dict)
MAX_DEPTH = 100
MAX_BRACKETS = 190  # Python's parser refuses 200 nested brackets; a scalar may add one, "(1+2j)"
MAX_NODES = 100_000


def _read_exact(fd, n):
    buf = bytearray()  # appending to bytes copies the whole buffer every time
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _send(obj, fd=1):
    data = json.dumps(obj).encode("utf-8")
    data = memoryview(struct.pack(">I", len(data)) + data)  # slices of a memoryview copy nothing
    while data:
        data = data[os.write(fd, data):]


# ------------------------------------------------------------------------------------------------
# Child side (runs in the forked child; model code executes after `_limit`)
# ------------------------------------------------------------------------------------------------


def _check_plain(value):
    """Raise TypeError unless `value` is plain builtin data (exact types, finite floats, bounded)."""
    # depth: containers around v; brackets: the brackets around it in its repr, which the host's
    # parser reads (at most 199 nested): a frozenset level opens two ("frozenset({").
    stack = [(value, 0, 0)]
    nodes = 0
    while stack:
        v, depth, brackets = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH or brackets > MAX_BRACKETS or nodes > MAX_NODES:
            raise _Unrepresentable("too deep or too large")
        t = _type(v)
        if t in PLAIN_SCALARS:
            if t is float and not _float_is_finite(v):
                raise _Unrepresentable("non-finite float")
            if t is complex and not (_float_is_finite(v.real) and _float_is_finite(v.imag)):
                raise _Unrepresentable("non-finite complex")
        elif t is dict:
            for k, item in v.items():
                stack.append((k, depth + 1, brackets + 1))
                stack.append((item, depth + 1, brackets + 1))
        elif t in PLAIN_CONTAINERS:
            inner = brackets + (2 if t is frozenset else 1)
            for item in v:
                stack.append((item, depth + 1, inner))
        else:
            raise _Unrepresentable(t.__name__)


def _describe(exc):
    try:
        msg = _str(exc)
        name = _str(_type(exc).__name__)
    except BaseException:  # noqa: BLE001 - a hostile __str__
        msg, name = "", "Exception"
    if _isinstance(exc, MemoryError):
        return "memory"
    return (name + ": " + msg)[:300] if msg else name


def _limit(lim):
    for res, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, lim["cpu_s"]),
        (resource.RLIMIT_FSIZE, lim["file_bytes"]),
        (resource.RLIMIT_NOFILE, lim["open_files"]),
        (resource.RLIMIT_NPROC, lim["processes"]),
        (resource.RLIMIT_AS, lim["memory_bytes"]),
        (resource.RLIMIT_MSGQUEUE, 0),  # mq_open is filtered; creating one through /dev/mqueue is not
    ):
        resource.setrlimit(res, (value, value))


def _child(req, wfd, scratch):
    """Run one job in this freshly forked process; never returns."""
    try:
        os.setsid()
        os.chdir(scratch)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, wfd)
        os.closerange(wfd + 1, 1 << 16)
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8"})
        sys.stdin = sys.stdout = sys.stderr = open(os.devnull, "r+")  # prints are discarded
        _limit(req["limits"])
        # From here on this process may change limits, priority and scheduling only of itself.
        if _CHILD_FILTER is not None and _CHILD_FILTER() != 0:
            raise OSError("could not load the job's seccomp filter")
    except BaseException as exc:  # noqa: BLE001 - report setup failures as job errors
        _finish(wfd, ("error", "sandbox setup failed: " + _describe(exc)))
    calls = req["calls"]
    literal = req["literal_args"]
    repeat_calls = req["calls_per_input"]
    # Literal-mode arguments were validated as literals on the host; build each call's copies now,
    # before model code can rebind `set`/`frozenset`, with no other names reachable.
    safe_ns = {"__builtins__": {"set": set, "frozenset": frozenset}}
    prebuilt = []
    for i, call in enumerate(calls):
        if literal and call is not None:
            try:
                prebuilt.append([eval("(lambda *a, **k: (a, k))(" + call + ")", safe_ns) for _ in range(repeat_calls)])
            except BaseException as exc:  # noqa: BLE001
                prebuilt.append(exc)
        else:
            prebuilt.append(None)
    try:
        code = compile(req["program"], "<program>", "exec")
    except BaseException as exc:  # noqa: BLE001
        _finish(wfd, ("error", _describe(exc)))
    namespace = _load(code, wfd)
    used = False
    results = []
    for i, call in enumerate(calls):
        if call is None:
            results.append(("skip",))
            continue
        # Every call sees the program's fresh module state, as if it ran alone (the reference
        # runs each input as its own snippet): a program that keeps state in its globals
        # (`seen = set()`) must not give outputs that depend on which calls ran before.
        if used:
            # Free the previous call's state first, so the job holds one copy at a time:
            # clear() breaks the globals <-> functions cycle, collect() what other cycles
            # (classes) still hold.
            namespace.clear()
            _gc_collect()
            namespace = _load(code, wfd)
        used = True
        texts = []
        err = None
        for k in range(repeat_calls):  # validation: twice in one process, for accumulators and global counters
            try:
                if literal:
                    if _isinstance(prebuilt[i], BaseException):
                        raise prebuilt[i]
                    args, kwargs = prebuilt[i][k]
                    value = namespace["f"](*args, **kwargs)
                else:
                    # The newline lets a trailing comment end the argument text, as in the
                    # host's parse of the same call.
                    value = eval(compile("f(" + call + "\n)", "<call>", "eval"), namespace)
                _check_plain(value)
                try:
                    text = _repr(value)
                except BaseException as exc:  # noqa: BLE001 - e.g. an int too long to print
                    raise _Unrepresentable(_describe(exc))
                if _type(text) is not _str or _len(text) > req["max_output_chars"]:
                    raise _Unrepresentable("output too large")
                texts.append(text)
            except _Unrepresentable as exc:
                err = "unrepresentable: " + exc.args[0]
            except BaseException as exc:  # noqa: BLE001
                err = _describe(exc)
            if err is not None:
                break
        results.append(("ok", texts[0], texts[-1]) if err is None else ("err", err, k))
    _finish(wfd, ("done", tuple(results)))


def _load(code, wfd):
    """Execute the program into a fresh module namespace; a failure ends the job."""
    namespace = {"__name__": "__sandbox__", "__builtins__": builtins}
    try:
        exec(code, namespace)
    except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt included
        _finish(wfd, ("error", "program raised " + _describe(exc)))
    if not callable(namespace.get("f")):
        _finish(wfd, ("error", "program does not define a function f"))
    return namespace


class _Unrepresentable(Exception):
    pass


def _finish(wfd, frame):
    try:
        data = _json_dumps(frame).encode("ascii")  # ensure_ascii: any str, lone surrogates included
        while data:
            data = data[_write(wfd, data):]
    finally:
        _exit(0)


# ------------------------------------------------------------------------------------------------
# Zygote side
# ------------------------------------------------------------------------------------------------


def _other_pids():
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (me, 1)]


def _status_fields(pid):
    """(real uid, anonymous + shared-memory resident bytes) of a process, or None if it is gone.

    /proc/<pid>/status stays readable when the process is not dumpable (the jobs inherit that
    from the zygote), unlike smaps.
    """
    uid, resident = None, 0
    try:
        with open("/proc/%d/status" % pid, "rb") as fh:
            for line in fh:
                if line.startswith((b"RssAnon:", b"RssShmem:")):
                    resident += int(line.split()[1]) << 10
                elif line.startswith(b"Uid:"):
                    uid = int(line.split()[1])
    except (OSError, ValueError):
        return None
    return uid, resident


def _job_resident_bytes(child_pid, pidns):
    """Resident memory of the job's processes together: the set `_kill_everything` ends."""
    uid, total = os.getuid(), 0
    for pid in _other_pids():
        in_group = False
        if not pidns:
            try:
                in_group = os.getpgid(pid) == child_pid
            except OSError:
                continue
            if not in_group and not CONFIG.get("kill_all_uid"):
                continue
        fields = _status_fields(pid)
        if fields is not None and (pidns or in_group or fields[0] == uid):
            total += fields[1]
    return total


INODE_BYTES = 1024  # kernel memory one tmpfs file pins (inode + dentry; 600 000 links took ~600 MiB)


def _scratch_inode_bytes():
    """Kernel memory held by the files in a scratch tmpfs of our own: its size cap bounds their
    data, not their count, and by default it allows ~3 million empty files or links."""
    if not CONFIG.get("scratch_tmpfs"):
        return 0
    try:
        st = os.statvfs(CONFIG["scratch"])
    except OSError:
        return 0
    return (st.f_files - st.f_ffree) * INODE_BYTES


def _kill_everything(child_pid, pidns):
    """Kill the job's whole process tree, daemons included, and reap what we can."""
    if pidns:
        # In our own pid namespace kill(-1) reaches every process except ourselves and pid 1;
        # fork cannot race it (the kernel holds the task list lock while signalling).
        for _ in range(100):
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap()
            if not _other_pids():
                break
            select.select([], [], [], 0.002)
    else:
        try:
            os.killpg(child_pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if CONFIG.get("kill_all_uid") and os.getuid() != 0:
            # Running under a uid used by nobody else: kill(-1) ends every process of that uid
            # (never as root, where it would end every process on the machine).
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap()


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _empty_of_files(fd, stuck):
    """Unlink what in the directory `fd` is not a directory; its subdirectories, to descend into."""
    subdirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.name, dir_fd=fd)
                    continue
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) not in stuck:
                    subdirs.append((entry.name, (st.st_dev, st.st_ino)))
            except OSError:
                pass
    return subdirs


def _wipe(root):
    """Empty the directory `root` (kept itself) of whatever the job left there.

    Every directory is scanned once (a rescan per removed subdirectory was quadratic: 200 000
    directories kept the zygote busy past the job's deadline); only one directory is open at a
    time and every path is one name long, relative to it, so a tree of any depth goes;
    directories chmod-ed to 000 are opened up first; symlinks are removed, never followed. The
    job's processes are dead by now, so nothing changes the tree meanwhile.
    """
    stuck = set()  # (device, inode) of directories that could not be entered or removed
    os.chmod(root, 0o700)  # by path: a job that chmod-ed its scratch root to 000 cannot stop the open
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        above = []  # (name, ident, the rest of the parent's subdirectories) from `root` down to fd
        pending = _empty_of_files(fd, stuck)
        while True:
            if pending:
                name, ident = pending.pop()
                try:
                    os.chmod(name, 0o700, dir_fd=fd)
                    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError:
                    stuck.add(ident)
                    continue
                os.close(fd)
                fd = child
                above.append((name, ident, pending))
                pending = _empty_of_files(fd, stuck)
                continue
            if not above:
                return
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = parent
            name, ident, pending = above.pop()
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError:
                stuck.add(ident)
    finally:
        os.close(fd)


def _reset_scratch(root):
    """Wipe the scratch root and check that nothing of the job is left on it: no entry (one the
    wipe could not remove), no extended attribute (kept across jobs, and on tmpfs pinning kernel
    memory no size limit bounds), and the times it had (a job could leave a value in them).
    OSError when something is left: the zygote is then replaced, and the job counts as failed."""
    _wipe(root)
    left = os.listdir(root)
    if left:
        raise OSError(f"{len(left)} entries could not be removed from the scratch root")
    if SCRATCH_XATTRS is not None:
        try:
            attrs = os.listxattr(root, follow_symlinks=False)
        except OSError as exc:  # E2BIG: more names than one call returns
            raise OSError(f"the scratch root's extended attributes cannot be listed: {exc}") from None
        if set(attrs) - SCRATCH_XATTRS:
            raise OSError("the job left extended attributes on the scratch root")
    os.utime(root, ns=(0, 0), follow_symlinks=False)


def _burn_pids(n):
    """Use up `n` process ids. The zygote of repeat r does this once, at start: the zygotes of a
    job's repeats see the same job sequence, so in their pid namespaces a program's pid (which
    counts the processes of earlier jobs) was the same in every repeat, and an output depending
    on it passed the determinism check. Offset by the repeat, the pids differ."""
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


def _run_job(req):
    scratch = os.path.join(CONFIG["scratch"], "job")
    os.mkdir(scratch, 0o700)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        _child(req, wfd, scratch)
    os.close(wfd)
    pidfd = os.pidfd_open(pid)
    deadline = _monotonic() + req["timeout_s"]
    data = []
    size = 0
    status = None
    exit_code = None
    too_large = False
    pipe_open = True
    stall_at = _monotonic() + req["stall_s"]
    # RLIMIT_AS caps each process; the job's processes together are capped by polling their
    # resident memory (no cgroups needed). Most jobs end before the first poll.
    job_memory = req["limits"]["memory_bytes"]
    poll_at = _monotonic() + req["memory_poll_s"]
    while True:
        now = _monotonic()
        remaining = deadline - now
        if remaining <= 0:
            status = "timeout"
            break
        if now >= poll_at:
            if _job_resident_bytes(pid, CONFIG["pidns"]) + _scratch_inode_bytes() > job_memory:
                status = "memory"
                break
            poll_at = now + req["memory_poll_s"]
        if stall_at is not None and now >= stall_at:
            # Slow job (likely a hang): lowest CPU priority, so jobs that finish keep the cores.
            # Every process of the job: a child in a process group of its own escaped the group's.
            for target, which in ([(p, os.PRIO_PROCESS) for p in _other_pids()] if CONFIG["pidns"]
                                  else [(pid, os.PRIO_PGRP)]):
                try:
                    os.setpriority(which, target, 19)
                except OSError:
                    pass
            stall_at = None
        fds = [rfd, pidfd] if pipe_open else [pidfd]
        wait = min(remaining, max(0.0, poll_at - now))
        if stall_at is not None:
            wait = min(wait, max(0.0, stall_at - now))
        ready, _, _ = select.select(fds, [], [], wait)
        if rfd in ready:
            chunk = os.read(rfd, 1 << 16)
            if chunk:
                data.append(chunk)
                size += len(chunk)
                if size > req["max_frame_bytes"]:
                    too_large = True
                    break
            else:
                pipe_open = False  # every writer closed it; wait for the child's exit status
        if pidfd in ready:
            _, exit_code = os.waitpid(pid, 0)
            # Drain what the child wrote; descendants holding the pipe open do not delay us.
            os.set_blocking(rfd, False)
            try:
                while pipe_open:
                    chunk = os.read(rfd, 1 << 16)
                    if not chunk:
                        break
                    data.append(chunk)
                    size += len(chunk)
                    if size > req["max_frame_bytes"]:
                        too_large = True
                        break
            except BlockingIOError:
                pass
            break
    _kill_everything(pid, CONFIG["pidns"])
    if exit_code is None:
        try:
            _, exit_code = os.waitpid(pid, 0)
        except ChildProcessError:
            exit_code = None
    os.close(rfd)
    os.close(pidfd)
    # The whole scratch root, not only the job's directory: whatever a job writes anywhere it can
    # (in bwrap, all of /tmp) must not reach the next job, nor fill the tmpfs for it.
    try:
        _reset_scratch(CONFIG["scratch"])
    except OSError as exc:  # the program's doing (its processes are dead): not a sandbox failure
        return {"status": "scratch", "detail": str(exc)[:300], "recycle": True}
    signal_no = None
    if exit_code is not None and os.WIFSIGNALED(exit_code):
        signal_no = os.WTERMSIG(exit_code)
    return {
        "status": status or ("too_large" if too_large else "exited"),
        "signal": signal_no,
        "exit": os.WEXITSTATUS(exit_code) if exit_code is not None and os.WIFEXITED(exit_code) else None,
        # The child's frame is ASCII JSON: anything else was written by the program, and decoded
        # with replacement characters it grew sixfold once JSON-escaped for the host.
        "frame": frame.decode("ascii") if not too_large and (frame := b"".join(data)).isascii() else "",
    }


def _monotonic():
    return __import__("time").monotonic()


def _make_undumpable():
    """Same-uid children must not ptrace us or read /proc/<zygote>/fd (our host pipes)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")
    del sys.modules["ctypes"]


def _mount_private_tmp(size_bytes, uid):
    """Unshare mode as root, before dropping root: our mount namespace (private propagation, so the
    host sees none of this) gets its own size-limited /tmp, owned by `uid`, as the scratch root, and
    read-only empty tmpfs over the host's other shared writable directories. What a job writes is
    then bounded, counted and wiped as in bwrap, and never reaches the host's /tmp."""
    if not size_bytes > 0:  # tmpfs reads size=0 as no limit
        raise ValueError(f"private /tmp size must be positive, not {size_bytes!r}")
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        nosuid, nodev, noexec, rdonly = 2, 4, 8, 1  # MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RDONLY

        def mount(target, flags, options):
            if libc.mount(b"tmpfs", target.encode(), b"tmpfs", flags, options.encode()) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mounting a tmpfs on {target} failed: {os.strerror(err)}")

        mount("/tmp", nosuid | nodev, f"size={int(size_bytes)},mode=0700,uid={int(uid)},gid={int(uid)}")
        for shared in ("/dev/shm", "/var/tmp", "/run/lock", "/run/shm", "/dev/mqueue"):
            if os.path.isdir(shared) and not os.path.islink(shared):
                mount(shared, rdonly | nosuid | nodev | noexec, "size=4k,mode=0755")
        # The host's pty pool is global: a job opening /dev/ptmx gets /dev/null instead.
        if os.path.exists("/dev/ptmx") and libc.mount(b"/dev/null", b"/dev/ptmx", None, 4096, None) != 0:  # MS_BIND
            err = ctypes.get_errno()
            raise OSError(err, f"binding /dev/null over /dev/ptmx failed: {os.strerror(err)}")
    finally:
        sys.modules.pop("ctypes", None)


def _install_seccomp(program_hex, child_hex=None):
    """Load the host-built BPF filter on ourselves; every job forked later inherits it. Also
    prepare the jobs' own extra filter (`child_hex`), which `_child` installs after its limits.

    Returns True, or the reason it could not be installed (the host then refuses this zygote).
    """
    global _CHILD_FILTER
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        def prepared(program_hex):
            program = bytes.fromhex(program_hex)
            buf = ctypes.create_string_buffer(program, len(program))
            return buf, SockFprog(len(program) // 8, ctypes.addressof(buf))

        buf, fprog = prepared(program_hex)
        # PR_SET_NO_NEW_PRIVS = 38 (required for an unprivileged filter);
        # PR_SET_SECCOMP = 22 with SECCOMP_MODE_FILTER = 2.
        if libc.prctl(38, 1, None, 0, 0) != 0:
            return "prctl(PR_SET_NO_NEW_PRIVS) failed: " + os.strerror(ctypes.get_errno())
        if libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) != 0:
            return "prctl(PR_SET_SECCOMP) failed: " + os.strerror(ctypes.get_errno())
        if child_hex:
            child_buf, child_fprog = prepared(child_hex)
            address, prctl = ctypes.addressof(child_fprog), libc.prctl
            # The buffers stay referenced by the closure: the child loads them after the fork.
            _CHILD_FILTER = lambda keep=(child_buf, child_fprog): prctl(22, 2, address, 0, 0)  # noqa: E731
        return True
    except BaseException as exc:  # noqa: BLE001 - reported to the host, which decides
        return f"{type(exc).__name__}: {exc}"[:300]
    finally:
        sys.modules.pop("ctypes", None)


def main():
    global CONFIG
    CONFIG = json.loads(sys.argv[1])
    if "private_tmp_bytes" in CONFIG:  # never fall back to the host's /tmp as the scratch root
        owner = CONFIG["drop_uid"] if CONFIG.get("drop_uid") is not None else os.getuid()
        _mount_private_tmp(CONFIG["private_tmp_bytes"], owner)
    if CONFIG.get("drop_uid") is not None:
        uid = CONFIG["drop_uid"]
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    os.umask(0o077)
    for name in PREIMPORT:
        try:
            __import__(name)
        except ImportError:
            pass
    _make_undumpable()
    seccomp = _install_seccomp(CONFIG["seccomp"], CONFIG.get("child_seccomp")) if CONFIG.get("seccomp") else None
    # Children then leave the zygote's objects alone during collection: fewer copy-on-write faults.
    __import__("gc").freeze()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    _burn_pids(CONFIG.get("pid_skew", 0))
    global SCRATCH_XATTRS
    try:
        SCRATCH_XATTRS = frozenset(os.listxattr(CONFIG["scratch"], follow_symlinks=False))
    except OSError:  # a filesystem without extended attributes: none to leave
        SCRATCH_XATTRS = None
    os.utime(CONFIG["scratch"], ns=(0, 0), follow_symlinks=False)  # as after every job
    _send({"ready": True, "pid": os.getpid(), "uid": os.getuid(), "hash_probe": hash("azr"),
           "seccomp": seccomp})
    # With a pid namespace of our own (we are its pid 1) every job is served by an agent forked
    # for it, and the job's process is forked from the agent: the requests (programs, inputs) and
    # the result frames (outputs) of earlier jobs were read into this process's heap, whose freed
    # memory a job forked from it could read back (an induction solver's program recovered the
    # hidden outputs of the proposal validated on its zygote). Forked from us, who never read one,
    # an agent holds only its own job's data. Without a pid namespace (none mode, bwrap without
    # --as-pid-1) the agent's kill(-1) would reach us too: jobs are served here, as before.
    agents = os.getpid() == 1
    while True:
        head = _read_exact(0, 4)  # only the request's length: its body is read by whoever runs it
        if head is None:
            return
        if not agents:
            if not _serve(head):
                return
            continue
        try:
            agent = os.fork()
        except OSError as exc:
            _send({"status": "sandbox_error", "detail": f"{type(exc).__name__}: {exc}"[:300]})
            return
        if agent == 0:
            code = 1
            try:
                code = 0 if _serve(head) else 3
            finally:
                _exit(code)
        if _wait_agent(agent) != 0:
            # 3: the agent asked for a fresh zygote (it answered). Anything else: it died without
            # answering (a job may signal its agent): our exit ends every process of the pid
            # namespace, and the host, seeing no answer, counts the job's zygote as died.
            return


def _serve(head):
    """Read the request announced by `head`, run the job, answer the host; whether to go on."""
    body = _read_exact(0, struct.unpack(">I", head)[0])
    if body is None:
        return False
    req = json.loads(body.decode("utf-8"))
    try:
        answer = _run_job(req)
    except OSError as exc:  # fork/pipe/scratch trouble: the sandbox broke, not the program
        _send({"status": "sandbox_error", "detail": f"{type(exc).__name__}: {exc}"[:300]})
        return False  # the host starts a fresh zygote
    _send(answer)
    return not answer.get("recycle")  # the host replaces us too


def _wait_agent(agent):
    """The agent's exit code (-1 if a signal ended it). As pid 1 we also reap, meanwhile, the
    orphans its job left, which the agent's final kill waits to see gone."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == agent:
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1

CONFIG = {}
SCRATCH_XATTRS = frozenset()  # the scratch root's own extended attributes, as the zygote found them

if __name__ == "__main__":
    main()
