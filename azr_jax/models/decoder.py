"""Pure-JAX dense decoder (Qwen2/2.5, Llama 3.x, Qwen3) with a static-shape KV cache.

Parameters are a nested dict (tree names and shapes are a contract, see docs/architecture.md);
the layers are stacked on a leading axis and run with `lax.scan` (or a Python loop:
`ModelConfig.scan_layers`). Numerics: RMSNorm, RoPE and
softmax in float32, matmuls in `compute_dtype` (float32 matmuls at HIGHEST precision, so GPU
TF32 / TPU bf16 passes never leak into float32 runs), logits in float32.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from azr_jax.models.config import ModelConfig
from azr_jax.models.rope import apply_rope, inverse_frequencies, rope_cos_sin
from azr_jax.sharding import constrain

Params = dict
Cache = dict

# Masked attention scores. Finite (not -inf) so a query with no visible key (a padding row)
# gets a uniform softmax instead of NaN; far below any real score so it never wins.
_MASKED_SCORE = -1e30
UNKNOWN_TOKEN_LOGIT = -1e9  # ids past ModelConfig.tokenizer_vocab_size (see output_logits)
_INIT_STD = 0.02  # transformers' initializer_range for these families

_BIASES = ("q_bias_nh", "k_bias_kh", "v_bias_kh")  # added in float32 (see `forward`)
_ACT_BTD = ("batch", "length", "embed")

# Rematerialisation of the layer in the backward pass (the update step's `model.remat`):
# what is saved per layer; everything else is recomputed.
REMAT_POLICIES = {
    "none": None,  # no jax.checkpoint: all activations saved
    "full": jax.checkpoint_policies.nothing_saveable,  # only the layer's inputs
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # + projection/MLP matmuls
}


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


def param_shapes(cfg: ModelConfig) -> dict:
    """The parameter tree with shape tuples as leaves."""
    L, D, N, K, H, F, V = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                           cfg.head_dim, cfg.intermediate_size, cfg.vocab_size)
    layers = {
        "attn_norm_d": (L, D),
        "q_proj_dnh": (L, D, N, H),
        "k_proj_dkh": (L, D, K, H),
        "v_proj_dkh": (L, D, K, H),
        "o_proj_nhd": (L, N, H, D),
        "mlp_norm_d": (L, D),
        "gate_proj_df": (L, D, F),
        "up_proj_df": (L, D, F),
        "down_proj_fd": (L, F, D),
    }
    if cfg.attention_bias:
        layers.update(q_bias_nh=(L, N, H), k_bias_kh=(L, K, H), v_bias_kh=(L, K, H))
    if cfg.qk_norm:
        layers.update(q_norm_h=(L, H), k_norm_h=(L, H))
    tree = {"embed": {"embedding_vd": (V, D)}, "layers": layers, "final_norm_d": (D,)}
    if not cfg.tie_word_embeddings:
        tree["lm_head_dv"] = (D, V)
    return tree


def param_axes(cfg: ModelConfig) -> dict:
    """The parameter tree with tuples of logical axis names as leaves."""
    layers = {
        "attn_norm_d": ("layers", "norm"),
        "q_proj_dnh": ("layers", "embed", "heads", "head_dim"),
        "k_proj_dkh": ("layers", "embed", "kv_heads", "head_dim"),
        "v_proj_dkh": ("layers", "embed", "kv_heads", "head_dim"),
        "o_proj_nhd": ("layers", "heads", "head_dim", "embed"),
        "mlp_norm_d": ("layers", "norm"),
        "gate_proj_df": ("layers", "embed", "mlp"),
        "up_proj_df": ("layers", "embed", "mlp"),
        "down_proj_fd": ("layers", "mlp", "embed"),
    }
    if cfg.attention_bias:
        layers.update(
            q_bias_nh=("layers", "heads", "head_dim"),
            k_bias_kh=("layers", "kv_heads", "head_dim"),
            v_bias_kh=("layers", "kv_heads", "head_dim"),
        )
    if cfg.qk_norm:
        layers.update(q_norm_h=("layers", "norm"), k_norm_h=("layers", "norm"))
    tree = {"embed": {"embedding_vd": ("vocab", "embed")}, "layers": layers, "final_norm_d": ("norm",)}
    if not cfg.tie_word_embeddings:
        tree["lm_head_dv"] = ("embed", "vocab")
    return tree


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def init_params(cfg: ModelConfig, rng: jax.Array, dtype: Any = jnp.float32) -> Params:
    """Random parameters: N(0, 0.02) weights, unit norms, zero biases (as transformers inits)."""
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree.flatten_with_path(shapes, is_leaf=_is_shape)
    keys = jax.random.split(rng, len(leaves))
    out = []
    for (path, shape), key in zip(leaves, keys):
        name = path[-1].key
        if "norm" in name:
            out.append(jnp.ones(shape, dtype))
        elif "bias" in name:
            out.append(jnp.zeros(shape, dtype))
        else:
            out.append((_INIT_STD * jax.random.normal(key, shape, jnp.float32)).astype(dtype))
    return jax.tree.unflatten(treedef, out)


def param_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh, rules: dict) -> dict:
    """NamedShardings for `init_params(cfg, ...)`, with the replication fallback for axes the
    mesh does not divide (computed from abstract shapes; nothing is allocated)."""
    from azr_jax.sharding import tree_shardings

    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), param_shapes(cfg),
                          is_leaf=_is_shape)
    return tree_shardings(param_axes(cfg), mesh, rules, shapes)


def idle_mesh_axes(cfg: ModelConfig, mesh: jax.sharding.Mesh, rules: dict) -> list[str]:
    """Mesh axes of more than one device that `rules` give to parameter dimensions, yet that
    shard no parameter: none of those dimensions divides by the axis size (the replication
    fallback), so every parameter, its gradient and its optimizer state are whole on each of
    the axis's devices (`embed` -> `fsdp` with a hidden size the fsdp count does not divide)."""
    specs = [sharding.spec for sharding in jax.tree.leaves(param_shardings(cfg, mesh, rules))]
    used = {ax for spec in specs for entry in spec if entry is not None
            for ax in ((entry,) if isinstance(entry, str) else entry)}
    names = {name for axes in jax.tree.leaves(param_axes(cfg), is_leaf=lambda x: isinstance(x, tuple))
             for name in axes if name is not None}
    targeted = set()
    for name in names:
        target = rules.get(name)
        targeted.update([] if target is None else [target] if isinstance(target, str) else target)
    return [ax for ax, size in mesh.shape.items() if size > 1 and ax in targeted and ax not in used]


