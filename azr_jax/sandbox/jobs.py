"""What the sandbox runs (`Job`) and what it reports (`JobResult`)."""

from __future__ import annotations

from dataclasses import dataclass

ARGS_MODES = ("expression", "literal")
MAX_REPEATS = 16  # each repeat runs in its own zygote (its own uid when the trainer is root)


@dataclass(frozen=True)
class Job:
    """One program and the calls `f(<call>)` to make on it (see docs/sandbox.md)."""

    program: str  # full source: import lines + code defining `f` (untrusted)
    calls: list[str]  # argument-list sources, each called as f(<call>)
    args_mode: str = "expression"  # "expression": evaluated in the sandbox; "literal": literals only
    expected: list[str] | None = None  # value texts to compare outputs with; never sent to the sandbox
    repeats: int = 2  # fresh processes (different hash seeds) whose results must agree
    # In-process calls of f per call text: 2 validates (accumulators, global counters); a check of
    # a solver's answer calls f once, as the reference does, and so has the whole time limit.
    calls_per_input: int = 2

    def __post_init__(self):
        if self.args_mode not in ARGS_MODES:
            raise ValueError(f"Job.args_mode must be one of {ARGS_MODES}, got {self.args_mode!r}")
        if self.expected is not None and len(self.expected) != len(self.calls):
            raise ValueError(f"Job.expected has {len(self.expected)} entries for {len(self.calls)} calls")
        if not 1 <= self.repeats <= MAX_REPEATS:
            raise ValueError(f"Job.repeats must be in 1..{MAX_REPEATS}, got {self.repeats}")
        if self.calls_per_input not in (1, 2):
            raise ValueError(f"Job.calls_per_input must be 1 or 2, got {self.calls_per_input}")


@dataclass(frozen=True)
class JobResult:
    outputs: list[str | None]  # canonical repr of f(*args, **kw) per call (None on failure)
    errors: list[str | None]  # per call: None or "ExcType: message" / "timeout" / "memory" / ...
    deterministic: bool  # False iff two runs (or two calls in one run) disagreed
    matches: list[bool] | None  # per call, structural equality with expected (None without expected)
    timed_out: bool
    error: str | None = None  # job-level failure (syntax error, import failure, crash, timeout)
    # The sandbox itself broke (could not start, or its zygote failed twice): the program was not
    # judged. Set only by host code, never from anything a program reports, so a program cannot
    # pass its own failure off as the sandbox's (such rows are left out of the update).
    sandbox_fault: bool = False

    @property
    def ok(self) -> bool:
        """Every call produced a value, deterministically, with no job-level failure."""
        return self.error is None and self.deterministic and all(e is None for e in self.errors)
