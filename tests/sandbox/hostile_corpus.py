"""A corpus of hostile programs and, for each, the containment it must meet.

Used by tests/sandbox/test_hostile.py (pytest, as whoever runs the suite) and run directly as a
script (`python tests/sandbox/hostile_corpus.py MODE`) by that test under an unprivileged user,
so it needs only the standard library and `azr_jax.sandbox`. Exit status 0 = every case held.

Placeholders in programs: @TOKEN@ (unique per run), @REPO@ (the checkout), @SECRET_FILE@ (a
0600 file of the test's user holding the token), @PORT@ (a port listening on the host's
loopback), @OUTSIDE@ (a directory of the test's user that the sandbox must not write into).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from azr_jax.config import SandboxSection  # noqa: E402
from azr_jax.sandbox import Job, JobResult, Sandbox, isolation, seccomp  # noqa: E402
from azr_jax.sandbox.literals import parse_literal  # noqa: E402

TIMEOUT_S = 2.0
SECRET_ENV = "AZR_HOSTILE_SECRET"


@dataclass
class Case:
    name: str
    program: str
    check: Callable[[JobResult, dict], None]  # raises AssertionError when containment failed
    calls: list = field(default_factory=lambda: ["0"])
    phase: int = 1  # phase-2 jobs run in a second batch, after every phase-1 job has finished
    expected: list | None = None
    args_mode: str = "expression"
    modes: tuple = ("bwrap", "unshare", "none")  # isolation modes in which the claim is made
    # Protecting the trainer user's own files needs bwrap's read-only view, or a dropped uid
    # (trainer is root); unshare/none run as the trainer's uid when it is unprivileged.
    own_files: bool = False
    # Modes where the claim holds only through the seccomp filter (claimed when it is installed).
    seccomp_modes: tuple = ()
    # Protecting the trainer's process (its environment, signals) needs a pid namespace, or a
    # dropped uid (trainer is root); in `none` mode an unprivileged trainer's jobs run as its uid.
    trainer_process: bool = False
    # Claims about /tmp and the host's shared writable directories need a /tmp of the zygote's
    # own: bwrap's, or in unshare mode the tmpfs a root trainer's zygotes mount for themselves.
    private_tmp: bool = False

    def claimed(self, mode: str, seccomp: bool = False) -> bool:
        in_mode = mode in self.modes or (seccomp and mode in self.seccomp_modes)
        root = os.geteuid() == 0
        return (in_mode and (not self.own_files or mode == "bwrap" or root)
                and (not self.trainer_process or mode != "none" or root)
                and (not self.private_tmp or mode == "bwrap" or (mode == "unshare" and root)))


def failed(r: JobResult, *, kind: str | None = None) -> None:
    errs = [r.error] + list(r.errors)
    assert r.error is not None or any(e is not None for e in r.errors), f"expected a failure, got {r}"
    assert all(o is None for o in r.outputs), f"a failed job reported outputs: {r}"
    if kind is not None:
        assert any(e is not None and kind in e for e in errs), f"expected error containing {kind!r}, got {errs}"


def output_is(text: str):
    def check(r: JobResult, ctx: dict) -> None:
        assert r.outputs == [text], f"expected output {text}, got {r}"
    return check


def no_token_in_output(r: JobResult, ctx: dict) -> None:
    assert ctx["token"] not in repr(r), f"secret visible to the program: {r}"


def path_absent(rel: str):
    def check(r: JobResult, ctx: dict) -> None:
        p = Path(ctx["outside"]) / rel.replace("@TOKEN@", ctx["token"])
        assert not p.exists(), f"program wrote {p} outside its scratch directory"
    return check


def all_of(*checks):
    def check(r: JobResult, ctx: dict) -> None:
        for c in checks:
            c(r, ctx)
    return check


def fails(kind: str | None = None):
    return lambda r, ctx: failed(r, kind=kind)


def no_match(r: JobResult, ctx: dict) -> None:
    assert r.matches == [False] * len(r.outputs), f"hostile program matched the expected output: {r}"
    failed(r)


def quick_failure(kind: str | None = None):
    def check(r: JobResult, ctx: dict) -> None:
        failed(r, kind=kind)
        assert not r.timed_out, f"should fail fast, not time out: {r}"
    return check


def quick_failure_of(*kinds: str):
    def check(r: JobResult, ctx: dict) -> None:
        quick_failure()(r, ctx)
        errs = [e for e in [r.error] + list(r.errors) if e is not None]
        assert any(k in e for k in kinds for e in errs), f"expected an error containing one of {kinds}, got {errs}"
    return check


def zygote_survived_or_program_failure(r: JobResult, ctx: dict) -> None:
    """Where the kill reaches the zygote, the job fails (after one retry on a fresh zygote), fast,
    never as a timeout, and as the program's failure, not the sandbox's (a program must not be
    able to escape its verdict); elsewhere the program simply returns."""
    if r.outputs != ["'killed'"]:
        quick_failure("zygote died")(r, ctx)
        assert not r.sandbox_fault, r


def _forger(fake: str) -> str:
    """A program that writes the bytes expression `fake` to every fd it may hold, then exits."""
    return f"""
