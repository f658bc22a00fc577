"""The sampler end to end on a tiny random decoder (float32, CPU).

Shapes are chosen so most tests reuse the same compiled prefill/decode (prompts <= 8 tokens,
responses <= 8 tokens, 3 prompts -> a batch bucket of 4).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

from azr_jax.errors import UserError
from azr_jax.models import forward
from azr_jax.rl.logprobs import token_logprobs, token_logprobs_and_entropy
from azr_jax.sampling import Completions, SamplingSettings, generate, logprob_gap, rollout_batch

from tiny_sampler_model import BUCKETS, CFG, GREEDY, PROMPTS, gen as _gen


@jax.jit
def _full_log_softmax(params, tokens_bt):
    """Causal forward without a cache; right padding cannot affect earlier positions."""
    positions = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
    return jax.nn.log_softmax(forward(params, tokens_bt, positions, config=CFG)[0], axis=-1)


def _greedy_reference(params, prompt, steps):
    """Argmax of a full forward, one token at a time: tokens and log_softmax of each choice."""
    seq, lps = list(prompt), []
    for _ in range(steps):
        padded = np.zeros((1, 16), np.int32)
        padded[0, : len(seq)] = seq
        logp = np.asarray(_full_log_softmax(params, padded))[0, len(seq) - 1]
        tok = int(np.argmax(logp))
        lps.append(float(logp[tok]))
        seq.append(tok)
    return seq[len(prompt):], lps


@pytest.fixture(scope="module")
def reference(params):
    return [_greedy_reference(params, p, 8) for p in PROMPTS]


def test_greedy_equals_step_by_step_argmax_of_full_forward(params, reference):
    out = _gen(params)
    assert out.tokens.shape == (3, 8) and out.logprobs.shape == (3, 8)
    for i, (tokens, lps) in enumerate(reference):
        assert out.tokens[i].tolist() == tokens
        np.testing.assert_allclose(out.logprobs[i], lps, atol=1e-5)  # float32, <= 14 positions
    assert out.lengths.tolist() == [8, 8, 8] and not out.finished.any()


def test_eos_ends_a_row_and_is_part_of_the_completion(params, reference):
    # Make a greedy token of prompt 0 (its first occurrence at step k >= 1) an EOS id: that row
    # stops there, the others wherever they would emit it.
    k = next(k for k, t in enumerate(reference[0][0]) if k >= 1 and t not in reference[0][0][:k])
    eos = reference[0][0][k]
    out = _gen(params, SamplingSettings(temperature=0.0, max_new_tokens=8, eos_ids=[eos]), pad_id=31)
    for i, (tokens, lps) in enumerate(reference):
        n = tokens.index(eos) + 1 if eos in tokens else 8
        assert out.lengths[i] == n and out.finished[i] == (eos in tokens)
        assert out.tokens[i, :n].tolist() == tokens[:n]
        assert (out.tokens[i, n:] == 31).all() and (out.logprobs[i, n:] == 0).all()
    assert out.lengths[0] == k + 1 and out.finished[0]
    assert out.as_lists()[0] == reference[0][0][: k + 1]


def test_stop_sequence_ends_a_row_after_the_whole_sequence(params, reference):
    tokens = reference[1][0]
    stop = tokens[3:5]  # a two-token stop sequence that first completes at step 5
    first = next(k for k in range(1, 8) if tokens[k - 1:k + 1] == stop) + 1
    absent = next(t for t in range(CFG.vocab_size) if t not in tokens)
    out = _gen(params, SamplingSettings(temperature=0.0, max_new_tokens=8, stop_sequences=[stop, [absent] * 3]))
    assert out.lengths[1] == first and out.finished[1]
    assert out.tokens[1, :first].tolist() == tokens[:first]


def test_per_prompt_budgets_and_max_new_tokens(params, reference):
    out = _gen(params, SamplingSettings(temperature=0.0, max_new_tokens=8, budgets=[2, 8, 5]))
    assert out.lengths.tolist() == [2, 8, 5] and not out.finished.any()
    for i, n in enumerate([2, 8, 5]):
        assert out.tokens[i, :n].tolist() == reference[i][0][:n]
    short = _gen(params, SamplingSettings(temperature=0.0, max_new_tokens=5))
    assert short.tokens.shape == (3, 5) and short.tokens.tolist() == [r[0][:5] for r in reference]


def test_n_samples_share_one_prefill(params, reference, monkeypatch):
    # Record the batch size of every decoder call while the sampler is traced: the prompt pass
    # runs on the prompts alone, the decode steps on prompts x n rows.
    from azr_jax.sampling import sampler

    seen = []
    real_forward = sampler.forward

    def spy(params, tokens_bt, *args, **kw):
        seen.append(tokens_bt.shape)
        return real_forward(params, tokens_bt, *args, **kw)

    monkeypatch.setattr(sampler, "forward", spy)
    out = _gen(params, n=3, prompts=PROMPTS + [[7, 7]], key=5)  # 4 prompts: a fresh trace
    assert seen == [(4, 8), (12, 1)]
    for i, (tokens, _) in enumerate(reference):  # greedy: the 3 samples equal the n=1 result
        for j in range(3):
            assert out.tokens[3 * i + j].tolist() == tokens


def test_sampled_rows_differ_and_depend_only_on_the_key(params):
    s = SamplingSettings(temperature=1.0, top_k=8, top_p=0.95, max_new_tokens=8)
    a, b, c = _gen(params, s, n=2, key=7), _gen(params, s, n=2, key=7), _gen(params, s, n=2, key=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    assert not all(np.array_equal(a.tokens[2 * i], a.tokens[2 * i + 1]) for i in range(3))


@pytest.mark.parametrize("max_rows", [1, 2, 5])
def test_max_rows_splits_the_batch_without_changing_the_draws(params, max_rows):
    """Rows are keyed by their index, so generating 4 prompts x 2 samples in calls of at most
    max_rows rows (at least one prompt each: max_rows=1 still decodes both samples of a prompt)
    samples exactly what one call samples; per-prompt budgets follow their prompts."""
    prompts = PROMPTS + [[3, 1, 4, 1, 5]]
    s = SamplingSettings(temperature=1.0, max_new_tokens=8, budgets=[8, 3, 8, 6])
    whole = _gen(params, s, n=2, prompts=prompts, key=11)
    split = _gen(params, s, n=2, prompts=prompts, key=11, max_rows=max_rows)
    np.testing.assert_array_equal(split.tokens, whole.tokens)
    np.testing.assert_array_equal(split.lengths, whole.lengths)
    np.testing.assert_array_equal(split.finished, whole.finished)
    np.testing.assert_allclose(split.logprobs, whole.logprobs, atol=1e-5)
    assert whole.lengths.reshape(4, 2)[1].max() <= 3
    with pytest.raises(UserError, match="max_rows"):
        _gen(params, s, n=2, prompts=prompts, max_rows=0)


def test_first_row_continues_the_row_numbering_of_a_split_batch(params):
    """A caller that generates a batch in its own pieces (the evaluation's batches of items)
    samples what one call would when it passes each piece's first row."""
    prompts = PROMPTS + [[3, 1, 4, 1, 5]]
    s = SamplingSettings(temperature=1.0, max_new_tokens=8)
    whole = _gen(params, s, n=2, prompts=prompts, key=11)
    tail = _gen(params, s, n=2, prompts=prompts[1:], key=11, first_row=2)
    np.testing.assert_array_equal(tail.tokens, whole.tokens[2:])
    assert not np.array_equal(_gen(params, s, n=2, prompts=prompts[1:], key=11).tokens, whole.tokens[2:])


def test_sampled_evaluation_draws_do_not_depend_on_its_batch_size(params):
    """Each evaluation batch had its own key and rows numbered from 0, so an item's samples
    changed with the batch it fell in."""
    from types import SimpleNamespace

    from azr_jax.eval.evaluate import generate_texts

    class Tok:  # prompt text -> token ids; a completion's ids written out as its text
        def encode_batch(self, texts):
            return [[int(t) for t in text.split()] for text in texts]

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    policy = SimpleNamespace(tokenizer=Tok(), stop_ids=(), mesh=None, rules=None, compute_dtype=jnp.float32,
                             pad_id=0, config=CFG)
    prompts = ["1 2 3", "4 5 6 7", "10", "3 1 4 1 5", "9 9"]
    texts = {b: generate_texts(params, policy, prompts, max_new_tokens=6, batch_size=b, temperature=1.0,
                               n_samples=2, seed=3)[0] for b in (5, 2)}
    assert texts[5] == texts[2] and len(set(texts[5])) > 1


def test_sampler_logprobs_equal_trainer_logprobs(params):
    """Parity by construction: the sampler's logprob of each chosen token equals the trainer's
    recomputed token_logprobs over prompt + completion (float32, <= 16 positions, 1e-5)."""
    for temperature in (1.0, 0.7):
        s = SamplingSettings(temperature=temperature, top_k=8, top_p=0.95, max_new_tokens=8)
        out = _gen(params, s, n=2, key=11)
        batch = rollout_batch(PROMPTS, out, 2, length_buckets=BUCKETS)
        trainer_lp = token_logprobs(params, {k: jnp.asarray(v) for k, v in batch.items()}, CFG, jnp.float32,
                                    temperature=temperature)
        gap = {k: float(v) for k, v in logprob_gap(batch["old_logprobs"], trainer_lp, batch["loss_mask"]).items()}
        assert gap["logprob_gap_max"] <= 1e-5, gap
        assert batch["loss_mask"].sum() == out.lengths.sum() > 0
    # The gap metric is not blind: a shifted logprob shows up.
    bumped = batch["old_logprobs"] + 0.01 * batch["loss_mask"]
    assert float(logprob_gap(bumped, trainer_lp, batch["loss_mask"])["logprob_gap_max"]) > 0.009


def test_ids_past_the_tokenizer_are_never_sampled_and_carry_no_probability(params):
    # A model vocabulary padded past its tokenizer's (Qwen2.5; a random-init model over a smaller
    # tokenizer): ids >= tokenizer_vocab_size could not be decoded, so the policy never draws them.
    from azr_jax.models.decoder import forward

    limited = CFG.replace(tokenizer_vocab_size=20)
    s = SamplingSettings(temperature=1.0, max_new_tokens=8)
    free = _gen(params, s, n=8, key=3)
    assert free.tokens.max() >= 20  # without the limit, these random weights do sample such ids
    out = generate(params, limited, PROMPTS, jax.random.key(3), s, n_samples=8, length_buckets=BUCKETS)
    assert out.tokens.max() < 20 and out.lengths.sum() > 0
    batch = {k: jnp.asarray(v) for k, v in rollout_batch(PROMPTS, out, 8, length_buckets=BUCKETS).items()}
    logp_bt, entropy_bt = token_logprobs_and_entropy(params, batch, limited)
    gap = logprob_gap(batch["old_logprobs"], logp_bt, batch["loss_mask"])
    assert float(gap["logprob_gap_max"]) <= 1e-5  # the sampler and the update agree
    assert np.isfinite(np.asarray(entropy_bt)).all()
    logits = forward(params, batch["tokens"], batch["positions"], config=limited, mask_bt=batch["mask"])[0]
    probs = jax.nn.softmax(logits, axis=-1)
    assert float(probs[..., 20:].max()) == 0.0
    with pytest.raises(UserError, match="tokenizer_vocab_size"):
        CFG.replace(tokenizer_vocab_size=33)


def test_rollout_batch_layout():
    comp = Completions(tokens=np.array([[5, 6, 0], [7, 0, 0]], np.int32),
                       logprobs=np.array([[-1, -2, 0], [-3, 0, 0]], np.float32),
                       lengths=np.array([2, 1], np.int32), finished=np.array([True, False]))
    b = rollout_batch([[1, 2, 3]], comp, 2, pad_id=0, length_buckets=(4,))
    assert b["tokens"].tolist() == [[0, 1, 2, 3, 5, 6, 0], [0, 1, 2, 3, 7, 0, 0]]
    assert b["mask"].tolist() == [[0, 1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0, 0]]
    assert b["loss_mask"].tolist() == [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 0, 0]]
    assert b["positions"][0].tolist() == [0, 0, 1, 2, 3, 4, 4]
    assert b["old_logprobs"][0].tolist() == [0, 0, 0, 0, -1, -2, 0]


