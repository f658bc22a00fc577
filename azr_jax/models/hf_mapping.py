"""The single source of truth for Hugging Face <-> azr-jax tensor names and layouts.

HF stores `nn.Linear` weights as [out, in]; we store einsum-ready tensors with named axes
(`q_proj_dnh` is [D, N, H]). Each `Spec` names one of our parameters (path + layer index) and
the HF tensor, with the two layout transforms. Numpy only, so it serves the safetensors
loader/saver without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from azr_jax.errors import UserError
from azr_jax.models.config import ModelConfig
from azr_jax.models.decoder import param_shapes


@dataclass(frozen=True)
class Spec:
    path: tuple  # our parameter path, e.g. ("layers", "q_proj_dnh")
    layer: int | None  # index on the stacked layer axis, None for unstacked parameters
    hf_name: str  # e.g. "model.layers.3.self_attn.q_proj.weight"
    hf_shape: tuple  # the HF tensor's shape
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _transpose(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.T)


def _in_proj(heads: int, head_dim: int):
    """HF [heads*H, D] <-> ours [D, heads, H]."""

    def to_ours(w):
        return np.ascontiguousarray(w.T).reshape(w.shape[1], heads, head_dim)

    def to_hf(w):
        return np.ascontiguousarray(w.reshape(w.shape[0], heads * head_dim).T)

    return to_ours, to_hf


def _out_proj(heads: int, head_dim: int):
    """HF o_proj [D, N*H] <-> ours [N, H, D]."""

    def to_ours(w):
        return np.ascontiguousarray(w.T).reshape(heads, head_dim, w.shape[0])

    def to_hf(w):
        return np.ascontiguousarray(w.reshape(heads * head_dim, w.shape[-1]).T)

    return to_ours, to_hf


def _bias(heads: int, head_dim: int):
    """HF [heads*H] <-> ours [heads, H]."""
    return (lambda b: b.reshape(heads, head_dim)), (lambda b: b.reshape(heads * head_dim))


def hf_tensor_specs(cfg: ModelConfig) -> list[Spec]:
    """Every HF tensor of the model (tied models have no `lm_head.weight`), in a stable order."""
    D, N, K, H, F, V = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                        cfg.intermediate_size, cfg.vocab_size)
    specs = [Spec(("embed", "embedding_vd"), None, "model.embed_tokens.weight", (V, D), _identity, _identity)]
    q_in, kv_in, o_out = _in_proj(N, H), _in_proj(K, H), _out_proj(N, H)
    q_b, kv_b = _bias(N, H), _bias(K, H)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        layer = [
            ("attn_norm_d", "input_layernorm.weight", (D,), (_identity, _identity)),
            ("q_proj_dnh", "self_attn.q_proj.weight", (N * H, D), q_in),
            ("k_proj_dkh", "self_attn.k_proj.weight", (K * H, D), kv_in),
            ("v_proj_dkh", "self_attn.v_proj.weight", (K * H, D), kv_in),
        ]
        if cfg.attention_bias:
            layer += [
                ("q_bias_nh", "self_attn.q_proj.bias", (N * H,), q_b),
                ("k_bias_kh", "self_attn.k_proj.bias", (K * H,), kv_b),
                ("v_bias_kh", "self_attn.v_proj.bias", (K * H,), kv_b),
            ]
        if cfg.qk_norm:
            layer += [
                ("q_norm_h", "self_attn.q_norm.weight", (H,), (_identity, _identity)),
                ("k_norm_h", "self_attn.k_norm.weight", (H,), (_identity, _identity)),
            ]
        layer += [
            ("o_proj_nhd", "self_attn.o_proj.weight", (D, N * H), o_out),
            ("mlp_norm_d", "post_attention_layernorm.weight", (D,), (_identity, _identity)),
            ("gate_proj_df", "mlp.gate_proj.weight", (F, D), (_transpose, _transpose)),
            ("up_proj_df", "mlp.up_proj.weight", (F, D), (_transpose, _transpose)),
            ("down_proj_fd", "mlp.down_proj.weight", (D, F), (_transpose, _transpose)),
        ]
        for ours, hf, shape, (to_ours, to_hf) in layer:
            specs.append(Spec(("layers", ours), i, p + hf, shape, to_ours, to_hf))
    specs.append(Spec(("final_norm_d",), None, "model.norm.weight", (D,), _identity, _identity))
    if not cfg.tie_word_embeddings:
        specs.append(Spec(("lm_head_dv",), None, "lm_head.weight", (V, D), _transpose, _transpose))
    return specs


def hf_tensor_names(cfg: ModelConfig) -> list[str]:
    return [s.hf_name for s in hf_tensor_specs(cfg)]


def _get(tree: dict, path: tuple):
    for k in path:
        tree = tree[k]
    return tree


def params_from_hf(cfg: ModelConfig, get_tensor: Callable[[str], np.ndarray], dtype=np.float32) -> dict:
    """Our parameter tree (numpy arrays of `dtype`, layers stacked) from HF tensors.

    `get_tensor(hf_name)` returns one HF tensor as a numpy array (e.g. from safetensors). A
    tensor with the wrong shape raises UserError naming it. Stacked tensors are filled layer
    by layer into one preallocated array, so peak host memory stays near the model size.
    """
    dtype = np.dtype(dtype)
    shapes = param_shapes(cfg)
    out: dict = {}
    for spec in hf_tensor_specs(cfg):
        tensor = np.asarray(get_tensor(spec.hf_name))
        if tuple(tensor.shape) != spec.hf_shape:
            raise UserError(
                f"checkpoint tensor {spec.hf_name} has shape {tuple(tensor.shape)}, "
                f"but the model config needs {spec.hf_shape}"
            )
        value = spec.to_ours(tensor).astype(dtype, copy=False)
        parent = out
        for k in spec.path[:-1]:
            parent = parent.setdefault(k, {})
        leaf = spec.path[-1]
        if spec.layer is None:
            parent[leaf] = value
        else:
            if leaf not in parent:
                parent[leaf] = np.empty(_get(shapes, spec.path), dtype)
            parent[leaf][spec.layer] = value
    return out


def hf_from_params(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """HF tensor name -> numpy array in HF layout (dtype preserved), from our parameter tree."""
    out = {}
    host: dict = {}
    for spec in hf_tensor_specs(cfg):
        if spec.path not in host:  # pull each (possibly sharded) device array to the host once
            host[spec.path] = np.asarray(_get(params, spec.path))
        value = host[spec.path]
        if spec.layer is not None:
            value = value[spec.layer]
        out[spec.hf_name] = np.ascontiguousarray(spec.to_hf(value))
    return out