import json, os
def f(x):
    fake = {fake}
    for fd in range(3, 64):
        try:
            os.write(fd, fake)
        except OSError:
            pass
    os._exit(0)
"""


CASES: list[Case] = [
    # --- filesystem ---------------------------------------------------------------------------
    Case("write_outside_dir", """
def f(x):
    try:
        open('@OUTSIDE@/w_@TOKEN@', 'w').write('pwned')
        return 'wrote'
    except OSError as e:
        return 'blocked'
""", all_of(output_is("'blocked'"), path_absent("w_@TOKEN@")), own_files=True),
    Case("write_into_repo", """
def f(x):
    try:
        open('@REPO@/pwned_@TOKEN@.py', 'w').write('import os')
        return 'wrote'
    except OSError:
        return 'blocked'
""", lambda r, ctx: (output_is("'blocked'")(r, ctx), _assert(not (REPO / f"pwned_{ctx['token']}.py").exists(), "repo written"))),
    Case("append_to_repo_file", """
def f(x):
    try:
        open('@REPO@/pyproject.toml', 'a').write('# pwned')
        return 'wrote'
    except OSError:
        return 'blocked'
""", lambda r, ctx: (output_is("'blocked'")(r, ctx), _assert("pwned" not in (REPO / "pyproject.toml").read_text(), "repo modified"))),
    Case("write_host_tmp", """
def f(x):
    try:
        open('/tmp/azr_hostile_@TOKEN@', 'w').write('x')
        return 'wrote'
    except OSError:
        return 'blocked'
""", lambda r, ctx: _assert(not Path(f"/tmp/azr_hostile_{ctx['token']}").exists(), "host /tmp written"),
         modes=("bwrap", "unshare"), private_tmp=True),
    Case("write_usr", """
def f(x):
    try:
        open('/usr/azr_@TOKEN@', 'w').write('x')
        return 'wrote'
    except OSError:
        return 'blocked'
""", lambda r, ctx: (output_is("'blocked'")(r, ctx), _assert(not Path(f"/usr/azr_{ctx['token']}").exists(), "/usr written"))),
    # bwrap's root tmpfs (/, /etc) used to be writable, unbounded and kept between jobs.
    Case("write_root_and_etc", """
import os
def f(x):
    out = []
    for attempt in (lambda: open('/azr_@TOKEN@', 'w'), lambda: open('/etc/azr_@TOKEN@', 'w'),
                    lambda: os.mkdir('/azr_dir_@TOKEN@')):
        try:
            attempt()
            out.append('wrote')
        except OSError:
            out.append('blocked')
    return out
""", output_is("['blocked', 'blocked', 'blocked']"), modes=("bwrap",)),
    Case("read_secret_file", """
def f(x):
    try:
        return open('@SECRET_FILE@').read()
    except OSError as e:
        return 'blocked'
""", all_of(output_is("'blocked'"), no_token_in_output), own_files=True),
    Case("read_repo_source", """
def f(x):
    try:
        return open('@REPO@/azr_jax/config.py').read()[:50]
    except OSError:
        return 'blocked'
""", output_is("'blocked'"), modes=("bwrap",)),
    Case("read_etc_shadow", """
def f(x):
    try:
        return open('/etc/shadow').read()[:20]
    except OSError:
        return 'blocked'
""", output_is("'blocked'")),
    Case("disk_bomb_one_file", """
def f(x):
    with open('big', 'wb') as fh:
        for _ in range(1000):
            fh.write(b'x' * (1 << 20))
    return 'filled'
""", fails("File too large")),  # RLIMIT_FSIZE (sandbox.max_file_mb), before bwrap's 64 MiB scratch
    Case("disk_bomb_many_files", """
def f(x):
    for i in range(10000):
        with open('f%d' % i, 'wb') as fh:
            fh.write(b'x' * (8 << 20))
    return 'filled'
""", fails(), modes=("bwrap", "unshare"), private_tmp=True),
    Case("chmod_trap_in_scratch", """
