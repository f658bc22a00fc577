"""`ModelConfig`: the decoder's shape and numerics, and its Hugging Face `config.json` twin.

Plain Python (no JAX), so host-only code can read a model's shape cheaply. The config knows its
own cost (`num_params`, `flops_per_token`) and its HF form (`to_hf_config`/`from_hf_config`),
so MFU accounting and HF export cannot drift from the model itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from azr_jax.errors import UserError

ARCHITECTURES = ("qwen2", "llama", "qwen3")

# model_type -> the `architectures` entry transformers expects in config.json.
_HF_ARCH_CLASS = {
    "qwen2": "Qwen2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

# RoPE variants we compute exactly as transformers does; anything else is refused.
SUPPORTED_ROPE_TYPES = ("default", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _normalise_rope_scaling(rope_scaling: dict | None) -> dict | None:
    """Validate an HF `rope_scaling` dict; None (or type `default`) means plain RoPE."""
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, dict):
        raise UserError(f"rope_scaling must be a mapping or null, got {rope_scaling!r}")
    kind = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if kind not in SUPPORTED_ROPE_TYPES:
        raise UserError(
            f"unsupported rope_scaling type {kind!r}; supported: {list(SUPPORTED_ROPE_TYPES)}"
        )
    if kind == "default":
        return None
    missing = [k for k in _LLAMA3_KEYS if k not in rope_scaling]
    if missing:
        raise UserError(f"rope_scaling of type 'llama3' is missing {missing}")
    out = {"rope_type": "llama3"}
    for k in _LLAMA3_KEYS:
        out[k] = rope_scaling[k]
    out["original_max_position_embeddings"] = int(out["original_max_position_embeddings"])
    for k in ("factor", "low_freq_factor", "high_freq_factor"):
        out[k] = float(out[k])
    return out


def _rope_from_hf(hf: dict) -> tuple[Any, dict | None]:
    """(rope_theta, rope_scaling block) as transformers computes RoPE from an HF config, or a
    UserError where transformers 4.x and 5.x would read the config differently.

    4.x reads a top-level `rope_theta` and a `rope_scaling` block. 5.x nests both under
    `rope_parameters`, applies a non-empty `rope_scaling` block over it (one pasted in to extend
    the context), lets a block's own `rope_theta` beat the top-level one, and a top-level
    `original_max_position_embeddings` beat a llama3 block's. Where two of these places give
    different values the config is refused: reading either would rotate differently from one of
    the two versions."""
    scaling, params = hf.get("rope_scaling"), hf.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise UserError(f"rope_parameters must be a mapping or null, got {params!r}")
    if scaling is not None and not isinstance(scaling, dict):
        raise UserError(f"rope_scaling must be a mapping or null, got {scaling!r}")

    def without_theta(block):
        return {k: v for k, v in block.items() if k != "rope_theta"} if block else None

    if scaling and params and _normalise_rope_scaling(without_theta(scaling)) != _normalise_rope_scaling(
            without_theta(params)):
        raise UserError(f"HF config has both rope_parameters {params!r} and a different rope_scaling "
                        f"{scaling!r}; transformers would apply rope_scaling: keep one block")
    thetas = {}
    if "rope_theta" in hf:
        thetas["rope_theta"] = hf["rope_theta"]
    for name, block in (("rope_scaling", scaling), ("rope_parameters", params)):
        if block and "rope_theta" in block:
            thetas[f"{name}.rope_theta"] = block["rope_theta"]
    if any(v != next(iter(thetas.values())) for v in thetas.values()):
        given = ", ".join(f"{k}={v!r}" for k, v in thetas.items())
        raise UserError(f"HF config gives different RoPE thetas ({given}); which one transformers applies "
                        f"depends on its version and the block: keep one value")
    rope_scaling = without_theta(scaling or params)
    top_original = hf.get("original_max_position_embeddings")
    if rope_scaling and top_original is not None and rope_scaling.get(
            "rope_type", rope_scaling.get("type")) == "llama3":
        block_original = rope_scaling.get("original_max_position_embeddings", top_original)
        if block_original != top_original:
            raise UserError(f"HF config gives original_max_position_embeddings={top_original!r} at the top level "
                            f"and {block_original!r} in its llama3 RoPE block; transformers 5.x reads the first, "
                            f"4.x the second: keep one value")
        rope_scaling = dict(rope_scaling, original_max_position_embeddings=top_original)
    return next(iter(thetas.values()), 10000.0), rope_scaling


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Qwen2/2.5, Llama 3.x or Qwen3 dense decoder."""

    architecture: str = "qwen2"  # qwen2 | llama | qwen3 (HF model_type)
    vocab_size: int = 151936
    hidden_size: int = 896  # D
    intermediate_size: int = 4864  # F (SwiGLU width)
    num_layers: int = 24  # L
    num_heads: int = 14  # N (query heads)
    num_kv_heads: int = 2  # K (GQA key/value heads)
    head_dim: int = 64  # H; independent of hidden_size (Qwen3-4B: 2560 = D, 32 * 128 = N*H)
    rope_theta: float = 1_000_000.0
    rope_scaling: dict | None = None  # HF dict; only rope_type 'llama3' (or None)
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    attention_bias: bool = True  # q/k/v biases (Qwen2/2.5); o_proj never has one
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (Qwen3)
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # Further stop tokens (Llama 3.1 instruct lists several eos ids in config.json).
    extra_eos_token_ids: tuple = field(default_factory=tuple)
    pad_token_id: int | None = None
    # How the layers run, not what they compute (never written to config.json): True = one
    # `lax.scan` over the stacked layers (compiles once per layer shape; the choice for deep
    # models on accelerators), False = a Python loop, unrolled by XLA. On CPU the loop's
    # backward is faster: the scan stacks its per-layer residuals into zero-initialised
    # buffers (docs/benchmarks.md). Set through the run config's `model.scan_layers`.
    scan_layers: bool = True
    # Also never written to config.json: the tokenizer's size where the embedding rows are padded
    # past it (Qwen2.5: 152064 rows, 151665 tokens; a random-init model over a smaller tokenizer).
    # Logits of the ids at or above it are masked, so the policy never samples an id the tokenizer
    # cannot decode, and the sampler and the update agree on the distribution. Set by the trainer.
    tokenizer_vocab_size: int | None = None

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise UserError(
                f"unknown model architecture {self.architecture!r}; supported: {list(ARCHITECTURES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"model config field '{name}' must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise UserError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        # Set through `model.overrides` these arrive untyped: "abc" failed deep in the sampler,
        # a negative eps made every gradient non-finite, and "no" counted as tied embeddings.
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise UserError(f"model config field '{name}' must be a positive finite number, got {value!r}")
        for name in ("tie_word_embeddings", "attention_bias", "qk_norm", "scan_layers"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"model config field '{name}' must be true or false, got {getattr(self, name)!r}")
        positions = self.max_position_embeddings
        if not isinstance(positions, int) or isinstance(positions, bool) or positions <= 0:
            raise UserError(f"model config field 'max_position_embeddings' must be a positive int, got {positions!r}")
        # Keep the config representable in transformers: biases and q/k norms follow the family.
        if self.attention_bias != (self.architecture == "qwen2"):
            raise UserError(
                f"attention_bias={self.attention_bias} does not match architecture "
                f"{self.architecture!r} (q/k/v biases exist exactly in qwen2)"
            )
        if self.qk_norm != (self.architecture == "qwen3"):
            raise UserError(
                f"qk_norm={self.qk_norm} does not match architecture {self.architecture!r} "
                "(q/k norms exist exactly in qwen3)"
            )
        # Token ids from model.overrides (or a config.json) arrive untyped as well: a string eos
        # would become the sampler's stop id, and int() of one below was a bare ValueError.
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool)):
                raise UserError(f"model config field '{name}' must be a token id (an int) or null, got {value!r}")
        extra = self.extra_eos_token_ids
        if not isinstance(extra, (list, tuple)) or not all(
                isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in extra):
            raise UserError(f"model config field 'extra_eos_token_ids' must be a list of token ids (ints), got {extra!r}")
        limit = self.tokenizer_vocab_size
        if limit is not None and not (isinstance(limit, int) and 0 < limit <= self.vocab_size):
            raise UserError(f"tokenizer_vocab_size must be in [1, vocab_size={self.vocab_size}], got {limit!r}")
        if self.head_dim % 2:
            raise UserError(f"head_dim must be even for RoPE, got {self.head_dim}")
        object.__setattr__(self, "rope_scaling", _normalise_rope_scaling(self.rope_scaling))
        object.__setattr__(self, "extra_eos_token_ids", tuple(int(i) for i in self.extra_eos_token_ids))

    # The config is a static argument of jitted functions, so it must hash; the dict field
    # would make the generated __hash__ fail, hence a hash over a canonical JSON form.
    def __hash__(self) -> int:
        return hash(json.dumps(dataclasses.asdict(self), sort_keys=True))

    def replace(self, **changes: Any) -> "ModelConfig":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise UserError(f"unknown ModelConfig field(s) {unknown}")
        return dataclasses.replace(self, **changes)

    @property
    def stop_token_ids(self) -> tuple:
        """All token ids that end a generation (eos plus any extra eos ids)."""
        ids = () if self.eos_token_id is None else (self.eos_token_id,)
        return ids + tuple(i for i in self.extra_eos_token_ids if i not in ids)

    # ------------------------------------------------------------------------------------------
    # Cost
    # ------------------------------------------------------------------------------------------

    def _layer_matmul_params(self) -> int:
        d, n, k, h, f = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate_size
        return d * n * h + 2 * d * k * h + n * h * d + 3 * d * f

    def num_params(self) -> int:
        """Parameter count; equals `sum(p.numel())` of the equivalent transformers model."""
        d, n, k, h = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        per_layer = self._layer_matmul_params() + 2 * d  # + attn/mlp norms
        if self.attention_bias:
            per_layer += n * h + 2 * k * h
        if self.qk_norm:
            per_layer += 2 * h
        embed = self.vocab_size * d
        lm_head = 0 if self.tie_word_embeddings else d * self.vocab_size
        return embed + self.num_layers * per_layer + d + lm_head

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs (forward + backward) per token at sequence length `seq_len`.

        6 * P_matmul + 12 * L * N * H * seq_len, where P_matmul counts every weight used in a
        matmul (all projections plus the D x V output head, tied or not; the embedding lookup,
        norms and biases are not matmuls). The second term is attention's QK^T and AV
        (2 matmuls * 2 FLOPs * N*H*seq_len per token, times 3 for forward + backward), counted
        over the full sequence without discounting the causal mask (the PaLM MFU convention).
        """
        p_matmul = self.num_layers * self._layer_matmul_params() + self.hidden_size * self.vocab_size
        attention = 12 * self.num_layers * self.num_heads * self.head_dim * int(seq_len)
        return 6 * p_matmul + attention

    # ------------------------------------------------------------------------------------------
    # Hugging Face config.json
    # ------------------------------------------------------------------------------------------

    def to_hf_config(self, dtype: str | None = None) -> dict:
        """A config.json dict that transformers (4.x and 5.x) loads as the equivalent model.

        RoPE settings are written in the widely read `rope_theta` + `rope_scaling` form;
        transformers 5 converts them to `rope_parameters` on load.
        """
        eos: int | list | None = self.eos_token_id
        if self.extra_eos_token_ids:
            eos = list(self.stop_token_ids)
        out = {
            "architectures": [_HF_ARCH_CLASS[self.architecture]],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_cache": True,
        }
        if self.architecture == "qwen2":
            # Qwen2 always has q/k/v biases; its config has no attention_bias field.
            out.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_layers)
        elif self.architecture == "qwen3":
            out.update(attention_bias=False, use_sliding_window=False, sliding_window=None,
                       max_window_layers=self.num_layers)
        else:
            out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
        if dtype is not None:
            out["torch_dtype"] = dtype
        return out

    @classmethod
    def from_hf_config(cls, hf: dict) -> "ModelConfig":
        """Read a transformers config.json dict (4.x or 5.x layout); UserError if unsupported."""
        if not isinstance(hf, dict):
            raise UserError(f"HF config must be a JSON object, got {type(hf).__name__}")
        model_type = hf.get("model_type")
        if model_type not in ARCHITECTURES:
            raise UserError(
                f"unsupported HF model_type {model_type!r}; supported: {list(ARCHITECTURES)}"
            )
        archs = hf.get("architectures") or [_HF_ARCH_CLASS[model_type]]
        if archs != [_HF_ARCH_CLASS[model_type]]:
            raise UserError(
                f"unsupported HF architectures {archs!r} for model_type {model_type!r}; "
                f"expected ['{_HF_ARCH_CLASS[model_type]}']"
            )

        def need(key: str) -> Any:
            if key not in hf:
                raise UserError(f"HF config is missing required field '{key}'")
            return hf[key]

        if hf.get("hidden_act", "silu") != "silu":
            raise UserError(f"unsupported hidden_act {hf['hidden_act']!r}; only 'silu'")
        if hf.get("use_sliding_window"):
            raise UserError("sliding-window attention (use_sliding_window=true) is not supported")
        if hf.get("mlp_bias"):
            raise UserError("mlp_bias=true is not supported")
        if model_type != "qwen2" and hf.get("attention_bias"):
            raise UserError(f"attention_bias=true is not supported for {model_type} (it adds an o_proj bias)")

        rope_theta, rope_scaling = _rope_from_hf(hf)

        def integer(key: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                raise UserError(f"HF config field '{key}' must be an integer, got {value!r}")
            return int(value)

        def number(key: str, value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise UserError(f"HF config field '{key}' must be a positive number, got {value!r}")
            return float(value)

        hidden = integer("hidden_size", need("hidden_size"))
        heads = integer("num_attention_heads", need("num_attention_heads"))
        if heads <= 0:
            raise UserError(f"HF config field 'num_attention_heads' must be positive, got {heads}")
        # As transformers: a null field is one kv head per query head; a missing one is the config
        # class's default, 32 for Qwen2Config and Qwen3Config (LlamaConfig's is null).
        kv_heads = hf.get("num_key_value_heads", 32 if model_type in ("qwen2", "qwen3") else None)
        if kv_heads is None:
            kv_heads = heads
        elif "num_key_value_heads" not in hf and heads % kv_heads:
            raise UserError(f"HF config has no 'num_key_value_heads'; transformers then takes {kv_heads} (its "
                            f"{_HF_ARCH_CLASS[model_type].removesuffix('ForCausalLM')}Config default), which does not "
                            f"divide num_attention_heads={heads}: set the field in config.json")
        eos = hf.get("eos_token_id")
        extra_eos: tuple = ()
        if isinstance(eos, list):
            eos, extra_eos = (eos[0], tuple(eos[1:])) if eos else (None, ())
        return cls(
            architecture=model_type,
            vocab_size=integer("vocab_size", need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=integer("intermediate_size", need("intermediate_size")),
            num_layers=integer("num_hidden_layers", need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=integer("num_key_value_heads", kv_heads),
            # transformers' Qwen3Config defaults head_dim to 128, not hidden / heads
            head_dim=integer("head_dim", hf.get("head_dim") or (128 if model_type == "qwen3" else hidden // heads)),
            rope_theta=number("rope_theta", rope_theta),
            rope_scaling=rope_scaling,
            rms_norm_eps=number("rms_norm_eps", hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
            # A missing field is the config class's default: LlamaConfig's is 2048, the Qwen ones' 32768.
            max_position_embeddings=integer("max_position_embeddings", hf.get(
                "max_position_embeddings", 2048 if model_type == "llama" else 32768)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos,
            extra_eos_token_ids=extra_eos,
            pad_token_id=hf.get("pad_token_id"),
        )
