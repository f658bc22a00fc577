"""The sandbox's seccomp filter: its decisions (run through a small classic-BPF interpreter written
here), its syscall numbers against the kernel headers, and the sandbox's behaviour when the filter
cannot be installed. That the installed filter holds inside real zygotes is in the hostile corpus
(`seccomp_*` cases, tests/sandbox/hostile_corpus.py)."""

from __future__ import annotations

import errno
import logging
import re
import struct
from pathlib import Path

import pytest

from azr_jax.config import SandboxSection
from azr_jax.sandbox import Job, Sandbox, isolation, seccomp

ALLOW, KILL = seccomp.RET_ALLOW, seccomp.RET_KILL_PROCESS
EPERM, ENOSYS = seccomp.RET_ERRNO | errno.EPERM, seccomp.RET_ERRNO | errno.ENOSYS

# Ordinary syscalls a Python program and the zygote make (x86_64 / aarch64 numbers).
ORDINARY = {
    "x86_64": {"read": 0, "write": 1, "openat": 257, "mmap": 9, "exit_group": 231, "wait4": 61,
               "kill": 62, "prlimit64": 302, "pidfd_open": 434, "socketpair": 53, "getpid": 39},
    "aarch64": {"read": 63, "write": 64, "openat": 56, "mmap": 222, "exit_group": 94, "wait4": 260,
                "kill": 129, "prlimit64": 261, "pidfd_open": 434, "socketpair": 199, "getpid": 172},
}
CLONE_NEW = {"NEWNS": 0x20000, "NEWCGROUP": 0x02000000, "NEWUTS": 0x04000000, "NEWIPC": 0x08000000,
             "NEWUSER": 0x10000000, "NEWPID": 0x20000000, "NEWNET": 0x40000000, "NEWTIME": 0x80}
FORK_FLAGS = 0x01200011  # CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD, as glibc's fork()
THREAD_FLAGS = 0x003D0F00  # CLONE_VM | FS | FILES | SIGHAND | THREAD | SYSVSEM | SETTLS | PARENT_SETTID | CHILD_CLEARTID