def test_rollout_batch_refuses_rows_that_are_not_prompts_times_samples():
    """Rows are paired with prompts by index (row // n_samples): 4 rows read as 2 prompts x 3
    samples would silently give the second prompt's completions to the first."""
    comp = Completions(tokens=np.zeros((4, 2), np.int32), logprobs=np.zeros((4, 2), np.float32),
                       lengths=np.ones(4, np.int32), finished=np.zeros(4, bool))
    with pytest.raises(ValueError, match="4 completion rows for 2 prompts x 3 samples"):
        rollout_batch([[1], [2]], comp, 3, length_buckets=(4,))


def test_logprob_gap_is_max_mean_and_signed_bias_over_the_mask():
    """Only masked (response) tokens count: differences 0.5 and -1.0 give max 1.0, mean 0.75
    and bias -0.25 (negative: the sampler's logprobs are lower). An empty mask gives 0, not NaN."""
    sampler = np.array([[0.0, -1.0, -2.0, 5.0]], np.float32)
    trainer = np.array([[3.0, -1.5, -1.0, 0.0]], np.float32)
    gap = {k: float(v) for k, v in logprob_gap(sampler, trainer, np.array([[0, 1, 1, 0]])).items()}
    assert gap == pytest.approx({"logprob_gap_max": 1.0, "logprob_gap_mean": 0.75, "logprob_gap_bias": -0.25})
    empty = logprob_gap(sampler, trainer, np.zeros((1, 4)))
    assert {k: float(v) for k, v in empty.items()} == {k: 0.0 for k in gap}