# ----------------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------------


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = jnp.bfloat16) -> Cache:
    """An empty cache of `max_len` slots per row: k/v [L, B, S, K, H], mask [B, S], index 0."""
    kv_shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return {
        "k": jnp.zeros(kv_shape, dtype),
        "v": jnp.zeros(kv_shape, dtype),
        "mask": jnp.zeros((batch, max_len), jnp.bool_),
        "index": jnp.zeros((), jnp.int32),
    }


def cache_axes(cfg: ModelConfig) -> dict:
    """Logical axes of the cache tree (for sharding it like the activations)."""
    kv = ("layers", "batch", "cache_length", "kv_heads", "head_dim")
    return {"k": kv, "v": kv, "mask": ("batch", "cache_length"), "index": ()}


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


def rms_norm(x: jnp.ndarray, weight: jnp.ndarray, eps: float) -> jnp.ndarray:
    """RMSNorm over the last axis in float32; returns x's dtype.

    The normalised values and the weight are rounded to x's dtype before they multiply, as
    transformers does, so a bfloat16 RMSNorm is bit-identical to its module (weighting in float32
    and rounding after differs by one bf16 ulp in about a quarter of the values). The product
    itself is taken in float32, where two bf16 factors multiply exactly, so the forward value is
    the same as a bf16 multiply while the backward sums the weight's gradient over every token in
    float32 (a bf16 multiply would sum it in bf16, twice the gradient error).
    """
    x32 = x.astype(jnp.float32)
    normed = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    rounded = normed.astype(x.dtype).astype(jnp.float32)
    return (rounded * weight.astype(x.dtype).astype(jnp.float32)).astype(x.dtype)


