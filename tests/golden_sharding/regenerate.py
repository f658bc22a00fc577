"""Golden parameter shardings: the resolved PartitionSpec of every parameter, per preset and mesh.

A sharding change then shows up as a reviewable JSON diff. Regenerate after an intended change:

    python tests/golden_sharding/regenerate.py

Only abstract shapes are used (nothing is allocated), and meshes are plain {axis: size} dicts,
so no devices are needed.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

PRESET_NAMES = [
    "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b",
    "qwen2.5-coder-3b", "qwen2.5-coder-7b", "qwen2.5-coder-14b", "llama-3.1-8b", "qwen3-4b-base",
]
MESHES = {
    "fsdp8": {"data": 1, "fsdp": 8, "tensor": 1},
    "data2_tensor4": {"data": 2, "fsdp": 1, "tensor": 4},
    "data1_fsdp4_tensor2": {"data": 1, "fsdp": 4, "tensor": 2},
}


def default_rules() -> dict:
    from azr_jax.config import MeshSection

    return MeshSection().rules


def resolved_specs(preset: str) -> dict:
    """{mesh name: {"mesh": shape, "rules": rules, "params": {"a/b": spec}}} for one preset."""
    import jax

    from azr_jax.models.decoder import param_axes, param_shapes
    from azr_jax.models.presets import get_preset
    from azr_jax.sharding import tree_pspecs

    cfg = get_preset(preset)
    rules = default_rules()
    is_tuple = lambda x: isinstance(x, tuple)  # noqa: E731
    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, "float32"), param_shapes(cfg), is_leaf=is_tuple)
    out = {}
    for mesh_name, mesh in MESHES.items():
        pspecs = tree_pspecs(param_axes(cfg), rules, shapes, mesh)
        flat = jax.tree.flatten_with_path(pspecs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
        params = {
            "/".join(k.key for k in path): [list(e) if isinstance(e, tuple) else e for e in spec]
            for path, spec in flat
        }
        out[mesh_name] = {"mesh": mesh, "rules": rules, "params": params}
    return out


def golden_path(preset: str) -> Path:
    return HERE / f"{preset}.json"


def main() -> None:
    for preset in PRESET_NAMES:
        golden_path(preset).write_text(json.dumps(resolved_specs(preset), indent=1, sort_keys=True) + "\n")
        print(f"wrote {golden_path(preset)}")


if __name__ == "__main__":
    main()
