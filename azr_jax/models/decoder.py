"""Pure-JAX dense decoder (Qwen2/2.5, Llama 3.x, Qwen3) with a static-shape KV cache.

Parameters are a nested dict (tree names and shapes are a contract, see docs/architecture.md);
the layers are stacked on a leading axis and run with `lax.scan`. Numerics: RMSNorm, RoPE and
softmax in float32, matmuls in `compute_dtype` (float32 matmuls at HIGHEST precision, so GPU
TF32 / TPU bf16 passes never leak into float32 runs), logits in float32.
"""

from __future__ import annotations

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
_INIT_STD = 0.02  # transformers' initializer_range for these families

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
    """RMSNorm over the last axis in float32; returns x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * weight.astype(jnp.float32)).astype(x.dtype)


def _precision(compute_dtype: Any) -> lax.Precision:
    return lax.Precision.HIGHEST if jnp.dtype(compute_dtype) == jnp.float32 else lax.Precision.DEFAULT


def _attention(q_btnh, k_bskh, v_bskh, allowed_bts, precision):
    """Grouped-query attention; scores and softmax in float32."""
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
):
    """Logits [B, T, V] (float32) and the updated cache (None without one).

    Without a cache, attention is causal over the T tokens and ignores keys where mask_bt is 0.
    With a cache, the T new keys/values go to slots [index, index + T) of every row and each
    query attends causally by slot to all valid slots. `return_hidden=True` adds a third output,
    [L + 1, B, T, D]: the input of every layer, then the final normed state (transformers'
    `output_hidden_states` convention). `remat` (training only) recomputes each layer's
    activations in the backward pass: `full` keeps only the layer inputs, `dots` also keeps the
    weight matmul outputs (see `REMAT_POLICIES`).
    """
    cfg = config
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
        key_mask_bs = lax.dynamic_update_slice(cache["mask"], mask_bt, (0, index))
        key_slots_s = jnp.arange(cache["mask"].shape[1])
    query_slots_t = index + jnp.arange(t)
    allowed_bts = (key_slots_s[None, None, :] <= query_slots_t[None, :, None]) & key_mask_bs[:, None, :]

    def layer(carry, xs):
        x_btd, k_cache, v_cache = carry
        lp, layer_idx = xs
        lp = jax.tree.map(lambda w: w.astype(cd), lp)

        h_btd = rms_norm(x_btd, lp["attn_norm_d"], cfg.rms_norm_eps)
        q_btnh = jnp.einsum("btd,dnh->btnh", h_btd, lp["q_proj_dnh"], precision=prec)
        k_btkh = jnp.einsum("btd,dkh->btkh", h_btd, lp["k_proj_dkh"], precision=prec)
        v_btkh = jnp.einsum("btd,dkh->btkh", h_btd, lp["v_proj_dkh"], precision=prec)
        if cfg.attention_bias:
            q_btnh = q_btnh + lp["q_bias_nh"]
            k_btkh = k_btkh + lp["k_bias_kh"]
            v_btkh = v_btkh + lp["v_bias_kh"]
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

        attn_btnh = _attention(q_btnh, keys_bskh, values_bskh, allowed_bts, prec)
        attn_btd = jnp.einsum("btnh,nhd->btd", attn_btnh, lp["o_proj_nhd"], precision=prec)
        x_out_btd = constrain(x_btd + attn_btd, _ACT_BTD)

        h_btd = rms_norm(x_out_btd, lp["mlp_norm_d"], cfg.rms_norm_eps)
        gate_btf = jnp.einsum("btd,df->btf", h_btd, lp["gate_proj_df"], precision=prec)
        up_btf = jnp.einsum("btd,df->btf", h_btd, lp["up_proj_df"], precision=prec)
        act_btf = constrain(jax.nn.silu(gate_btf) * up_btf, ("batch", "length", "mlp"))
        mlp_btd = jnp.einsum("btf,fd->btd", act_btf, lp["down_proj_fd"], precision=prec)
        x_out_btd = constrain(x_out_btd + mlp_btd, _ACT_BTD)
        return (x_out_btd, k_cache, v_cache), (x_btd if return_hidden else None)

    k_cache = None if cache is None else cache["k"]
    v_cache = None if cache is None else cache["v"]
    layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}")
    if remat != "none":  # prevent_cse=False is safe (and faster) inside scan
        layer = jax.checkpoint(layer, policy=REMAT_POLICIES[remat], prevent_cse=False)
    (x_btd, k_cache, v_cache), layer_inputs = lax.scan(
        layer, (x_btd, k_cache, v_cache), (params["layers"], layer_ids)
    )

    x_btd = rms_norm(x_btd, params["final_norm_d"], cfg.rms_norm_eps)
    if cfg.tie_word_embeddings:
        logits_btv = jnp.einsum("btd,vd->btv", x_btd, params["embed"]["embedding_vd"].astype(cd),
                                preferred_element_type=jnp.float32, precision=prec)
    else:
        logits_btv = jnp.einsum("btd,dv->btv", x_btd, params["lm_head_dv"].astype(cd),
                                preferred_element_type=jnp.float32, precision=prec)
    logits_btv = constrain(logits_btv, ("batch", "length", "vocab"))

    new_cache = None
    if cache is not None:
        new_cache = {"k": k_cache, "v": v_cache, "mask": key_mask_bs, "index": index + t}
    if return_hidden:
        hidden_lbtd = jnp.concatenate([layer_inputs, x_btd[None]], axis=0)
        return logits_btv, new_cache, hidden_lbtd
    return logits_btv, new_cache
