"""`Sandbox`: a pool of sandboxed zygotes that runs batches of jobs in parallel.

Trust boundary: everything that comes back from a sandbox is untrusted text. The host parses it
with the bounded literal parser, re-renders values itself (canonical `repr`), checks determinism
and compares with `Job.expected`, which never leaves this process.

Scheduling: `workers` jobs run at once. A job still running after `STALL_S` gives its turn to
the next job while it waits out its own deadline in a spare slot (up to `SLOTS_PER_WORKER - 1`
spares per worker), so several non-terminating programs cost about one timeout, not one each.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import queue
import resource
import select
import signal
import struct
import subprocess
import tempfile
import threading
import time

from azr_jax.config import Config, SandboxSection, validate
from azr_jax.errors import UserError
from azr_jax.sandbox import isolation, uids
from azr_jax.sandbox.jobs import MAX_REPEATS, Job, JobResult
from azr_jax.sandbox.literals import NotALiteral, literal_call_text, parse_call_args, parse_literal, texts_equal, values_equal

LOG = logging.getLogger("azr_jax.sandbox")

SLOTS_PER_WORKER = 4
REPEATS_PER_SLOT = MAX_REPEATS  # zygote uids per slot when root: one per repeat
STALL_S = 0.25  # a job running longer than this is presumed slow and stops blocking the queue
MEMORY_POLL_S = 0.025  # how often a running job's processes have their resident memory summed
GRACE_S = 5.0  # how long past its deadline a zygote may take to answer before it is killed
START_TIMEOUT_S = 30.0
MAX_OUTPUT_CHARS = 100_000  # per value text
MAX_FRAME_BYTES = 8 << 20
TMPFS_BYTES = 64 << 20
WARM_REPEATS = 2  # zygotes started ahead of time per slot (one per default repeat)
SANDBOX_RETRIES = 1  # a job whose zygote broke (not the job's fault) runs again on a fresh zygote


class SandboxStartError(RuntimeError):
    pass


class SeccompNotInstalled(SandboxStartError):
    """The zygote started but could not load the syscall filter the plan requires."""


class _Zygote:
    """One sandboxed zygote process and its framed pipe protocol."""

    def __init__(self, plan: isolation.Plan, uid: int | None, repeat: int = 0):
        self.plan = plan
        self.uid = uid
        self.host_scratch = None
        if isolation.private_tmp(plan):
            scratch = "/tmp"
        else:
            self.host_scratch = tempfile.mkdtemp(prefix="azr-sandbox-")
            if uid is not None:
                os.chown(self.host_scratch, uid, uid)
            os.chmod(self.host_scratch, 0o700)
            scratch = self.host_scratch
        argv, config, popen = isolation.zygote_command(plan, uid, scratch, repeat)
        # cwd "/": not the trainer's working directory, which `python -c` puts first on the
        # zygote's sys.path and which a job may be able to write (none mode; see zygote.py).
        self.proc = subprocess.Popen(
            argv + [json.dumps(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, bufsize=0, close_fds=True, cwd="/", **popen,
        )
        hello = self._recv(time.monotonic() + START_TIMEOUT_S)
        if not (isinstance(hello, dict) and hello.get("ready")):
            err = self._stderr_tail()
            self.close()
            raise SandboxStartError(f"sandbox ({plan.mode}) did not start: {err or 'no answer'}")
        if plan.seccomp is not None and hello.get("seccomp") is not True:
            self.close()
            raise SeccompNotInstalled(f"the zygote could not install it: {hello.get('seccomp')}")
        if config.get("kill_all_uid") and hello.get("uid") != uid:
            # Its jobs would run as another user, and its kill(-1) after each job, meant for a
            # uid nobody else uses, would reach that user's processes (as root: every process).
            self.close()
            raise SandboxStartError(f"sandbox ({plan.mode}) did not start: the zygote runs as uid "
                                    f"{hello.get('uid')}, not its dedicated uid {uid}")
        self.info = hello

    def _stderr_tail(self) -> str:
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=5)
            return self.proc.stderr.read()[-2000:].decode("utf-8", "replace").strip()
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return ""

    def _read_exact(self, n: int, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        buf = bytearray()  # appending to bytes copied the whole buffer per chunk: seconds for 48 MB
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not _readable(fd, remaining):
                return None
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _recv(self, deadline: float):
        head = self._read_exact(4, deadline)
        if head is None:
            return None
        n = struct.unpack(">I", head)[0]
        if n > 6 * MAX_FRAME_BYTES + (1 << 20):  # the frame JSON-escaped: up to 6 bytes per byte (\u0001)
            return None
        body = self._read_exact(n, deadline)
        if body is None:
            return None
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None

    def request(self, req: dict, on_stall) -> dict:
        """Send one job and return the zygote's answer.

        When the zygote could not take the job or reports its own failure (fork, pipe, scratch),
        the answer is {"status": "sandbox_error"}; when it dies while the job runs (the program may
        have killed it), {"status": "zygote_died"}. Either way the zygote is closed; one that is
        still silent past the job's deadline (plus a grace period) gives {"status": "timeout"}.
        """
        data = json.dumps(req).encode("utf-8")
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        except (BrokenPipeError, OSError):
            self.close()
            return {"status": "sandbox_error", "detail": "zygote gone before the job was sent"}
        start = time.monotonic()
        deadline = start + req["timeout_s"]
        fd = self.proc.stdout.fileno()
        if not _readable(fd, STALL_S):
            on_stall()
        answer = self._recv(deadline + GRACE_S)
        if isinstance(answer, dict) and answer.get("status") != "sandbox_error":
            if answer.get("recycle"):  # the job left something in the zygote it cannot clean
                self.close()
            return answer
        self.close()
        if isinstance(answer, dict):
            return answer
        if time.monotonic() < deadline:
            return {"status": "zygote_died", "detail": "zygote died during the job"}
        return {"status": "timeout"}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:  # the whole session: bwrap/unshare and, through the pid namespace, everything inside
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        if self.plan.mode == "none" and self.uid is not None:
            _kill_uid(self.plan.python, self.uid)
        if self.host_scratch:
            _remove_tree(self.host_scratch)
            self.host_scratch = None


def _kill_uid(python: str, uid: int) -> None:
    """Kill every process of the dedicated `uid` (isolation none as root, no pid namespace). A job
    that killed its zygote and left processes in sessions of their own escaped both the zygote's
    final kill and the session kill above; run as that uid, kill(-1) reaches them all."""
    code = "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n    pass\n"
    try:
        subprocess.run([python, "-S", "-c", code], user=uid, group=uid, extra_groups=[], env=dict(isolation.CLEAN_ENV),
                       capture_output=True, timeout=30, cwd="/")  # no module of the trainer's cwd (see _Zygote)
    except (OSError, subprocess.SubprocessError) as e:
        LOG.warning("could not kill the processes left by sandbox uid %d: %s", uid, e)


def _readable(fd: int, timeout_s: float) -> bool:
    """Whether `fd` has data (or EOF) within `timeout_s`. poll, not select: select refuses
    descriptors of 1024 and above, which a host with many workers reaches."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout_s) * 1000))


