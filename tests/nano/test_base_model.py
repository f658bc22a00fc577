"""The shipped nano base checkpoint loads through the common model path and answers in the AZR
format (greedy, on held-out benchmark items)."""

import json

import jax
import pytest

from azr_jax.config import load_config
from azr_jax.nano import BASE_DIR
from azr_jax.nano.pretrain import RECORD_FILE


def test_shipped_base_loads_and_answers_in_format():
    from azr_jax.eval.evaluate import evaluate, placed_params
    from azr_jax.sandbox import Sandbox
    from azr_jax.train_setup import load_policy

    record = json.loads((BASE_DIR / RECORD_FILE).read_text())
    assert record["command"].startswith("azr-jax pretrain --config configs/nano_base.py")
    cfg = load_config("configs/nano.py", ["eval.max_items=6"])
    policy = load_policy(cfg)
    assert policy.config.num_params() == record["num_params"]
    assert policy.config.scan_layers is False  # model.scan_layers of the nano config reaches the model
    assert load_policy(load_config("configs/nano.py", ["model.scan_layers=true"])).config.scan_layers is True
    with Sandbox(cfg.sandbox) as sb:
        result = evaluate(placed_params(policy), policy, cfg, sb)
    assert result["n_items"] == 6
    assert result["format_rate"] >= 0.5, [it["response"] for it in result["items"]]


def test_sampled_evaluation_reports_pass_at_k():
    from azr_jax.eval.evaluate import evaluate, placed_params
    from azr_jax.sandbox import Sandbox
    from azr_jax.train_setup import load_policy

    cfg = load_config("configs/nano.py", ["eval.max_items=3", "eval.samples=4", "eval.temperature=1.0",
                                          "eval.max_response_len=96"])
    policy = load_policy(cfg)
    with Sandbox(cfg.sandbox) as sb:
        result = evaluate(placed_params(policy), policy, cfg, sb)
    assert result["samples"] == 4 and result["pass_at_k"]["k"] == 4
    assert all(len(it["responses"]) == 4 for it in result["items"])
    assert any(len(set(it["responses"])) > 1 for it in result["items"])  # sampled, not greedy
    assert result["pass_at_k"]["solve_rate"] >= result["solve_rate"]


# The CPU test run forces 8 host devices (tests/conftest.py); one GPU cannot lay out this mesh.
@pytest.mark.skipif(jax.device_count() < 8, reason="needs an 8-device mesh")
def test_training_refuses_an_unsplittable_micro_batch_before_reading_weights(tmp_path, monkeypatch):
    """It used to be said only once the weights were loaded. Evaluation and export load the same
    policy and do no update, so only training checks it."""
    from azr_jax import trainer
    from azr_jax.errors import UserError
    from azr_jax.train_setup import load_policy

    def no_weights(cfg):
        raise AssertionError("the weights were loaded before the check")

    cfg = load_config("configs/nano.py", ['mesh.shape={"data": 2, "fsdp": -1, "tensor": 4}', "rl.micro_batch_size=3"])
    monkeypatch.setattr(trainer, "load_policy", no_weights)
    with pytest.raises(UserError, match="rl.micro_batch_size=3 cannot be split over the 2 devices"):
        trainer.train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing written either
    assert load_policy(cfg, weights=False).mesh is not None  # an evaluation of the same config loads


def test_training_warns_when_prompt_and_response_pass_the_context(caplog):
    """Positions past max_position_embeddings were never trained; nothing used to say so."""
    import logging

    from azr_jax.train_setup import load_policy, warn_rollouts_past_context

    for sets, warned in ((["sampling.max_response_len=4096"], True), ([], False)):
        cfg = load_config("configs/nano.py", sets)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="azr_jax.train"):
            warn_rollouts_past_context(cfg, load_policy(cfg, weights=False).config)
        assert ("over the model's max_position_embeddings (2048)" in caplog.text) == warned


def test_the_nano_configs_are_the_ones_the_shipped_base_and_docs_describe():
    """configs/nano_base.py rebuilds the shipped base (its record holds the settings it was built
    with), and configs/nano.py self-plays on the prompts and settings docs/nano.md measures."""
    import dataclasses

    from azr_jax.nano.run_config import nano_base_config, nano_selfplay_config

    record = json.loads((BASE_DIR / RECORD_FILE).read_text())
    base, selfplay = nano_base_config(), nano_selfplay_config()
    built = dataclasses.asdict(base.pretrain)
    assert {k: built[k] for k in record["pretrain"]} == record["pretrain"]
    assert set(built) - set(record["pretrain"]) == {"init_from"} and not built["init_from"]
    assert selfplay.pretrain == base.pretrain
    # the prompts self-play shows are the ones the base was pretrained on
    for field in ("prompt_dir", "n_references", "num_inputs", "seed_file", "induction_seed_file"):
        assert getattr(selfplay.azr, field) == getattr(base.azr, field), field
    assert selfplay.model.hf_dir == str(BASE_DIR) and selfplay.eval == base.eval
    assert base.eval.max_response_len == 160 and selfplay.sampling.temperature == 1.0  # as docs/nano.md says
    # docs/nano.md's main run: 45 steps, azr.batch_size=8, lr 1e-4 after a 5-step warmup, evaluations every 15
    assert (selfplay.train.steps, selfplay.azr.batch_size, selfplay.optim.learning_rate, selfplay.optim.schedule,
            selfplay.optim.warmup_steps, selfplay.train.eval_every) == (45, 8, 1e-4, "constant", 5, 15)
    # and the rest of the recipe those runs used: any change here changes every number docs/nano.md reports
    m = selfplay.model
    assert (selfplay.name, m.compute_dtype, m.param_dtype) == ("nano", "float32", "float32")
    s = selfplay.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_prompt_len, s.max_response_len) == (1.0, 1.0, 0, 640, 256)
    assert s.length_buckets == [128, 256, 384, 512, 640]
    assert (selfplay.azr.n_solver_samples, selfplay.azr.buffer_cap) == (4, 4096)
    assert (selfplay.sandbox.timeout_s, selfplay.sandbox.workers, selfplay.rl.micro_batch_size) == (5.0, 2, 16)
    assert selfplay.optim.grad_clip_norm == 1.0
    t = selfplay.train
    assert (t.seed, t.save_every, t.keep_checkpoints, t.audit_every) == (0, 15, 2, 15)


def test_the_nano_preset_is_the_shipped_base_but_for_its_trimmed_vocabulary():
    # A rebuild (`azr-jax pretrain`) and a random-init nano run build the preset: every setting
    # of it (rope, norm epsilon, context, biases, ...) must be the shipped base's, whose
    # config.json differs only in the 786 rows the build kept of the preset's 1024.
    from azr_jax.models.config import ModelConfig
    from azr_jax.nano.preset import NANO
    from azr_jax.nano.pretrain import nano_model_config
    from azr_jax.nano.run_config import nano_base_config

    shipped = ModelConfig.from_hf_config(json.loads((BASE_DIR / "config.json").read_text()))
    assert (shipped.vocab_size, NANO.vocab_size) == (786, 1024)
    assert NANO.replace(vocab_size=786) == shipped
    assert nano_model_config(nano_base_config(), 786).replace(vocab_size=786) == shipped.replace(scan_layers=False)
