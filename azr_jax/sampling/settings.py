"""What to sample: temperature, top-p/top-k truncation, stopping rules and token budgets.

`SamplingSettings` is plain, hashable, host-side data. The sampler splits it into values that are
traced (temperature, top-p, budgets, EOS ids and stop sequences are arrays, so changing them never
recompiles) and the few choices that change the program (greedy or not, top-k's k, whether
top-p is on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from azr_jax.config import MIN_TEMPERATURE
from azr_jax.errors import UserError


@dataclass(frozen=True)
class SamplingSettings:
    """Settings of one `generate` call.

    temperature: 0 means greedy (argmax); otherwise (>= config.MIN_TEMPERATURE, 1e-30) logits are
        divided by it before sampling.
    top_p: nucleus truncation in (0, 1]; 1 disables it.
    top_k: keep the k most likely tokens; 0 disables it.
    max_new_tokens: the longest completion, for every row.
    eos_ids: a row stops after emitting any of these (the EOS token is part of the completion).
    stop_sequences: token-id sequences; a row stops once its completion ends with one of them
        (the stop sequence is part of the completion).
    budgets: optional per-prompt token budgets (one per prompt, each <= max_new_tokens); the n
        samples of a prompt share its budget.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    eos_ids: tuple[int, ...] = ()
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    budgets: tuple[int, ...] | None = None

    def __post_init__(self):
        # Normalise lists to tuples so settings stay hashable whatever the caller passed.
        object.__setattr__(self, "eos_ids", tuple(int(t) for t in self.eos_ids))
        if any(not _is_sequence(s) for s in self.stop_sequences):
            # A flat (5, 6) would otherwise fail deep inside with "int is not iterable".
            raise UserError(
                "sampling stop_sequences is a tuple of token-id sequences, e.g. ((5, 6),) for one "
                f"two-token sequence; got {self.stop_sequences!r}"
            )
        object.__setattr__(self, "stop_sequences", tuple(tuple(int(t) for t in s) for s in self.stop_sequences))
        if self.budgets is not None:
            object.__setattr__(self, "budgets", tuple(int(b) for b in self.budgets))
        # Negative ids are the stop matcher's own markers (-1 matches any token): as a user's id
        # one stopped every row after its first token.
        negative = [t for t in self.eos_ids + tuple(t for s in self.stop_sequences for t in s) if t < 0]
        if negative:
            raise UserError(f"sampling eos_ids and stop_sequences are token ids >= 0, got {negative}")
        # NaN passes every comparison below as False, so finiteness is checked first.
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(f"sampling temperature must be a finite number >= 0, got {self.temperature}")
        if 0 < self.temperature < MIN_TEMPERATURE:  # float32 holds it as 0 or overflows the logits
            raise UserError(f"sampling temperature must be 0 (greedy) or >= {MIN_TEMPERATURE:g}, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"sampling top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"sampling top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens <= 0:
            raise UserError(f"sampling max_new_tokens must be positive, got {self.max_new_tokens}")
        if any(len(s) == 0 for s in self.stop_sequences):
            raise UserError("sampling stop_sequences must not contain an empty sequence")
        if self.budgets is not None and any(not 0 < b <= self.max_new_tokens for b in self.budgets):
            raise UserError(
                f"sampling budgets must each be in [1, max_new_tokens={self.max_new_tokens}], got {list(self.budgets)}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_section(cls, section, *, eos_ids=(), stop_sequences=(),
                     max_new_tokens: int | None = None) -> "SamplingSettings":
        """The rollout settings of a `config.SamplingSection`."""
        return cls(
            temperature=section.temperature,
            top_p=section.top_p,
            top_k=section.top_k,
            max_new_tokens=section.max_response_len if max_new_tokens is None else max_new_tokens,
            eos_ids=tuple(eos_ids),
            stop_sequences=tuple(stop_sequences),
        )


def _is_sequence(value) -> bool:
    return not isinstance(value, (str, bytes)) and hasattr(value, "__iter__")
