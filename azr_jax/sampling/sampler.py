"""Batched generation: one jitted prefill, then a decode loop that never leaves the device.

    generate(params, config, prompt_tokens, rng, settings, n_samples=n) -> Completions

1. Host: prompts are left-padded to a length bucket, the batch to a batch bucket (dummy rows
   finish at once), so a handful of shapes cover every call.
2. `_prefill` (jit): runs the prompts through the decoder once (or `prefill_chunk` positions at
   a time), writing a KV cache as long as the prompt, then repeats each row n times on device
   (the n samples share one prefill) and widens the cache to hold the response.
3. `_decode` (jit, cache donated): a `lax.while_loop` that picks a token per row, records its
   logprob, checks EOS / stop sequences / budgets and feeds the token back, until every row is
   done or the response bucket is full. No host round-trip per token.

Logprobs are those of the temperature-scaled, untruncated distribution (see `select.py`), i.e.
exactly what the trainer recomputes over prompt + completion; `logprob_gap` measures the
difference so the trainer can log it every step.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from azr_jax.errors import UserError
from azr_jax.models import cache_axes, forward, init_cache
from azr_jax.models.decoder import output_logits
from azr_jax.sampling.buckets import DEFAULT_LENGTH_BUCKETS, bucket_batch, bucket_length
from azr_jax.sampling.select import choose_tokens
from azr_jax.sampling.settings import SamplingSettings
from azr_jax.sharding import constrain, logical_to_pspec, mesh_rules
from azr_jax.sampling.stopping import WINDOW_FILL, ends_with_stop, eos_array, is_eos, push_window, stop_table


@dataclass(frozen=True)
class Completions:
    """Generated tokens for B prompts x n samples, rows prompt-major (row i*n + j).

    tokens [B*n, R] int32: the completion, `pad_id` after its end (R = settings.max_new_tokens).
    logprobs [B*n, R] float32: log p(token) under the temperature-scaled distribution, 0 after the end.
    lengths [B*n] int32: tokens generated, including the EOS token / stop sequence.
    finished [B*n] bool: ended by EOS or a stop sequence (False: cut off by its budget).
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    finished: np.ndarray

    def as_lists(self) -> list[list[int]]:
        """Each row's completion tokens, without padding."""
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths)]


def _rules_items(rules) -> tuple:
    """Logical-axis rules as a hashable tuple (they are a static argument of the jitted code)."""
    if rules is None:
        return ()
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in dict(rules).items())


def _batch_axes(mesh, rules) -> tuple:
    """The mesh axes the batch dimension is split over, resolved as `sharding.logical_to_pspec`
    does everywhere else (an axis absent from the mesh, or of size 1, is dropped)."""
    table = dict(_rules_items(rules))
    if mesh is None or table.get("batch") is None:
        return ()
    spec = logical_to_pspec(("batch",), table, mesh=mesh)
    axes = spec[0] if len(spec) else None
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def _batch_shards(mesh, rules) -> int:
    """How many ways the batch axis is split on this mesh under these rules."""
    return int(np.prod([mesh.shape[a] for a in _batch_axes(mesh, rules)]))


def _batch_spec(mesh, rules, ndim: int):
    """PartitionSpec with the batch axis (dim 0) sharded per the rules, the rest replicated."""
    return jax.sharding.PartitionSpec(_batch_axes(mesh, rules) or None, *([None] * (ndim - 1)))


def _in_mesh(mesh, rules):
    """At trace time, `constrain` (here and in the model) pins activations to the mesh."""
    if mesh is None:
        return contextlib.nullcontext()
    return mesh_rules(mesh, dict(rules))