import os
def f(x):
    if not os.path.exists('trap'):
        os.makedirs('trap/inner')
        open('trap/inner/file', 'w').write('x')
        os.chmod('trap/inner', 0)
        os.chmod('trap', 0)
    return 'trapped'
""", output_is("'trapped'")),
    Case("deep_directory_tree", """
import os
def f(x):
    if not os.path.isdir('d'):  # f runs twice
        start = os.getcwd()
        for i in range(1100):  # deeper than Python's recursion limit
            os.mkdir('d')
            os.chdir('d')
        os.chdir(start)
    return 1
""", output_is("1"), modes=("bwrap", "unshare"), private_tmp=True),  # the wipe after it must not
    # recurse (scratch_is_clean_next_job checks it went); on a disk, building the tree takes most of
    # a timeout: the on-disk scratch is covered by test_one_zygote_keeps_nothing_a_job_left_in_its_scratch_root
    Case("leave_files_outside_the_job_dir", """
import os
def f(x):
    wrote = []
    for path in ('/tmp/mark_@TOKEN@', '/dev/mark_@TOKEN@', '/dev/shm/mark_@TOKEN@'):
        try:
            with open(path, 'w') as fh:
                fh.write('x')
            wrote.append(path)
        except OSError:
            pass
    return [p for p in wrote if p.startswith('/dev')]
""", output_is("[]"), modes=("bwrap", "unshare"), private_tmp=True),  # /dev, /dev/shm read-only; /tmp emptied
    Case("nothing_left_outside_the_job_dir", """
import os
def f(x):
    return sorted(os.listdir('/tmp')), [n for d in ('/dev', '/dev/shm') for n in os.listdir(d) if 'mark' in n]
""", output_is("(['job'], [])"), phase=2, modes=("bwrap", "unshare"), private_tmp=True),
    Case("write_into_pid1_pipes", """
import os
def f(x):
    opened = []
    for n in range(3):
        try:
            os.close(os.open('/proc/1/fd/%d' % n, os.O_WRONLY))
            opened.append(n)
        except OSError:
            pass
    return opened
""", output_is("[]"), modes=("bwrap", "unshare")),  # pid 1 is the non-dumpable zygote (none: the host's)
    Case("scratch_is_clean_next_job", """
import os
def f(x):
    return sorted(os.listdir('.'))
""", output_is("[]"), phase=2),
    # --- secrets, environment, /proc ------------------------------------------------------------
    # A yes/no answer, not the text: a whole environment differs between the two runs (the hash
    # seed), so its output would be dropped as nondeterministic and a leak could not show.
    Case("env_secret", """
import os
def f(x):
    return '@TOKEN@' in repr(sorted(os.environ.items()))
""", output_is("False")),
    Case("proc_1_environ", """
def f(x):
    try:
        return open('/proc/1/environ', 'rb').read().decode('latin-1')
    except OSError:
        return 'blocked'
""", no_token_in_output),
    Case("proc_walk_environ_cmdline", """
import os
def f(x):
    seen = []
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            for name in ('environ', 'cmdline'):
                try:
                    seen.append(open('/proc/%s/%s' % (pid, name), 'rb').read().decode('latin-1'))
                except OSError:
                    pass
    return '@TOKEN@' in ' '.join(seen)
""", output_is("False"), trainer_process=True),
    Case("signal_the_trainer", """
import os
def f(x):
    try:
        os.kill(@TRAINER_PID@, 0)  # signal 0: only the permission check
        return 'reachable'
    except OSError:
        return 'blocked'
""", output_is("'blocked'"), trainer_process=True),
    Case("zygote_fds_via_proc", """
import os
def f(x):
    try:
        return os.listdir('/proc/%d/fd' % os.getppid())
    except OSError:
        return 'blocked'
""", output_is("'blocked'")),
    Case("ptrace_zygote_mem", """
import os
def f(x):
    try:
        with open('/proc/%d/mem' % os.getppid(), 'rb') as fh:
            return 'opened'
    except OSError:
        return 'blocked'
""", output_is("'blocked'")),
    # --- network --------------------------------------------------------------------------------
    Case("host_loopback_port", """
import socket
def f(x):
    try:
        socket.create_connection(('127.0.0.1', @PORT@), timeout=1).close()
        return 'connected'
    except OSError:
        return 'blocked'
""", output_is("'blocked'"), modes=("bwrap", "unshare"),
         seccomp_modes=("none",)),
    Case("internet", """
import socket
def f(x):
    try:
        socket.create_connection(('1.1.1.1', 53), timeout=1).close()
        return 'connected'
    except OSError:
        return 'blocked'
""", output_is("'blocked'"), modes=("bwrap", "unshare"),
         seccomp_modes=("none",)),
    Case("network_interfaces", """
