"""XLA_FLAGS for the test session and the CLI processes its tests start.

The tests compile hundreds of small programs and run each a few times, so compiling is most of
their time, and LLVM's optimisation passes are most of compiling (a tiny 2-step training run: 28 s
with them, 21 s without). Programs built without them compute the same operations, with results
that agree to float rounding; no test depends on how fast the compiled code runs."""

UNOPTIMISED = "--xla_backend_optimization_level=0"


def xla_flags(devices: int, optimise: bool = False) -> str:
    """`devices` fake CPU devices, compiled without LLVM's optimisation passes unless `optimise`."""
    return f"--xla_force_host_platform_device_count={devices}" + ("" if optimise else f" {UNOPTIMISED}")