def _prefill_in_chunks(params, tokens_bt, positions_bt, mask_bt, chunk: int, *, config, compute_dtype):
    """The prompt pass `chunk` positions at a time (a `lax.scan` over chunks writing one cache):
    each chunk's queries attend to the cache so far, so the attention scores are [B, N, chunk,
    slots] instead of [B, N, P, P]. The prompt is first left-padded to whole chunks (masked
    slots, which no query attends to). Returns the cache and the last position's normed state."""
    batch, prompt_len = tokens_bt.shape
    n_chunks = -(-prompt_len // chunk)
    pad = ((0, 0), (n_chunks * chunk - prompt_len, 0))
    by_chunk = lambda x: jnp.pad(x, pad).reshape(batch, n_chunks, chunk).swapaxes(0, 1)  # noqa: E731

    def one_chunk(cache, xs):
        tokens_bc, positions_bc, mask_bc = xs
        x_bcd, cache = forward(params, tokens_bc, positions_bc, config=config, mask_bt=mask_bc, cache=cache,
                               compute_dtype=compute_dtype, head=False)
        return cache, x_bcd[:, -1]

    cache = init_cache(config, batch, n_chunks * chunk, compute_dtype)
    cache, last_cbd = jax.lax.scan(one_chunk, cache, (by_chunk(tokens_bt), by_chunk(positions_bt), by_chunk(mask_bt)))
    return cache, last_cbd[-1]


@functools.partial(jax.jit, static_argnames=("config", "compute_dtype", "n_samples", "response_len", "mesh", "rules",
                                             "prefill_chunk"))
def _prefill(params, tokens_bt, positions_bt, mask_bt, *, config, compute_dtype, n_samples, response_len, mesh, rules,
             prefill_chunk=0):
    """Prompt pass; returns the cache (rows repeated n times, room for the response) and the
    last-position logits [B*n, V] from which the first token is drawn."""
    with _in_mesh(mesh, rules):
        batch, prompt_len = tokens_bt.shape
        if 0 < prefill_chunk < prompt_len:
            cache, last_bd = _prefill_in_chunks(params, tokens_bt, positions_bt, mask_bt, prefill_chunk,
                                                config=config, compute_dtype=compute_dtype)
            logits_bv = output_logits(params, last_bd, config, compute_dtype)
        else:
            cache = init_cache(config, batch, prompt_len, compute_dtype)
            # Only the last position's logits are needed: take the final hidden state and apply the
            # output head to it alone, so the unused [B, P, V] logits are dead code XLA removes.
            _, cache, hidden_lbtd = forward(params, tokens_bt, positions_bt, config=config, mask_bt=mask_bt,
                                            cache=cache, compute_dtype=compute_dtype, return_hidden=True)
            logits_bv = output_logits(params, hidden_lbtd[-1, :, -1], config, compute_dtype)
        logits_bv = constrain(jnp.repeat(logits_bv, n_samples, axis=0), ("batch", "vocab"))
        # The n samples of a prompt start from copies of its cache rows, widened for the response
        # (the last generated token is never fed back, but one spare slot is cheap).
        axes = cache_axes(config)
        kv_pad = ((0, 0), (0, 0), (0, response_len), (0, 0), (0, 0))
        cache = {
            "k": constrain(jnp.pad(jnp.repeat(cache["k"], n_samples, axis=1), kv_pad), axes["k"]),
            "v": constrain(jnp.pad(jnp.repeat(cache["v"], n_samples, axis=1), kv_pad), axes["v"]),
            "mask": constrain(jnp.pad(jnp.repeat(cache["mask"], n_samples, axis=0), ((0, 0), (0, response_len))),
                              axes["mask"]),
            "index": cache["index"],
        }
        return cache, logits_bv


@functools.partial(
    jax.jit,
    static_argnames=("config", "compute_dtype", "response_len", "greedy", "top_k", "use_top_p", "pad_id", "mesh", "rules"),
    donate_argnames=("cache",),
)
def _decode(params, cache, logits_bv, first_pos_b, budgets_b, row_ids_b, rng, temperature, top_p, eos_e, stops_sl,
            *, config, compute_dtype, response_len, greedy, top_k, use_top_p, pad_id, mesh, rules):
    """The on-device decode loop. Returns tokens [B, R], logprobs [B, R], lengths [B], finished [B]
    and the spent cache (returned so its donated buffer is reused in place, then dropped)."""
    batch = logits_bv.shape[0]

    def pick(step, logits_bv, s):
        # One key per (row, step): a row's draws do not depend on batch padding or sharding.
        keys_b = jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(rng, r), step))(row_ids_b)
        tok_b, lp_b = choose_tokens(logits_bv, keys_b, temperature, top_p, greedy=greedy, top_k=top_k, use_top_p=use_top_p)
        active_b = ~s["done"]
        tok_b = jnp.where(active_b, tok_b, pad_id)
        lp_b = jnp.where(active_b, lp_b, 0.0)
        window = jnp.where(active_b[:, None], push_window(s["window"], tok_b), s["window"])
        hit_b = active_b & (is_eos(tok_b, eos_e) | ends_with_stop(window, stops_sl))
        lengths_b = s["lengths"] + active_b.astype(jnp.int32)
        return dict(
            s,
            tokens=jax.lax.dynamic_update_slice(s["tokens"], tok_b[:, None], (0, step)),
            logprobs=jax.lax.dynamic_update_slice(s["logprobs"], lp_b[:, None], (0, step)),
            lengths=lengths_b,
            window=window,
            finished=s["finished"] | hit_b,
            done=s["done"] | hit_b | (lengths_b >= budgets_b),
            last=tok_b,
        )

    def cond(carry):
        step, _, s = carry
        return (step < response_len) & ~jnp.all(s["done"])

    def body(carry):
        step, cache, s = carry
        # Feed back the token chosen at step - 1; it sits at position first_pos + step - 1.
        positions_b1 = (first_pos_b + step - 1)[:, None]
        logits_b1v, cache = forward(params, s["last"][:, None], positions_b1, config=config,
                                    mask_bt=jnp.ones((batch, 1), jnp.int32), cache=cache, compute_dtype=compute_dtype)
        return step + 1, cache, pick(step, logits_b1v[:, 0], s)

    with _in_mesh(mesh, rules):
        rows = lambda x: constrain(x, ("batch",) + (None,) * (x.ndim - 1))
        state = dict(
            tokens=rows(jnp.full((batch, response_len), pad_id, jnp.int32)),
            logprobs=rows(jnp.zeros((batch, response_len), jnp.float32)),
            lengths=rows(jnp.zeros((batch,), jnp.int32)),
            window=rows(jnp.full((batch, stops_sl.shape[1]), WINDOW_FILL, jnp.int32)),
            finished=rows(jnp.zeros((batch,), bool)),
            done=rows(budgets_b <= 0),
            last=rows(jnp.zeros((batch,), jnp.int32)),
        )
        state = pick(0, logits_bv, state)
        _, cache, state = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, state))
    return state["tokens"], state["logprobs"], state["lengths"], state["finished"], cache