def _remove_tree(path: str) -> None:
    """Best-effort removal of a scratch tree a job may have left in any shape (normally the zygote
    has emptied it): `rm -rf` walks trees of any depth, where shutil.rmtree recurses in Python."""
    try:
        subprocess.run([isolation.tool_path("chmod"), "-R", "u+rwx", path], capture_output=True, timeout=60)
        subprocess.run([isolation.tool_path("rm"), "-rf", "--one-file-system", path], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pass
    if os.path.exists(path):
        LOG.warning("could not remove the sandbox scratch directory %s", path)


class _Permit:
    """A worker turn that is given back once: when the job ends or when it stalls."""

    def __init__(self, sem: threading.Semaphore):
        self._sem = sem
        self._held = True
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._held:
                self._held = False
                self._sem.release()


class _Batch:
    def __init__(self, n: int):
        self.results: list[JobResult | None] = [None] * n
        self._left = n
        self._lock = threading.Lock()
        self.done = threading.Event()
        if n == 0:
            self.done.set()

    def put(self, i: int, result: JobResult) -> None:
        with self._lock:
            self.results[i] = result
            self._left -= 1
            if self._left == 0:
                self.done.set()


def _failed(n: int, error: str, *, timed_out: bool = False, deterministic: bool = True,
            expected: list | None = None, sandbox_fault: bool = False) -> JobResult:
    return JobResult(outputs=[None] * n, errors=[error] * n, deterministic=deterministic,
                     matches=None if expected is None else [False] * n, timed_out=timed_out, error=error,
                     sandbox_fault=sandbox_fault)


def _job_limits(cfg: SandboxSection) -> dict:
    """The rlimits every job's process sets on itself (zygote.py `_limit`)."""
    return {
        "cpu_s": int(cfg.timeout_s) + 1,
        "file_bytes": cfg.max_file_mb << 20,
        "open_files": cfg.max_open_files,
        # the zygote, its pid-1 reaper and the job share the uid inside the namespace
        "processes": cfg.max_processes + 2,
        # RLIMIT_AS of each process, and the cap on the job's processes together
        "memory_bytes": cfg.memory_mb << 20,
    }


# Each job limit, its resource, and the config key's largest value under a hard limit `h`.
_HOST_LIMITS = (
    ("cpu_s", resource.RLIMIT_CPU, "timeout_s", lambda h: h - 1, "RLIMIT_CPU", " s"),
    ("file_bytes", resource.RLIMIT_FSIZE, "max_file_mb", lambda h: h >> 20, "RLIMIT_FSIZE", " bytes"),
    ("open_files", resource.RLIMIT_NOFILE, "max_open_files", lambda h: h, "RLIMIT_NOFILE", ""),
    ("processes", resource.RLIMIT_NPROC, "max_processes", lambda h: h - 2, "RLIMIT_NPROC", ""),
    ("memory_bytes", resource.RLIMIT_AS, "memory_mb", lambda h: h >> 20, "RLIMIT_AS", " bytes"),
)


def _check_host_limits(cfg: SandboxSection) -> None:
    """Refuse a limit above this host's hard limit: the zygotes inherit it, and a sandboxed process
    cannot raise it, so every job's setup failed ("not allowed to raise maximum limit"), reported
    from inside the job and so scored as each program's runtime error."""
    limits = _job_limits(cfg)
    for name, res, key, largest, what, unit in _HOST_LIMITS:
        hard = resource.getrlimit(res)[1]
        if hard != resource.RLIM_INFINITY and limits[name] > hard:
            raise UserError(f"config key 'sandbox.{key}' is {getattr(cfg, key)!r}, over this machine's hard {what} "
                            f"({hard}{unit}), which sandboxed jobs cannot raise; the largest usable value is "
                            f"{largest(hard)}")


class Sandbox:
    """Run untrusted programs in isolated, resource-limited processes (see docs/sandbox.md)."""

    def __init__(self, cfg: SandboxSection | None = None):
        self.cfg = cfg or SandboxSection()
        # The checks of config load, for a section built in Python (or by `bench executor`): an
        # unknown isolation name ran its jobs with no namespaces at all (as `none`, with a warning).
        validate(dataclasses.replace(Config(), sandbox=self.cfg))
        _check_host_limits(self.cfg)
        self.workers = self.cfg.workers or os.cpu_count() or 1
        # A root trainer runs each zygote under its own uid, from a block no other sandbox holds.
        self._uids = None
        if os.geteuid() == 0:
            if self.workers * SLOTS_PER_WORKER * REPEATS_PER_SLOT > uids.BLOCK_SIZE:
                raise UserError(f"sandbox.workers={self.workers} needs more zygote uids than a block holds "
                                f"(at most {uids.BLOCK_SIZE // (SLOTS_PER_WORKER * REPEATS_PER_SLOT)} workers)")
            self._uids = uids.lease_block()
        try:
            self.plan, failures = self._choose_plan()
        except BaseException:
            self._uids.release() if self._uids else None
            raise
        isolation.warn_missing(self.plan, failures)
        self._permits = threading.Semaphore(self.workers)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._zygotes: list[dict[int, _Zygote]] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._start_failures = 0
        for slot in range(self.workers * SLOTS_PER_WORKER):
            self._zygotes.append({})
            t = threading.Thread(target=self._slot_loop, args=(slot,), name=f"azr-sandbox-{slot}", daemon=True)
            t.start()
            self._threads.append(t)

    # -- setup -------------------------------------------------------------------------------

    def _uid(self, slot: int, repeat: int) -> int | None:
        if not self.plan.as_root:
            return None
        if not 0 <= repeat < REPEATS_PER_SLOT:
            raise ValueError(f"repeat {repeat} is outside 0..{REPEATS_PER_SLOT - 1}")
        return self._uids.uid(slot * REPEATS_PER_SLOT + repeat)

    def _choose_plan(self) -> tuple[isolation.Plan, dict[str, str]]:
        failures: dict[str, str] = {}
        for mode in isolation.candidate_modes(self.cfg.isolation):
            plan = isolation.make_plan(mode, TMPFS_BYTES, self.cfg.seccomp)
            if self.cfg.seccomp and plan.seccomp is None:
                failures["seccomp"] = f"no filter is defined for the {platform.machine()} architecture"
            plan = self._probe(plan, failures)
            if plan is not None:
                return plan, failures
        raise UserError(f"sandbox isolation '{self.cfg.isolation}' is not available here: {failures}")

    def _probe(self, plan: isolation.Plan, failures: dict[str, str]) -> isolation.Plan | None:
        """`plan` if a zygote starts under it; without the filter if only that failed; else None."""
        for attempt in (plan, isolation.without_seccomp(plan)):
            self.plan = attempt
            try:
                _Zygote(attempt, self._uid(0, REPEATS_PER_SLOT - 1)).close()
                return attempt
            except SeccompNotInstalled as e:
                failures["seccomp"] = str(e)[:300]
            except (SandboxStartError, OSError) as e:
                # A zygote's traceback: its first line says what failed to start, its last why.
                lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
                failures[plan.mode] = (lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1].strip()}")[:300]
                return None
        return None

    def isolation_report(self) -> dict:
        """Which isolation layers are active for this sandbox."""
        return {
            "mode": self.plan.mode,
            "requested": self.cfg.isolation,
            "python": self.plan.python,
            "as_root": self.plan.as_root,
            "workers": self.workers,
            "layers": dict(self.plan.layers),
            "missing": self.plan.missing(),
            "limits": {
                "timeout_s": self.cfg.timeout_s, "memory_mb": self.cfg.memory_mb,
                "max_file_mb": self.cfg.max_file_mb, "max_open_files": self.cfg.max_open_files,
                "max_processes": self.cfg.max_processes,
                "scratch_tmpfs_mb": self.plan.tmpfs_bytes >> 20 if self.plan.tmpfs_bytes else None,
            },
        }

    # -- public API --------------------------------------------------------------------------

    def run(self, jobs: list[Job]) -> list[JobResult]:
        """Run every job (in parallel, isolated); results in the order of `jobs`."""
        if self._closed:
            raise RuntimeError("Sandbox is closed")
        batch = _Batch(len(jobs))
        for i, job in enumerate(jobs):
            self._queue.put((batch, i, job))
        batch.done.wait()
        return list(batch.results)

    def compare(self, pairs: list[tuple[str, str]]) -> list[bool]:
        """Structural equality of value texts (a text that is not a plain literal is never equal)."""
        return [texts_equal(a, b) for a, b in pairs]

    def _start_failed(self, e: Exception) -> None:
        """Say why a sandbox could not start, once per sandbox (every slot would say the same);
        the jobs it fails are scored `sandbox_error` without their cause."""
        with self._lock:
            first, self._start_failures = self._start_failures == 0, self._start_failures + 1
        (LOG.warning if first else LOG.debug)("a sandbox failed to start (%s: %s); its jobs count as sandbox errors",
                                             type(e).__name__, str(e)[:500])

    def close(self, cancel: bool = False) -> None:
        """Stop the workers and their zygotes. `cancel`: jobs still queued are not run; their
        `run()` callers get sandbox-fault results at once (a stop that does not wait)."""
        if self._closed:
            return
        self._closed = True
        if cancel:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    batch, i, job = item
                    batch.put(i, _failed(len(job.calls), "sandbox closed before the job ran", expected=job.expected,
                                         sandbox_fault=True))
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=30)
        with self._lock:
            for zs in self._zygotes:
                # A snapshot: a worker that outlived the join may still be swapping a zygote in.
                for z in list(zs.values()):
                    try:
                        z.close()
                    except Exception as e:  # noqa: BLE001 - close every other zygote regardless
                        LOG.warning("closing a sandbox zygote failed: %s: %s", type(e).__name__, e)
                zs.clear()
        if self._uids is not None:  # only once no zygote of ours runs under its uids
            self._uids.release()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # Leaving on an error or Ctrl-C: the queued jobs are not run (they took a minute to drain).
        self.close(cancel=exc_type is not None)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- workers -----------------------------------------------------------------------------

    def _slot_loop(self, slot: int) -> None:
        # Start this slot's zygotes now, in the background, so no job waits for a sandbox start.
        for repeat in range(WARM_REPEATS):
            try:
                self._zygote(slot, repeat)
            except Exception as e:  # noqa: BLE001 - a dead slot thread would leave run() waiting
                # The first job that needs it tries again, and says so if that fails too (a warm
                # start can also lose a race with close()).
                LOG.debug("warm start of sandbox slot %d failed: %s: %s", slot, type(e).__name__, e)
                break
        while True:
            self._permits.acquire()
            item = self._queue.get()
            permit = _Permit(self._permits)
            if item is None:
                permit.release()
                return
            batch, i, job = item
            try:
                result = self._execute(slot, job, permit)
            except Exception as e:  # noqa: BLE001 - one broken job must not hang the batch
                result = _failed(len(job.calls), f"sandbox failure: {type(e).__name__}: {e}", expected=job.expected,
                                 sandbox_fault=True)
            finally:
                permit.release()
            batch.put(i, result)

    def _zygote(self, slot: int, repeat: int) -> _Zygote:
        zs = self._zygotes[slot]
        z = zs.get(repeat)
        if z is None or not z.alive():
            if z is not None:
                zs.pop(repeat, None)  # whatever close() does, a dead zygote is never handed out again
                z.close()
            if self._closed:  # no new zygote once close() has begun: nothing would close it
                raise RuntimeError("the sandbox is closed")
            z = _Zygote(self.plan, self._uid(slot, repeat), repeat)
            zs[repeat] = z
            if self._closed:  # close() ran while it started
                zs.pop(repeat, None)
                z.close()
                raise RuntimeError("the sandbox is closed")
        return z

    def _request(self, job: Job, sent_calls: list[str | None]) -> dict:
        cfg = self.cfg
        return {
            "program": job.program,
            "calls": sent_calls,
            "literal_args": job.args_mode == "literal",
            "calls_per_input": job.calls_per_input,
            "timeout_s": float(cfg.timeout_s),
            "stall_s": STALL_S,
            "max_output_chars": MAX_OUTPUT_CHARS,
            "max_frame_bytes": MAX_FRAME_BYTES,
            "memory_poll_s": MEMORY_POLL_S,
            "limits": _job_limits(cfg),
        }

    def _execute(self, slot: int, job: Job, permit: _Permit) -> JobResult:
        n = len(job.calls)
        # Host-side argument checks: one call per text, literals only in literal mode.
        sent: list[str | None] = []
        arg_errors: list[str | None] = []
        for call in job.calls:
            try:
                if job.args_mode == "literal":
                    sent.append(literal_call_text(call))
                else:
                    parse_call_args(call)
                    sent.append(call)
                arg_errors.append(None)
            except NotALiteral as e:
                sent.append(None)
                arg_errors.append(f"bad_args: {e}")
        req = self._request(job, sent)
        per_call: list[list[tuple]] = [[] for _ in range(n)]  # outcomes of every run
        for r in range(job.repeats):
            for attempt in range(1 + SANDBOX_RETRIES):
                try:
                    z = self._zygote(slot, r)
                except (SandboxStartError, OSError) as e:
                    self._start_failed(e)
                    return _failed(n, f"sandbox failed to start: {e}", expected=job.expected, sandbox_fault=True)
                answer = z.request(req, permit.release)
                if answer.get("status") not in ("sandbox_error", "zygote_died"):
                    break
                LOG.warning("sandbox zygote broke (%s); %s", answer.get("detail"),
                            "running the job again on a fresh one" if attempt < SANDBOX_RETRIES else "giving up")
            if answer.get("status") == "sandbox_error":  # reported by the zygote or the host, not the program
                return _failed(n, f"sandbox failure: {answer.get('detail')}", expected=job.expected,
                               sandbox_fault=True)
            try:
                outcome = _parse_answer(answer, n)
            except Exception as e:  # noqa: BLE001 - a frame our parser chokes on is the program's output
                outcome = f"unrepresentable: {type(e).__name__}"[:300]
            if isinstance(outcome, str):
                timed = outcome == "timeout"
                return _failed(n, outcome, timed_out=timed, expected=job.expected)
            for i, o in enumerate(outcome):
                per_call[i].append(o)
            if all(o[0] != "ok" for o in outcome):
                break  # nothing to check for determinism
        return _combine(per_call, arg_errors, job.expected)


