"""When a row is done: EOS tokens, stop sequences, per-row budgets (all checked on device)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

_NEVER = -3  # a token id no real token equals (and not the wildcard -1)
WINDOW_FILL = -2  # initial window content: matches no stop-sequence position


def eos_array(eos_ids) -> np.ndarray:
    """EOS ids as an int32 vector (never empty, so the shape is always valid)."""
    return np.asarray(list(eos_ids) or [_NEVER], np.int32)


def stop_table(stop_sequences) -> np.ndarray:
    """Stop sequences right-aligned in an int32 [S, L] table; -1 marks "any token" padding."""
    if not stop_sequences:
        return np.full((1, 1), _NEVER, np.int32)
    width = max(len(s) for s in stop_sequences)
    table = np.full((len(stop_sequences), width), -1, np.int32)
    for i, seq in enumerate(stop_sequences):
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
