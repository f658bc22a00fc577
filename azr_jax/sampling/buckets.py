"""Padding sizes that bound recompilation.

Every distinct (batch, prompt length, response length) shape compiles the sampler again, so
callers pad each of them up to one of a few sizes. Lengths use the config's
`sampling.length_buckets` (or powers of two); batches use powers of two up to 64, then multiples
of 64, and are always divisible by the number of batch shards so the batch splits evenly.
"""

from __future__ import annotations

import math

DEFAULT_LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_BATCH_STEP = 64


def bucket_length(n: int, buckets=DEFAULT_LENGTH_BUCKETS) -> int:
    """The smallest bucket >= n; past the largest bucket, the next multiple of the largest."""
    if n <= 0:
        raise ValueError(f"length must be positive, got {n}")
    ordered = sorted(int(b) for b in buckets)
    for b in ordered:
        if b >= n:
            return b
    largest = ordered[-1]
    return largest * math.ceil(n / largest)


def bucket_batch(n: int, multiple: int = 1) -> int:
    """Rows to allocate for n sequences: a power of two up to 64, then a multiple of 64,
    rounded up to a multiple of `multiple` (the number of batch shards)."""
    if n <= 0:
        raise ValueError(f"batch size must be positive, got {n}")
    size = 1 << (n - 1).bit_length() if n <= _BATCH_STEP else _BATCH_STEP * math.ceil(n / _BATCH_STEP)
    return multiple * math.ceil(size / multiple)
