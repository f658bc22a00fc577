"""Experiment presets load, carry the paper's settings, and lay out on the known machines."""

from pathlib import Path

import pytest

from azr_jax.config import load_config
from azr_jax.errors import UserError
from azr_jax.run_presets import TOPOLOGIES, mesh_shape, with_mesh

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER = ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-coder-3b",
         "qwen2.5-coder-7b", "qwen2.5-coder-14b", "llama-3.1-8b", "qwen3-4b-base"]


@pytest.mark.parametrize("name", PAPER)
def test_paper_presets(name):
    from azr_jax.models import get_preset

    cfg = load_config(CONFIGS / f"{name}.py")
    get_preset(cfg.model.preset)  # names a real model shape
    assert cfg.azr.batch_size == 64 and cfg.azr.n_references == 6 and cfg.azr.n_solver_samples == 8
    assert cfg.optim.learning_rate == 1e-6 and cfg.rl.entropy_coef == 0.001 and cfg.train.steps == 500
    assert cfg.sampling.max_prompt_len == 6144 and cfg.sampling.max_response_len == 8096
    assert cfg.eval.max_response_len == cfg.sampling.max_response_len  # held-out answers get the same budget
    assert cfg.azr.learnability_temperature == 1.0 and cfg.azr.buffer_cap == 16384
    assert cfg.sampling.max_rows == cfg.azr.batch_size  # learnability rollouts: no call past a rollout batch
    second_def_ok = name in ("llama-3.1-8b", "qwen3-4b-base")
    assert cfg.azr.reject_multiple_functions is (not second_def_ok)
    assert cfg.azr.f_replace_location == ("any_last" if second_def_ok else "not_first")
    assert cfg.azr.seed_size == (64 if name == "llama-3.1-8b" else 256)
    assert cfg.rl.micro_batch_size == (8 if name == "qwen3-4b-base" else 16)
    assert cfg.mesh.shape["tensor"] == (2 if name.endswith("-14b") else 1)
    # The rest of docs/training.md's summary and its decisions on the reference's ambiguous points.
    assert cfg.rl.estimator == "trr++" and (cfg.rl.clip_eps_low, cfg.rl.clip_eps_high, cfg.rl.dual_clip) == (0.2, 0.28, 3.0)
    assert cfg.rl.loss_agg == "token-mean-per-micro-batch" and cfg.rl.kl_coef == 0.0
    assert (cfg.optim.schedule, cfg.optim.weight_decay, cfg.optim.grad_clip_norm) == ("constant", 0.0, 1.0)
    assert cfg.sampling.temperature == 1.0 and sorted(cfg.azr.task_types) == ["abduction", "deduction", "induction"]
    assert cfg.azr.solver_task_lag is True and cfg.azr.boundary_reward == -0.5
    assert (cfg.azr.buffer_eviction, cfg.azr.pred_data_mix) == ("drop_oldest", "max_new")
    assert cfg.azr.num_inputs == 10 and cfg.model.param_dtype == "float32"
    # rows of 6144 + 8096 positions: the update needs rematerialisation (docs/benchmarks.md: 4096 already does)
    assert cfg.model.remat == "full"
    # The rest of what paper_config sets (or leaves at its default) for every model.
    assert cfg.rl.whiten_stats == "token" and (cfg.sampling.top_p, cfg.sampling.top_k) == (1.0, 0)
    assert (cfg.model.compute_dtype, cfg.model.hf_dir, cfg.model.overrides, cfg.model.scan_layers) == (
        "bfloat16", None, {}, True)  # the weights are the user's download: --set model.hf_dir=DIR
    assert (cfg.optim.b1, cfg.optim.b2, cfg.optim.eps, cfg.optim.warmup_steps) == (0.9, 0.999, 1e-8, 0)
    assert cfg.azr.code_location == "first"
    # checkpoints, evaluations (docs/training.md: `train.eval_every=10`) and audits every 10 steps
    t = cfg.train
    assert (t.seed, t.save_every, t.keep_checkpoints, t.log_every, t.eval_every, t.audit_every) == (0, 10, 3, 1, 10, 10)


def test_mesh_layouts():
    assert mesh_shape("v5e-8") == {"data": 1, "fsdp": 8, "tensor": 1}
    assert mesh_shape("v4-8", tensor=2) == {"data": 1, "fsdp": 2, "tensor": 2}
    cfg = with_mesh(load_config(CONFIGS / "qwen2.5-14b.py"), "gpu-8")
    assert cfg.mesh.shape == {"data": 1, "fsdp": 4, "tensor": 2}
    assert set(TOPOLOGIES) == {"v4-8", "v5p-8", "v5e-8", "v6e-8", "gpu-8"}
    # chips per machine (docs/training.md, "Mesh")
    assert {t: mesh_shape(t)["fsdp"] for t in TOPOLOGIES} == {"v4-8": 4, "v5p-8": 4, "v5e-8": 8, "v6e-8": 8, "gpu-8": 8}
    assert mesh_shape("v4-8", tensor=8) == {"data": 1, "fsdp": 1, "tensor": 4}  # never more than the chips
    with pytest.raises(UserError, match="unknown mesh topology"):
        mesh_shape("v9-8")
    with pytest.raises(UserError, match="does not divide"):
        mesh_shape("v5e-8", tensor=3)


def test_a_layout_changes_the_mesh_shape_only():
    """`--mesh` keeps the config's own mesh.rules (and every other value): only the shape is the topology's."""
    import dataclasses

    cfg = load_config(CONFIGS / "qwen2.5-7b.py", ["mesh.rules.batch=fsdp", "mesh.rules.embed=null"])
    laid_out = with_mesh(cfg, "v5e-8")
    assert laid_out.mesh.shape == {"data": 1, "fsdp": 8, "tensor": 1}
    assert laid_out.mesh.rules == cfg.mesh.rules and laid_out.mesh.rules["batch"] == "fsdp"
    assert dataclasses.replace(laid_out, mesh=cfg.mesh) == cfg
