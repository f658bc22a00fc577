"""Nano pretraining: a few steps on the procedural corpus reduce the response loss."""

import dataclasses

import numpy as np

from azr_jax.config import load_config
from azr_jax.models.tokenizer import load_tokenizer
from azr_jax.nano.pretrain import (
    bucket_rows, corpus_tasks, corpus_transcripts, nano_model_config, tokenize_transcripts, train,
)
from azr_jax.nano.tokenizer_train import train_tokenizer

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
        "head_dim": 16}


def test_a_few_steps_reduce_loss(tmp_path):
    cfg = load_config("configs/nano_base.py", ["pretrain.corpus_programs=40", "pretrain.steps=20",
                                                "pretrain.batch_size=8", "pretrain.learning_rate=0.01",
                                                "pretrain.warmup_steps=3", "pretrain.seq_len=256"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, overrides=TINY))
    transcripts = [t for t in corpus_transcripts(cfg, corpus_tasks(cfg)) if t.role == "solve"]
    tok = load_tokenizer(train_tokenizer([t.prompt + t.response for t in transcripts], tmp_path / "tokenizer.model",
                                         vocab_size=400))
    rows = tokenize_transcripts(tok, transcripts, cfg.pretrain.seq_len)
    buckets = bucket_rows(rows, cfg.pretrain.batch_size)
    largest = max(buckets, key=lambda length: len(buckets[length][0]))
    buckets = {largest: buckets[largest]}  # one shape: one compilation
    model_cfg = nano_model_config(cfg, tok.vocab_size)
    assert model_cfg.hidden_size == 32 and model_cfg.eos_token_id == tok.eos_id
    _, losses = train(model_cfg, buckets, cfg.pretrain)
    assert len(losses) == 20 and np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0


def test_pretraining_continues_from_a_checkpoint(tmp_path):
    import json

    import pytest

    from azr_jax.errors import UserError
    from azr_jax.nano import BASE_DIR
    from azr_jax.nano.pretrain import RECORD_FILE, build_base

    overrides = ["pretrain.corpus_programs=40", "pretrain.steps=2", "pretrain.batch_size=4", "pretrain.warmup_steps=1"]
    cfg = load_config("configs/nano_base.py", overrides + [f"pretrain.init_from={BASE_DIR}"])
    record = build_base(cfg, tmp_path / "cont", log=lambda msg: None)
    assert (tmp_path / "cont" / "tokenizer.model").read_bytes() == (BASE_DIR / "tokenizer.model").read_bytes()
    assert record["num_params"] == json.loads((BASE_DIR / RECORD_FILE).read_text())["num_params"]
    assert record["first_loss"] < 1.5  # the shipped weights: a random init starts near ln(786) = 6.7
    assert record["command"] == "build_base()"  # called from Python: not this process's argv (pytest's)
    import os

    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "cont").iterdir() if f.is_file()}
    assert modes["model.safetensors"] == 0o666 & ~umask, modes  # safetensors alone writes 0600
    with pytest.raises(UserError, match="not a nano checkpoint"):
        build_base(load_config("configs/nano_base.py", overrides + [f"pretrain.init_from={tmp_path}"]),
                   tmp_path / "bad", log=lambda msg: None)


def test_a_bad_model_override_fails_before_anything_is_written(tmp_path):
    # The documented rebuild writes into azr_jax/nano/base: a typo must not replace its tokenizer.
    import pytest

    from azr_jax.errors import UserError
    from azr_jax.nano import BASE_DIR
    from azr_jax.nano.pretrain import build_base

    small = ["pretrain.corpus_programs=40", "pretrain.steps=2", "pretrain.batch_size=4"]
    out = tmp_path / "out"
    with pytest.raises(UserError, match="num_layerz"):
        build_base(load_config("configs/nano_base.py", small + ['model.overrides={"num_layerz": 2}']), out,
                   log=lambda msg: None)
    assert not out.exists()
    with pytest.raises(UserError, match="pretrain.init_from"):  # refused, not silently ignored
        build_base(load_config("configs/nano_base.py", small + [f"pretrain.init_from={BASE_DIR}",
                                                                'model.overrides={"num_layers": 2}']), out,
                   log=lambda msg: None)
    assert not out.exists()


def test_a_build_that_fails_after_the_tokenizer_leaves_the_old_base_alone(tmp_path):
    """The rebuild writes into the shipped base's folder: a build that stops after training its
    tokenizer (here: a corpus too small for one batch; in practice Ctrl-C during the 45-minute
    training) must not leave a new tokenizer beside the old weights."""
    import shutil

    import pytest

    from azr_jax.errors import UserError
    from azr_jax.nano import BASE_DIR
    from azr_jax.nano.pretrain import build_base

    out = tmp_path / "base"
    shutil.copytree(BASE_DIR, out)
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    with pytest.raises(UserError, match="too small for one batch"):
        build_base(load_config("configs/nano_base.py", ["pretrain.corpus_programs=30", "pretrain.batch_size=200"]),
                   out, log=lambda msg: None)
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before


