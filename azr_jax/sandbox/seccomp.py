"""The sandbox's seccomp filter: a classic-BPF program that denies the syscalls model code never needs.

Built here (trusted, host side) as bytes; the zygote installs it on itself with
prctl(PR_SET_SECCOMP) before it answers "ready", so the zygote and every job it forks run under it
in every isolation mode. A deny list, not an allow list: the programs are small pure functions
using the standard library, and a deny list cannot break an interpreter or libc upgrade that
starts using a new ordinary syscall. What it denies is the kernel attack surface and the
process-escape routes that the namespaces, rlimits and dropped uid do not already close:

- tracing or reading other processes: ptrace, process_vm_readv/writev, pidfd_getfd, kcmp;
- changing the filesystem view or namespaces: mount and the new mount API, umount2,
  pivot_root, chroot, unshare, setns, and clone with any CLONE_NEW* flag;
- subsystems that are frequent exploit targets and useless here: bpf, perf_event_open,
  userfaultfd, io_uring, the kernel keyring, open_by_handle_at / name_to_handle_at;
- machine administration: modules, kexec, reboot, swap, accounting, quotas, the kernel log,
  the clock, host and domain names, I/O port access, vhangup, personality, fanotify;
- `socket` of any family (the network namespace already has no route out; this also closes
  the loopback and raw sockets inside it, and AF_UNIX sockets, which reach the host's
  filesystem sockets where the job sees the host's filesystem: unshare and none mode);
  `socketpair` stays allowed;
- memory that outlives a job or escapes its memory poll: System V shared memory, message queues
  and semaphores, POSIX message queues, and memfd files (their pages are in no process's RSS,
  and an IPC object stays in the zygote's IPC namespace for the next job: a channel between jobs).

Denied calls fail with EPERM, so a program sees an ordinary OSError. clone3 fails with ENOSYS
instead: its flags sit in a struct a filter cannot read, and ENOSYS makes libc fall back to
clone, whose flags it can. A syscall from another ABI (x32 numbers on x86_64, or a foreign
architecture such as i386 via int 0x80) kills the process, so the numbers checked are the
numbers that run.
"""

from __future__ import annotations

import errno
import platform
import struct

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16  # args[0]'s low 32 bits (little-endian machines)

# Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

X32_SYSCALL_BIT = 0x40000000
CLONE_NEW_FLAGS = (
    0x00000080  # CLONE_NEWTIME
    | 0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)

DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "unshare", "setns",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key", "open_by_handle_at",
    "name_to_handle_at",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "settimeofday",
    "clock_settime", "adjtimex", "clock_adjtime", "sethostname", "setdomainname", "iopl",
    "ioperm", "vhangup", "personality", "fanotify_init", "lookup_dcookie",
    "shmget", "shmat", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop",
    "semtimedop", "semctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
    "mq_getsetattr", "memfd_create", "memfd_secret", "socket",
)

# Allowed in a job's process only on itself: pid (args[0]) 0 ...
SELF_ONLY_ARG0 = ("prlimit64", "sched_setparam", "sched_setscheduler", "sched_setaffinity", "sched_setattr")
# ... or (which, who) = (the process kind, 0) in args[0] and args[1].
SELF_ONLY_WHICH_WHO = ("setpriority", "ioprio_set")

