"""Settings validation, length/batch buckets, and the on-device stop checks."""

import jax.numpy as jnp
import numpy as np
import pytest

from azr_jax.config import SamplingSection
from azr_jax.errors import UserError
from azr_jax.sampling.buckets import bucket_batch, bucket_length
from azr_jax.sampling.settings import SamplingSettings
from azr_jax.sampling.stopping import WINDOW_FILL, ends_with_stop, eos_array, is_eos, push_window, stop_table


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(temperature=-1), "sampling temperature"), (dict(top_p=0), "sampling top_p"), (dict(top_p=1.5), "sampling top_p"),
     (dict(top_k=-1), "sampling top_k"), (dict(max_new_tokens=0), "max_new_tokens must be positive"),
     (dict(stop_sequences=[[]]), "empty sequence"), (dict(max_new_tokens=4, budgets=[5]), "budgets must each be"),
     (dict(budgets=[0]), "budgets must each be"), (dict(temperature=float("nan")), "sampling temperature"),
     (dict(temperature=float("inf")), "sampling temperature"), (dict(top_p=float("nan")), "sampling top_p"),
     # float32 holds 1e-45 as 0: the sampler divided the logits by 1 and sampled at T = 1
     (dict(temperature=1e-45), r"0 \(greedy\) or >= 1e-30"), (dict(temperature=1e-31), r"or >= 1e-30"),
     (dict(stop_sequences=(5, 6)), "tuple of token-id sequences"),
     (dict(stop_sequences=("ab",)), "tuple of token-id sequences"),
     # -1 is the stop matcher's wildcard: it stopped every row after one token
     (dict(stop_sequences=((-1,),)), r"token ids >= 0, got \[-1\]"), (dict(eos_ids=(2, -3)), "token ids >= 0")],
)
def test_bad_settings_raise_user_error(kwargs, message):
    with pytest.raises(UserError, match=message):
        SamplingSettings(**kwargs)


def test_settings_are_hashable_and_normalised():
    s = SamplingSettings(eos_ids=[2, 3], stop_sequences=[[5, 6]], budgets=[3], max_new_tokens=4)
    assert s.eos_ids == (2, 3) and s.stop_sequences == ((5, 6),) and s.budgets == (3,)
    assert hash(s) == hash(SamplingSettings(eos_ids=(2, 3), stop_sequences=((5, 6),), budgets=(3,), max_new_tokens=4))


def test_settings_from_config_section():
    sec = SamplingSection(temperature=0.8, top_p=0.9, top_k=5, max_response_len=77)
    roll = SamplingSettings.from_section(sec, eos_ids=[1])
    assert (roll.temperature, roll.top_p, roll.top_k, roll.max_new_tokens, roll.eos_ids) == (0.8, 0.9, 5, 77, (1,))
    assert SamplingSettings.from_section(sec, max_new_tokens=10).max_new_tokens == 10
    # An explicit 0 is refused, not silently replaced by the section's length.
    with pytest.raises(UserError, match="max_new_tokens"):
        SamplingSettings.from_section(sec, max_new_tokens=0)


def test_flat_stop_sequences_error_says_what_the_shape_is():
    with pytest.raises(UserError, match=r"\(\(5, 6\),\)"):
        SamplingSettings(stop_sequences=(5, 6))


def test_bucket_length():
    assert bucket_length(1) == 16 and bucket_length(16) == 16 and bucket_length(17) == 32
    assert bucket_length(5, [8, 4]) == 8 and bucket_length(3, [8, 4]) == 4
    assert bucket_length(20, [8]) == 24  # past the largest: next multiple of it
    assert bucket_length(24, [8]) == 24 and bucket_length(25, [8]) == 32  # a multiple is its own bucket


def test_bucket_batch():
    assert [bucket_batch(n) for n in (1, 2, 3, 5, 64, 65, 130)] == [1, 2, 4, 8, 64, 128, 192]
    assert bucket_batch(3, multiple=8) == 8 and bucket_batch(9, multiple=8) == 16
    assert bucket_batch(5, multiple=6) == 12