import socket
def f(x):
    try:
        return sorted(name for _, name in socket.if_nameindex())
    except OSError:  # the seccomp filter denies the netlink socket this needs
        return 'blocked'
""", lambda r, ctx: output_is("'blocked'" if ctx["seccomp"] else "['lo']")(r, ctx), modes=("bwrap", "unshare")),
    # --- syscalls the seccomp filter denies (azr_jax/sandbox/seccomp.py) -----------------------
    Case("seccomp_denied_syscalls", """
import ctypes
NR = @SYSCALLS@
def f(x):
    libc = ctypes.CDLL(None, use_errno=True)
    out = []
    for name, args in (('unshare', (0x10000000,)), ('setns', (0, 0)), ('ptrace', (0, 0, 0, 0)),
                       ('mount', (0, 0, 0, 0, 0)), ('chroot', (0,)), ('bpf', (0, 0, 0)),
                       ('perf_event_open', (0, 0, 0, 0, 0)), ('userfaultfd', (0,)),
                       ('io_uring_setup', (1, 0)), ('keyctl', (0, 0)), ('pidfd_getfd', (0, 0, 0)),
                       ('process_vm_readv', (0, 0, 0, 0, 0, 0))):
        ctypes.set_errno(0)
        ret = libc.syscall(NR[name], *args)
        out.append((name, ret, ctypes.get_errno()))
    return out
""", lambda r, ctx: _assert(
        r.outputs[0] is not None and all(t[1:] == (-1, 1) for t in parse_literal(r.outputs[0])),
        f"a denied syscall ran or the probe failed: {r}"),
         modes=(), seccomp_modes=("bwrap", "unshare", "none")),
    # Shared memory, message queues and memfd files: memory no job limit sees, and (IPC objects)
    # a channel to the zygote's next job, e.g. a proposal's outputs stashed for a later solver.
    Case("seccomp_denies_ipc_and_memfd", """
import ctypes, os
NR = @SYSCALLS@
def f(x):
    libc = ctypes.CDLL(None, use_errno=True)
    out = []
    for name, args in (('shmget', (0, 1 << 20, 0o1600)), ('msgget', (0, 0o1600)), ('semget', (0, 1, 0o1600)),
                       ('mq_open', (b'/azr', 0o100 | 2, 0o600, 0)), ('memfd_create', (b'azr', 0))):
        ctypes.set_errno(0)
        ret = libc.syscall(NR[name], *args)
        out.append((ret, ctypes.get_errno()))
    try:
        os.memfd_create('azr')
        out.append('memfd')
    except OSError:
        out.append('blocked')
    return out
""", output_is("[(-1, 1), (-1, 1), (-1, 1), (-1, 1), (-1, 1), 'blocked']"),
         modes=(), seccomp_modes=("bwrap", "unshare", "none")),
    # The job shares the zygote's uid: lowering the zygote's limits or priority would reach
    # every later job forked from it (RLIMIT_NOFILE 3 made them all "sandbox failures").
    Case("seccomp_job_cannot_retune_the_zygote", """
import os, resource
def f(x):
    zygote = os.getppid()
    out = []
    for name, call in (('prlimit', lambda: resource.prlimit(zygote, resource.RLIMIT_NOFILE, (3, 3))),
                       ('setpriority', lambda: os.setpriority(os.PRIO_PROCESS, zygote, 19)),
                       ('user_priority', lambda: os.setpriority(os.PRIO_USER, 0, 19)),
                       ('group_priority', lambda: os.setpriority(os.PRIO_PGRP, 0, 19)),
                       ('affinity', lambda: os.sched_setaffinity(zygote, {0})),
                       ('scheduler', lambda: os.sched_setscheduler(zygote, os.SCHED_IDLE, os.sched_param(0)))):
        try:
            call()
            out.append(name)
        except PermissionError:
            pass
    os.setpriority(os.PRIO_PROCESS, 0, 5)  # its own process: still allowed
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
    return (out, os.getpriority(os.PRIO_PROCESS, 0), resource.getrlimit(resource.RLIMIT_NOFILE))
""", output_is("([], 5, (32, 32))"), modes=(), seccomp_modes=("bwrap", "unshare", "none")),
    Case("seccomp_new_namespace_via_clone", """
import ctypes, signal
NR = @SYSCALLS@
def f(x):
    libc = ctypes.CDLL(None, use_errno=True)
    out = []
    for flag in (0x10000000, 0x40000000, 0x20000):  # CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS
        ctypes.set_errno(0)
        ret = libc.syscall(NR['clone'], flag | signal.SIGCHLD, 0, 0, 0, 0)
        if ret == 0:
            libc._exit(0)  # a child in a new namespace: the filter let it through
        out.append((ret, ctypes.get_errno()))
    return out
