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
    with pytest.raises(UserError, match="builds the nano base model .*model.preset 'qwen2.5-0.5b'"):
        build_base(load_config("configs/qwen2.5-0.5b.py", small), out, log=lambda msg: None)
    assert not out.exists()
    # train's way to name a start: pretrain would have ignored it and trained from a random init
    for key, value in (("hf_dir", BASE_DIR), ("tokenizer", BASE_DIR / "tokenizer.model")):
        with pytest.raises(UserError, match=rf"does not read model.{key} .*pretrain.init_from=DIR"):
            build_base(load_config("configs/nano_base.py", small + [f"model.{key}={value}"]), out, log=lambda msg: None)
        assert not out.exists()
    with pytest.raises(UserError, match="does not read model.hf_dir"):
        build_base(load_config("configs/nano.py", small), out, log=lambda msg: None)
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
    monkeypatch.setattr(sys, "argv", ["my_script.py", "--verbose"])  # run from Python: not its argv
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
    # SentencePiece's own text (its C++ file and condition, its --character_coverage flag) is not shown.
    with pytest.raises(UserError, match=r"^pretrain.vocab_size=200 is too small for the corpus: .* need (\d+); "
                                        r"set pretrain.vocab_size >= \1$"):
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


# ----------------------------------------------------------------------------------------------
# Mutation-audit tests: each pins one piece of the build cheaply (no real training step).
# ----------------------------------------------------------------------------------------------


class _CharTokenizer:
    """One id per character: transcript lengths in tokens are the texts' lengths."""

    eos_id = 3

    def encode_batch(self, texts):
        return [[10 + ord(c) % 50 for c in text] for text in texts]


def _transcript(prompt, response):
    from types import SimpleNamespace

    return SimpleNamespace(prompt=prompt, response=response)


def _tiny_cfg(overrides=(), scan_layers=None):
    cfg = load_config("configs/nano_base.py", list(overrides))
    model = dataclasses.replace(cfg.model, overrides=TINY)
    if scan_layers is not None:
        model = dataclasses.replace(model, scan_layers=scan_layers)
    return dataclasses.replace(cfg, model=model)


def test_rows_cover_the_response_and_eos_and_drop_only_what_passes_seq_len():
    tok = _CharTokenizer()
    transcripts = [_transcript("ab", "cde"), _transcript("x" * 6, "y" * 4), _transcript("p" * 5, "q" * 4),
                   _transcript("u", "v")]
    rows = tokenize_transcripts(tok, transcripts, seq_len=10)
    # "xxxxxx"+"yyyy"+EOS is 11 > 10: dropped; 10 tokens exactly still fit; later rows still come
    assert [len(ids) for ids, _ in rows] == [6, 10, 3]
    ids, mask = rows[0]
    assert ids.tolist() == tok.encode_batch(["ab"])[0] + tok.encode_batch(["cde"])[0] + [tok.eos_id]
    assert mask.tolist() == [0, 0, 1, 1, 1, 1]  # the prompt is context only; the closing EOS is learned
    assert rows[1][1].tolist() == [0] * 5 + [1] * 5

    # None fits: the error names seq_len (it said "raise pretrain.corpus_programs", which cannot help).
    import pytest

    from azr_jax.errors import UserError

    with pytest.raises(UserError, match=r"no transcript fits pretrain.seq_len=2: the shortest of 4 is 3 tokens"):
        tokenize_transcripts(tok, transcripts, seq_len=2)


