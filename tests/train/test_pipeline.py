"""The Grain prompt pipeline: determinism, length filtering, bucketing and left padding."""

import numpy as np
import pytest

from azr_jax.data import PipelineState, batch_from_prompts, build_prompt_batch, left_pad, stream_seed
from azr_jax.errors import UserError

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]


def encode(text):  # one token per character: lengths are easy to reason about
    return [ord(c) % 97 + 1 for c in text]


def pick(index, rng):
    k = int(rng.integers(1, 4))
    return {"index": index, "refs": [WORDS[i] for i in rng.choice(len(WORDS), size=k, replace=False)]}


def render(job):
    return " ".join(job["refs"])


def _batch(seed, **kw):
    args = dict(batch_size=5, max_prompt_len=64, seed=seed, pad_id=0, length_buckets=[8, 16, 32, 64])
    args.update(kw)
    return build_prompt_batch(pick, render, encode, **args)


def test_same_seed_same_batch_different_seed_different_batch():
    a, b, c = _batch(1), _batch(1), _batch(2)
    assert a.prompts == b.prompts and np.array_equal(a.tokens, b.tokens)
    assert a.prompts != c.prompts


def test_prompts_over_the_limit_are_skipped_and_resampled():
    batch = _batch(3, max_prompt_len=7)  # only single references fit
    assert batch.size == 5
    assert all(len(ids) <= 7 and len(job["refs"]) == 1 for ids, job in zip(batch.prompt_ids, batch.jobs))
    # The stream drew more candidates than it kept: some picked jobs had 2-3 references (too long).
    assert max(job["index"] for job in batch.jobs) >= 5


def test_the_stream_renders_only_the_candidates_it_needs():
    rendered = []

    def counting_render(job):
        rendered.append(job["index"])
        return render(job)

    batch = build_prompt_batch(pick, counting_render, encode, batch_size=5, max_prompt_len=7, seed=3, pad_id=0,
                               length_buckets=[8, 16, 32, 64])
    # Candidates are drawn in index order; each up to the last one kept is rendered once, none after
    # (Grain's default read-ahead rendered all 80 candidates of the stream).
    last = max(job["index"] for job in batch.jobs)
    assert sorted(rendered) == list(range(last + 1))


def test_impossible_limit_is_a_user_error():
    with pytest.raises(UserError, match="raise sampling.max_prompt_len"):
        _batch(0, max_prompt_len=2)


def test_left_padding_positions_and_buckets():
    batch = _batch(4, batch_multiple=4)
    rows, length = batch.tokens.shape
    assert length in (8, 16, 32, 64) and length >= max(len(x) for x in batch.prompt_ids)
    assert rows == 8 and batch.row_mask.tolist() == [True] * 5 + [False] * 3
    for i, ids in enumerate(batch.prompt_ids):
        assert batch.tokens[i, length - len(ids):].tolist() == ids
        assert batch.mask[i].sum() == len(ids) and batch.mask[i, -1] == 1
        assert batch.positions[i, -1] == len(ids) - 1 and batch.positions[i, 0] == 0