def test_same_buckets_do_not_recompile(params):
    _gen(params)  # compiled (or already cached) for these buckets
    compiles = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    monitoring.register_event_duration_secs_listener(listener)
    try:
        jax.jit(lambda x: x * 3 + 1)(np.arange(3))  # the listener sees a fresh compilation
        assert len(compiles) == 1
        _gen(params, prompts=[[1, 2], [3, 4, 5, 6, 7], [8, 9, 10, 11]])
        _gen(params, SamplingSettings(temperature=0.0, max_new_tokens=6, eos_ids=[3], stop_sequences=[[1, 2]]),
             prompts=[[5], [6, 7], [1, 1, 1, 1, 1, 1, 1, 1]])
        assert len(compiles) == 1
    finally:
        monitoring.unregister_event_duration_listener(listener)


# The prompts (at most 6 tokens) sit in the bucket of 8; chunking needs a chunk below that
# (5 leaves a padded first chunk, 7 one of a single position).
@pytest.mark.parametrize("chunk", [1, 3, 5, 7])
def test_prefill_in_chunks_samples_the_same_tokens(params, chunk):
    sampled = SamplingSettings(temperature=1.0, top_k=8, max_new_tokens=6)
    for settings in (GREEDY, sampled):
        whole = _gen(params, settings, n=2, key=5)
        chunked = _gen(params, settings, n=2, key=5, prefill_chunk=chunk)
        np.testing.assert_array_equal(chunked.tokens, whole.tokens)
        np.testing.assert_array_equal(chunked.lengths, whole.lengths)
        np.testing.assert_allclose(chunked.logprobs, whole.logprobs, atol=1e-5)
    with pytest.raises(UserError, match="prefill_chunk must be an int >= 0"):
        _gen(params, GREEDY, prefill_chunk=-1)


