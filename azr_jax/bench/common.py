"""Helpers shared by the benchmarks: device description, timing, peak numbers."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

# bf16 dense peak FLOP/s and HBM bandwidth (bytes/s) per chip (ANCHORS.md §11; vendor datasheets).
# Longer keys win, so the PCIe and NVL cards (lower clocks, other memory) are not read as SXM.
PEAKS = {
    "h100": (989e12, 3.35e12),  # SXM: "NVIDIA H100 80GB HBM3"
    "h100 pcie": (756e12, 2.0e12),
    "h100 nvl": (835e12, 3.9e12),
    "h200": (989e12, 4.8e12),  # SXM
    "h200 nvl": (835e12, 4.8e12),
    # GH200 ("NVIDIA GH200 480GB"): its H100 die, with 4.0 TB/s (HBM3) or 4.9 TB/s (HBM3e) by
    # model; no bandwidth rather than a wrong one (its name holds "h200").
    "gh200": (989e12, None),
    "tpu v4": (275e12, 1.2e12),
    "tpu v5 lite": (197e12, 0.819e12),  # v5e reports itself as "TPU v5 lite"
    "tpu v5e": (197e12, 0.819e12),
    "tpu v5p": (459e12, 2.765e12),
    "tpu v5": (459e12, 2.765e12),
    "tpu v6 lite": (918e12, 1.638e12),  # v6e
    "tpu v6e": (918e12, 1.638e12),
}


def _argument_type(convert, accept, expected: str):
    """An argparse type: `convert` the text, refuse values `accept` rejects, in one line."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expects {expected}, got {value}")
        return value
    return parse


# The bench sizes, counts and shares (0 or less would fail deep inside a run, or measure nonsense).
positive_int = _argument_type(int, lambda v: v > 0, "a positive integer")
non_negative_int = _argument_type(int, lambda v: v >= 0, "an integer >= 0")  # numpy's seeds
fraction = _argument_type(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
positive_float = _argument_type(float, lambda v: 0 < v < float("inf"), "a positive number")
non_negative_float = _argument_type(float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def check_set_keys(args: argparse.Namespace, keys: tuple[str, ...]) -> None:
    """Refuse a `--set` key outside the config `keys` (and their sub-keys) the benchmark reads:
    it was accepted and silently not applied (`--set rl.logits_chunk=512` on `bench train`
    timed the whole head). Call after `load_config`, which reports malformed and unknown keys."""
    from azr_jax.errors import UserError

    for item in args.set:
        key = item.split("=", 1)[0].strip()
        if not any(key == k or key.startswith(k + ".") for k in keys):
            raise UserError(f"--set {key} is not used by bench {args.bench}, which reads {', '.join(keys)} "
                            f"of the config; its other settings are flags (azr-jax bench {args.bench} --help)")


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
    """Median wall time of `fn()` in seconds after `warmup` calls (the mean of the middle two
    for an even count); fn must block until done."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