# Syscall numbers per architecture (x86_64: asm/unistd_64.h; aarch64: asm-generic/unistd.h,
# which has no iopl/ioperm). tests/sandbox/test_seccomp.py checks them against the kernel
# headers where those are installed.
ARCHES = {
    "x86_64": {
        "audit_arch": 0xC000003E,
        "x32_bit": True,
        "nr": {
            "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438,
            "kcmp": 312, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
            "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
            "fspick": 433, "mount_setattr": 442, "unshare": 272, "setns": 308, "bpf": 321,
            "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425,
            "io_uring_enter": 426, "io_uring_register": 427, "keyctl": 250, "add_key": 248,
            "request_key": 249, "open_by_handle_at": 304, "name_to_handle_at": 303,
            "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
            "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163,
            "quotactl": 179, "quotactl_fd": 443, "syslog": 103, "settimeofday": 164,
            "clock_settime": 227, "adjtimex": 159, "clock_adjtime": 305, "sethostname": 170,
            "setdomainname": 171, "iopl": 172, "ioperm": 173, "vhangup": 153, "personality": 135,
            "fanotify_init": 300, "lookup_dcookie": 212,
            "shmget": 29, "shmat": 30, "shmctl": 31, "msgget": 68, "msgsnd": 69, "msgrcv": 70,
            "msgctl": 71, "semget": 64, "semop": 65, "semtimedop": 220, "semctl": 66, "mq_open": 240,
            "mq_unlink": 241, "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244,
            "mq_getsetattr": 245, "memfd_create": 319, "memfd_secret": 447,
            "clone": 56, "clone3": 435, "socket": 41,
            "prlimit64": 302, "setpriority": 141, "sched_setparam": 142, "sched_setscheduler": 144,
            "sched_setaffinity": 203, "sched_setattr": 314, "ioprio_set": 251, "kill": 62,
        },
    },
    "aarch64": {
        "audit_arch": 0xC00000B7,
        "x32_bit": False,
        "nr": {
            "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_getfd": 438,
            "kcmp": 272, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
            "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
            "fspick": 433, "mount_setattr": 442, "unshare": 97, "setns": 268, "bpf": 280,
            "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425,
            "io_uring_enter": 426, "io_uring_register": 427, "keyctl": 219, "add_key": 217,
            "request_key": 218, "open_by_handle_at": 265, "name_to_handle_at": 264,
            "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
            "delete_module": 106, "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89,
            "quotactl": 60, "quotactl_fd": 443, "syslog": 116, "settimeofday": 170,
            "clock_settime": 112, "adjtimex": 171, "clock_adjtime": 266, "sethostname": 161,
            "setdomainname": 162, "vhangup": 58, "personality": 92, "fanotify_init": 262,
            "lookup_dcookie": 18,
            "shmget": 194, "shmat": 196, "shmctl": 195, "msgget": 186, "msgsnd": 189, "msgrcv": 188,
            "msgctl": 187, "semget": 190, "semop": 193, "semtimedop": 192, "semctl": 191, "mq_open": 180,
            "mq_unlink": 181, "mq_timedsend": 182, "mq_timedreceive": 183, "mq_notify": 184,
            "mq_getsetattr": 185, "memfd_create": 279, "memfd_secret": 447,
            "clone": 220, "clone3": 435, "socket": 198,
            "prlimit64": 261, "setpriority": 140, "sched_setparam": 118, "sched_setscheduler": 119,
            "sched_setaffinity": 122, "sched_setattr": 274, "ioprio_set": 30, "kill": 129,
        },
    },
}
ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def native_arch() -> str | None:
    """The key into ARCHES for this machine, or None where no filter is defined."""
    m = platform.machine().lower()
    m = ARCH_ALIASES.get(m, m)
    return m if m in ARCHES else None


def filter_program(arch: str | None = None) -> bytes | None:
    """The filter as packed `struct sock_filter` entries, or None for an unsupported arch."""
    arch = native_arch() if arch is None else ARCH_ALIASES.get(arch, arch)
    if arch not in ARCHES:
        return None
    spec = ARCHES[arch]
    nr = spec["nr"]
    denied = [nr[name] for name in DENIED if name in nr]
    # Layout (every jump goes forward; "->X" is resolved once the label's index is known):
    #   load arch; != native -> KILL
    #   load nr; [x32 bit set -> EPERM]; each denied nr -> EPERM
    #   clone3 -> ENOSYS; clone -> CLONE; ALLOW
    #   CLONE:  load args[0]; any CLONE_NEW* bit -> EPERM else ALLOW2
    #   ALLOW2, EPERM, ENOSYS, KILL
    body: list[tuple] = [
        ("insn", _LD_W_ABS, _OFF_ARCH, None, None),
        ("insn", _JEQ_K, spec["audit_arch"], None, "KILL"),
        ("insn", _LD_W_ABS, _OFF_NR, None, None),
    ]
    if spec["x32_bit"]:
        body.append(("insn", _JGE_K, X32_SYSCALL_BIT, "EPERM", None))
    body += [("insn", _JEQ_K, n, "EPERM", None) for n in denied]
    body += [
        ("insn", _JEQ_K, nr["clone3"], "ENOSYS", None),
        ("insn", _JEQ_K, nr["clone"], "CLONE", None),
        ("insn", _RET_K, RET_ALLOW, None, None),
        ("label", "CLONE"),
        ("insn", _LD_W_ABS, _OFF_ARG0, None, None),
        ("insn", _JSET_K, CLONE_NEW_FLAGS, "EPERM", "ALLOW2"),
        ("label", "ALLOW2"),
        ("insn", _RET_K, RET_ALLOW, None, None),
        ("label", "EPERM"),
        ("insn", _RET_K, RET_ERRNO | errno.EPERM, None, None),
        ("label", "ENOSYS"),
        ("insn", _RET_K, RET_ERRNO | errno.ENOSYS, None, None),
        ("label", "KILL"),
        ("insn", _RET_K, RET_KILL_PROCESS, None, None),
    ]
    return _assemble(body)