def test_bucket_rows_right_pads_to_multiples_of_128_and_keeps_only_full_batches():
    def row(n):
        return np.arange(1, n + 1, dtype=np.int32), np.r_[np.zeros(n - 2), np.ones(2)].astype(np.float32)

    rows = [row(5), row(128), row(129), row(200), row(300)]
    buckets = bucket_rows(rows, batch_size=2)  # 128 and 256 hold exactly one batch each: kept
    assert sorted(buckets) == [128, 256]  # 300 -> 384 alone: fewer rows than one batch, left out
    tokens, masks, valid = buckets[128]
    assert tokens.shape == masks.shape == valid.shape == (2, 128)
    assert tokens[0, :5].tolist() == [1, 2, 3, 4, 5] and not tokens[0, 5:].any()  # right-padded with 0
    assert valid[0].tolist() == [1] * 5 + [0] * 123 and valid[1].all()
    assert masks[0, 3:5].tolist() == [1, 1] and not masks[0, 5:].any()
    assert buckets[256][0].shape == (2, 256)

    import pytest

    from azr_jax.errors import UserError

    with pytest.raises(UserError, match="too small for one batch: .*batch_size=3 transcripts, the most is 2; .*"
                                        "or lower pretrain.batch_size"):
        bucket_rows(rows, batch_size=3)


def test_the_nano_model_keeps_the_preset_vocab_and_takes_the_tokenizer_ids_and_scan_layers():
    from azr_jax.models.tokenizer import load_tokenizer
    from azr_jax.nano import BASE_DIR

    shipped = load_tokenizer(BASE_DIR / "tokenizer.model")
    for scan in (False, True):
        model_cfg = nano_model_config(_tiny_cfg(scan_layers=scan), shipped.vocab_size)
        # the preset's 1024 rows (trimmed after training): the shipped base was initialised so
        assert model_cfg.vocab_size == 1024 and model_cfg.scan_layers is scan
        assert (model_cfg.bos_token_id, model_cfg.eos_token_id, model_cfg.pad_token_id) == (
            shipped.bos_id, shipped.eos_id, shipped.pad_id)
    assert nano_model_config(_tiny_cfg(), 2000).vocab_size == 2000  # a larger tokenizer widens the table


def test_the_pretraining_loss_is_the_mean_response_token_cross_entropy():
    import jax
    import jax.numpy as jnp

    from azr_jax.models import forward, init_params
    from azr_jax.nano.pretrain import make_optimizer, make_train_step

    cfg = _tiny_cfg()
    model_cfg = nano_model_config(cfg, 300)
    params = init_params(model_cfg, jax.random.key(1))
    tokens = np.array([[5, 6, 7, 8, 9, 0], [11, 12, 13, 14, 15, 16]], np.int32)
    valid = np.array([[1, 1, 1, 1, 1, 0], [1] * 6], np.float32)  # row 0 is right-padded
    mask = np.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], np.float32)
    _, loss_fn = make_train_step(model_cfg, make_optimizer(cfg.pretrain))
    # reference: plain float32 logits of the unpadded tokens (causal: the pad after row 0's five
    # tokens cannot reach them); token t is predicted at position t - 1
    logits, _ = jax.jit(lambda p, t: forward(p, t, jnp.broadcast_to(jnp.arange(6), t.shape), config=model_cfg,
                                             compute_dtype=jnp.float32))(params, tokens)
    logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1))
    nll = [-logp[row, t - 1, tokens[row, t]] for row in range(2) for t in range(1, 6) if mask[row, t]]
    assert len(nll) == 5
    np.testing.assert_allclose(float(loss_fn(params, tokens, mask, valid)), np.mean(nll), rtol=1e-5)
    # no loss tokens at all: zero, not a NaN
    assert float(loss_fn(params, tokens, np.zeros_like(mask), valid)) == 0.0


def _adamw_reference(lrs, grads, param, *, wd, b1=0.9, b2=0.98, eps=1e-8, clip=1.0):
    """AdamW by hand (float64): global-norm clip, bias-corrected moments, decoupled decay."""
    param, m, v, out = np.array(param, np.float64), 0.0, 0.0, []
    for t, (lr, g) in enumerate(zip(lrs, grads), start=1):
        g = np.asarray(g, np.float64)
        g = g * min(1.0, clip / np.linalg.norm(g))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        update = -lr * ((m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) + wd * param)
        param = param + update
        out.append(param.copy())
    return out