def _parse_answer(answer: dict, n: int) -> list[tuple] | str:
    """Per-call outcomes ("ok", value, canonical) / ("err", message, nondeterministic?) or a job error."""
    status = answer.get("status")
    if status == "timeout":
        return "timeout"
    if status == "zygote_died":
        # Twice in a row while this job ran: its program is the likely killer (any process in the
        # sandbox may signal the zygote), so it counts against the program.
        return "the sandbox's zygote died during the job"
    if status == "too_large":
        return "output too large"
    if status == "memory":
        return "memory"
    if status == "scratch":  # the zygote was replaced; the program's doing, not the sandbox's
        return f"left its scratch directory in a state the sandbox cannot reset ({answer.get('detail')})"
    try:
        frame = parse_result_frame(answer.get("frame") or "")
    except NotALiteral:
        frame = None
    if frame is None:
        sig = answer.get("signal")
        if sig:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            if sig == signal.SIGKILL:
                return f"killed by {name}"
            if sig == signal.SIGXCPU:
                return "timeout"
            return f"killed by {name}"
        return f"exited before reporting (exit status {answer.get('exit')})"
    if frame[0] == "error":
        if frame[1] == "timeout":  # the host's own verdict; no error the job describes reads so
            return "forged timeout report"
        return frame[1]  # "memory" exactly when the job's MemoryError was described as such
    calls = frame[1]
    if len(calls) != n:
        return "malformed result frame"
    out = []
    for c in calls:
        if c[0] == "skip":
            out.append(("skip",))
        elif c[0] == "err":
            out.append(("err", "nondeterministic" if c[2] == 1 else c[1], c[2] == 1))
        else:
            try:  # the job's own output texts are at most MAX_OUTPUT_CHARS; a longer one was forged
                v1, v2 = (parse_literal(t, max_chars=MAX_OUTPUT_CHARS) for t in (c[1], c[2]))
            except NotALiteral:
                out.append(("err", "unrepresentable: forged output text", False))
                continue
            try:
                canonical = repr(v1)
            except ValueError:  # e.g. an int with more digits than Python prints
                out.append(("err", "unrepresentable: output too large to print", False))
                continue
            if values_equal(v1, v2):
                out.append(("ok", v1, canonical))
            else:
                out.append(("err", "nondeterministic", True))
    return out