def test_prefill_in_chunks_needs_less_scratch_memory():
    """The compiler's own accounting of the prompt pass: 8 prompts of 256 positions, whole
    (scores [8, heads, 256, 256]) against chunks of 32."""
    from azr_jax.models.decoder import init_params
    from azr_jax.sampling.sampler import _prefill

    params = init_params(CFG, jax.random.key(0))
    tokens = jnp.ones((8, 256), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(256, dtype=jnp.int32), (8, 256))

    def temp_bytes(chunk):
        lowered = _prefill.lower(params, tokens, positions, jnp.ones_like(tokens), config=CFG,
                                 compute_dtype=jnp.float32, n_samples=1, response_len=8, mesh=None, rules=(),
                                 prefill_chunk=chunk)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    whole, chunked = temp_bytes(0), temp_bytes(32)
    assert chunked < whole / 3, (chunked, whole)


def test_prompts_may_be_a_two_dimensional_array(params):
    """`if not prompt_tokens` raised numpy's ambiguous-truth-value ValueError on an array."""
    same_length = [[1, 2], [4, 5], [10, 11]]
    settings = SamplingSettings(temperature=0.0, max_new_tokens=4)
    as_array = _gen(params, settings, prompts=np.asarray(same_length, np.int32))
    assert as_array.tokens.tolist() == _gen(params, settings, prompts=same_length).tokens.tolist()
    with pytest.raises(UserError, match="at least one prompt"):
        _gen(params, settings, prompts=np.zeros((0, 3), np.int32))