""", output_is("[(-1, 1), (-1, 1), (-1, 1)]"), modes=(), seccomp_modes=("bwrap", "unshare", "none")),
    Case("seccomp_sockets_but_unix", """
import socket
def f(x):
    out = []
    for family, kind in ((socket.AF_INET, socket.SOCK_STREAM), (socket.AF_INET6, socket.SOCK_DGRAM),
                         (socket.AF_INET, socket.SOCK_RAW), (socket.AF_NETLINK, socket.SOCK_RAW),
                         (socket.AF_PACKET, socket.SOCK_RAW), (socket.AF_UNIX, socket.SOCK_STREAM)):
        try:
            socket.socket(family, kind).close()
            out.append('opened')
        except OSError as e:
            out.append(e.errno)
    a, b = socket.socketpair()
    a.sendall(b'ok')
    out.append(b.recv(2).decode())
    return out
""", output_is("[1, 1, 1, 1, 1, 1, 'ok']"), modes=(), seccomp_modes=("bwrap", "unshare", "none")),
    Case("threads_and_fork_under_seccomp", """
import os, threading
def f(x):
    box = []
    t = threading.Thread(target=lambda: box.append(x + 1))  # glibc tries clone3 first (ENOSYS)
    t.start()
    t.join()
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    return box + [os.WEXITSTATUS(status)]
""", output_is("[1, 7]"), modes=("bwrap", "unshare")),  # none, unprivileged: all zygotes share one uid's NPROC
    # --- processes, time, memory ----------------------------------------------------------------
    Case("infinite_loop", "def f(x):\n    while True:\n        pass\n", fails("timeout")),
    Case("sleep_forever", "import time\ndef f(x):\n    time.sleep(10 ** 6)\n", fails("timeout")),
    Case("ignore_sigterm_and_loop", """
import signal
def f(x):
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
        signal.signal(s, signal.SIG_IGN)
    while True:
        pass
""", fails()),
    Case("loop_at_import_time", "while True:\n    pass\ndef f(x):\n    return 1\n", fails("timeout")),
    Case("double_fork_daemon", """
import os, sys
def f(x):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(1000)', 'daemon_@TOKEN@'])
        os._exit(0)
    return 'spawned'
""", lambda r, ctx: None, modes=("bwrap", "unshare")),  # the daemon's absence is checked after the batch
    Case("fork_bomb", """
import os
def f(x):
    while True:
        try:
            os.fork()
        except OSError:
            pass
""", fails(), modes=("bwrap", "unshare")),
    Case("memory_bomb_at_once", "def f(x):\n    return len(bytearray(1 << 34))\n", quick_failure("memory")),
    Case("memory_bomb_growing", """
def f(x):
    chunks = []
    while True:
        chunks.append(bytearray(1 << 24))
""", fails()),  # MemoryError, or the deadline when zero-filling is slow on a loaded machine
    # Each child stays under RLIMIT_AS; together they pass the job's memory_mb (polled). In none
    # mode as an unprivileged user RLIMIT_NPROC counts the user's other processes and refuses
    # the forks instead.
    Case("memory_spread_over_processes", """
import os, time
def f(x):
    for _ in range(6):
        if os.fork() == 0:
            block = b'x' * (100 << 20)
            time.sleep(60)
    time.sleep(60)
""", quick_failure_of("memory", "BlockingIOError")),
    Case("memory_spread_over_daemons", """
import os, time
def f(x):
    for _ in range(6):
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                block = b'x' * (100 << 20)
                time.sleep(60)
            os._exit(0)
    time.sleep(60)
""", quick_failure("memory"), modes=("bwrap", "unshare")),
    Case("recursion_bomb", """
import sys
def f(x):
    sys.setrecursionlimit(10 ** 7)
    def down(n):
        return down(n + 1) + 1
    return down(0)
""", fails()),
    Case("open_many_files", """
def f(x):
    handles = []
    try:
        while True:
            handles.append(open('/dev/null'))
    except OSError:
        return len(handles) < 200
""", output_is("True")),
    Case("kill_the_zygote", """
import os, signal
def f(x):
    os.kill(os.getppid(), signal.SIGKILL)
    return 'killed'
""", zygote_survived_or_program_failure),
    # kill(-1) reaches every process the job may signal: its pid namespace, or in none mode the
    # dedicated uid's processes (root) or every process of the trainer's user, the trainer and
    # this corpus run included. The jobs' seccomp filter refuses it in every mode.
    Case("kill_everything", """