def test_the_build_record_counts_the_transcripts_trained_on_and_quotes_the_command(tmp_path, monkeypatch):
    import argparse
    import json
    import shlex
    import sys

    from azr_jax.nano.pretrain import RECORD_FILE, main

    override = 'model.overrides={"num_layers": 1}'
    argv = ["azr-jax", "pretrain", "--config", "configs/nano_base.py", "--set", "pretrain.corpus_programs=40",
            "--set", "pretrain.steps=1", "--set", "pretrain.batch_size=48", "--set", override, "--out", str(tmp_path / "b")]
    monkeypatch.setattr(sys, "argv", argv)
    overrides = ["pretrain.corpus_programs=40", "pretrain.steps=1", "pretrain.batch_size=48", override]
    assert main(argparse.Namespace(config="configs/nano_base.py", overrides=overrides, out=str(tmp_path / "b"))) == 0
    record = json.loads((tmp_path / "b" / RECORD_FILE).read_text())
    assert shlex.split(record["command"]) == argv  # runs again as printed
    from azr_jax.nano.pretrain import bucket_rows, corpus_tasks, corpus_transcripts, tokenize_transcripts
    from azr_jax.models.tokenizer import load_tokenizer

    cfg = load_config("configs/nano_base.py", overrides)
    rows = tokenize_transcripts(load_tokenizer(tmp_path / "b" / "tokenizer.model"),
                                corpus_transcripts(cfg, corpus_tasks(cfg)), cfg.pretrain.seq_len)
    kept = sum(len(t) for t, _, _ in bucket_rows(rows, 48).values())
    assert record["transcripts_used"] == kept < len(rows)  # lengths with fewer than 48 rows are left out

    # --out holding something else (a Hugging Face checkpoint, a run) is refused, not overwritten;
    # a base built by pretrain is rebuilt in place, as the documented command does with the shipped one.
    import pytest

    from azr_jax.errors import UserError

    other = tmp_path / "hf"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(UserError, match="is not empty and holds no base model"):
        main(argparse.Namespace(config="configs/nano_base.py", overrides=overrides, out=str(other)))
    assert sorted(p.name for p in other.iterdir()) == ["config.json"]
    capsys_err = tmp_path / "err.txt"
    with open(capsys_err, "w") as err:
        monkeypatch.setattr(sys, "stderr", err)
        assert main(argparse.Namespace(config="configs/nano_base.py", overrides=overrides, out=str(tmp_path / "b"))) == 0
    assert f"replacing the base model in {tmp_path / 'b'}" in capsys_err.read_text()


def test_a_build_that_cannot_train_says_why_in_one_line_and_leaves_no_folder(tmp_path):
    """A vocabulary SentencePiece cannot fill, or a model vocabulary under the tokenizer's (ids
    past the table gave NaN losses and a checkpoint that did not load), is one UserError; the
    output folder the build created is removed again."""
    import pytest

    from azr_jax.errors import UserError
    from azr_jax.nano.pretrain import build_base

    small = ["pretrain.corpus_programs=40", "pretrain.steps=2", "pretrain.batch_size=4"]
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"pretrain.vocab_size=200: .*required_chars"):
        build_base(load_config("configs/nano_base.py", small + ["pretrain.vocab_size=200"]), out, log=lambda m: None)
    assert not out.exists()
    with pytest.raises(UserError, match="vocab_size=300 is smaller than the tokenizer's"):
        build_base(load_config("configs/nano_base.py", small + ['model.overrides={"vocab_size": 300}']), out,
                   log=lambda m: None)
    assert not out.exists()


def test_a_nan_loss_stops_pretraining_before_anything_is_written(tmp_path):
    import pytest

    from azr_jax.errors import UserError

    import jax

    from azr_jax.models import init_params

    cfg = load_config("configs/nano_base.py", ["pretrain.steps=3", "pretrain.batch_size=2"])
    model_cfg = nano_model_config(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, overrides=TINY)), 300)
    params = init_params(model_cfg, jax.random.key(0))
    params["embed"]["embedding_vd"] = params["embed"]["embedding_vd"].at[1].set(np.nan)  # what a diverged run holds
    tokens = np.ones((2, 16), np.int32)
    buckets = {16: (tokens, np.ones((2, 16), np.float32), np.ones((2, 16), bool))}
    with pytest.raises(UserError, match="loss is nan at step 1"):
        train(model_cfg, buckets, cfg.pretrain, params=params)


def test_without_a_warmup_the_first_pretraining_step_already_trains():
    """warmup_steps=0 used to become 1, and a run of one step (warmup capped at steps // 2)
    then updated nothing; the shipped recipe's warmup (30 steps from 0) is unchanged."""
    from azr_jax.nano.pretrain import make_optimizer
    from azr_jax.nano.run_config import nano_base_config

    def first_rates(overrides, n=3):
        import jax.numpy as jnp

        p = load_config("configs/nano_base.py", overrides).pretrain
        opt = make_optimizer(p)
        params = {"w": jnp.ones(3)}
        state = opt.init(params)
        moved = []
        for _ in range(n):
            updates, state = opt.update({"w": jnp.ones(3)}, state, params)
            moved.append(float(abs(updates["w"]).max()))
        return moved

    assert first_rates(["pretrain.warmup_steps=0"])[0] > 0
    assert first_rates(["pretrain.steps=1"], n=1)[0] > 0
    shipped = nano_base_config().pretrain
    assert shipped.warmup_steps == 30 and first_rates([])[0] == 0.0 and first_rates([])[1] > 0


def test_transcripts_refuse_an_unknown_task_type_and_draw_references_from_their_seed():
    import pytest

    from azr_jax.azr.prompts import Prompts
    from azr_jax.nano.corpus import generate_tasks
    from azr_jax.nano.transcripts import build_transcripts, propose_response, solve_response

    tasks = generate_tasks(0, 8, num_inputs=8)
    for respond in (solve_response, propose_response):
        with pytest.raises(ValueError, match="unknown task type 'deductive'"):
            respond("deductive", tasks[0])  # a typo is an error, not an empty demonstration
    prompts = Prompts.from_config(load_config("configs/nano.py").azr)

    def proposer_prompts(seed):
        return [t.prompt for t in build_transcripts(tasks, prompts, n_references=2, seed=seed) if t.role == "propose"]

    # the references shown in proposer prompts are drawn with `seed` (pretrain.corpus_seed)
    assert proposer_prompts(1) == proposer_prompts(1) != proposer_prompts(2)
