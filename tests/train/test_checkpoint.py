"""Orbax checkpoints: save/restore round trip, keep-last-K, corrupt and missing checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from azr_jax.checkpoint import Checkpoints, abstract_like
from azr_jax.errors import UserError


def _state(scale):
    params = {"w": jnp.full((4, 3), float(scale)), "b": jnp.arange(3, dtype=jnp.float32)}
    opt_state = optax.adamw(1e-3).init(params)
    return {"params": params, "opt_state": opt_state}


def test_round_trip_keeps_last_k_and_host_record(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck", keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"step": step, "buffers": {"deduction": [{"program": "def f(a): return a"}]}})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    state, host = ckpt.restore(3, abstract_like(_state(0)))
    assert np.array_equal(state["params"]["w"], np.full((4, 3), 3.0))
    assert jax.tree.structure(state) == jax.tree.structure(_state(0))  # optax NamedTuples survive
    assert host["buffers"]["deduction"][0]["program"] == "def f(a): return a"
    ckpt.close()


def test_missing_step_is_a_user_error(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck")
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.wait()
    with pytest.raises(UserError, match=r"no complete checkpoint for step 5 .*available: \[1\]"):
        ckpt.restore(5, abstract_like(_state(0)))
    ckpt.close()


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck")
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.close()
    for f in (tmp_path / "ck" / "1" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt or incompatible"):
        Checkpoints(tmp_path / "ck").restore(1, abstract_like(_state(0)))


def test_incompatible_shapes_are_a_user_error(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck")
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.close()
    other = {"params": {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}}
    other["opt_state"] = optax.adamw(1e-3).init(other["params"])
    with pytest.raises(UserError, match="corrupt or incompatible"):
        Checkpoints(tmp_path / "ck").restore(1, abstract_like(other))
