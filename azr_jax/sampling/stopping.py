"""When a row is done: EOS tokens, stop sequences, per-row budgets (all checked on device)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

_NEVER = -3  # a token id no real token equals (and not the wildcard -1)
WINDOW_FILL = -2  # initial window content: matches no stop-sequence position
_MIN_SIZE = 4  # EOS / stop tables are padded to powers of two >= this, so their shapes (and
               # hence the compiled decode loop) rarely change


def _padded_size(n: int) -> int:
    return max(_MIN_SIZE, 1 << max(n - 1, 0).bit_length())


def eos_array(eos_ids) -> np.ndarray:
    """EOS ids as an int32 vector, padded with a value no token equals."""
    ids = list(eos_ids)
    out = np.full((_padded_size(len(ids)),), _NEVER, np.int32)
    out[: len(ids)] = ids
    return out


def stop_table(stop_sequences) -> np.ndarray:
    """Stop sequences right-aligned in an int32 [S, L] table; -1 marks "any token" before a
    shorter sequence, and padding rows hold a value no token equals."""
    width = _padded_size(max((len(s) for s in stop_sequences), default=1))
    table = np.full((_padded_size(len(stop_sequences)), width), _NEVER, np.int32)
    for i, seq in enumerate(stop_sequences):
        table[i, : width - len(seq)] = -1
        table[i, width - len(seq):] = seq
    return table


def push_window(window_bl, tokens_b):
    """Slide the last-L-tokens window of each row by one new token."""
    return jnp.concatenate([window_bl[:, 1:], tokens_b[:, None]], axis=1)


def ends_with_stop(window_bl, table_sl):
    """bool[B]: the row's most recent tokens end with one of the stop sequences."""
    match_bsl = (table_sl[None] == window_bl[:, None, :]) | (table_sl[None] == -1)
    return jnp.any(jnp.all(match_bsl, axis=-1), axis=-1)


def is_eos(tokens_b, eos_e):
    return jnp.any(tokens_b[:, None] == eos_e[None, :], axis=-1)