def test_the_pretraining_optimizer_is_clipped_adamw_on_a_warmup_cosine_schedule():
    import math

    import jax.numpy as jnp
    import optax

    from azr_jax.nano.pretrain import make_optimizer

    lr, end = 0.1, 0.05  # the cosine ends at 5% of the peak and stays there
    # gradient norms on both sides of the clip at 1.0: the clip changes their ratio, so Adam sees it
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=3) * (5.0 if i % 2 else 0.1) for i in range(12)]

    def cosine(t, horizon):
        return lr * ((1 - end) * 0.5 * (1 + math.cos(math.pi * min(t, horizon) / horizon)) + end)

    cases = {  # (steps, warmup_steps) -> learning rate of update t (from 0)
        (10, 3): lambda t: lr * t / 3 if t < 3 else cosine(t - 3, 10 - 3),  # linear from 0, then cosine
        (4, 3): lambda t: lr * t / 2 if t < 2 else cosine(t - 2, 4 - 2),  # warmup capped at steps // 2
        (10, 0): lambda t: cosine(t, 10),  # no warmup: the first step trains at the peak
    }
    for (steps, warmup), rate in cases.items():
        p = load_config("configs/nano_base.py", [f"pretrain.steps={steps}", f"pretrain.warmup_steps={warmup}",
                                                 f"pretrain.learning_rate={lr}", "pretrain.weight_decay=0.3"]).pretrain
        opt = make_optimizer(p)
        params = {"w": jnp.array([1.0, -2.0, 0.5])}
        state, got = opt.init(params), []
        for g in grads:
            updates, state = opt.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
            params = optax.apply_updates(params, updates)
            got.append(np.asarray(params["w"]))
        want = _adamw_reference([rate(t) for t in range(len(grads))], grads, [1.0, -2.0, 0.5], wd=0.3)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6, err_msg=f"steps={steps} warmup={warmup}")


def test_the_batch_schedule_walks_shuffled_epochs_and_draws_buckets_by_size():
    from azr_jax.nano.pretrain import batch_schedule

    def bucket(n):
        return (np.zeros((n, 4), np.int32),) * 3

    one = {128: bucket(8)}
    schedule = batch_schedule(one, steps=12, batch_size=2, seed=3)
    assert all(length == 128 and len(idx) == 2 for length, idx in schedule)
    epochs = [np.concatenate([idx for _, idx in schedule[e * 4:(e + 1) * 4]]).tolist() for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(8)), epochs  # every row once per epoch, none twice
    assert epochs[0] != list(range(8)) and len({tuple(o) for o in epochs}) == 3, epochs  # reshuffled each epoch
    # rows that do not fill a last batch wait for the next epoch: every batch is full
    assert all(len(idx) == 3 for _, idx in batch_schedule({128: bucket(7)}, 10, 3, seed=0))
    # deterministic in the seed (and not in the dict's order); buckets drawn in proportion to size
    two = {128: bucket(90), 256: bucket(10)}
    drawn = batch_schedule(two, 2000, 2, seed=0)
    assert [(length, idx.tolist()) for length, idx in drawn] == [
        (length, idx.tolist()) for length, idx in batch_schedule({256: two[256], 128: two[128]}, 2000, 2, seed=0)]
    assert [idx.tolist() for _, idx in batch_schedule(two, 20, 2, seed=1)] != [idx.tolist() for _, idx in drawn[:20]]
    assert 0.87 < np.mean([length == 128 for length, _ in drawn]) < 0.93