def child_filter_program(arch: str | None = None) -> bytes | None:
    """A second filter each job's process adds on top of the zygote's: calls that change another
    process's resource limits, priority or scheduling only on itself (pid / who 0), and no
    `kill(-1)`.

    The job shares its uid with the zygote (and is in its pid namespace), so without this a job
    could lower the zygote's limits or priority, and every later job forked from it would
    inherit them: `prlimit(1, RLIMIT_NOFILE, (3, 3))` failed all later jobs on that zygote.
    `kill(-1)` signals every process the job may signal: in none mode with an unprivileged
    trainer, every process of the trainer's user, the trainer included. The zygote itself keeps
    these calls (it renices a stalled job's process group, and kills a job with `kill(-1)`)."""
    arch = native_arch() if arch is None else ARCH_ALIASES.get(arch, arch)
    if arch not in ARCHES:
        return None
    spec = ARCHES[arch]
    nr = spec["nr"]
    body: list[tuple] = [
        ("insn", _LD_W_ABS, _OFF_ARCH, None, None),
        ("insn", _JEQ_K, spec["audit_arch"], None, "KILL"),
        ("insn", _LD_W_ABS, _OFF_NR, None, None),
    ]
    body += [("insn", _JEQ_K, nr[name], "ARG0_SELF", None) for name in SELF_ONLY_ARG0]
    body += [("insn", _JEQ_K, nr[name], "WHICH_SELF", None) for name in SELF_ONLY_WHICH_WHO]
    body += [
        ("insn", _JEQ_K, nr["kill"], "NOT_EVERY", None),
        ("insn", _RET_K, RET_ALLOW, None, None),
        ("label", "NOT_EVERY"),  # kill(pid, sig) with pid -1 (pid_t: args[0]'s low 32 bits)
        ("insn", _LD_W_ABS, _OFF_ARG0, None, None),
        ("insn", _JEQ_K, 0xFFFFFFFF, "EPERM", "ALLOW2"),
        ("label", "WHICH_SELF"),  # setpriority(PRIO_PROCESS=0, 0, ...), ioprio_set(IOPRIO_WHO_PROCESS=1, 0, ...)
        ("insn", _LD_W_ABS, _OFF_NR, None, None),
        ("insn", _JEQ_K, nr["ioprio_set"], "IOPRIO", None),
        ("insn", _LD_W_ABS, _OFF_ARG0, None, None),
        ("insn", _JEQ_K, 0, "ARG1_SELF", "EPERM"),
        ("label", "IOPRIO"),
        ("insn", _LD_W_ABS, _OFF_ARG0, None, None),
        ("insn", _JEQ_K, 1, "ARG1_SELF", "EPERM"),
        ("label", "ARG1_SELF"),
        ("insn", _LD_W_ABS, _OFF_ARG0 + 8, None, None),
        ("insn", _JEQ_K, 0, "ALLOW2", "EPERM"),
        ("label", "ARG0_SELF"),
        ("insn", _LD_W_ABS, _OFF_ARG0, None, None),
        ("insn", _JEQ_K, 0, "ALLOW2", "EPERM"),
        ("label", "ALLOW2"),
        ("insn", _RET_K, RET_ALLOW, None, None),
        ("label", "EPERM"),
        ("insn", _RET_K, RET_ERRNO | errno.EPERM, None, None),
        ("label", "KILL"),
        ("insn", _RET_K, RET_KILL_PROCESS, None, None),
    ]
    return _assemble(body)


def _assemble(body: list[tuple]) -> bytes:
    """Pack ("insn", code, k, jt_label, jf_label) / ("label", name) items into sock_filter bytes."""
    labels, index = {}, 0
    for item in body:
        if item[0] == "label":
            labels[item[1]] = index
        else:
            index += 1
    out, index = [], 0
    for item in body:
        if item[0] == "label":
            continue
        _, code, k, jt, jf = item

        def offset(target, here=index):
            if target is None:
                return 0
            delta = labels[target] - here - 1
            if not 0 <= delta < 256:  # classic BPF jumps are forward, 8 bits (not an assert: python -O)
                raise ValueError(f"seccomp filter jump to {target!r} out of range: {delta}")
            return delta

        out.append(struct.pack("<HBBI", code, offset(jt), offset(jf), k))
        index += 1
    return b"".join(out)