def test_stop_sequences_match_only_at_the_end_of_the_window():
    table = jnp.asarray(stop_table([(7, 8), (9,)]))
    assert table[:2].tolist() == [[-1, -1, 7, 8], [-1, -1, -1, 9]] and (table[2:] == -3).all()
    window = jnp.full((4, 4), WINDOW_FILL, jnp.int32)
    history = [[7, 8], [8, 7], [3, 9], [8, 0]]  # tokens generated so far per row
    for step in range(2):
        toks = jnp.asarray([h[step] for h in history], jnp.int32)
        window = push_window(window, toks)
    assert ends_with_stop(window, table).tolist() == [True, False, True, False]
    # a single [9] right after the prompt matches; the prompt's own tokens never do
    w = push_window(jnp.full((1, 4), WINDOW_FILL, jnp.int32), jnp.asarray([9], jnp.int32))
    assert ends_with_stop(w, table).tolist() == [True]
    w8 = push_window(jnp.full((1, 4), WINDOW_FILL, jnp.int32), jnp.asarray([8], jnp.int32))
    assert ends_with_stop(w8, table).tolist() == [False]


def test_no_stops_and_no_eos_never_match():
    table = jnp.asarray(stop_table([]))
    window = jnp.asarray(np.arange(16, dtype=np.int32).reshape(4, 4))
    assert not ends_with_stop(window, table).any()
    assert not is_eos(jnp.arange(5, dtype=jnp.int32), jnp.asarray(eos_array([]))).any()
    assert is_eos(jnp.arange(5, dtype=jnp.int32), jnp.asarray(eos_array([3, 0]))).tolist() == [True, False, False, True, False]


def test_a_stop_sequence_starting_with_token_0_needs_that_token_generated():
    """The window starts filled with a value no token id equals, so the prompt (not in the
    window) never completes a stop sequence: (0, 9) matches only once 0 then 9 are generated,
    not a completion whose first token is 9."""
    table = jnp.asarray(stop_table([(0, 9)]))
    empty = jnp.full((1, table.shape[1]), WINDOW_FILL, jnp.int32)
    nine, zero = jnp.asarray([9], jnp.int32), jnp.asarray([0], jnp.int32)
    assert ends_with_stop(push_window(empty, nine), table).tolist() == [False]
    assert ends_with_stop(push_window(push_window(empty, zero), nine), table).tolist() == [True]


def test_eos_and_stop_tables_pad_to_the_next_power_of_two_at_least_four():
    """The tables' shapes are part of the compiled decode loop: a count that is already a power
    of two keeps its size (4 EOS ids: 4 slots, 8: 8), one more takes the next power."""
    assert [len(eos_array(range(n))) for n in (0, 1, 4, 5, 8, 9)] == [4, 4, 4, 8, 8, 16]
    assert stop_table([(1, 2, 3, 4)] * 4).shape == (4, 4)
    assert stop_table([(1,) * 5] * 5).shape == (8, 8)


def test_a_stop_sequence_as_long_as_the_window_needs_every_token():
    """A stop sequence filling the table's whole width has no wildcard column: its first token
    counts like the others ((1, 2, 3, 4) does not match a completion ending 0, 2, 3, 4)."""
    table = jnp.asarray(stop_table([(1, 2, 3, 4)]))
    assert table.shape[1] == 4
    window = jnp.asarray([[0, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 5]], jnp.int32)
    assert ends_with_stop(window, table).tolist() == [False, True, False]


def test_only_temperature_zero_is_greedy():
    assert SamplingSettings(temperature=0.0).greedy
    assert not SamplingSettings(temperature=1e-4).greedy and not SamplingSettings(temperature=1.0).greedy
    assert not SamplingSettings(temperature=1e-30).greedy  # the smallest one accepted