def parse_result_frame(text: str):
    """Validate the child's result frame, JSON ["done", [[kind, ...], ...]] or ["error", message],
    as tuples. Decoding JSON is linear and in C: a forged 8 MB frame parsed as a Python literal
    held the GIL (every trainer thread) for ~40 s and took ~4 GB."""
    if len(text) > MAX_FRAME_BYTES:
        raise NotALiteral("result frame too large")
    try:
        frame = _tuples(json.loads(text))
    except (ValueError, RecursionError, TypeError):
        raise NotALiteral("result frame is not JSON") from None
    ok = isinstance(frame, tuple) and len(frame) == 2
    if ok and frame[0] == "error":
        ok = isinstance(frame[1], str)
    elif ok and frame[0] == "done":
        ok = isinstance(frame[1], tuple) and all(_valid_call(c) for c in frame[1])
    else:
        ok = False
    if not ok:
        raise NotALiteral("malformed result frame")
    return frame


def _tuples(value):
    """The frame's JSON arrays as tuples, two levels deep (its shape); deeper ones fail the check."""
    if type(value) is not list:
        return value
    if len(value) == 2 and value[0] == "done" and type(value[1]) is list:
        return ("done", tuple(tuple(c) if type(c) is list else c for c in value[1]))
    return tuple(value)