def test_training_starts_from_the_seeded_init_follows_the_schedule_and_logs_window_means(monkeypatch):
    """`train`'s own loop, with the jitted step replaced by a recorder (no compilation)."""
    import jax

    from azr_jax.models import init_params
    from azr_jax.nano import pretrain

    seen = []

    def fake_make_train_step(model_cfg, optimizer):
        def step(params, opt_state, tokens, masks, valid):
            seen.append((params, tokens, masks, valid))
            return params, opt_state, float(2 ** len(seen))  # losses 2, 4, 8, 16
        return step, None

    monkeypatch.setattr(pretrain, "make_train_step", fake_make_train_step)
    cfg = _tiny_cfg(["pretrain.steps=4", "pretrain.batch_size=2", "pretrain.seed=5"])
    model_cfg = nano_model_config(cfg, 300)
    tokens = np.arange(6 * 16, dtype=np.int32).reshape(6, 16)
    # the loss mask and the padding mask differ: each must reach the step in its own place
    masks = np.tile((np.arange(16) >= 4).astype(np.float32), (6, 1))
    valid = np.tile((np.arange(16) < 12).astype(np.float32), (6, 1))
    buckets = {16: (tokens, masks, valid)}
    logs = []
    _, losses = train(model_cfg, buckets, cfg.pretrain, log=logs.append, log_every=2)
    assert losses == [2.0, 4.0, 8.0, 16.0]
    np.testing.assert_array_equal(seen[0][0]["embed"]["embedding_vd"],
                                  init_params(model_cfg, jax.random.key(5))["embed"]["embedding_vd"])
    want = [tokens[idx] for _, idx in pretrain.batch_schedule(buckets, 4, 2, 5)]  # pretrain.seed
    assert all(np.array_equal(a, b) for (_, a, _, _), b in zip(seen, want))
    assert all(np.array_equal(m, masks[:2]) and np.array_equal(v, valid[:2]) for _, _, m, v in seen)
    assert [m.split(" (")[0] for m in logs] == ["pretrain step 1/4 len 16 loss 2.0000",
                                                 "pretrain step 3/4 len 16 loss 6.0000",  # mean of the last 2
                                                 "pretrain step 4/4 len 16 loss 12.0000"]  # the last step too


def test_trim_vocab_keeps_the_first_rows_and_refuses_untied_embeddings():
    import jax
    import pytest

    from azr_jax.errors import UserError
    from azr_jax.models import init_params
    from azr_jax.nano.pretrain import trim_vocab

    model_cfg = nano_model_config(_tiny_cfg(), 300)
    params = init_params(model_cfg, jax.random.key(0))
    table = np.asarray(params["embed"]["embedding_vd"])
    trimmed_cfg, trimmed = trim_vocab(model_cfg, params, 300)
    assert trimmed_cfg.vocab_size == 300 and trimmed_cfg.hidden_size == model_cfg.hidden_size
    np.testing.assert_array_equal(trimmed["embed"]["embedding_vd"], table[:300])  # ids 0..299 keep their rows
    assert params["embed"]["embedding_vd"].shape[0] == 1024  # the caller's params are not changed
    same_cfg, same = trim_vocab(model_cfg, params, 1024)
    assert same_cfg == model_cfg and same is params
    untied = model_cfg.replace(tie_word_embeddings=False)
    with pytest.raises(UserError, match="ties its embeddings"):
        trim_vocab(untied, init_params(untied, jax.random.key(0)), 300)


def test_a_saved_base_loads_back_bit_for_bit_with_files_that_follow_the_umask(tmp_path):
    import json
    import os

    import jax

    from azr_jax.models import from_pretrained, init_params
    from azr_jax.nano import BASE_DIR
    from azr_jax.nano.pretrain import save_checkpoint, trim_vocab

    tok = load_tokenizer(BASE_DIR / "tokenizer.model")
    model_cfg = nano_model_config(_tiny_cfg(), tok.vocab_size)
    model_cfg, params = trim_vocab(model_cfg, init_params(model_cfg, jax.random.key(0)), tok.vocab_size)
    old = os.umask(0o027)  # not the usual 022: the mode must come from the umask, not a constant
    try:
        save_checkpoint(tmp_path / "ck", model_cfg, params, tok)
    finally:
        os.umask(old)
    assert (tmp_path / "ck" / "model.safetensors").stat().st_mode & 0o777 == 0o640
    # a Hugging Face checkpoint: transformers reads the weights' format from the safetensors
    # metadata and their dtype from config.json, as in the shipped base's files
    from safetensors import safe_open

    with safe_open(tmp_path / "ck" / "model.safetensors", "np") as f:
        assert f.metadata() == {"format": "pt"}
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["torch_dtype"] == "float32"
    loaded = from_pretrained(tmp_path / "ck")
    assert loaded.config.vocab_size == tok.vocab_size and loaded.config.hidden_size == 32
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded.params), strict=True):
        assert np.asarray(b).dtype == np.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (tmp_path / "ck" / "tokenizer.model").read_bytes() == (BASE_DIR / "tokenizer.model").read_bytes()