def _precision(compute_dtype: Any) -> lax.Precision:
    return lax.Precision.HIGHEST if jnp.dtype(compute_dtype) == jnp.float32 else lax.Precision.DEFAULT


def output_logits(params, x_md: jnp.ndarray, cfg: ModelConfig, compute_dtype: Any = jnp.float32) -> jnp.ndarray:
    """float32 logits [M, V] of final normed states [M, D] (the forward pass and the sampler).

    Ids at or above `cfg.tokenizer_vocab_size` get a large finite logit, not -inf: their
    probability underflows to exactly 0 and the entropy's p * logit stays 0 (0 * inf is nan).
    """
    cd = jnp.dtype(compute_dtype)
    if cfg.tie_word_embeddings:
        spec, head = "md,vd->mv", params["embed"]["embedding_vd"]
    else:
        spec, head = "md,dv->mv", params["lm_head_dv"]
    logits_mv = jnp.einsum(spec, x_md.astype(cd), head.astype(cd),
                           preferred_element_type=jnp.float32, precision=_precision(cd))
    if cfg.tokenizer_vocab_size is not None and cfg.tokenizer_vocab_size < cfg.vocab_size:
        known_v = jnp.arange(cfg.vocab_size) < cfg.tokenizer_vocab_size
        logits_mv = jnp.where(known_v, logits_mv, UNKNOWN_TOKEN_LOGIT)
    return logits_mv


def _matmul(x, w, contract: int, precision):
    """Contract the last `contract` axes of x with the first `contract` axes of w.

    The leading (token) axes of x are flattened to one, so each matmul is 2-D: with batch and
    length as two contracting axes in the weight gradient, XLA:CPU copies a transposed
    [features, tokens] gradient first (measured: the MLP's backward twice as slow); a single
    token axis needs no copy. Same arithmetic on every backend.
    """
    lead, inner = x.shape[: x.ndim - contract], x.shape[x.ndim - contract:]
    k = 1
    for d in inner:
        k *= d
    out = w.shape[contract:]
    y = jnp.dot(x.reshape(-1, k), w.reshape(k, -1), precision=precision)
    return y.reshape(*lead, *out)


def _attention(q_btnh, k_bskh, v_bskh, allowed_bts, precision):
    """Grouped-query attention over a KV cache (the sampler's path); scores and softmax in float32."""
    b, t, n, h = q_btnh.shape
    kv = k_bskh.shape[2]
    q_btkgh = q_btnh.reshape(b, t, kv, n // kv, h)
    scores_bkgts = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh,
                              preferred_element_type=jnp.float32, precision=precision)
    scores_bkgts = scores_bkgts * (h ** -0.5)
    scores_bkgts = jnp.where(allowed_bts[:, None, None, :, :], scores_bkgts, _MASKED_SCORE)
    probs_bkgts = jax.nn.softmax(scores_bkgts, axis=-1).astype(v_bskh.dtype)
    out_btkgh = jnp.einsum("bkgts,bskh->btkgh", probs_bkgts, v_bskh, precision=precision)
    return out_btkgh.reshape(b, t, n, h)


# Full-sequence attention (training and logprob passes): the same arithmetic as `_attention`,
# laid out per KV head as [batch, kv_head, group * query, ...] with a hand-written backward.
# Every matmul then has one contracting axis, and the two gradients that contract over the
# queries (dK, dV) are written with the small operand first, so XLA:CPU transposes only [.., h]
# tensors, never the [queries, keys] probabilities (autodiff of `_attention` copied them three
# times per layer; measured in docs/benchmarks.md).