import os, signal
def f(x):
    os.kill(-1, signal.SIGKILL)
    return 'alive'
""", fails(), modes=("bwrap", "unshare"), seccomp_modes=("none",)),
    Case("sandbox_still_works_after_kills", "def f(x):\n    return x + 1\n", output_is("1"), phase=2),
    # --- escapes through Python internals -------------------------------------------------------
    Case("subclasses_walk_to_system", """
def f(x):
    for cls in ().__class__.__base__.__subclasses__():
        if cls.__name__ == '_wrap_close':
            system = cls.__init__.__globals__['system']
            system('touch @OUTSIDE@/sub_@TOKEN@ @REPO@/sub_@TOKEN@')
            return 'ran'
    return 'not found'
""", lambda r, ctx: (path_absent("sub_@TOKEN@")(r, ctx),
                     _assert(not (REPO / f"sub_{ctx['token']}").exists(), "repo written"),
                     # 'not found' would mean the escape was never tried, and the case tests nothing
                     _assert(r.outputs == ["'ran'"] or r.error is not None or any(r.errors),
                             f"the walk never reached os.system: {r}")), own_files=True),
    Case("ctypes_system_and_setuid", """
import ctypes
def f(x):
    libc = ctypes.CDLL(None)
    libc.system(b'touch @OUTSIDE@/ct_@TOKEN@')
    return libc.setuid(0) == 0 and libc.getuid() == 0
""", lambda r, ctx: (output_is("False")(r, ctx), path_absent("ct_@TOKEN@")(r, ctx)), own_files=True),
    Case("monkeypatch_builtins_and_math", """
import builtins, math, json
def f(x):
    builtins.len = lambda o: 42
    builtins.sorted = lambda *a, **k: ['pwned']
    math.pi = 3
    json.dumps = lambda *a, **k: 'pwned'
    return 'patched'
""", output_is("'patched'")),
    Case("state_does_not_persist", """
import math, json
def f(x):
    return (len([1, 2]), sorted([2, 1]), math.pi, json.dumps(1))
""", output_is("(2, [1, 2], 3.141592653589793, '1')"), phase=2),
    # --- forging a verdict ----------------------------------------------------------------------
    Case("always_equal_object", """
class Always:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    def __repr__(self):
        return "'gold'"
def f(x):
    return Always()
""", all_of(fails("unrepresentable"), no_match), expected=["'gold'"]),
    Case("int_subclass", """
