"""The length-bucketed update equals the plain padded update; packing keeps every token's
position, mask and weight; the logprob gap comes out of the update pass itself."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from azr_jax.errors import UserError
from azr_jax.rl.bucketed import length_bucketed_micro_batches, make_bucketed_train_step
from azr_jax.rl.logprobs import token_logprobs
from azr_jax.rl.update import init_train_state, make_train_step
from azr_jax.sharding import make_mesh
from tests.rl.test_update import BATCH, CFG, OPTIM, PARAMS, RL, RULES, _assert_same_params, _logprobs_fn, _one_step

BUCKETS = (4, 8, 12)


def test_packing_moves_spans_to_the_front_longest_first():
    micro = length_bucketed_micro_batches(BATCH, 4, BUCKETS)
    lengths = BATCH["mask"].sum(1)
    assert len(micro) == 4
    packed_lengths = np.concatenate([m["mask"].sum(1) for m in micro])
    assert list(packed_lengths) == sorted(lengths, reverse=True)
    for m in micro:
        width = m["tokens"].shape[1]
        assert width in BUCKETS and width >= m["mask"].sum(1).max()
        assert (m["mask"][:, 0] == 1).all()  # every span starts at column 0
        for row in range(4):
            n = m["mask"][row].sum()
            assert list(m["positions"][row, :n]) == list(range(n))  # positions unchanged by the move
    # The multiset of (token, loss-mask, advantage) over real tokens is unchanged.
    def triples(batches):
        return sorted((int(t), float(lm), float(a)) for b in batches for t, lm, a, mk in
                      zip(b["tokens"].ravel(), b["loss_mask"].ravel(), b["advantages"].ravel(), b["mask"].ravel()) if mk)
    assert triples(micro) == triples([BATCH])


def test_packing_pads_the_last_micro_batch_and_rejects_gaps():
    rows = {k: v[:6] for k, v in BATCH.items()}
    micro = length_bucketed_micro_batches(rows, 4, BUCKETS)
    assert [m["tokens"].shape[0] for m in micro] == [4, 4]
    assert micro[1]["mask"][2:].sum() == 0  # two empty rows
    broken = dict(rows, mask=rows["mask"].copy())
    row = 0
    start = int(broken["mask"][row].argmax())
    broken["mask"][row, start + 1] = 0
    with pytest.raises(ValueError, match="non-contiguous"):
        length_bucketed_micro_batches(broken, 4, BUCKETS)


@pytest.mark.parametrize("micro", [4, 5, 16])  # 5: the last micro-batch is topped up
def test_bucketed_step_equals_padded_step(micro):
    plain_state, plain_metrics = _one_step(16)
    step = make_bucketed_train_step(CFG, dataclasses.replace(RL, micro_batch_size=micro), OPTIM,
                                    length_buckets=BUCKETS, compute_dtype=jnp.float32)
    state, metrics = step(init_train_state(CFG, OPTIM, PARAMS), BATCH)
    metrics = jax.tree.map(float, metrics)
    _assert_same_params(state.params, plain_state.params)
    _assert_same_params(state.opt_state, plain_state.opt_state)
    assert int(state.step) == 1
    for key, value in plain_metrics.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "seq-mean-token-sum", "token-mean-per-micro-batch"])
def test_bucketed_step_equals_padded_step_for_every_aggregation(loss_agg):
    # The weights are computed once over the whole batch in row order, so packing (which sorts
    # rows by length) must not change what each token weighs, whatever the aggregation.
    rl = dataclasses.replace(RL, micro_batch_size=4, loss_agg=loss_agg)
    plain = make_train_step(CFG, rl, OPTIM, compute_dtype=jnp.float32)
    packed = make_bucketed_train_step(CFG, rl, OPTIM, length_buckets=BUCKETS, compute_dtype=jnp.float32)
    plain_state, plain_metrics = plain(init_train_state(CFG, OPTIM, PARAMS), BATCH)
    state, metrics = packed(init_train_state(CFG, OPTIM, PARAMS), BATCH)
    _assert_same_params(state.params, plain_state.params)
    assert float(metrics["loss"]) == pytest.approx(float(plain_metrics["loss"]), rel=1e-5, abs=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(float(plain_metrics["grad_norm"]), rel=1e-5)


def test_update_reports_the_sampler_trainer_gap():
    # BATCH's old logprobs are the trainer's plus N(0, 0.3) noise on response tokens.
    _, metrics = _one_step(16)
    assert 0.1 < metrics["logprob_gap_mean"] < 0.4 and metrics["logprob_gap_max"] > 0.5
    exact = dict(BATCH)
    step = make_bucketed_train_step(CFG, RL, OPTIM, length_buckets=BUCKETS, compute_dtype=jnp.float32)
    exact["old_logprobs"] = np.asarray(_logprobs_fn(jnp.float32)(PARAMS, BATCH))
    _, metrics = step(init_train_state(CFG, OPTIM, PARAMS), exact)
    assert float(metrics["logprob_gap_max"]) < 1e-5 and abs(float(metrics["logprob_gap_bias"])) < 1e-6


@pytest.mark.slow
def test_bucketed_step_on_a_mesh_equals_single_device():
    plain_state, plain_metrics = _one_step(16)
    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 4})

    def put_rows(x):
        return jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))

    step = make_bucketed_train_step(CFG, dataclasses.replace(RL, micro_batch_size=8), OPTIM, length_buckets=BUCKETS,
                                    mesh=mesh, rules=RULES, put_rows=put_rows, compute_dtype=jnp.float32)
    state, metrics = step(init_train_state(CFG, OPTIM, PARAMS, mesh=mesh, rules=RULES), BATCH)
    _assert_same_params(state.params, plain_state.params)
    assert float(metrics["loss"]) == pytest.approx(plain_metrics["loss"], rel=1e-5)
    assert state.params["layers"]["q_proj_dnh"].sharding.spec == P(None, "fsdp", "tensor")


def test_bucketed_step_checks_its_input():
    with pytest.raises(UserError, match="cannot be split over the 8 devices"):
        make_bucketed_train_step(CFG, dataclasses.replace(RL, micro_batch_size=4), OPTIM, length_buckets=BUCKETS,
                                 mesh=make_mesh({"data": 1, "fsdp": 8, "tensor": 1}), rules=RULES)
    step = make_bucketed_train_step(CFG, RL, OPTIM, length_buckets=BUCKETS)
    per_block = dataclasses.replace(RL, micro_batch_size=5, loss_agg="token-mean-per-micro-batch")
    with pytest.raises(UserError, match="must be a multiple of 5"):
        make_bucketed_train_step(CFG, per_block, OPTIM, length_buckets=BUCKETS)(init_train_state(CFG, OPTIM, PARAMS), BATCH)
    with pytest.raises(UserError, match="missing"):
        step(init_train_state(CFG, OPTIM, PARAMS), {k: v for k, v in BATCH.items() if k != "advantages"})


def test_reference_logprobs_from_frozen_params_equal_precomputed_ones():
    """`train_step(state, batch, ref_params=P)` (the trainer's KL path) computes the reference
    logprobs on the packed micro-batches, at the rollout temperature; the result equals the plain
    step handed full-batch reference logprobs, and the KL it reports is that of the policy against P.
    At a temperature other than 1, so a reference pass that ignored it would differ."""
    temperature = 0.7
    kl_rl = dataclasses.replace(RL, kl_coef=0.2, kl_type="k3", micro_batch_size=4)
    # A reference that differs from the policy, so the KL term is not zero.
    ref_params = jax.tree.map(lambda x: x * 0.5, PARAMS)
    ref_logprobs = jax.jit(lambda p, b: token_logprobs(p, b, CFG, jnp.float32, temperature=temperature))
    with_ref = dict(BATCH, ref_logprobs=np.asarray(ref_logprobs(ref_params, BATCH)))
    plain = make_train_step(CFG, kl_rl, OPTIM, compute_dtype=jnp.float32, temperature=temperature)
    plain_state, plain_metrics = plain(init_train_state(CFG, OPTIM, PARAMS), with_ref)
    step = make_bucketed_train_step(CFG, kl_rl, OPTIM, length_buckets=BUCKETS, compute_dtype=jnp.float32,
                                    temperature=temperature)
    state, metrics = step(init_train_state(CFG, OPTIM, PARAMS), BATCH, ref_params=ref_params)
    _assert_same_params(state.params, plain_state.params)
    assert float(metrics["ref_kl"]) > 1e-3
    for key in ("loss", "pg_loss", "ref_kl"):
        assert float(metrics[key]) == pytest.approx(float(plain_metrics[key]), rel=1e-5, abs=1e-7), key
    # Against itself the policy's KL is zero.
    _, self_metrics = step(init_train_state(CFG, OPTIM, PARAMS), BATCH, ref_params=PARAMS)
    assert abs(float(self_metrics["ref_kl"])) < 1e-6
    with pytest.raises(UserError, match="ref_logprobs"):
        step(init_train_state(CFG, OPTIM, PARAMS), BATCH)


@pytest.mark.parametrize("bucketed", [False, True])
def test_a_non_finite_gradient_skips_the_update(bucketed):
    """One NaN advantage makes the gradient NaN: both update steps then leave params and the
    optimizer state as they were (verl skips such a step) and report `skipped`; the next finite
    batch updates as usual."""
    if bucketed:
        step = make_bucketed_train_step(CFG, RL, OPTIM, length_buckets=BUCKETS, compute_dtype=jnp.float32)
    else:
        step = make_train_step(CFG, RL, OPTIM, compute_dtype=jnp.float32)
    bad = dict(BATCH, advantages=np.where(BATCH["loss_mask"] > 0, np.nan, 0.0).astype(np.float32))
    state0 = init_train_state(CFG, OPTIM, PARAMS)
    opt_before = jax.tree.map(np.asarray, state0.opt_state)
    state, metrics = step(state0, bad)
    assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["grad_norm"]))
    _assert_same_params(state.params, PARAMS, atol=0.0)
    # The Adam state is kept; only the learning-rate schedule's count advances (verl steps its
    # scheduler on a skipped step too).
    def split(opt_state):
        is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
        counts = [int(x.count) for x in jax.tree.leaves(opt_state, is_leaf=is_schedule) if is_schedule(x)]
        rest = [np.asarray(x) for x in jax.tree.leaves(
            jax.tree.map(lambda x: None if is_schedule(x) else x, opt_state, is_leaf=is_schedule))]
        return counts, rest

    (counts_after, rest_after), (counts_before, rest_before) = split(state.opt_state), split(opt_before)
    assert counts_after == [c + 1 for c in counts_before] and counts_before
    for got, want in zip(rest_after, rest_before):
        np.testing.assert_array_equal(got, want)
    state, metrics = step(state, BATCH)
    assert float(metrics["skipped"]) == 0.0
    moved = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), state.params, PARAMS)
    assert min(jax.tree.leaves(moved)) > 0


@pytest.mark.parametrize("bucketed", [False, True])
def test_the_reported_learning_rate_is_the_one_each_update_used(bucketed):
    """Under a warmup of 2 updates the first runs at schedule(0) = 0 (the params do not move)
    and reports lr 0, the second at schedule(1), half the peak."""
    optim = dataclasses.replace(OPTIM, warmup_steps=2)
    if bucketed:
        step = make_bucketed_train_step(CFG, RL, optim, length_buckets=BUCKETS, compute_dtype=jnp.float32)
    else:
        step = make_train_step(CFG, RL, optim, compute_dtype=jnp.float32)
    state, metrics = step(init_train_state(CFG, optim, PARAMS), BATCH)
    assert float(metrics["lr"]) == 0.0
    _assert_same_params(state.params, PARAMS, atol=0.0)
    state, metrics = step(state, BATCH)
    assert float(metrics["lr"]) == pytest.approx(OPTIM.learning_rate / 2)
    moved = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), state.params, PARAMS)
    assert min(jax.tree.leaves(moved)) > 0


def test_a_batch_smaller_than_a_micro_batch_is_one_micro_batch():
    """6 rows under rl.micro_batch_size=32 (docs/rl.md: a batch smaller than micro_batch_size is one
    micro-batch), also under token-mean-per-micro-batch (one block): both steps equal the padded
    step with micro-batches of exactly 6 rows."""
    rows = {k: v[:6] for k, v in BATCH.items()}
    rl = dataclasses.replace(RL, micro_batch_size=32, loss_agg="token-mean-per-micro-batch")
    exact = make_train_step(CFG, dataclasses.replace(rl, micro_batch_size=6), OPTIM, compute_dtype=jnp.float32)
    want, want_metrics = exact(init_train_state(CFG, OPTIM, PARAMS), rows)
    for step in (make_train_step(CFG, rl, OPTIM, compute_dtype=jnp.float32),
                 make_bucketed_train_step(CFG, rl, OPTIM, length_buckets=BUCKETS, compute_dtype=jnp.float32)):
        state, metrics = step(init_train_state(CFG, OPTIM, PARAMS), rows)
        _assert_same_params(state.params, want.params)
        assert float(metrics["loss"]) == pytest.approx(float(want_metrics["loss"]), rel=1e-5, abs=1e-7)


def test_the_bucketed_reference_pass_runs_the_forward_in_compute_dtype_and_chunks(monkeypatch):
    """`train_step(state, batch, ref_params=P)` computes the KL reference's logprobs in the step's
    compute dtype (bfloat16 in AZR runs) and with `rl.attention_chunk` / `rl.logits_chunk`, none
    of which changes float32 values beyond rounding: the first forward traced is the reference
    pass's; the spy reads what it was given and stops the step there."""
    from azr_jax.rl import logprobs

    class Traced(Exception):
        pass

    seen = []

    def spy(*args, **kwargs):
        seen.append((kwargs.get("compute_dtype"), kwargs.get("attention_chunk"), kwargs.get("head")))
        raise Traced

    monkeypatch.setattr(logprobs, "forward", spy)
    rl = dataclasses.replace(RL, kl_coef=0.1, micro_batch_size=4, attention_chunk=4, logits_chunk=4)
    step = make_bucketed_train_step(CFG, rl, OPTIM, length_buckets=BUCKETS, compute_dtype=jnp.bfloat16)
    with pytest.raises(Traced):
        step(None, BATCH, ref_params=PARAMS)  # the state is first needed after the reference pass
    assert seen == [(jnp.bfloat16, 4, False)]  # head=False: the output head runs in chunks


def test_reference_logprobs_in_the_batch_win_over_ref_params(monkeypatch):
    """A batch that carries `ref_logprobs` is used as given even when `ref_params` is passed too
    (the docstring's "either ... or"): no reference pass runs. Spies stop the step at the first
    forward pass, which must then be the update's, not the reference's."""
    from azr_jax.rl import bucketed, logprobs

    class ReferenceRan(Exception):
        pass

    class UpdateTraced(Exception):
        pass

    def reference_spy(*args, **kwargs):
        raise ReferenceRan

    def forward_spy(*args, **kwargs):
        raise UpdateTraced

    monkeypatch.setattr(bucketed, "token_logprobs", reference_spy)
    monkeypatch.setattr(logprobs, "forward", forward_spy)
    rl = dataclasses.replace(RL, kl_coef=0.1, micro_batch_size=4)
    step = make_bucketed_train_step(CFG, rl, OPTIM, length_buckets=BUCKETS, compute_dtype=jnp.float32)
    batch = dict(BATCH, ref_logprobs=BATCH["old_logprobs"])
    with pytest.raises(UpdateTraced):
        step(init_train_state(CFG, OPTIM, PARAMS), batch, ref_params=PARAMS)
