"""Hugging Face checkpoints in and out: `from_pretrained`, `Model`, `Model.save_pretrained`.

Loading never materialises the whole model on one host: every parameter is created directly in
its target sharding with `jax.make_array_from_callback`, and the callback reads from the
safetensors file(s) only the block the device asks for (for stacked layer parameters, the
needed slice of each needed layer). Saving is the mirror image: one HF tensor (one layer of one
parameter) is gathered at a time, converted and streamed to disk by process 0, so host memory
holds at most the largest single HF tensor (the V x D embedding) plus one copy of it in HF layout.

Tensor names and layouts come from `hf_mapping.hf_tensor_specs`; this module adds only the
slice arithmetic that lets a device read its block of an HF tensor without reading the rest.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from azr_jax.errors import UserError
from azr_jax.jsonl import read_json_object
from azr_jax.models import decoder
from azr_jax.models.config import ModelConfig
from azr_jax.models.hf_mapping import Spec, hf_tensor_specs
from azr_jax.models.safetensors_io import SafetensorsReader, TensorPlan, numpy_dtype, write_checkpoint
from azr_jax.models.tokenizer import Tokenizer, find_tokenizer_file, load_tokenizer

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"  # transformers' long-standing default

# How our per-layer array is laid out relative to its HF tensor: ours = view.transpose(PERM),
# where `view` is the HF tensor with axes split (never reordered) by a reshape. Everything not
# listed is the identity. `test_hf_io` checks this against hf_mapping's to_ours for every tensor.
_PERMS = {
    "q_proj_dnh": (2, 0, 1),  # HF [N*H, D] -> view [N, H, D] -> [D, N, H]
    "k_proj_dkh": (2, 0, 1),
    "v_proj_dkh": (2, 0, 1),
    "o_proj_nhd": (1, 2, 0),  # HF [D, N*H] -> view [D, N, H] -> [N, H, D]
    "gate_proj_df": (1, 0),  # HF [F, D] -> [D, F]
    "up_proj_df": (1, 0),
    "down_proj_fd": (1, 0),
    "lm_head_dv": (1, 0),
}
# Tensors a checkpoint may carry that the model does not need.
_IGNORED_TENSORS = re.compile(r".*\.rotary_emb\.inv_freq$")


# ----------------------------------------------------------------------------------------------
# Reading one device's block
# ----------------------------------------------------------------------------------------------


def _bounds(index: tuple, shape: tuple) -> list[tuple[int, int]]:
    """(start, stop) per axis from a device index (basic slices, as make_array_from_callback passes)."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    out = []
    for s, dim in zip(index, shape):
        start, stop, step = s.indices(dim)
        if step != 1:
            raise ValueError(f"strided device index {s} is not supported")
        out.append((start, stop))
    return out


def _axis_groups(view_shape: tuple, hf_shape: tuple) -> list[list[int]]:
    """Which consecutive view axes make up each HF axis (the reshape only splits axes)."""
    groups, axis = [], 0
    for size in hf_shape:
        group = [axis]
        product = view_shape[axis]
        axis += 1
        while product < size:
            product *= view_shape[axis]
            group.append(axis)
            axis += 1
        if product != size:
            raise ValueError(f"view shape {view_shape} does not split HF shape {hf_shape}")
        groups.append(group)
    return groups