class Int(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def f(x):
    return Int(3)
""", all_of(fails("unrepresentable"), no_match), expected=["7"]),
    Case("nested_fake_in_list", """
class S(str):
    pass
def f(x):
    return [1, {'a': (S('gold'),)}]
""", fails("unrepresentable")),
    Case("print_fake_result_and_exit", """
import os
def f(x):
    print('["done", [["ok", "\\'gold\\'", "\\'gold\\'"]]]', flush=True)
    os._exit(0)
""", all_of(no_match, quick_failure()), expected=["'gold'"]),
    Case("write_fake_frame_to_every_fd", _forger("""json.dumps(["done", [["ok", "'gold'", "'gold'"]]]).encode()"""),
         lambda r, ctx: _forged_frame_check(r), expected=["'the hidden gold answer'"]),
    # A forged report cannot pass the program's failure off as the sandbox's (such rows are
    # left out of the update, so the program would escape its penalty).
    Case("forge_a_sandbox_failure", _forger("""json.dumps(["error", "sandbox failure: forged"]).encode()"""),
         lambda r, ctx: _program_failure(r)),
    # Nor as a timeout: the program ran to its end, and a timeout is the host's verdict only.
    Case("forge_a_timeout", _forger("""json.dumps(["error", "timeout"]).encode()"""),
         lambda r, ctx: _forged_timeout_check(r)),
    Case("forge_an_int_too_long_to_print", _forger("""json.dumps(["done", [["ok", "0x" + "f" * 5000, "0x" + "f" * 5000]]]).encode()"""),
         lambda r, ctx: _program_failure(r, "unrepresentable")),
    # Ints k * (2**61 - 1) share one hash: a set of them in a forged frame used to take the host
    # quadratic time (48 s of the trainer's CPU for 30 000 of them) and passed a 745 kB output.
    Case("forge_a_set_of_colliding_hashes", _forger(
        """json.dumps(["done", [["ok", *(["{" + ", ".join(str(k * ((1 << 61) - 1)) for k in range(1, 30001)) + "}"] * 2)]]]).encode()"""),
         lambda r, ctx: _program_failure(r, "unrepresentable")),
    # The same values as frozenset([...]): that spelling skipped the colliding-hash check.
    Case("forge_a_frozenset_of_colliding_hashes", _forger(
        """json.dumps(["done", [["ok", *(["frozenset([" + ", ".join(str(k * ((1 << 61) - 1)) for k in range(1, 8001)) + "])"] * 2)]]]).encode()"""),
         lambda r, ctx: _program_failure(r, "unrepresentable")),
    # 8 MB of nested-tuple text used to be parsed as one Python literal: ~40 s with the GIL held
    # (every trainer thread stopped) and ~4 GB; now the frame is JSON and this is not JSON.
    Case("forge_a_huge_literal_frame", _forger("b'(' + b'0,' * 4194000 + b')'"),
         lambda r, ctx: _program_failure(r)),
    Case("sys_exit_zero", "import sys\ndef f(x):\n    sys.exit(0)\n", all_of(fails("SystemExit"), no_match), expected=["None"]),
    Case("sys_exit_at_import", "import sys\nsys.exit(0)\ndef f(x):\n    return 1\n", fails("SystemExit"), expected=["1"]),
    Case("keyboard_interrupt", "def f(x):\n    raise KeyboardInterrupt\n", fails("KeyboardInterrupt")),
    Case("stop_iteration", "def f(x):\n    raise StopIteration\n", fails("StopIteration")),
    # Only a MemoryError is "memory" (any message ending in the word was read as one).
    Case("an_error_message_ending_in_memory", "raise ValueError('not enough memory')\ndef f(x):\n    return 1\n",
         fails("ValueError: not enough memory")),
    Case("os_exit_at_import", "import os\nos._exit(0)\ndef f(x):\n    return 1\n", quick_failure("exited"), expected=["1"]),
    Case("self_sigkill", "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGKILL)\n", quick_failure("SIGKILL")),
    Case("nan_output", "def f(x):\n    return float('nan')\n", fails("unrepresentable")),
    Case("self_referencing_list", "def f(x):\n    l = []\n    l.append(l)\n    return l\n", fails("unrepresentable")),
    Case("huge_output", "def f(x):\n    return 'x' * (1 << 24)\n", fails()),
    Case("huge_int", "def f(x):\n    return 10 ** 10000\n", fails("unrepresentable")),
    Case("literal_args_injection", "def f(x):\n    return x\n", fails("bad_args"),
         calls=["1) or (True"], args_mode="literal", expected=["1"]),
    Case("literal_args_code", "def f(x):\n    return x\n", fails("bad_args"),
         calls=["__import__('os').system('touch /tmp/x')"], args_mode="literal"),
    Case("expression_args_injection", "def f(x):\n    return x\n", fails("bad_args"), calls=["0) or (1"]),
    Case("mutable_default_accumulator", "def f(x, acc=[]):\n    acc.append(x)\n    return len(acc)\n",
         lambda r, ctx: _assert(not r.deterministic and r.outputs == [None], f"accumulator passed: {r}")),
    Case("hash_seed_dependent", "def f(x):\n    return list({'k%d' % i for i in range(64)})\n",
         lambda r, ctx: _assert(not r.deterministic, f"set order across hash seeds passed: {r}")),
    Case("urandom_output", "import os\ndef f(x):\n    return os.urandom(8)\n",
         lambda r, ctx: _assert(not r.deterministic, f"random output passed: {r}")),
]


def _assert(cond: bool, msg: str) -> None:
    assert cond, msg


def _program_failure(r: JobResult, kind: str | None = None) -> None:
    failed(r, kind=kind)
    assert not r.sandbox_fault, f"the program's failure was reported as the sandbox's: {r}"


def _forged_timeout_check(r: JobResult) -> None:
    _program_failure(r, "forged timeout")
    assert not r.timed_out, f"a forged report passed for a timeout: {r}"


def _forged_frame_check(r: JobResult) -> None:
    # A frame forged on the result pipe is parsed like any report: it can only claim plain values
    # (what `f` could have returned) and never sees the expected text, so it cannot pass.
    assert r.matches == [False], f"forged frame produced a match: {r}"
    assert r.outputs in ([None], ["'gold'"]), f"forged frame produced a non-literal output: {r}"


def _fill(program: str, ctx: dict) -> str:
    for key in ("TOKEN", "REPO", "SECRET_FILE", "PORT", "OUTSIDE", "SYSCALLS", "TRAINER_PID"):
        program = program.replace(f"@{key}@", str(ctx[key.lower()]))
    return program


def _cmdlines() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode("latin-1"))
            except OSError:
                pass
    return out


def _tree_size(pid: int) -> int:
    """Number of descendants of `pid` on the host."""
    children: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = Path(f"/proc/{p}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(p))
    n, stack = 0, [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            n += 1
            stack.append(c)
    return n


# Processes under each zygote's Popen pid when idle (bwrap without --as-pid-1 adds its reaper).
SKELETON = {"bwrap": 1 if isolation._bwrap_supports("--as-pid-1") else 2, "unshare": 1, "none": 0}


def run_corpus(mode: str, workers: int = 2) -> tuple[list[tuple[str, str]], dict]:
    """Run every case claimed for `mode`; returns (failures [(case, message)], facts)."""
    token = uuid.uuid4().hex
    outside = Path(tempfile.mkdtemp(prefix="azr-hostile-outside-"))
    secret = outside / "secret.txt"
    secret.write_text(token)
    secret.chmod(0o600)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    arch = seccomp.native_arch()
    ctx = {"token": token, "repo": REPO, "secret_file": secret, "port": listener.getsockname()[1], "outside": outside,
           "syscalls": repr(seccomp.ARCHES[arch]["nr"] if arch else {})}
    os.environ[SECRET_ENV] = token  # the trainer's environment: must not reach the programs
    # os.environ changes never reach /proc/<pid>/environ, so a stand-in for the trainer process
    # (same uid) carries the token in the environment it starts with.
    trainer = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                               env={"PATH": "/usr/bin:/bin", SECRET_ENV: token})
    ctx["trainer_pid"] = trainer.pid
    failures: list[tuple[str, str]] = []
    facts: dict = {}
    cfg = SandboxSection(isolation=mode, timeout_s=TIMEOUT_S, workers=workers, memory_mb=256,
                         max_file_mb=16, max_open_files=64, max_processes=16)
    sb = Sandbox(cfg)
    try:
        facts["report"] = sb.isolation_report()
        filtered = ctx["seccomp"] = facts["report"]["layers"]["seccomp"] is True
        if arch is not None and not filtered:
            failures.append(("seccomp", f"the filter for {arch} is not installed: {facts['report']['layers']}"))
        cases = [c for c in CASES if c.claimed(mode, filtered)]
        facts["cases"] = [c.name for c in cases]
        results: dict[str, JobResult] = {}
        for phase in (1, 2):
            batch = [c for c in cases if c.phase == phase]
            jobs = [Job(_fill(c.program, ctx), list(c.calls), args_mode=c.args_mode, expected=c.expected) for c in batch]
            t0 = time.monotonic()
            for c, r in zip(batch, sb.run(jobs)):
                results[c.name] = r
            facts[f"phase{phase}_wall_s"] = time.monotonic() - t0
        for c in cases:
            try:
                c.check(results[c.name], ctx)
            except AssertionError as e:
                failures.append((c.name, str(e)))
        # Nothing left behind: no daemon, no fork-bomb child, only each zygote's own skeleton.
        time.sleep(0.2)
        if any(f"daemon_{token}" in cmd for cmd in _cmdlines()):
            failures.append(("double_fork_daemon", "the daemon outlived its job"))
        for slot in sb._zygotes:
            for z in slot.values():
                if z.alive() and _tree_size(z.proc.pid) != SKELETON[mode]:
                    failures.append(("leftover_processes", f"zygote {z.proc.pid} has {_tree_size(z.proc.pid)} descendants"))
        facts["timeouts_in_phase1"] = sum(1 for c in cases if c.phase == 1 and results[c.name].timed_out)
    finally:
        sb.close()
        listener.close()
        trainer.kill()
        trainer.wait()
        os.environ.pop(SECRET_ENV, None)
    if any(token in cmd for cmd in _cmdlines()):
        failures.append(("after_close", "a process carrying the run's token survived Sandbox.close()"))
    if sorted(p.name for p in outside.iterdir()) != ["secret.txt"]:
        failures.append(("outside_dir", f"files appeared outside: {sorted(p.name for p in outside.iterdir())}"))
    shutil.rmtree(outside, ignore_errors=True)
    return failures, facts


def main(argv: list[str]) -> int:
    """Run the corpus in each mode given (default: bwrap); print one line per mode and failure."""
    total = 0
    for mode in argv or ["bwrap"]:
        failures, facts = run_corpus(mode)
        total += len(failures)
        print(f"hostile corpus, mode={mode}, uid={os.getuid()}: {len(failures)} failure(s), "
              f"isolation={facts.get('report', {}).get('mode')}, phase1_wall_s={facts.get('phase1_wall_s', 0):.2f}")
        for name, msg in failures:
            print(f"FAIL [{mode}] {name}: {msg}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