def test_a_failed_build_removes_only_the_empty_folder_it_created(tmp_path, monkeypatch):
    """Failures stubbed into the corpus step (the first step after the checks): the folder the
    build made goes (also on Ctrl-C), a folder that was there stays, and a half-written one is
    kept with the build's own error, not an OSError from removing it."""
    import pytest

    from azr_jax.errors import UserError
    from azr_jax.nano import BASE_DIR, pretrain

    small = ["pretrain.corpus_programs=40", "pretrain.steps=2", "pretrain.batch_size=4"]

    def fail_with(exc, write=None):
        def corpus_tasks(cfg):
            if write:
                (write / "config.json").write_text("{}")
            raise exc
        monkeypatch.setattr(pretrain, "corpus_tasks", corpus_tasks)

    # a bad override is found before the corpus is generated (and the tokenizer trained)
    fail_with(AssertionError("the corpus was generated before the override was checked"))
    with pytest.raises(UserError, match="num_layerz"):
        pretrain.build_base(load_config("configs/nano_base.py", small + ['model.overrides={"num_layerz": 2}']),
                            tmp_path / "a", log=lambda m: None)
    fail_with(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        pretrain.build_base(load_config("configs/nano_base.py", small), tmp_path / "b", log=lambda m: None)
    assert not (tmp_path / "b").exists()
    (tmp_path / "c").mkdir()
    fail_with(UserError("stop"))
    with pytest.raises(UserError, match="stop"):
        pretrain.build_base(load_config("configs/nano_base.py", small), tmp_path / "c", log=lambda m: None)
    assert (tmp_path / "c").is_dir()
    fail_with(UserError("half-way"), write=tmp_path / "d")
    with pytest.raises(UserError, match="half-way"):
        pretrain.build_base(load_config("configs/nano_base.py", small), tmp_path / "d", log=lambda m: None)
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["config.json"]
    # init_from needs both the weights and the tokenizer
    monkeypatch.setattr(pretrain, "corpus_tasks", lambda cfg: [])
    monkeypatch.setattr(pretrain, "corpus_transcripts", lambda cfg, tasks: [])
    for name in ("model.safetensors", "tokenizer.model"):
        src = tmp_path / f"only_{name}"
        src.mkdir()
        (src / name).write_bytes((BASE_DIR / name).read_bytes())
        with pytest.raises(UserError, match="not a nano checkpoint"):
            pretrain.build_base(load_config("configs/nano_base.py", small + [f"pretrain.init_from={src}"]),
                                tmp_path / "e", log=lambda m: None)


def test_a_build_trains_on_its_corpus_and_records_what_it_built(tmp_path, monkeypatch):
    """`build_base` end to end with `train` stubbed (fixed losses, untrained weights): the
    tokenizer, the batches, the trimmed checkpoint, the seed files and the record."""
    import json

    import jax
    import pytest

    from azr_jax.errors import UserError
    from azr_jax.models import from_pretrained, init_params
    from azr_jax.nano import pretrain

    got = {}

    def fake_train(model_cfg, buckets, p, *, log=None, params=None):
        got.update(model_cfg=model_cfg, buckets=buckets)
        return init_params(model_cfg, jax.random.key(0)), [float(i) for i in range(60)]

    monkeypatch.setattr(pretrain, "train", fake_train)
    tiny = "model.overrides=" + json.dumps(TINY)
    cfg = load_config("configs/nano_base.py", ["pretrain.corpus_programs=40", "pretrain.batch_size=4",
                                                "pretrain.seq_len=256", tiny])
    out = tmp_path / "base"
    record = pretrain.build_base(cfg, out, log=lambda m: None)
    transcripts = pretrain.corpus_transcripts(cfg, pretrain.corpus_tasks(cfg))
    # the tokenizer is trained on every whole transcript (prompt and response)
    want_tok = train_tokenizer([t.prompt + t.response for t in transcripts], tmp_path / "want.model", vocab_size=1024)
    assert (out / "tokenizer.model").read_bytes() == want_tok.read_bytes()
    tok = load_tokenizer(out / "tokenizer.model")
    assert got["model_cfg"].vocab_size == 1024 and got["model_cfg"].hidden_size == 32
    assert max(got["buckets"]) <= 256  # pretrain.seq_len
    rows = sum(len(b[0]) for b in got["buckets"].values())
    saved = from_pretrained(out)
    assert saved.config.vocab_size == tok.vocab_size < 1024  # trimmed to the tokenizer
    assert json.loads((out / pretrain.RECORD_FILE).read_text()) == record
    assert {k: v for k, v in record.items() if k != "wall_s"} == {
        "command": "build_base()", "pretrain": dataclasses.asdict(cfg.pretrain),
        "num_params": saved.config.num_params(), "tokenizer_pieces": tok.vocab_size, "corpus_programs": 40,
        "transcripts_used": rows,
        "first_loss": 9.5, "final_loss": 34.5}  # means of the first 20 and the last 50 steps
    assert (out / pretrain.SEED_IO_FILE).is_file() and (out / pretrain.SEED_INDUCTION_FILE).is_file()
    assert sorted(f.name for f in out.iterdir()) == sorted(pretrain.BASE_FILES)  # what pretrain checks first
    # a model vocabulary one short of the tokenizer is refused (its last id would index past the table)
    short = "model.overrides=" + json.dumps({**TINY, "vocab_size": tok.vocab_size - 1})
    with pytest.raises(UserError, match="is smaller than the tokenizer's"):
        pretrain.build_base(load_config("configs/nano_base.py", ["pretrain.corpus_programs=40",
                                                                 "pretrain.batch_size=4", short]),
                            tmp_path / "short", log=lambda m: None)


def test_transcripts_come_in_a_fixed_order_with_every_role_by_default():
    # The order of the transcripts is the order of the rows the batch schedule shuffles with
    # pretrain.seed: a rebuild reproduces the shipped weights only with the same order.
    from azr_jax.azr.prompts import Prompts
    from azr_jax.nano.corpus import generate_tasks
    from azr_jax.nano.transcripts import build_transcripts, transcripts_for

    tasks = generate_tasks(0, 3, num_inputs=8)
    prompts = Prompts.from_config(load_config("configs/nano.py").azr)
    every = [(r, t) for t in ("deduction", "abduction", "induction") for r in ("propose", "solve")]
    assert [(x.role, x.task) for x in transcripts_for(tasks[0], prompts, [], 4)] == every  # both roles
    got = [(x.role, x.task) for x in build_transcripts(tasks, prompts, n_references=1, seed=0)]
    assert got == every * 3  # propose_every=1: every task is also proposed
    solve = [("solve", t) for t in ("deduction", "abduction", "induction")]
    got = [(x.role, x.task) for x in build_transcripts(tasks, prompts, n_references=1, seed=0, propose_every=2)]
    assert got == every + solve + every  # tasks 0 and 2 proposed, task 1 solved only


def test_pretrain_builds_into_an_empty_folder_and_prints_what_it_built(tmp_path, monkeypatch, capsys):
    # An existing empty --out (the "new or empty directory" the refusal asks for) is built into,
    # and stdout is one JSON line: the folder, the parameter count, the final loss, the wall time.
    import argparse
    import json

    from azr_jax.nano import pretrain

    built = []

    def build_base(cfg, out, *, log, command):
        built.append((out, command))
        return {"num_params": 123, "final_loss": 0.5, "wall_s": 7.0, "first_loss": 6.0}

    monkeypatch.setattr(pretrain, "build_base", build_base)
    out = tmp_path / "empty"
    out.mkdir()
    args = argparse.Namespace(config="configs/nano_base.py", overrides=["pretrain.steps=2"], out=str(out))
    assert pretrain.main(args) == 0
    assert built == [(out, f"azr-jax pretrain --config configs/nano_base.py --set pretrain.steps=2 --out {out}")]
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"out": str(out), "num_params": 123, "final_loss": 0.5, "wall_s": 7.0}
    assert "replacing" not in captured.err  # nothing was there to replace