def _core_scores(q_bkmh, k_bksh, allowed_bkgts, precision):
    b, kv, m, h = q_bkmh.shape
    scores_bkms = jnp.einsum("bkmh,bksh->bkms", q_bkmh, k_bksh,
                             preferred_element_type=jnp.float32, precision=precision) * (h ** -0.5)
    t, s = allowed_bkgts.shape[3:]
    g = m // t
    scores_bkgts = jnp.where(allowed_bkgts, scores_bkms.reshape(b, kv, g, t, s), _MASKED_SCORE)
    return jax.nn.softmax(scores_bkgts, axis=-1).reshape(b, kv, m, s)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _core_attention(q_bkmh, k_bksh, v_bksh, allowed_bkgts, precision):
    return _core_attention_fwd(q_bkmh, k_bksh, v_bksh, allowed_bkgts, precision)[0]


def _core_attention_fwd(q_bkmh, k_bksh, v_bksh, allowed_bkgts, precision):
    probs_bkms = _core_scores(q_bkmh, k_bksh, allowed_bkgts, precision)
    out_bkmh = jnp.einsum("bkms,bksh->bkmh", probs_bkms.astype(v_bksh.dtype), v_bksh, precision=precision)
    return out_bkmh, (q_bkmh, k_bksh, v_bksh, allowed_bkgts, probs_bkms, out_bkmh)


def _core_attention_bwd(precision, residuals, d_out_bkmh):
    q_bkmh, k_bksh, v_bksh, allowed_bkgts, probs_bkms, out_bkmh = residuals
    b, kv, m, h = q_bkmh.shape
    t, s = allowed_bkgts.shape[3:]
    g = m // t
    d_probs_bkms = jnp.einsum("bkmh,bksh->bkms", d_out_bkmh, v_bksh,
                              preferred_element_type=jnp.float32, precision=precision)
    # Softmax backward. sum_s dP * P = dO . O per query (O = P V), a reduction over h instead of
    # over the keys. Masked scores got a constant, so their gradient is zero (as autodiff's).
    row_bkm1 = jnp.sum(d_out_bkmh.astype(jnp.float32) * out_bkmh.astype(jnp.float32), axis=-1, keepdims=True)
    d_scores_bkms = probs_bkms * (d_probs_bkms - row_bkm1)
    d_scores_bkgts = jnp.where(allowed_bkgts, d_scores_bkms.reshape(b, kv, g, t, s), 0.0)
    d_scores_bkms = (d_scores_bkgts * (h ** -0.5)).reshape(b, kv, m, s)
    d_q = jnp.einsum("bkms,bksh->bkmh", d_scores_bkms.astype(k_bksh.dtype), k_bksh, precision=precision)
    d_k = jnp.einsum("bkmh,bkms->bksh", q_bkmh, d_scores_bkms.astype(q_bkmh.dtype), precision=precision)
    d_v = jnp.einsum("bkmh,bkms->bksh", d_out_bkmh, probs_bkms.astype(d_out_bkmh.dtype), precision=precision)
    return d_q.astype(q_bkmh.dtype), d_k.astype(k_bksh.dtype), d_v.astype(v_bksh.dtype), None


_core_attention.defvjp(_core_attention_fwd, _core_attention_bwd)