@pytest.mark.parametrize("prompts, message", [([], "at least one prompt"), ([[]], "prompt 0 is empty"),
                                             ([[1, 32]], "outside"), ([[-1]], "outside"),
                                             ([[1.9, 2.2]], "holds float.* values, not token ids")])
def test_bad_prompts_raise_user_error(params, prompts, message):
    with pytest.raises(UserError, match=message):
        _gen(params, prompts=prompts)


def test_budget_count_must_match_prompts(params):
    with pytest.raises(UserError, match="budgets has 2 entries for"):
        _gen(params, SamplingSettings(temperature=0.0, max_new_tokens=8, budgets=[2, 3]))


def test_top_k_and_top_p_reach_the_decode_loop(params, reference):
    """generate hands top-k and top-p on to the token choice: k = 1, or a nucleus holding only
    the most likely token, samples the greedy completion at T = 1 whatever the key."""
    greedy = [tokens for tokens, _ in reference for _ in range(2)]
    for s in (SamplingSettings(temperature=1.0, top_k=1, max_new_tokens=8),
              SamplingSettings(temperature=1.0, top_p=1e-6, max_new_tokens=8)):
        assert _gen(params, s, n=2, key=13).tokens.tolist() == greedy


def test_every_step_draws_with_fresh_randomness(params):
    """Each (row, step) has its own key. Near-uniform draws (T = 1000 over 32 ids) then vary
    along a row; one key reused for every step of a row gives the same noise each step, and the
    row repeats one token."""
    out = _gen(params, SamplingSettings(temperature=1000.0, max_new_tokens=8), n=2, key=17)
    assert all(len(set(row)) > 1 for row in out.tokens.tolist())


def test_pad_tokens_after_a_budget_are_not_an_eos(params, reference):
    """A tokenizer without a pad token pads with EOS (pad_id = eos). A row cut off by its budget
    is then followed by pad tokens equal to the EOS id; they are not generated, so the row stays
    unfinished (finished=False feeds the trainer's truncation handling)."""
    absent = next(t for t in range(CFG.vocab_size) if all(t not in tokens for tokens, _ in reference))
    s = SamplingSettings(temperature=0.0, max_new_tokens=8, budgets=[2, 8, 5], eos_ids=[absent])
    out = _gen(params, s, pad_id=absent)
    assert out.lengths.tolist() == [2, 8, 5] and not out.finished.any()
    assert out.tokens[0, 2:].tolist() == [absent] * 6


