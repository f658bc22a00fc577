"""Model shape and dtype flags shared by `bench sample` and `bench train`.

The shape starts from a preset (`--preset`, or `model.preset` of `--config`/`--set`), takes
`model.overrides` and `model.scan_layers`, then the shrink flags: `--layers`, `--hidden` (query heads follow as
hidden // head_dim, the MLP keeps the preset's width ratio), `--vocab`.
"""

from __future__ import annotations

import argparse

from azr_jax.bench.common import check_set_keys, positive_int
from azr_jax.config import load_config
from azr_jax.errors import UserError
from azr_jax.models.config import ModelConfig
from azr_jax.models.presets import get_preset

DTYPES = ("float32", "bfloat16")


def add_shape_arguments(parser: argparse.ArgumentParser, *, default_preset: str, remat: bool = True) -> None:
    """`remat`: the benchmark runs the update step, so it reads `model.remat` too."""
    keys = ("model.preset", "model.overrides", "model.scan_layers") + (("model.remat",) if remat else ())
    parser.add_argument("--config", default=None, help=f"config file whose {', '.join(keys)} are used")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override of {', '.join(keys)}, e.g. model.overrides.num_layers=2 (repeatable)")
    parser.add_argument("--preset", default=None, help=f"model preset (default: {default_preset})")
    parser.add_argument("--layers", type=positive_int, default=None, help="number of decoder layers")
    parser.add_argument("--hidden", type=positive_int, default=None, help="hidden size (heads = hidden // head_dim)")
    parser.add_argument("--vocab", type=positive_int, default=None, help="vocabulary size")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="weights and compute dtype (default: bfloat16 on accelerators, float32 on CPU)")
    parser.set_defaults(_default_preset=default_preset, _config_keys=keys)


def _shrink_hidden(cfg: ModelConfig, hidden: int) -> ModelConfig:
    if hidden % cfg.head_dim:
        raise UserError(f"--hidden {hidden} must be a multiple of the head_dim {cfg.head_dim}")
    heads = hidden // cfg.head_dim
    kv = max(1, min(cfg.num_kv_heads, heads))
    while heads % kv:
        kv -= 1
    ratio = cfg.intermediate_size / cfg.hidden_size
    return cfg.replace(hidden_size=hidden, num_heads=heads, num_kv_heads=kv,
                       intermediate_size=int(round(hidden * ratio / 64)) * 64 or 64)


def model_config_from_args(args: argparse.Namespace) -> ModelConfig:
    cfg_file = load_config(args.config, args.set)
    check_set_keys(args, args._config_keys)
    chose_preset = args.config is not None or any(s.startswith("model.preset=") for s in args.set)
    preset = args.preset or (cfg_file.model.preset if chose_preset else args._default_preset)
    if preset == "nano":
        import azr_jax.nano.preset  # noqa: F401  (registers the nano shape)
    cfg = get_preset(preset)
    if cfg_file.model.overrides:
        cfg = cfg.replace(**cfg_file.model.overrides)
    cfg = cfg.replace(scan_layers=cfg_file.model.scan_layers)
    if args.layers is not None:
        cfg = cfg.replace(num_layers=args.layers)
    if args.hidden is not None:
        cfg = _shrink_hidden(cfg, args.hidden)
    if args.vocab is not None:
        cfg = cfg.replace(vocab_size=args.vocab)
    return cfg


def remat_from_args(args: argparse.Namespace) -> str:
    """The update step's rematerialisation policy (`model.remat` of `--config`/`--set`)."""
    return load_config(args.config, args.set).model.remat


def dtype_from_args(args: argparse.Namespace, platform: str) -> str:
    return args.dtype or ("float32" if platform == "cpu" else "bfloat16")


def model_shape_record(cfg: ModelConfig) -> dict:
    """The shape fields a benchmark JSON record carries."""
    return {
        "architecture": cfg.architecture, "layers": cfg.num_layers, "hidden": cfg.hidden_size,
        "heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "mlp": cfg.intermediate_size, "vocab": cfg.vocab_size, "params": cfg.num_params(),
        "scan_layers": cfg.scan_layers,
    }
