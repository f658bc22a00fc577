"""Token selection maths: temperature, top-k, top-p, greedy, and the reported logprob."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from azr_jax.sampling.select import choose_tokens, scale_logits, truncate

LOGITS = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]], jnp.float32))


def _kept(filtered):
    return np.isfinite(np.asarray(filtered))[0].tolist()


def test_top_k_keeps_exactly_the_k_largest():
    out = truncate(LOGITS[:, ::-1], 1.0, top_k=2, use_top_p=False)
    assert _kept(out) == [False, False, False, True, True]


@pytest.mark.parametrize(
    "top_p, kept",
    [
        (0.5, [True, False, False, False, False]),  # the top token alone already has mass 0.5
        (0.51, [True, True, False, False, False]),
        (0.8, [True, True, True, False, False]),  # 0.5 + 0.2 = 0.7 < 0.8, so 0.15 joins
        (0.01, [True, False, False, False, False]),  # the most likely token always stays
        (1.0, [True, True, True, True, True]),
    ],
)
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p, kept):
    assert _kept(truncate(LOGITS, top_p, top_k=0, use_top_p=True)) == kept


def test_top_p_is_applied_to_the_renormalised_top_k():
    # top-2 renormalised: 0.5/0.7 = 0.714, 0.2/0.7 = 0.286; p = 0.7 keeps only the first.
    assert _kept(truncate(LOGITS, 0.7, top_k=2, use_top_p=True)) == [True, False, False, False, False]
    assert _kept(truncate(LOGITS, 0.72, top_k=2, use_top_p=True)) == [True, True, False, False, False]


def test_top_p_after_top_k_counts_the_tokens_tied_at_the_kth():
    """top_k keeps every token tied with the k-th; top-p's masses were shares of k of them only,
    so [3, 2, 2, 2, 1] at top_k=2, top_p=0.6 kept the first token alone (0.73 of two) where its
    share of the four kept is 0.475."""
    tied = jnp.array([[3.0, 2.0, 2.0, 2.0, 1.0]])
    assert _kept(truncate(tied, 0.6, top_k=2, use_top_p=True)) == [True, True, True, True, False]
    assert _kept(truncate(tied, 0.4, top_k=2, use_top_p=True)) == [True, False, False, False, False]
    assert _kept(truncate(tied, 1.0, top_k=2, use_top_p=True)) == [True, True, True, True, False]


def test_ids_past_the_tokenizer_vocabulary_are_never_drawn_at_any_temperature():
    """Their logit is a finite -1e9 (models.decoder.UNKNOWN_TOKEN_LOGIT): divided by T = 1e9 it
    became -1 and those ids were drawn."""
    from azr_jax.models.decoder import UNKNOWN_TOKEN_LOGIT

    logits = jnp.tile(jnp.array([[0.5, 0.0, UNKNOWN_TOKEN_LOGIT, UNKNOWN_TOKEN_LOGIT]]), (256, 1))
    keys = jax.random.split(jax.random.key(0), 256)
    tokens, logprobs = choose_tokens(logits, keys, 1e9, 1.0, greedy=False, top_k=0, use_top_p=False)
    assert set(np.asarray(tokens).tolist()) == {0, 1} and np.isfinite(np.asarray(logprobs)).all()


def test_temperature_divides_logits_and_zero_means_unscaled():
    np.testing.assert_allclose(scale_logits(LOGITS, 2.0), LOGITS / 2.0, rtol=1e-6)
    np.testing.assert_allclose(scale_logits(LOGITS, 0.0), LOGITS, rtol=1e-6)


def _draw_frequencies(logits, n, temperature=1.0, top_p=1.0, top_k=0, use_top_p=False):
    keys = jax.random.split(jax.random.key(0), n)
    tokens, _ = choose_tokens(jnp.repeat(logits, n, axis=0), keys, temperature, top_p,
                              greedy=False, top_k=top_k, use_top_p=use_top_p)
    return np.bincount(np.asarray(tokens), minlength=logits.shape[-1]) / n


def test_sampling_frequencies_follow_the_tempered_distribution():
    n = 20000
    freq = _draw_frequencies(LOGITS, n, temperature=1.0)
    np.testing.assert_allclose(freq, [0.5, 0.2, 0.15, 0.1, 0.05], atol=0.015)
    freq_hot = _draw_frequencies(LOGITS, n, temperature=2.0)
    expected = np.asarray(jax.nn.softmax(LOGITS[0] / 2.0))
    np.testing.assert_allclose(freq_hot, expected, atol=0.015)


def test_sampling_never_draws_truncated_tokens_and_renormalises():
    freq = _draw_frequencies(LOGITS, 20000, top_k=3)
    assert freq[3] == 0 and freq[4] == 0
    np.testing.assert_allclose(freq[:3], np.array([0.5, 0.2, 0.15]) / 0.85, atol=0.015)
    freq_p = _draw_frequencies(LOGITS, 20000, top_p=0.8, use_top_p=True)
    assert freq_p[3] == 0 and freq_p[4] == 0


def test_greedy_is_argmax_and_logprob_is_untruncated_tempered_log_softmax():
    logits = jax.random.normal(jax.random.key(1), (4, 11)) * 3
    keys = jax.random.split(jax.random.key(2), 4)
    tokens, lps = choose_tokens(logits, keys, 0.0, 1.0, greedy=True, top_k=0, use_top_p=False)
    np.testing.assert_array_equal(tokens, jnp.argmax(logits, -1))
    np.testing.assert_allclose(lps, jnp.max(jax.nn.log_softmax(logits, -1), -1), rtol=1e-6)
    # Sampled with T = 0.7 and top-k 2: the logprob ignores the truncation but uses T.
    tokens, lps = choose_tokens(logits, keys, 0.7, 1.0, greedy=False, top_k=2, use_top_p=False)
    want = jnp.take_along_axis(jax.nn.log_softmax(logits / 0.7, -1), tokens[:, None], -1)[:, 0]
    np.testing.assert_allclose(lps, want, rtol=1e-6)


def test_each_row_draw_depends_only_on_its_own_key():
    logits = jax.random.normal(jax.random.key(3), (6, 50))
    keys = jax.random.split(jax.random.key(4), 6)
    full, _ = choose_tokens(logits, keys, 1.0, 1.0, greedy=False, top_k=0, use_top_p=False)
    part, _ = choose_tokens(logits[2:4], keys[2:4], 1.0, 1.0, greedy=False, top_k=0, use_top_p=False)
    np.testing.assert_array_equal(full[2:4], part)


def test_top_p_on_a_very_peaked_distribution_keeps_only_the_top_token():
    """Low temperatures give logit gaps in the hundreds. The nucleus masses are taken relative
    to the largest logit, so no exp overflows: one token holds all the mass and alone is kept."""
    peaked = jnp.array([[0.0, -100.0, -200.0, -300.0]])
    assert _kept(truncate(peaked, 0.9, top_k=0, use_top_p=True)) == [True, False, False, False]
    assert _kept(truncate(peaked, 0.9, top_k=3, use_top_p=True)) == [True, False, False, False]


def test_top_k_at_or_past_the_vocabulary_keeps_every_token():
    """sampling.top_k is set without knowing the model: k >= vocab truncates nothing (and must
    not ask lax.top_k for more entries than there are)."""
    for k in (5, 6, 1000):
        assert _kept(truncate(LOGITS, 1.0, top_k=k, use_top_p=False)) == [True] * 5
        assert _kept(truncate(LOGITS, 0.8, top_k=k, use_top_p=True)) == [True, True, True, False, False]


def test_top_k_one_below_the_vocabulary_drops_exactly_the_least_likely_token():
    """Every k below the vocabulary truncates: k = vocab - 1 keeps all but the smallest logit
    (the whole-vocabulary sort is only for k >= vocab or top-p alone)."""
    assert _kept(truncate(LOGITS, 1.0, top_k=4, use_top_p=False)) == [True, True, True, True, False]
    assert _kept(truncate(LOGITS, 0.99, top_k=4, use_top_p=True)) == [True, True, True, True, False]