def test_a_rebuild_over_a_base_file_it_cannot_write_is_refused_before_the_build(tmp_path, monkeypatch):
    # The base's folder writable, one of its files not (another user's): the write failed with a
    # traceback after the whole pretraining (simulated: root writes anywhere).
    import argparse
    import os
    import shutil
    from pathlib import Path

    import pytest

    from azr_jax import jsonl
    from azr_jax.errors import UserError
    from azr_jax.nano import pretrain

    def no_build(*args, **kwargs):
        raise AssertionError("the build started")

    monkeypatch.setattr(pretrain, "build_base", no_build)
    out = tmp_path / "base"
    shutil.copytree(Path(pretrain.__file__).parent / "base", out)
    locked = out / "config.json"
    monkeypatch.setattr(jsonl.os, "access", lambda path, mode: not (Path(path) == locked and mode & os.W_OK))
    with pytest.raises(UserError, match=f"--out {out}: {locked} is not writable"):
        pretrain.main(argparse.Namespace(config="configs/nano_base.py", overrides=[], out=str(out)))


def test_a_continued_build_trains_the_checkpoints_weights_under_the_configs_scan_layers(tmp_path, monkeypatch):
    # pretrain.init_from: the checkpoint's own shape and weights go into training, laid out as
    # model.scan_layers says (false in configs/nano_base.py; a checkpoint's config says nothing).
    import jax

    from azr_jax.models import from_pretrained
    from azr_jax.nano import BASE_DIR, pretrain

    got = {}

    def fake_train(model_cfg, buckets, p, *, log=None, params=None):
        got.update(model_cfg=model_cfg, params=params)
        return params, [1.0]

    monkeypatch.setattr(pretrain, "train", fake_train)
    cfg = load_config("configs/nano_base.py", ["pretrain.corpus_programs=40", "pretrain.batch_size=4",
                                                f"pretrain.init_from={BASE_DIR}"])
    assert cfg.model.scan_layers is False
    pretrain.build_base(cfg, tmp_path / "cont", log=lambda m: None)
    shipped = from_pretrained(BASE_DIR)
    assert got["model_cfg"] == shipped.config.replace(scan_layers=False)
    for a, b in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(shipped.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_stops_a_build_as_ctrl_c_does_and_leaves_no_empty_out(tmp_path):
    """A scheduler's SIGTERM (or `timeout`) used to end the process where it stood, leaving the
    new --out behind, empty. Now it stops as Ctrl-C does: exit 130, one line, no folder."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "new_base"
    proc = subprocess.Popen(
        [sys.executable, "-m", "azr_jax.cli", "pretrain", "--config", "configs/nano_base.py",
         "--set", "pretrain.corpus_programs=40", "--set", "pretrain.batch_size=4", "--set", "pretrain.steps=100000",
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the folder is made after the handler is installed
        assert out.is_dir(), proc.poll()
        # Again every few seconds: a signal that lands in a garbage-collection callback is dropped.
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
        stdout, stderr = proc.communicate()
    assert proc.returncode == 130, stderr[-2000:]
    assert stderr.rstrip().endswith("azr-jax: interrupted") and "Traceback" not in stderr, stderr[-2000:]
    assert stdout == "" and not out.exists()