def run_bpf(program: bytes, nr: int, arch: int, args=(0,) * 6) -> int:
    """What the kernel would return for one syscall: a minimal interpreter of the opcodes used."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    insns = [struct.unpack("<HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code in (0x15, 0x35, 0x45):  # jeq, jge, jset
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)
        elif code == 0x06:  # ret k
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_filter_decisions(arch):
    program = seccomp.filter_program(arch)
    spec = seccomp.ARCHES[arch]
    audit, nr = spec["audit_arch"], spec["nr"]
    assert len(program) % 8 == 0 and len(program) // 8 < 4096
    for name in seccomp.DENIED:
        if name in nr:
            assert run_bpf(program, nr[name], audit) == EPERM, name
    for name, n in ORDINARY[arch].items():
        assert run_bpf(program, n, audit) == ALLOW, name
    assert run_bpf(program, nr["clone3"], audit) == ENOSYS
    assert run_bpf(program, nr["clone"], audit, (FORK_FLAGS,)) == ALLOW
    assert run_bpf(program, nr["clone"], audit, (THREAD_FLAGS,)) == ALLOW
    for flag_name, flag in CLONE_NEW.items():
        assert run_bpf(program, nr["clone"], audit, (FORK_FLAGS | flag,)) == EPERM, flag_name
    for family in (1, 2, 10, 16, 17):  # AF_UNIX (host filesystem sockets), AF_INET, AF_INET6, AF_NETLINK, AF_PACKET
        assert run_bpf(program, nr["socket"], audit, (family, 3)) == EPERM, family
    assert run_bpf(program, ORDINARY[arch]["socketpair"], audit, (1, 1)) == ALLOW  # an AF_UNIX pair stays
    # Another ABI's numbers never reach the checks: a foreign arch dies; x32 calls are denied.
    other = seccomp.ARCHES["aarch64" if arch == "x86_64" else "x86_64"]["audit_arch"]
    assert run_bpf(program, ORDINARY[arch]["read"], other) == KILL
    assert run_bpf(program, 0x40000000 | nr["socket"], audit) == (EPERM if spec["x32_bit"] else ALLOW)


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_child_filter_lets_a_job_retune_only_itself(arch):
    program = seccomp.child_filter_program(arch)
    spec = seccomp.ARCHES[arch]
    audit, nr = spec["audit_arch"], spec["nr"]
    for name in seccomp.SELF_ONLY_ARG0:
        assert run_bpf(program, nr[name], audit, (0, 7)) == ALLOW, name
        assert run_bpf(program, nr[name], audit, (1, 7)) == EPERM, name  # pid 1: the zygote
    prio_process, prio_pgrp, prio_user = 0, 1, 2
    assert run_bpf(program, nr["setpriority"], audit, (prio_process, 0, 19)) == ALLOW
    for which, who in ((prio_process, 1), (prio_pgrp, 0), (prio_user, 0)):
        assert run_bpf(program, nr["setpriority"], audit, (which, who, 19)) == EPERM, (which, who)
    ioprio_who_process, ioprio_who_user = 1, 3
    assert run_bpf(program, nr["ioprio_set"], audit, (ioprio_who_process, 0, 0)) == ALLOW
    assert run_bpf(program, nr["ioprio_set"], audit, (ioprio_who_process, 1, 0)) == EPERM
    assert run_bpf(program, nr["ioprio_set"], audit, (ioprio_who_user, 0, 0)) == EPERM
    # kill(-1) would reach every process of the job's uid; a pid, its own group (0) or another
    # group stay allowed (the pid namespace or the dedicated uid bound those)
    for pid in (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF):  # -1 as an int in a 64-bit register, either way
        assert run_bpf(program, nr["kill"], audit, (pid, 9)) == EPERM, hex(pid)
    for pid in (0, 1, 1234, 0xFFFFFFFE, 0xFFFFFB2E):  # 0, pids, -2, -1234 (process groups)
        assert run_bpf(program, nr["kill"], audit, (pid, 9)) == ALLOW, hex(pid)
    for name, n in ORDINARY[arch].items():
        assert run_bpf(program, n, audit, (0, 0)) == ALLOW, name
    other = seccomp.ARCHES["aarch64" if arch == "x86_64" else "x86_64"]["audit_arch"]
    assert run_bpf(program, ORDINARY[arch]["read"], other) == KILL


def test_unknown_arch_has_no_filter(monkeypatch):
    assert seccomp.filter_program("riscv64") is None
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "riscv64")
    assert seccomp.native_arch() is None and seccomp.filter_program() is None
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "arm64")
    assert seccomp.native_arch() == "aarch64"


HEADERS = {
    "x86_64": ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h"),
    "aarch64": ("/usr/include/asm-generic/unistd.h",),
}


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_syscall_numbers_match_kernel_headers(arch):
    header = next((Path(p) for p in HEADERS[arch] if Path(p).is_file()), None)
    if header is None:
        pytest.skip(f"no kernel header for {arch} here (linux-libc-dev)")
    text = header.read_text()
    found = {m[0]: int(m[1]) for m in re.findall(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", text)}
    expected = seccomp.ARCHES[arch]["nr"]
    assert {k: found.get(k) for k in expected} == expected
    absent = [n for n in seccomp.DENIED if n not in expected]
    assert all(n not in found for n in absent), f"{arch} has {absent}: add their numbers"


def test_sandbox_reports_and_warns_when_the_filter_cannot_be_installed(monkeypatch, caplog):
    # One instruction with an invalid opcode: the kernel rejects the program (EINVAL).
    monkeypatch.setattr(isolation.seccomp_filter, "filter_program", lambda: struct.pack("<HBBI", 0xFFFF, 0, 0, 0))
    isolation._WARNED.discard("none")
    with caplog.at_level(logging.WARNING, logger="azr_jax.sandbox"):
        with Sandbox(SandboxSection(isolation="none", workers=1)) as sb:
            report = sb.isolation_report()
            (r,) = sb.run([Job("def f(x):\n    return x + 1\n", ["1"])])
    assert r.outputs == ["2"], r
    assert report["layers"]["seccomp"] is False and "seccomp" in report["missing"]
    warnings = [m for m in caplog.messages if "missing layers" in m]
    assert len(warnings) == 1 and "seccomp unavailable" in warnings[0] and "PR_SET_SECCOMP" in warnings[0], warnings


def test_sandbox_without_a_filter_for_this_arch(monkeypatch):
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "riscv64")
    with Sandbox(SandboxSection(isolation="none", workers=1)) as sb:
        report = sb.isolation_report()
    assert report["layers"]["seccomp"] is False and "seccomp" in report["missing"]


def test_seccomp_can_be_switched_off():
    with Sandbox(SandboxSection(isolation="none", workers=1, seccomp=False)) as sb:
        report = sb.isolation_report()
        (r,) = sb.run([Job("import socket\ndef f(x):\n    socket.socket().close()\n    return 1\n", ["0"])])
    assert report["layers"]["seccomp"] == "off (sandbox.seccomp=false)" and "seccomp" not in report["missing"]
    assert r.outputs == ["1"], r


def test_filter_is_on_by_default_where_defined():
    with Sandbox(SandboxSection(isolation="none", workers=1)) as sb:
        report = sb.isolation_report()
        (r,) = sb.run([Job("import socket\ndef f(x):\n    socket.socket().close()\n    return 1\n", ["0"])])
    if seccomp.native_arch() is None:
        pytest.skip("no seccomp filter is defined for this architecture")
    assert report["layers"]["seccomp"] is True and report["layers"]["no_new_privs"] is True
    assert r.outputs == [None] and "PermissionError" in r.errors[0], r


def _defines(path: str) -> dict[str, int]:
    p = Path(path)
    if not p.is_file():
        pytest.skip(f"{path} is not installed here (linux-libc-dev)")
    return {m[0]: int(m[1], 0) for m in re.findall(r"#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)", p.read_text())}


def test_constants_match_kernel_headers():
    em = _defines("/usr/include/linux/elf-em.h")
    audit = _defines("/usr/include/linux/audit.h")
    flags = audit["__AUDIT_ARCH_64BIT"] | audit["__AUDIT_ARCH_LE"]
    assert seccomp.ARCHES["x86_64"]["audit_arch"] == em["EM_X86_64"] | flags
    assert seccomp.ARCHES["aarch64"]["audit_arch"] == em["EM_AARCH64"] | flags
    sc = _defines("/usr/include/linux/seccomp.h")
    assert (sc["SECCOMP_RET_KILL_PROCESS"], sc["SECCOMP_RET_ERRNO"], sc["SECCOMP_RET_ALLOW"]) == (KILL, seccomp.RET_ERRNO, ALLOW)
    # The zygote passes these as literals (it may import only the standard library).
    prctl = _defines("/usr/include/linux/prctl.h")
    zygote = (Path(seccomp.__file__).with_name("zygote.py")).read_text()
    assert (prctl["PR_SET_NO_NEW_PRIVS"], prctl["PR_SET_SECCOMP"], sc["SECCOMP_MODE_FILTER"]) == (38, 22, 2)
    assert "libc.prctl(38, 1," in zygote and "libc.prctl(22, 2," in zygote
    sched = _defines("/usr/include/linux/sched.h")
    assert seccomp.CLONE_NEW_FLAGS == sum(sched[f"CLONE_{n}"] for n in CLONE_NEW) == sum(CLONE_NEW.values())