def read_block(reader: SafetensorsReader, spec: Spec, ours_shape: tuple, bounds: list[tuple[int, int]]) -> np.ndarray:
    """`spec.to_ours(hf_tensor)[bounds]`, reading only the rows of the HF tensor it needs.

    An HF axis that packs several of our axes (N*H) is read over the contiguous range covering
    the requested block of its leading axis; the trailing axes are sliced after the reshape.
    """
    leaf = spec.path[-1]
    perm = _PERMS.get(leaf, tuple(range(len(ours_shape))))
    view_shape = [0] * len(perm)
    view_bounds = [(0, 0)] * len(perm)
    for ours_axis, view_axis in enumerate(perm):
        view_shape[view_axis] = ours_shape[ours_axis]
        view_bounds[view_axis] = bounds[ours_axis]
    hf_index, block_shape, sub_index = [], [], []
    for group in _axis_groups(tuple(view_shape), spec.hf_shape):
        lead, rest = group[0], group[1:]
        inner = math.prod(view_shape[a] for a in rest)
        start, stop = view_bounds[lead]
        hf_index.append(slice(start * inner, stop * inner))
        block_shape += [stop - start] + [view_shape[a] for a in rest]
        sub_index += [slice(None)] + [slice(*view_bounds[a]) for a in rest]
    block = reader.read(spec.hf_name, tuple(hf_index)).reshape(block_shape)[tuple(sub_index)]
    return np.ascontiguousarray(block.transpose(perm))


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def read_hf_config(path: str | os.PathLike) -> ModelConfig:
    """The `ModelConfig` of an HF checkpoint directory (reads config.json only)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint directory {path} " + ("is not a directory" if path.exists() else "does not exist"))
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"{path} has no {CONFIG_FILE}; is it a Hugging Face checkpoint directory?")
    return ModelConfig.from_hf_config(read_json_object(config_file, "model config"))


def _check_tensors(reader: SafetensorsReader, specs: list[Spec], cfg: ModelConfig, path: Path) -> None:
    """Every tensor the config implies is present with its shape, and nothing unexplained is left."""
    where = f"the checkpoint in {path}"
    for spec in specs:
        info = reader.tensors.get(spec.hf_name)
        if info is None:
            raise UserError(f"{where} lacks tensor {spec.hf_name}, which config.json implies "
                            f"({cfg.architecture}, {cfg.num_layers} layers)")
        if info.shape != tuple(spec.hf_shape):
            raise UserError(f"tensor {spec.hf_name} has shape {list(info.shape)} in {where}, "
                            f"but config.json implies {list(spec.hf_shape)}")
    expected = {s.hf_name for s in specs}
    if cfg.tie_word_embeddings and "lm_head.weight" in reader.tensors:
        _check_tied_head(reader, where)
        expected.add("lm_head.weight")  # some exporters write the tied head anyway: a copy, unused
    extra = sorted(n for n in reader.tensors if n not in expected and not _IGNORED_TENSORS.match(n))
    if extra:
        shown = ", ".join(extra[:3]) + (f" (and {len(extra) - 3} more)" if len(extra) > 3 else "")
        raise UserError(f"{where} has tensors that config.json does not account for: {shown}")


def _check_tied_head(reader: SafetensorsReader, where: str, rows_per_read: int = 4096) -> None:
    """A tied config beside a stored `lm_head.weight` is fine only if that head is the embedding.
    When they differ, transformers 5 unties them (with a warning) and older versions tie them:
    which head the model has is ambiguous, so the user is asked to say (read in row blocks, so
    the check holds at most two blocks in memory)."""
    embed, head = reader.tensors["model.embed_tokens.weight"], reader.tensors["lm_head.weight"]
    same = head.shape == embed.shape
    for start in range(0, embed.shape[0], rows_per_read) if same else ():
        rows = (slice(start, min(start + rows_per_read, embed.shape[0])),)
        if not np.array_equal(reader.read("model.embed_tokens.weight", rows), reader.read("lm_head.weight", rows)):
            same = False
            break
    if not same:
        raise UserError(
            f"config.json ties the output head to the embeddings (tie_word_embeddings: true), but {where} also "
            f"holds an lm_head.weight that differs from model.embed_tokens.weight; transformers 5 would use "
            f"that head untied, older versions the embeddings. Say which: set tie_word_embeddings to false in "
            f"config.json to use lm_head.weight, or remove lm_head.weight from the checkpoint to tie them")


def _default_rules() -> dict:
    from azr_jax.config import MeshSection

    return dict(MeshSection().rules)


def from_pretrained(path: str | os.PathLike, *, dtype: Any = None, mesh: jax.sharding.Mesh | None = None,
                    rules: dict | None = None) -> "Model":
    """Load an HF checkpoint directory (config.json + safetensors, single or index-sharded).

    dtype: parameter dtype (cast on load); None keeps each tensor's stored dtype.
    mesh/rules: place each parameter by its logical axes (`rules` defaults to the config's
    `mesh.rules`); without a mesh everything goes to the first device. The tokenizer is loaded
    lazily on first use of `Model.tokenizer`, so a checkpoint without one still loads.
    """
    path = Path(path)
    target_dtype = None if dtype is None else _param_dtype(dtype)
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):  # a dict of axis sizes raised AttributeError
        raise UserError(f"mesh must be a jax.sharding.Mesh (e.g. azr_jax.sharding.make_mesh({{'fsdp': -1}})), "
                        f"got {type(mesh).__name__}")
    cfg = read_hf_config(path)
    specs = hf_tensor_specs(cfg)
    rules = _default_rules() if rules is None else dict(rules)
    shapes = decoder.param_shapes(cfg)
    if mesh is None:
        device = jax.devices()[0]
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(device), shapes,
                                 is_leaf=_is_shape)
    else:
        shardings = decoder.param_shardings(cfg, mesh, rules)

    by_path: dict[tuple, list[Spec]] = {}
    for spec in specs:
        by_path.setdefault(spec.path, []).append(spec)

    params: dict = {}
    with SafetensorsReader(path) as reader:
        _check_tensors(reader, specs, cfg, path)
        for param_path, param_specs in by_path.items():
            shape = _get(shapes, param_path)
            stored = reader.tensors[param_specs[0].hf_name].dtype
            target = target_dtype if target_dtype is not None else numpy_dtype(stored)
            array = _load_param(reader, param_specs, shape, target, _get(shardings, param_path))
            _set(params, param_path, array)
    generation_file = path / GENERATION_CONFIG_FILE
    generation = read_json_object(generation_file, "generation config") if generation_file.is_file() else None
    return Model(cfg, params, tokenizer_path=path, generation_config=generation, mesh=mesh, rules=rules)


# Parameter dtypes `from_pretrained(dtype=...)` casts to: the float types safetensors stores (so
# the model can be saved again). An integer or bool dtype was accepted and cast the weights to it.
_PARAM_DTYPES = ("float32", "bfloat16", "float16", "float64")


def _param_dtype(dtype: Any) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in _PARAM_DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported; use one of {', '.join(_PARAM_DTYPES)} "
                        f"(or None to keep the checkpoint's dtype)")
    return resolved


def _load_param(reader: SafetensorsReader, specs: list[Spec], shape: tuple, dtype: np.dtype,
                sharding: jax.sharding.Sharding) -> jax.Array:
    stacked = specs[0].layer is not None
    # Devices that hold the same block (replicated axes) share one read.
    blocks: dict[tuple, np.ndarray] = {}

    def callback(index: tuple) -> np.ndarray:
        bounds = _bounds(index, shape)
        key = tuple(bounds)
        if key not in blocks:
            if stacked:
                (l0, l1), rest = bounds[0], bounds[1:]
                layers = [read_block(reader, specs[l], shape[1:], rest) for l in range(l0, l1)]
                block = np.stack(layers) if layers else np.zeros([0] + [b - a for a, b in rest])
            else:
                block = read_block(reader, specs[0], shape, bounds)
            blocks[key] = block.astype(dtype, copy=False)
        return blocks[key]

    return jax.make_array_from_callback(shape, sharding, callback)


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def _get(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a transformers-style size string ("500MB", "5GB", "2GiB")."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
    if match and match.group(2).upper() in _SIZE_UNITS and float(match.group(1)) > 0:
        return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    raise UserError(f"invalid shard size {size!r}; use bytes or e.g. '500MB', '5GB'")


def _to_host(x) -> np.ndarray:
    """One (possibly globally sharded) array on this host; a collective when not fully addressable."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def save_pretrained(model: "Model", path: str | os.PathLike, *, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> None:
    """See `Model.save_pretrained`."""
    path = Path(path)
    cfg = model.config
    specs = hf_tensor_specs(cfg)
    by_name = {s.hf_name: s for s in specs}
    plans = [TensorPlan(s.hf_name, tuple(s.hf_shape), np.dtype(_get(model.params, s.path).dtype)) for s in specs]
    is_writer = jax.process_index() == 0

    def produce(plan: TensorPlan) -> np.ndarray:
        spec = by_name[plan.name]
        leaf = _get(model.params, spec.path)
        # Index before gathering: only this layer of this parameter crosses to the host.
        value = _to_host(leaf if spec.layer is None else leaf[spec.layer])
        return spec.to_hf(value)

    if is_writer:
        # A file at `path` (or above it) raised FileExistsError / NotADirectoryError: "File exists".
        if path.exists() and not path.is_dir():
            raise UserError(f"cannot save to {path}: it is a file, not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except NotADirectoryError:
            raise UserError(f"cannot save to {path}: a parent of it is a file, not a directory") from None
    write_checkpoint(path, plans, produce, max_shard_bytes=parse_size(max_shard_size), write=is_writer)
    if not is_writer:
        return
    dtype_name = np.dtype(_get(model.params, ("embed", "embedding_vd")).dtype).name
    _write_json(path / CONFIG_FILE, cfg.to_hf_config(dtype=dtype_name))
    _write_json(path / GENERATION_CONFIG_FILE, model.generation_config_dict())
    if model.has_tokenizer():
        model.tokenizer.save(path)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def _forward_full(params, tokens_bt, mask_bt, *, config, compute_dtype, return_hidden):
    # Left padding: real tokens take positions 0, 1, ... from their first real token.
    positions_bt = jnp.clip(jnp.cumsum(mask_bt.astype(jnp.int32), axis=1) - 1, 0, None)
    return decoder.forward(params, tokens_bt, positions_bt, config=config, mask_bt=mask_bt,
                           compute_dtype=compute_dtype, return_hidden=return_hidden)


class Model:
    """A decoder's config, parameters and tokenizer, as loaded by `from_pretrained`.

    `params` is the pytree `decoder.forward` takes. `compute_dtype` (default: the parameter
    dtype) is the matmul dtype `logits` uses.
    """

    def __init__(self, config: ModelConfig, params: dict, *, tokenizer: Tokenizer | None = None,
                 tokenizer_path: str | os.PathLike | None = None, generation_config: dict | None = None,
                 mesh: jax.sharding.Mesh | None = None, rules: dict | None = None, compute_dtype: Any = None):
        self.config = config
        self.params = params
        self.mesh = mesh
        self.rules = rules
        self._tokenizer = tokenizer
        self._tokenizer_path = None if tokenizer_path is None else Path(tokenizer_path)
        self._generation_config = generation_config
        embed_dtype = _get(params, ("embed", "embedding_vd")).dtype
        self.compute_dtype = jnp.dtype(compute_dtype if compute_dtype is not None else embed_dtype)
        # One jit per model: the activation constraints of `mesh_rules` are read at trace time,
        # so a trace must not be shared between models on different meshes or rules. jax.jit
        # caches traces by the function it wraps, not by the wrapper: jitting the module-level
        # `_forward_full` in every model let a second model of the same shapes reuse the first
        # one's trace, its mesh and rules included. Each model wraps a function of its own.
        def forward(params, tokens_bt, mask_bt, *, config, compute_dtype, return_hidden):
            return _forward_full(params, tokens_bt, mask_bt, config=config, compute_dtype=compute_dtype,
                                 return_hidden=return_hidden)

        self._forward = jax.jit(forward, static_argnames=("config", "compute_dtype", "return_hidden"))

    # -- tokenizer -----------------------------------------------------------------------------

    def has_tokenizer(self) -> bool:
        return self._tokenizer is not None or (
            self._tokenizer_path is not None and find_tokenizer_file(self._tokenizer_path) is not None)

    @property
    def tokenizer(self) -> Tokenizer:
        """The checkpoint's tokenizer; UserError if the directory ships none."""
        if self._tokenizer is None:
            if self._tokenizer_path is None:
                raise UserError("this model has no tokenizer (it was not loaded from a checkpoint directory)")
            self._tokenizer = load_tokenizer(self._tokenizer_path)
        return self._tokenizer

    def generation_config_dict(self) -> dict:
        """generation_config.json: the checkpoint's own, else bos/eos/pad ids from the config."""
        if self._generation_config is not None:
            return dict(self._generation_config)
        cfg = self.config
        eos = list(cfg.stop_token_ids)
        out = {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
               "pad_token_id": cfg.pad_token_id}
        return {k: v for k, v in out.items() if v is not None}

    # -- compute -------------------------------------------------------------------------------

    def _run(self, tokens, attention_mask, return_hidden: bool):
        # Checked in the caller's dtype, before the int32 cast: an int64 id of 2**32 + 5 wrapped to
        # 5 and a float id of 5.7 truncated to 5, both silently.
        tokens_bt = tokens if isinstance(tokens, jax.Array) else np.asarray(tokens)
        if tokens_bt.ndim != 2 or not tokens_bt.size:  # an empty one failed deep in the pass
            raise UserError(f"tokens must be a non-empty [batch, length], got shape {tuple(tokens_bt.shape)}")
        if not np.issubdtype(tokens_bt.dtype, np.integer):
            raise UserError(f"token ids must be integers, got dtype {tokens_bt.dtype}")
        # jnp.take would wrap a negative id and turn one past the table into NaN logits for the
        # whole row (padding included), so every id, masked or not, must index the table. Under a
        # caller's jax.jit the ids have no value to check (int() of a tracer raised).
        traced = isinstance(tokens_bt, jax.core.Tracer)
        if not traced and (int(tokens_bt.min()) < 0 or int(tokens_bt.max()) >= self.config.vocab_size):
            raise UserError(
                f"token ids must be in [0, vocab_size={self.config.vocab_size}), got "
                f"min {int(tokens_bt.min())}, max {int(tokens_bt.max())} (padding ids included)")
        tokens_bt = jnp.asarray(tokens_bt, dtype=jnp.int32)
        if attention_mask is None:
            mask_bt = jnp.ones(tokens_bt.shape, jnp.int32)
        else:
            mask_bt = jnp.asarray(attention_mask)
            if mask_bt.shape != tokens_bt.shape:
                raise UserError(f"attention_mask shape {tuple(mask_bt.shape)} != tokens shape {tuple(tokens_bt.shape)}")
            # Any non-zero entry is a token, as in transformers: an int32 cast turned a float mask
            # of 0.5 into all padding, and a mask of 2s doubled the positions (cumsum).
            mask_bt = (mask_bt != 0).astype(jnp.int32)
        kwargs = dict(config=self.config, compute_dtype=self.compute_dtype, return_hidden=return_hidden)
        if self.mesh is None:
            return self._forward(self.params, tokens_bt, mask_bt, **kwargs)
        from azr_jax.sharding import mesh_rules

        with mesh_rules(self.mesh, self.rules or _default_rules()):
            return self._forward(self.params, tokens_bt, mask_bt, **kwargs)

    def logits(self, tokens, attention_mask=None) -> jax.Array:
        """Float32 logits [B, T, V] of a full causal pass; attention_mask non-zero = token, 0 = (left) padding.

        Works under `jax.jit`, where token ids are not range-checked (they have no value yet).
        """
        return self._run(tokens, attention_mask, return_hidden=False)[0]

    def hidden_states(self, tokens, attention_mask=None) -> jax.Array:
        """[L + 1, B, T, D]: each layer's input, then the final normed state (transformers' order)."""
        return self._run(tokens, attention_mask, return_hidden=True)[2]

    # -- export --------------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike, *, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> None:
        """Write config.json, generation_config.json, safetensors and tokenizer files to `path`.

        `transformers.AutoModelForCausalLM.from_pretrained(path)` loads the result unchanged.
        Tensors above `max_shard_size` in total are split into `model-0000i-of-0000n.safetensors`
        plus `model.safetensors.index.json`. Tied models write no `lm_head.weight`. Multi-host:
        every process must call this (the per-tensor gathers are collectives); only process 0 writes.
        """
        save_pretrained(self, path, max_shard_size=max_shard_size)

    def __repr__(self) -> str:
        cfg = self.config
        return (f"Model({cfg.architecture}, layers={cfg.num_layers}, hidden={cfg.hidden_size}, "
                f"vocab={cfg.vocab_size}, params={cfg.num_params():,})")