def _sequence_attention(q_btnh, k_bskh, v_bskh, allowed_bts, precision):
    """`_attention` without a cache (keys = the T tokens), in the per-KV-head layout above."""
    b, t, n, h = q_btnh.shape
    kv = k_bskh.shape[2]
    g = n // kv
    q_bkmh = q_btnh.reshape(b, t, kv, g, h).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, h)
    k_bksh = k_bskh.transpose(0, 2, 1, 3)
    v_bksh = v_bskh.transpose(0, 2, 1, 3)
    out_bkmh = _core_attention(q_bkmh, k_bksh, v_bksh, allowed_bts[:, None, None, :, :], precision)
    return out_bkmh.reshape(b, kv, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


# The same attention a chunk of queries at a time (`attention_chunk`, training only): every
# query still sees all its keys, but only one chunk's [chunk, keys] scores are live. The forward
# pass keeps each query's score maximum and log of its softmax denominator instead of the
# probabilities, and the backward pass recomputes one chunk's probabilities at a time from them
# (FlashAttention's recipe, with whole key rows), adding up dK and dV over the chunks in float32.
# Each chunk builds its own causal mask from the chunk index and the [B, T] key mask, so nothing
# [T, T]-sized is ever stored.


def _query_chunks(x, axis: int, chunk: int):
    """x with `axis` zero-padded to a multiple of `chunk` and split: chunks become a new leading axis."""
    t = x.shape[axis]
    n = -(-t // chunk)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n * chunk - t)
    x = jnp.pad(x, pad)
    x = x.reshape(*x.shape[:axis], n, chunk, *x.shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)


def _join_query_chunks(x_n, axis: int, t: int):
    """The inverse of `_query_chunks` (padding dropped)."""
    x = jnp.moveaxis(x_n, 0, axis)
    x = x.reshape(*x.shape[:axis], x.shape[axis] * x.shape[axis + 1], *x.shape[axis + 2:])
    return lax.slice_in_dim(x, 0, t, axis=axis)


def _chunk_allowed(index, chunk: int, key_mask_bs):
    """[B, chunk, S]: query `index * chunk + c` may see key s <= it where key_mask_bs is set."""
    query_c = index * chunk + jnp.arange(chunk)
    key_s = jnp.arange(key_mask_bs.shape[1])
    return (key_s[None, None, :] <= query_c[None, :, None]) & key_mask_bs[:, None, :]


def _recomputed(body):
    """A chunk loop's body that saves nothing for a surrounding differentiation. Inside a scan
    over the layers, JAX would otherwise keep each chunk's mask, which depends on no input of
    the step's gradient, as a residual: [chunks, B, heads, chunk, S] booleans, T x T per head."""
    return jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)


def _chunk_scores(q_bkgch, k_bksh, allowed_bcs, precision):
    h = q_bkgch.shape[-1]
    scores = jnp.einsum("bkgch,bksh->bkgcs", q_bkgch, k_bksh,
                        preferred_element_type=jnp.float32, precision=precision) * (h ** -0.5)
    return jnp.where(allowed_bcs[:, None, None], scores, _MASKED_SCORE)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked_attention(q_bkgth, k_bksh, v_bksh, key_mask_bs, precision, chunk):
    return _chunked_attention_fwd(q_bkgth, k_bksh, v_bksh, key_mask_bs, precision, chunk)[0]


def _chunked_attention_fwd(q_bkgth, k_bksh, v_bksh, key_mask_bs, precision, chunk):
    t = q_bkgth.shape[3]

    def one_chunk(xs):
        index, q_bkgch = xs
        scores = _chunk_scores(q_bkgch, k_bksh, _chunk_allowed(index, chunk, key_mask_bs), precision)
        probs = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bkgcs,bksh->bkgch", probs.astype(v_bksh.dtype), v_bksh, precision=precision)
        # The maximum and the log-denominator are kept apart: a query that may see no key (left
        # padding) has every score at _MASKED_SCORE, and their sum, the log-sum-exp, rounds back
        # to _MASKED_SCORE, which would recompute its uniform 1/S probabilities as 1 each.
        top = jnp.max(scores, axis=-1)
        return out, top, jnp.log(jnp.sum(jnp.exp(scores - top[..., None]), axis=-1))

    q_n = _query_chunks(q_bkgth, 3, chunk)  # padded queries are computed and dropped
    out_n, top_n, log_denom_n = lax.map(_recomputed(one_chunk), (jnp.arange(q_n.shape[0]), q_n))
    out_bkgth = _join_query_chunks(out_n, 3, t)
    top_bkgt, log_denom_bkgt = _join_query_chunks(top_n, 3, t), _join_query_chunks(log_denom_n, 3, t)
    return out_bkgth, (q_bkgth, k_bksh, v_bksh, key_mask_bs, out_bkgth, top_bkgt, log_denom_bkgt)


def _chunked_attention_bwd(precision, chunk, residuals, d_out_bkgth):
    q_bkgth, k_bksh, v_bksh, key_mask_bs, out_bkgth, top_bkgt, log_denom_bkgt = residuals
    t = q_bkgth.shape[3]
    h = q_bkgth.shape[-1]

    def one_chunk(carry, xs):
        d_k, d_v = carry
        index, q_bkgch, out_bkgch, top_bkgc, log_denom_bkgc, d_out_bkgch = xs
        allowed_bcs = _chunk_allowed(index, chunk, key_mask_bs)
        scores = _chunk_scores(q_bkgch, k_bksh, allowed_bcs, precision)
        probs = jnp.exp((scores - top_bkgc[..., None]) - log_denom_bkgc[..., None])
        d_probs = jnp.einsum("bkgch,bksh->bkgcs", d_out_bkgch, v_bksh,
                             preferred_element_type=jnp.float32, precision=precision)
        row = jnp.sum(d_out_bkgch.astype(jnp.float32) * out_bkgch.astype(jnp.float32), axis=-1, keepdims=True)
        d_scores = jnp.where(allowed_bcs[:, None, None], probs * (d_probs - row), 0.0) * (h ** -0.5)
        d_q = jnp.einsum("bkgcs,bksh->bkgch", d_scores.astype(k_bksh.dtype), k_bksh, precision=precision)
        d_k = d_k + jnp.einsum("bkgch,bkgcs->bksh", q_bkgch, d_scores.astype(q_bkgch.dtype),
                               preferred_element_type=jnp.float32, precision=precision)
        d_v = d_v + jnp.einsum("bkgch,bkgcs->bksh", d_out_bkgch, probs.astype(d_out_bkgch.dtype),
                               preferred_element_type=jnp.float32, precision=precision)
        return (d_k, d_v), d_q

    zeros = jnp.zeros(k_bksh.shape, jnp.float32)
    q_n = _query_chunks(q_bkgth, 3, chunk)
    xs = (jnp.arange(q_n.shape[0]), q_n, _query_chunks(out_bkgth, 3, chunk), _query_chunks(top_bkgt, 3, chunk),
          _query_chunks(log_denom_bkgt, 3, chunk),
          _query_chunks(d_out_bkgth, 3, chunk))  # padded queries: d_out 0, so no gradient
    (d_k, d_v), d_q_n = lax.scan(_recomputed(one_chunk), (zeros, zeros), xs)
    d_q = _join_query_chunks(d_q_n, 3, t)
    return d_q.astype(q_bkgth.dtype), d_k.astype(k_bksh.dtype), d_v.astype(v_bksh.dtype), None


_chunked_attention.defvjp(_chunked_attention_fwd, _chunked_attention_bwd)


def _sequence_attention_in_chunks(q_btnh, k_bskh, v_bskh, key_mask_bs, precision, chunk):
    """`_sequence_attention` (causal, no cache) with the queries taken `chunk` at a time."""
    b, t, n, h = q_btnh.shape
    kv = k_bskh.shape[2]
    q_bkgth = q_btnh.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4)
    out_bkgth = _chunked_attention(q_bkgth, k_bskh.transpose(0, 2, 1, 3), v_bskh.transpose(0, 2, 1, 3),
                                   key_mask_bs, precision, chunk)
    return out_bkgth.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def forward(
    params: Params,
    tokens_bt: jnp.ndarray,
    positions_bt: jnp.ndarray,
    *,
    config: ModelConfig,
    mask_bt: jnp.ndarray | None = None,
    cache: Cache | None = None,
    compute_dtype: Any = jnp.float32,
    return_hidden: bool = False,
    remat: str = "none",
    head: bool = True,
    attention_chunk: int = 0,
):
    """Logits [B, T, V] (float32) and the updated cache (None without one).

    Without a cache, attention is causal over the T tokens and ignores keys where mask_bt is 0.
    With a cache, the T new keys/values go to slots [index, index + T) of every row and each
    query attends causally by slot to all valid slots; they must fit (a ValueError, or under jit
    NaN logits, when index + T is past the cache's slots). `return_hidden=True` adds a third output,
    [L + 1, B, T, D]: the input of every layer, then the final normed state (transformers'
    `output_hidden_states` convention). `remat` (training only) recomputes each layer's
    activations in the backward pass: `full` keeps only the layer inputs, `dots` also keeps the
    weight matmul outputs (see `REMAT_POLICIES`). `head=False` returns the final normed states
    [B, T, D] in the logits' place, for a caller that applies `output_logits` itself (in chunks,
    or to one position). `attention_chunk` > 0 (without a cache) attends that many queries at a
    time, so one chunk's scores are live instead of [T, T] per head (`rl.attention_chunk`).
    """
    cfg = config
    if not head and return_hidden:
        raise ValueError("head=False returns the final normed states; return_hidden would repeat them")
    cd = jnp.dtype(compute_dtype)
    prec = _precision(cd)
    b, t = tokens_bt.shape
    mask_bt = jnp.ones((b, t), jnp.bool_) if mask_bt is None else mask_bt.astype(jnp.bool_)

    x_btd = jnp.take(params["embed"]["embedding_vd"], tokens_bt, axis=0).astype(cd)
    x_btd = constrain(x_btd, _ACT_BTD)
    cos_btf, sin_btf = rope_cos_sin(positions_bt, inverse_frequencies(cfg))

    if cache is None:
        index = jnp.zeros((), jnp.int32)
        key_mask_bs = mask_bt
        key_slots_s = jnp.arange(t)
    else:
        index = cache["index"].astype(jnp.int32)
        slots = cache["mask"].shape[1]
        if not isinstance(index, jax.core.Tracer) and int(index) + t > slots:
            raise ValueError(f"the cache has {slots} slots: {int(index)} used, {t} more do not fit")
        key_mask_bs = lax.dynamic_update_slice(cache["mask"], mask_bt, (0, index))
        key_slots_s = jnp.arange(slots)
    query_slots_t = index + jnp.arange(t)
    allowed_bts = (key_slots_s[None, None, :] <= query_slots_t[None, :, None]) & key_mask_bs[:, None, :]

    def layer(carry, xs):
        x_btd, k_cache, v_cache = carry
        lp, layer_idx = xs
        # The q/k/v biases stay in their own dtype and are added in float32: the backward of that
        # broadcast add sums the gradient over every token of the batch, which in bfloat16 lost
        # several percent of the bias gradient at a few thousand tokens.
        lp = {k: w if k in _BIASES else w.astype(cd) for k, w in lp.items()}

        h_btd = rms_norm(x_btd, lp["attn_norm_d"], cfg.rms_norm_eps)
        q_btnh = _matmul(h_btd, lp["q_proj_dnh"], 1, prec)
        k_btkh = _matmul(h_btd, lp["k_proj_dkh"], 1, prec)
        v_btkh = _matmul(h_btd, lp["v_proj_dkh"], 1, prec)
        if cfg.attention_bias:
            add_bias = lambda x, b: (x.astype(jnp.float32) + b.astype(jnp.float32)).astype(cd)  # noqa: E731
            q_btnh = add_bias(q_btnh, lp["q_bias_nh"])
            k_btkh = add_bias(k_btkh, lp["k_bias_kh"])
            v_btkh = add_bias(v_btkh, lp["v_bias_kh"])
        if cfg.qk_norm:
            q_btnh = rms_norm(q_btnh, lp["q_norm_h"], cfg.rms_norm_eps)
            k_btkh = rms_norm(k_btkh, lp["k_norm_h"], cfg.rms_norm_eps)
        q_btnh = constrain(apply_rope(q_btnh, cos_btf, sin_btf), ("batch", "length", "heads", "head_dim"))
        k_btkh = constrain(apply_rope(k_btkh, cos_btf, sin_btf), ("batch", "length", "kv_heads", "head_dim"))
        v_btkh = constrain(v_btkh, ("batch", "length", "kv_heads", "head_dim"))

        if k_cache is None:
            keys_bskh, values_bskh = k_btkh, v_btkh
        else:
            # The whole cache rides in the carry and is updated in place, one layer at a time.
            start = (layer_idx, 0, index, 0, 0)
            k_cache = lax.dynamic_update_slice(k_cache, k_btkh[None].astype(k_cache.dtype), start)
            v_cache = lax.dynamic_update_slice(v_cache, v_btkh[None].astype(v_cache.dtype), start)
            keys_bskh = lax.dynamic_index_in_dim(k_cache, layer_idx, 0, keepdims=False).astype(cd)
            values_bskh = lax.dynamic_index_in_dim(v_cache, layer_idx, 0, keepdims=False).astype(cd)

        if k_cache is None and 0 < attention_chunk < t:
            attn_btnh = _sequence_attention_in_chunks(q_btnh, keys_bskh, values_bskh, key_mask_bs, prec,
                                                      attention_chunk)
        elif k_cache is None:
            attn_btnh = _sequence_attention(q_btnh, keys_bskh, values_bskh, allowed_bts, prec)
        else:
            attn_btnh = _attention(q_btnh, keys_bskh, values_bskh, allowed_bts, prec)
        attn_btd = _matmul(attn_btnh, lp["o_proj_nhd"], 2, prec)
        x_out_btd = constrain(x_btd + attn_btd, _ACT_BTD)

        h_btd = rms_norm(x_out_btd, lp["mlp_norm_d"], cfg.rms_norm_eps)
        gate_btf = _matmul(h_btd, lp["gate_proj_df"], 1, prec)
        up_btf = _matmul(h_btd, lp["up_proj_df"], 1, prec)
        act_btf = constrain(jax.nn.silu(gate_btf) * up_btf, ("batch", "length", "mlp"))
        mlp_btd = _matmul(act_btf, lp["down_proj_fd"], 1, prec)
        x_out_btd = constrain(x_out_btd + mlp_btd, _ACT_BTD)
        return (x_out_btd, k_cache, v_cache), (x_btd if return_hidden else None)

    k_cache = None if cache is None else cache["k"]
    v_cache = None if cache is None else cache["v"]
    layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}")
    if remat != "none":  # prevent_cse=False is safe (and faster) inside scan, not in a loop
        layer = jax.checkpoint(layer, policy=REMAT_POLICIES[remat], prevent_cse=not cfg.scan_layers)
    carry = (x_btd, k_cache, v_cache)
    if cfg.scan_layers:
        carry, layer_inputs = lax.scan(layer, carry, (params["layers"], layer_ids))
    else:
        per_layer = []
        for i in range(cfg.num_layers):
            carry, layer_input = layer(carry, (jax.tree.map(lambda w: w[i], params["layers"]), layer_ids[i]))
            per_layer.append(layer_input)
        layer_inputs = jnp.stack(per_layer) if return_hidden else None
    x_btd, k_cache, v_cache = carry

    x_btd = rms_norm(x_btd, params["final_norm_d"], cfg.rms_norm_eps)
    out = x_btd
    if head:
        # Tokens flattened to one axis, as in `_matmul` (the head's weight gradient is the largest).
        out = output_logits(params, x_btd.reshape(b * t, -1), cfg, cd).reshape(b, t, -1)
        out = constrain(out, ("batch", "length", "vocab"))

    new_cache = None
    if cache is not None:
        # Past the last slot dynamic_update_slice moves the write back over earlier keys: under
        # jit (no error possible) the output is NaN rather than quietly wrong.
        out = jnp.where(index + t > slots, jnp.nan, out)
        new_cache = {"k": k_cache, "v": v_cache, "mask": key_mask_bs, "index": index + t}
    if return_hidden:
        hidden_lbtd = jnp.concatenate([layer_inputs, x_btd[None]], axis=0)
        return out, new_cache, hidden_lbtd
    return out, new_cache