def test_left_pad_rejects_overlong_rows_and_handles_empty():
    tokens, mask, positions = left_pad([[5, 6], []], 3, pad_id=9)
    assert tokens.tolist() == [[9, 5, 6], [9, 9, 9]] and mask.tolist() == [[0, 1, 1], [0, 0, 0]]
    assert positions.tolist() == [[0, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="row 0 has 4 tokens, more than the padded length 3"):
        left_pad([[1, 2, 3, 4]], 3, pad_id=0)


def test_batch_from_prompts_keeps_order():
    jobs = [{"i": i} for i in range(3)]
    batch = batch_from_prompts(jobs, ["ab", "abcd", "a"], encode, pad_id=0, length_buckets=[4, 8])
    assert batch.jobs == jobs and batch.tokens.shape == (4, 4)
    assert batch.tokens[1].tolist() == encode("abcd")


def test_stream_seed_and_state_round_trip():
    assert stream_seed(0, 1, "propose/deduction") == stream_seed(0, 1, "propose/deduction")
    assert stream_seed(0, 1, "propose/deduction") != stream_seed(0, 2, "propose/deduction")
    assert stream_seed(0, 1, "propose/deduction") != stream_seed(0, 1, "solve/deduction")
    state = PipelineState(seed=3, next_step=7)
    assert PipelineState.from_json(state.to_json()) == state
    for bad in ({"seed": 1}, {"seed": 1, "next_step": "3"}, {"seed": 1, "next_step": 2.7},
                {"seed": True, "next_step": 2}, {"seed": 1, "next_step": 0}, [1, 2]):
        with pytest.raises(UserError, match="pipeline state is malformed"):
            PipelineState.from_json(bad)


def test_concat_rows_right_pads_to_the_widest_part():
    from azr_jax.data import concat_rows

    a = {"tokens": np.ones((2, 3), np.int32), "loss_mask": np.ones((2, 3), np.int32)}
    b = {"tokens": np.full((1, 5), 2, np.int32), "loss_mask": np.ones((1, 5), np.int32)}
    out = concat_rows([a, b], pad_id=7)
    assert out["tokens"].shape == (3, 5) and out["tokens"][0].tolist() == [1, 1, 1, 7, 7]
    assert out["loss_mask"][0].tolist() == [1, 1, 1, 0, 0] and out["tokens"][2].tolist() == [2] * 5


def test_a_prompt_of_exactly_max_prompt_len_tokens_is_kept():
    """The limit is inclusive: a prompt that fills it exactly fits (a strict check refused it and
    called the batch impossible)."""
    batch = build_prompt_batch(lambda index, rng: {"refs": ["epsilon"]}, render, encode, batch_size=2,
                               max_prompt_len=len("epsilon"), seed=0, pad_id=0, length_buckets=[8])
    assert [len(ids) for ids in batch.prompt_ids] == [7, 7]


def test_padding_rows_repeat_the_last_prompt():
    """Padding rows hold a real prompt (never an all-padding row with nothing to attend to) and
    are masked out by row_mask."""
    jobs = [{"i": i} for i in range(3)]
    batch = batch_from_prompts(jobs, ["ab", "abcd", "a"], encode, pad_id=0, length_buckets=[4, 8], batch_multiple=4)
    assert batch.row_mask.tolist() == [True, True, True, False]
    assert batch.tokens[3].tolist() == batch.tokens[2].tolist() and batch.mask[3].sum() == 1


def test_collate_refuses_a_row_count_that_does_not_fit():
    from azr_jax.data import collate

    items = [({"i": i}, "ab", encode("ab")) for i in range(3)]
    assert collate(items, pad_id=0, length_buckets=[4], batch_multiple=2, rows=4).tokens.shape == (4, 4)
    for rows, multiple in ((2, 1), (6, 4)):  # fewer rows than prompts; not a multiple of the shards
        with pytest.raises(ValueError, match=f"{rows} rows cannot hold 3 prompts in multiples of {multiple}"):
            collate(items, pad_id=0, length_buckets=[4], batch_multiple=multiple, rows=rows)


def test_pad_rows_appends_rows_that_carry_nothing():
    """Appended rows: `tokens` pad_id, every other array 0 (no loss, no weight); never fewer rows."""
    from azr_jax.data.pipeline import pad_rows

    part = {"tokens": np.ones((2, 3), np.int32), "loss_mask": np.ones((2, 3), np.int32)}
    out = pad_rows(part, 4, pad_id=7)
    assert out["tokens"].tolist() == [[1, 1, 1]] * 2 + [[7, 7, 7]] * 2
    assert out["loss_mask"].tolist() == [[1, 1, 1]] * 2 + [[0, 0, 0]] * 2
    assert pad_rows(part, 2, pad_id=7)["tokens"].tolist() == part["tokens"].tolist()
    with pytest.raises(ValueError, match="cannot pad 2 rows to 1"):
        pad_rows(part, 1, pad_id=7)


def test_the_prompt_limit_counts_tokens_not_characters():
    """max_prompt_len is in tokens: with one token per word every prompt of up to 3 references
    fits in 3 tokens, though each is longer than 3 characters."""
    batch_words = build_prompt_batch(pick, render, lambda text: [len(w) for w in text.split()], batch_size=5,
                                     max_prompt_len=3, seed=5, pad_id=0, length_buckets=[4])
    assert batch_words.size == 5 and max(len(job["refs"]) for job in batch_words.jobs) > 1
    assert all(len(text) > 3 for text in batch_words.prompts)


def test_rows_are_a_multiple_of_any_shard_count():
    """3 batch shards (e.g. a data axis of 3): 5 prompts take the batch bucket 8 rounded up to 9
    rows, which split evenly over the shards."""
    batch = _batch(6, batch_multiple=3)
    assert batch.tokens.shape[0] == 9 and batch.row_mask.tolist() == [True] * 5 + [False] * 4


def test_batch_from_prompts_refuses_unequal_jobs_and_prompts():
    with pytest.raises(ValueError):  # zip would drop the job without a prompt, silently
        batch_from_prompts([{"i": 0}, {"i": 1}], ["ab"], encode, pad_id=0, length_buckets=[4])


def test_prompt_ids_jobs_and_prompts_hold_the_real_rows_only():
    """The trainer generates for `prompt_ids` and pairs each completion with `jobs`: 5 prompts in
    a bucket of 8 rows are 5 entries each, not 8 (the padding rows repeat a prompt)."""
    batch = _batch(4, batch_multiple=4)
    assert batch.tokens.shape[0] == 8
    assert len(batch.prompt_ids) == len(batch.jobs) == len(batch.prompts) == batch.size == 5


def test_padding_uses_the_given_pad_id_and_shard_count():
    """`encode` ids are 1..97 (letters a..z 1..26, space 33): 99 marks padding and nothing else."""
    batch = _batch(4, pad_id=99)
    assert (batch.tokens[batch.mask == 0] == 99).all() and (batch.mask == 0).any()
    assert (batch.tokens[batch.mask == 1] != 99).all()
    jobs = [{"i": i} for i in range(3)]
    fixed = batch_from_prompts(jobs, ["ab", "abcd", "a"], encode, pad_id=99, length_buckets=[4, 8], batch_multiple=3)
    # 3 prompts: batch bucket 4, rounded up to a multiple of 3 shards = 6 rows; "ab" left-padded to 4
    assert fixed.tokens.shape == (6, 4) and fixed.row_mask.tolist() == [True] * 3 + [False] * 3
    assert fixed.tokens[0].tolist() == [99, 99, 1, 2]


def test_a_stream_draws_sixteen_candidates_per_prompt():
    """Only candidate `fit` is short enough (1 token; every other one is 7): for one prompt the
    stream draws candidates 0..15, so a fit at 15 is found and one at 16 never drawn."""
    def only(fit):
        return lambda index, rng: {"refs": ["a"] if index == fit else ["epsilon"]}

    args = dict(batch_size=1, max_prompt_len=1, seed=0, pad_id=0, length_buckets=[4])
    assert build_prompt_batch(only(15), render, encode, **args).prompts == ["a"]
    with pytest.raises(UserError, match="only 0 of 1 prompts fit in sampling.max_prompt_len=1 tokens after 16 draws"):
        build_prompt_batch(only(16), render, encode, **args)


def test_stream_seeds_follow_the_documented_formula():
    # sha256("seed/step/stream"), first 8 bytes little-endian, shifted to 63 bits: a resumed run
    # must draw the prompts the checkpointed (seed, step) stood for, so the formula is pinned.
    assert stream_seed(0, 1, "solve/deduction") == 6981698346739758223
    assert stream_seed(42, 7, "propose/abduction") == 3724321184519281465
    assert all(0 <= stream_seed(s, 1, "x") < 2**63 for s in range(50))


def test_each_candidate_is_drawn_with_the_generator_grain_derives_from_the_stream_seed():
    import grain

    from azr_jax.data import prompt_stream

    draws = lambda index, rng: {"index": index, "draw": int(rng.integers(2**62))}  # noqa: E731
    got = [job["draw"] for job, _, _ in prompt_stream(draws, str, lambda t: [1], max_prompt_len=8, seed=11,
                                                      num_candidates=4)]
    want = list(grain.MapDataset.range(4).seed(11).random_map(lambda i, rng: int(rng.integers(2**62))))
    assert got == want


def test_concat_rows_when_the_first_part_is_the_widest():
    from azr_jax.data import concat_rows

    a = {"tokens": np.full((1, 4), 3, np.int32)}
    b = {"tokens": np.ones((1, 2), np.int32)}
    c = {"tokens": np.ones((1, 1), np.int32)}
    assert concat_rows([a, b, c], pad_id=0)["tokens"].tolist() == [[3, 3, 3, 3], [1, 1, 0, 0], [1, 0, 0, 0]]