def test_n_samples_must_be_positive(params):
    with pytest.raises(UserError, match="n_samples must be positive"):
        _gen(params, n=0)


def test_max_rows_counts_rows_not_prompts(monkeypatch):
    """max_rows bounds prompts x n_samples per call (the KV cache): 7 rows of 3 samples are 2
    prompts a call, numbered on from the previous call's rows, each with its own budgets; the
    parts come back in prompt order. (The device work is stubbed: only the split is checked.)"""
    from azr_jax.sampling import sampler

    calls = []

    def fake_rows(params, config, prompts, budgets_p, rng, settings, *, first_row, n_samples, **kw):
        calls.append((len(prompts), first_row, list(budgets_p)))
        rows = len(prompts) * n_samples
        tokens = np.repeat(np.asarray([p[0] for p in prompts], np.int32), n_samples)[:, None]
        return Completions(tokens=np.tile(tokens, (1, settings.max_new_tokens)),
                           logprobs=np.zeros((rows, settings.max_new_tokens), np.float32),
                           lengths=np.full(rows, settings.max_new_tokens, np.int32), finished=np.zeros(rows, bool))

    monkeypatch.setattr(sampler, "_generate_rows", fake_rows)
    s = SamplingSettings(temperature=1.0, max_new_tokens=4, budgets=[1, 2, 3, 4, 1])
    out = generate(None, CFG, [[1], [2], [3], [4], [5]], jax.random.key(0), s, n_samples=3, max_rows=7, first_row=1)
    assert calls == [(2, 1, [1, 2]), (2, 7, [3, 4]), (1, 13, [1])]
    assert out.tokens[:, 0].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    # A prompt of unsigned ids is token ids too; True is not a row count, nor a chunk size.
    calls.clear()
    generate(None, CFG, [np.asarray([3, 4], np.uint32)], jax.random.key(0), SamplingSettings(max_new_tokens=4))
    assert calls == [(1, 0, [4])]
    with pytest.raises(UserError, match="max_rows must be a positive int"):
        generate(None, CFG, [[1]], jax.random.key(0), s.__class__(max_new_tokens=4), max_rows=True)
    with pytest.raises(UserError, match="prefill_chunk must be an int"):
        generate(None, CFG, [[1]], jax.random.key(0), s.__class__(max_new_tokens=4), prefill_chunk=True)


def test_top_p_of_one_switches_the_nucleus_off(monkeypatch):
    """top_p = 1 compiles the decode loop without the nucleus (no whole-vocabulary sort per
    step, and no tail token lost to a cumulative mass that rounds to 1 early); any top_p below
    1 switches it on. (Prefill and decode are stubbed: only what generate asks for is checked.)"""
    from azr_jax.sampling import sampler

    asked = []

    def fake_decode(params, cache, logits, first_pos, budgets, row_ids, rng, temperature, top_p, eos, stops, **kw):
        asked.append((kw["use_top_p"], kw["top_k"], kw["greedy"], float(temperature), float(top_p)))
        b, r = logits.shape[0], kw["response_len"]
        return (jnp.zeros((b, r), jnp.int32), jnp.zeros((b, r)), jnp.ones((b,), jnp.int32), jnp.zeros((b,), bool), cache)

    monkeypatch.setattr(sampler, "_prefill", lambda params, tokens, *a, n_samples, **kw:
                        (None, jnp.zeros((tokens.shape[0] * n_samples, CFG.vocab_size))))
    monkeypatch.setattr(sampler, "_decode", fake_decode)
    for s in (SamplingSettings(temperature=0.5, top_p=1.0, top_k=3, max_new_tokens=4),
              SamplingSettings(temperature=0.5, top_p=0.999, max_new_tokens=4),
              SamplingSettings(temperature=0.0, max_new_tokens=4)):
        generate(None, CFG, [[1]], jax.random.key(0), s)
    assert asked == [(False, 3, False, 0.5, 1.0), (True, 0, False, 0.5, pytest.approx(0.999)), (False, 0, True, 0.0, 1.0)]
