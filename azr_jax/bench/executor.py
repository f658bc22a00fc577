"""`azr-jax bench executor`: sandboxed validations per second, and the cost of hanging programs.

A validation = one proposal run the way the trainer validates it: `repeats` fresh processes
(different hash seeds), each calling `f` twice, outputs compared structurally. Measured on the
corpus in `executor_programs.py` with the configured isolation, then (baseline, same run) with
isolation `none` (plain processes with rlimits) and with the same isolation but no seccomp
filter (`sandbox.seccomp=false`). Second figure: the wall time of a batch in which
`--hang-fraction` of the programs never terminate, in units of the timeout.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from azr_jax.bench.common import check_set_keys, fraction, positive_float, positive_int
from azr_jax.config import load_config
from azr_jax.sandbox import Job, Sandbox
from azr_jax.bench.executor_programs import NEVER_ENDS, PROGRAMS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="config file (its `sandbox` section is used)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. sandbox.workers=4 (repeatable)")
    parser.add_argument("--jobs", type=positive_int, default=400, help="validations per timed batch")
    parser.add_argument("--hang-jobs", type=positive_int, default=100, help="size of the batch with non-terminating programs")
    parser.add_argument("--hang-fraction", type=fraction, default=0.05, help="share of programs that never terminate")
    parser.add_argument("--hang-timeout-s", type=positive_float, default=2.0, help="sandbox.timeout_s for the hanging batch")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baselines (isolation=none; seccomp off)")


def _corpus_jobs(n: int) -> list[Job]:
    return [Job(p, list(calls)) for p, calls in (PROGRAMS[i % len(PROGRAMS)] for i in range(n))]


def _validations_per_s(cfg, n: int) -> tuple[float, dict, int]:
    with Sandbox(cfg) as sb:
        report = sb.isolation_report()
        sb.run(_corpus_jobs(4 * sb.workers * 4))  # warm-up: start every slot's zygotes
        jobs = _corpus_jobs(n)
        t0 = time.perf_counter()
        results = sb.run(jobs)
        wall = time.perf_counter() - t0
    valid = sum(r.ok for r in results)
    return n / wall, report, valid


def run(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config, args.set).sandbox
    check_set_keys(args, ("sandbox",))
    print(f"[bench executor] {args.jobs} validations, isolation={cfg.isolation} ...", file=sys.stderr)
    rate, report, valid = _validations_per_s(cfg, args.jobs)
    result = {
        "bench": "executor",
        "device": "cpu",
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "isolation": report,
        "jobs": args.jobs,
        "repeats_per_job": 2,
        "valid_jobs": valid,
        "validations_per_s": round(rate, 1),
    }
    if not args.no_baseline:
        print("[bench executor] baseline isolation=none ...", file=sys.stderr)
        base_cfg = type(cfg)(**{**cfg.__dict__, "isolation": "none"})
        base_rate, _, _ = _validations_per_s(base_cfg, args.jobs)
        result.update({
            "baseline": "isolation=none (plain processes with rlimits, same zygote pool)",
            "baseline_validations_per_s": round(base_rate, 1),
            "ratio": round(rate / base_rate, 3),
        })
        if cfg.seccomp:  # what the syscall filter costs: same isolation, filter off
            print(f"[bench executor] baseline isolation={cfg.isolation}, seccomp off ...", file=sys.stderr)
            off_rate, _, _ = _validations_per_s(type(cfg)(**{**cfg.__dict__, "seccomp": False}), args.jobs)
            result.update({
                "seccomp_off_validations_per_s": round(off_rate, 1),
                "seccomp_ratio": round(rate / off_rate, 3),
            })
    n_hang = max(1, round(args.hang_jobs * args.hang_fraction))
    jobs = _corpus_jobs(args.hang_jobs)
    stride = args.hang_jobs // n_hang
    for k in range(n_hang):
        jobs[k * stride] = Job(NEVER_ENDS[0], list(NEVER_ENDS[1]))
    hang_cfg = type(cfg)(**{**cfg.__dict__, "timeout_s": args.hang_timeout_s})
    print(f"[bench executor] {args.hang_jobs} jobs, {n_hang} never terminate, timeout {args.hang_timeout_s}s ...", file=sys.stderr)
    with Sandbox(hang_cfg) as sb:
        sb.run(_corpus_jobs(4 * sb.workers * 4))
        t0 = time.perf_counter()
        sb.run(_corpus_jobs(args.hang_jobs))  # the same batch without the hanging programs
        wall_clean = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = sb.run(jobs)
        wall = time.perf_counter() - t0
    result["hang_batch"] = {
        "jobs": args.hang_jobs,
        "never_terminate": n_hang,
        "timed_out": sum(r.timed_out for r in results),
        "timeout_s": args.hang_timeout_s,
        "wall_s": round(wall, 3),
        "wall_in_timeouts": round(wall / args.hang_timeout_s, 2),
        "wall_without_hangs_s": round(wall_clean, 3),
        "extra_wall_in_timeouts": round((wall - wall_clean) / args.hang_timeout_s, 2),
        "serial_would_be_s": round(n_hang * args.hang_timeout_s, 1),
    }
    return result
