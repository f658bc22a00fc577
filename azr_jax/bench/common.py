"""Helpers shared by the benchmarks: device description, timing, peak numbers."""

from __future__ import annotations

import argparse
import platform
import time
from typing import Callable

# bf16 dense peak FLOP/s and HBM bandwidth (bytes/s) per chip (ANCHORS.md §11; vendor datasheets).
PEAKS = {
    "h100": (989e12, 3.35e12),
    "h200": (989e12, 4.8e12),
    "tpu v4": (275e12, 1.2e12),
    "tpu v5 lite": (197e12, 0.819e12),  # v5e reports itself as "TPU v5 lite"
    "tpu v5e": (197e12, 0.819e12),
    "tpu v5p": (459e12, 2.765e12),
    "tpu v5": (459e12, 2.765e12),
    "tpu v6 lite": (918e12, 1.638e12),  # v6e
    "tpu v6e": (918e12, 1.638e12),
}


def positive_int(text: str) -> int:
    """argparse type of the bench sizes and counts (0 or less would fail deep inside a run)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expects a positive integer, got {value}")
    return value


def fraction(text: str) -> float:
    """argparse type of a share in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expects a number in (0, 1], got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type of a duration."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expects a positive number, got {value}")
    return value


def device_info() -> dict:
    """What the benchmark ran on, for the JSON record."""
    import jax

    d = jax.devices()[0]
    return {
        "device": d.platform,
        "device_kind": getattr(d, "device_kind", d.platform),
        "device_count": jax.device_count(),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "jax_version": jax.__version__,
    }


def peak_numbers(device_kind: str) -> tuple[float | None, float | None]:
    """(peak bf16 FLOP/s, HBM bytes/s) for a known accelerator, else (None, None) (e.g. CPU)."""
    kind = device_kind.lower()
    for key in sorted(PEAKS, key=len, reverse=True):
        if key in kind:
            return PEAKS[key]
    return None, None


def time_it(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 3) -> float:
    """Median wall time of `fn()` in seconds after `warmup` calls; fn must block until done."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]
