"""Mesh construction, logical-axis resolution, and sharded forward == single device."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(Path(__file__).parent / "models"))
sys.path.insert(0, str(Path(__file__).parent / "golden_sharding"))
from hf_reference import left_padded_batch, small_config  # noqa: E402
from regenerate import PRESET_NAMES, golden_path, resolved_specs  # noqa: E402

from azr_jax.config import MeshSection  # noqa: E402
from azr_jax.errors import UserError  # noqa: E402
from azr_jax.models.decoder import forward, init_params, param_shardings  # noqa: E402
from azr_jax.sharding import constrain, logical_to_pspec, make_mesh, mesh_rules  # noqa: E402

RULES = MeshSection().rules


def test_make_mesh_fills_minus_one_and_rejects_bad_shapes():
    assert len(jax.devices()) == 8
    mesh = make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    # the axes keep the order given, each with its own size (not sorted by name)
    mesh = make_mesh({"tensor": 2, "data": -1})
    assert mesh.axis_names == ("tensor", "data") and dict(mesh.shape) == {"tensor": 2, "data": 4}
    with pytest.raises(UserError, match="needs 6 devices"):
        make_mesh({"data": 3, "tensor": 2})
    with pytest.raises(UserError, match="at most one"):
        make_mesh({"data": -1, "tensor": -1})
    with pytest.raises(UserError, match="not divisible"):
        make_mesh({"data": 3, "fsdp": -1})


def test_a_mesh_axis_that_shards_no_parameter_is_named_in_a_warning(caplog):
    """Only `embed` goes to fsdp: with a hidden size fsdp does not divide, the fallback left every
    parameter (and its optimizer state) whole on every device, and nothing said so (a 7B model on
    fsdp 6 would hold 122 GB of train state per device instead of 20)."""
    import logging

    from azr_jax.models.decoder import idle_mesh_axes
    from azr_jax.train_setup import warn_idle_mesh_axes

    odd = small_config("qwen2", hidden_size=36)
    mesh = make_mesh({"fsdp": 8})
    assert idle_mesh_axes(odd, mesh, RULES) == ["fsdp"]
    assert idle_mesh_axes(small_config("qwen2"), mesh, RULES) == []  # hidden 64
    # data only ever shards the batch: replicated parameters along it are the plan, not a fallback
    assert idle_mesh_axes(odd, make_mesh({"data": 2, "fsdp": 1, "tensor": 4}), RULES) == []
    with caplog.at_level(logging.WARNING, logger="azr_jax.train"):
        warn_idle_mesh_axes(odd, mesh, RULES)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["mesh axis 'fsdp' (8 devices) shards no parameter"]
    assert "embed 36" in caplog.records[0].getMessage()


def test_logical_to_pspec_rules():
    mesh = {"data": 2, "fsdp": 2, "tensor": 2}
    # A list rule shards over several mesh axes; an axis is used once per array.
    assert logical_to_pspec(("batch", "length", "embed"), RULES, (8, 16, 64), mesh) == P(("data", "fsdp"))
    assert logical_to_pspec(("embed", "mlp"), RULES, (64, 128), mesh) == P("fsdp", "tensor")
    # Not divisible -> that mesh axis falls back to replication (2 kv heads on tensor=4).
    assert logical_to_pspec(("embed", "kv_heads", "head_dim"), RULES, (64, 2, 16),
                            {"fsdp": 2, "tensor": 4}) == P("fsdp")
    # Batch 2 on data=2 x fsdp=2: keep data, drop fsdp.
    assert logical_to_pspec(("batch",), RULES, (2,), mesh) == P("data")
    # Size-1 and absent mesh axes shard nothing and are dropped.
    assert logical_to_pspec(("vocab", "embed"), RULES, (512, 64), {"fsdp": 8, "tensor": 1}) == P(None, "fsdp")
    # Without a mesh the names are taken as they stand.
    assert logical_to_pspec(("heads", None), RULES) == P("tensor")
    with pytest.raises(UserError, match="no sharding rule"):
        logical_to_pspec(("experts",), RULES)


def test_constrain_is_identity_outside_mesh_rules():
    x = jnp.ones((4, 8))
    assert constrain(x, ("batch", "embed")) is x


def _sharded_logits(cfg, params, tokens, positions, mask, mesh_shape):
    mesh = make_mesh(mesh_shape)
    shardings = param_shardings(cfg, mesh, RULES)
    placed = jax.device_put(params, shardings)
    with mesh_rules(mesh, RULES):  # entered before tracing: constraints are applied
        fn = jax.jit(lambda p, t, q, m: forward(p, t, q, config=cfg, mask_bt=m)[0])
        logits = fn(placed, tokens, positions, mask)
        text = fn.lower(placed, tokens, positions, mask).as_text()
    return logits, text, placed


@pytest.mark.parametrize("mesh_shape", [{"data": 2, "fsdp": 1, "tensor": 4},
                                        {"data": 1, "fsdp": 8, "tensor": 1}])
def test_sharded_forward_equals_single_device(mesh_shape):
    # 4 query heads and 2 kv heads: on tensor=4 the kv heads fall back to replication.
    cfg = small_config("qwen2", num_heads=4, num_kv_heads=2, head_dim=16, hidden_size=64,
                       intermediate_size=128)
    params = init_params(cfg, jax.random.key(0))
    tokens, mask, positions = left_padded_batch([16, 5, 11, 16, 2, 9, 13, 7], 16, cfg.vocab_size)
    reference, _ = jax.jit(lambda p: forward(p, tokens, positions, config=cfg, mask_bt=mask))(params)

    logits, text, placed = _sharded_logits(cfg, params, tokens, positions, mask, mesh_shape)
    real = mask.astype(bool)
    assert np.abs(np.asarray(logits) - np.asarray(reference))[real].max() <= 1e-5
    # with_sharding_constraint lowers to sdy.sharding_constraint (Shardy) or @Sharding (GSPMD).
    assert "sharding_constraint" in text or "@Sharding" in text
    if mesh_shape["tensor"] == 4:
        assert placed["layers"]["q_proj_dnh"].sharding.spec == P(None, None, "tensor")
        assert placed["layers"]["k_proj_dkh"].sharding.spec == P()
    else:
        assert placed["layers"]["q_proj_dnh"].sharding.spec == P(None, "fsdp")


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_golden_parameter_shardings(preset):
    path = golden_path(preset)
    expected = json.loads(path.read_text())
    actual = json.loads(json.dumps(resolved_specs(preset)))
    assert actual == expected, (
        f"resolved shardings of {preset} changed; if intended, run "
        "`python tests/golden_sharding/regenerate.py` and review the JSON diff"
    )


def test_make_mesh_rejects_an_empty_shape_and_sizes_below_one():
    """Each bad shape gets its own message, not a device-count mismatch or a ZeroDivisionError."""
    with pytest.raises(UserError, match="at least one axis"):
        make_mesh({})
    for shape in ({"data": 0}, {"data": 0, "fsdp": -1}, {"data": -2, "fsdp": -1}):
        with pytest.raises(UserError, match="positive or -1"):
            make_mesh(shape)


def test_logical_axes_must_name_every_dimension_of_the_shape():
    with pytest.raises(ValueError, match="do not match shape"):
        logical_to_pspec(("embed",), RULES, (64, 128), {"fsdp": 2})


def test_tree_pspecs_without_shapes_still_drops_size_one_and_absent_mesh_axes():
    """Without shapes there is no divisibility fallback, but the mesh's sizes still apply."""
    from azr_jax.sharding import tree_pspecs

    axes = {"embedding": ("vocab", "embed"), "layers": {"w": ("embed", "mlp")}, "norm": (None,)}
    assert tree_pspecs(axes, RULES, mesh={"fsdp": 8, "tensor": 1}) == {
        "embedding": P(None, "fsdp"), "layers": {"w": P("fsdp")}, "norm": P()}
    assert tree_pspecs(axes, RULES)["layers"]["w"] == P("fsdp", "tensor")  # no mesh: names as they stand


def test_mesh_rules_restores_the_enclosing_context_on_exit():
    """Nested contexts unwind to the outer one (also on an exception), and to none at the end."""
    from azr_jax.sharding import current_mesh_rules

    outer, inner = make_mesh({"fsdp": 8}), make_mesh({"data": 2, "tensor": 4})
    assert current_mesh_rules() is None
    with mesh_rules(outer, RULES):
        with pytest.raises(RuntimeError):
            with mesh_rules(inner, RULES):
                assert current_mesh_rules()[0] is inner
                raise RuntimeError
        assert current_mesh_rules()[0] is outer
    assert current_mesh_rules() is None
    x = jnp.ones((4, 8))
    assert constrain(x, ("batch", "embed")) is x


def test_constrain_replicates_a_dimension_its_mesh_axis_does_not_divide():
    """2 kv heads on tensor=4: the activation is constrained to P('data'), not to an uneven split."""
    mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
    with mesh_rules(mesh, RULES):
        assert constrain(jnp.ones((4, 2)), ("batch", "kv_heads")).sharding.spec == P("data")
        assert constrain(jnp.ones((4, 8)), ("batch", "heads")).sharding.spec == P("data", "tensor")