def _valid_call(c) -> bool:
    if not isinstance(c, tuple) or not c:
        return False
    if c[0] == "skip":
        return len(c) == 1
    if c[0] == "ok":
        return len(c) == 3 and all(type(t) is str for t in c[1:])
    if c[0] == "err":
        return len(c) == 3 and type(c[1]) is str and c[2] in (0, 1)
    return False


def _combine(per_call: list[list[tuple]], arg_errors: list[str | None], expected: list[str] | None) -> JobResult:
    n = len(per_call)
    outputs: list[str | None] = [None] * n
    errors: list[str | None] = [None] * n
    deterministic = True
    for i, runs in enumerate(per_call):
        if arg_errors[i] is not None:
            errors[i] = arg_errors[i]
            continue
        if len(runs) != len(per_call[0]) or not runs:
            errors[i] = "frame does not match the calls"
            continue
        first = runs[0]
        if any(r[0] == "err" and r[2] for r in runs):
            deterministic = False
            errors[i] = "nondeterministic"
        elif all(r[0] == "ok" for r in runs):
            if all(values_equal(first[1], r[1]) for r in runs[1:]):
                outputs[i] = first[2]
            else:
                deterministic = False
                errors[i] = "nondeterministic"
        elif all(r[0] == "err" for r in runs):
            errors[i] = first[1]
        else:
            deterministic = False
            errors[i] = "nondeterministic"
    matches = None
    if expected is not None:
        matches = [out is not None and texts_equal(out, exp) for out, exp in zip(outputs, expected)]
    return JobResult(outputs=outputs, errors=errors, deterministic=deterministic, matches=matches, timed_out=False)