def _check_prompts(prompt_tokens, vocab_size: int) -> list[list[int]]:
    prompt_tokens = list(prompt_tokens)  # a 2-D array too (its truth value is ambiguous)
    if not prompt_tokens:
        raise UserError("generate needs at least one prompt")
    out = []
    for i, p in enumerate(prompt_tokens):
        kind = np.asarray(p).dtype
        if len(p) and kind.kind not in "iu":  # int() would truncate 1.9 to token 1
            raise UserError(f"prompt {i} holds {kind} values, not token ids")
        p = [int(t) for t in p]
        if not p:
            raise UserError(f"prompt {i} is empty")
        if min(p) < 0 or max(p) >= vocab_size:
            raise UserError(f"prompt {i} has a token id outside [0, {vocab_size})")
        out.append(p)
    return out


def _to_host(x) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def generate(params, config, prompt_tokens, rng, settings: SamplingSettings, *, n_samples: int = 1, mesh=None,
             rules=None, compute_dtype=jnp.float32, pad_id: int = 0,
             length_buckets=DEFAULT_LENGTH_BUCKETS, max_rows: int | None = None, prefill_chunk: int = 0,
             first_row: int = 0) -> Completions:
    """Sample `n_samples` completions for each prompt (lists of token ids).

    With a mesh, the batch is split over the mesh axes that `rules["batch"]` names and the
    model's own constraints shard heads over `tensor`; params should already be placed.
    `max_rows` bounds the rows (prompts x n_samples) decoded at once, and so the KV cache: the
    prompts are generated in consecutive calls of max(1, max_rows // n_samples) prompts, each
    rounded up to the batch bucket and the batch shards as any call is. Each row's draws depend
    only on `rng` and its row index: in float32 the split samples the same tokens; in bfloat16
    the other batch shapes can round a logit differently and so flip a draw. `prefill_chunk` > 0
    runs a prompt bucket longer than it through the model that many positions at a time
    (`sampling.prefill_chunk`: the prefill's attention scores shrink from P x P to chunk x P per
    head; the same cache and first logits up to float rounding). Rows are numbered from
    `first_row`: a caller that splits one batch over several calls passes each call's offset
    (prompts before it × n_samples) and samples what one call would.
    """
    prompts = _check_prompts(prompt_tokens, config.vocab_size)
    if n_samples <= 0:
        raise UserError(f"n_samples must be positive, got {n_samples}")
    if settings.budgets is not None and len(settings.budgets) != len(prompts):
        raise UserError(f"sampling budgets has {len(settings.budgets)} entries for {len(prompts)} prompts")
    if mesh is not None and rules is None:
        raise UserError("generate with a mesh needs the logical-axis rules (config.mesh.rules)")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows <= 0):
        raise UserError(f"max_rows must be a positive int or None, got {max_rows!r}")
    if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 0:
        raise UserError(f"prefill_chunk must be an int >= 0 (0 = the whole prompt at once), got {prefill_chunk!r}")
    budgets = list(settings.budgets) if settings.budgets is not None else [settings.max_new_tokens] * len(prompts)
    per_call = len(prompts) if max_rows is None else max(1, max_rows // n_samples)
    kwargs = dict(n_samples=n_samples, mesh=mesh, rules_t=_rules_items(rules), compute_dtype=compute_dtype,
                  pad_id=pad_id, length_buckets=length_buckets, prefill_chunk=prefill_chunk)
    parts = [_generate_rows(params, config, prompts[i:i + per_call], budgets[i:i + per_call], rng, settings,
                            first_row=first_row + i * n_samples, **kwargs)
             for i in range(0, len(prompts), per_call)]
    if len(parts) == 1:
        return parts[0]
    return Completions(*(np.concatenate([getattr(c, f) for c in parts]) for f in
                         ("tokens", "logprobs", "lengths", "finished")))


def _generate_rows(params, config, prompts, budgets_p, rng, settings, *, first_row: int, n_samples, mesh, rules_t,
                   compute_dtype, pad_id, length_buckets, prefill_chunk) -> Completions:
    """One prefill + decode over these prompts; their rows are numbered from `first_row`."""
    n_prompts = len(prompts)
    rows = bucket_batch(n_prompts, _batch_shards(mesh, rules_t))
    prompt_len = bucket_length(max(len(p) for p in prompts), length_buckets)
    response_len = bucket_length(settings.max_new_tokens, length_buckets)

    tokens = np.full((rows, prompt_len), pad_id, np.int32)
    mask = np.zeros((rows, prompt_len), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, prompt_len - len(p):] = p
        mask[i, prompt_len - len(p):] = 1
    mask[n_prompts:, -1] = 1  # dummy rows hold one pad token (an all-masked row has no key to attend to)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    budgets = np.zeros((rows,), np.int32)  # dummy rows: budget 0, done before they start
    budgets[:n_prompts] = budgets_p
    budgets = np.minimum(budgets, settings.max_new_tokens)

    if mesh is not None:
        put = lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, _batch_spec(mesh, rules_t, x.ndim)))
    else:
        put = jnp.asarray
    cache, logits = _prefill(params, put(tokens), put(positions), put(mask), config=config,
                             compute_dtype=compute_dtype, n_samples=n_samples, response_len=response_len,
                             mesh=mesh, rules=rules_t, prefill_chunk=prefill_chunk)
    first_pos = np.repeat(mask.sum(axis=1), n_samples).astype(np.int32)
    # Row ids key each row's draws; dummy rows past n_prompts * n_samples are dropped below.
    row_ids = first_row + np.arange(rows * n_samples, dtype=np.int32)
    out = _decode(
        params, cache, logits, put(first_pos), put(np.repeat(budgets, n_samples)),
        put(row_ids), rng,
        jnp.float32(settings.temperature), jnp.float32(settings.top_p),
        jnp.asarray(eos_array(settings.eos_ids)), jnp.asarray(stop_table(settings.stop_sequences)),
        config=config, compute_dtype=compute_dtype, response_len=response_len, greedy=settings.greedy,
        top_k=settings.top_k, use_top_p=settings.top_p < 1.0, pad_id=pad_id, mesh=mesh, rules=rules_t,
    )
    keep, width = n_prompts * n_samples, settings.max_new_tokens
    tokens_out, logprobs_out, lengths_out, finished_out = (_to_host(x) for x in out[:4])
    return Completions(tokens=tokens_out[:keep, :width], logprobs=logprobs_out[:keep, :width],
                       lengths=lengths_out[:keep], finished=finished_out[:keep])


def logprob_gap(sampler_lp, trainer_lp, mask) -> dict:
    """How far the sampler's logprobs are from the trainer's over the masked (response) tokens.

    Returns max and mean absolute difference, and the mean of (sampler - trainer), whose sign
    shows a systematic bias; all 0 when the two agree. Works on numpy or JAX arrays.
    """
    m = jnp.asarray(mask, jnp.float32)
    diff = (jnp.asarray(sampler_lp, jnp.float32) - jnp.asarray(trainer_lp, jnp.float32)) * m
    count = jnp.maximum(jnp.sum(m), 1.0)
    return {
        "logprob_gap_max": jnp.max(jnp.abs(diff)),
        "logprob_gap_mean": jnp.sum(jnp.abs(diff)) / count,
        "logprob_gap_bias": jnp.sum(diff) / count,
    }
