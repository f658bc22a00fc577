"""Policy set-up: the random-initialisation key is its own, not one of the trainer's step keys."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from azr_jax.config import load_config
from azr_jax.errors import UserError
from azr_jax.models.decoder import init_params

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import make_tokenizer, tiny_overrides  # noqa: E402

CONFIG = str(Path(__file__).parent / "tiny_config.py")


def test_random_init_uses_a_key_no_step_uses(tmp_path):
    from azr_jax.train_setup import init_key, load_policy

    cfg = load_config(CONFIG, tiny_overrides(make_tokenizer(tmp_path / "tok")) + ["train.seed=5"])
    policy = load_policy(cfg)
    expected = init_params(policy.config, init_key(5))
    # (up to float rounding: the policy's initialisation is jitted; another key differs by ~0.02)
    assert all(np.allclose(a, b, rtol=0, atol=1e-7) for a, b in zip(jax.tree.leaves(policy.params),
                                                                    jax.tree.leaves(expected)))
    # The trainer samples step s (0 = seeding) with fold_in(key(train.seed), s).
    base = jax.random.key(5)
    step_keys = jax.vmap(lambda s: jax.random.key_data(jax.random.fold_in(base, s)))(np.arange(100_000, dtype=np.uint32))
    init = np.asarray(jax.random.key_data(init_key(5)))
    assert not np.any(np.all(np.asarray(step_keys) == init, axis=1))


def test_config_json_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """Other processes of a multi-host run read config.json while process 0 rewrites it."""
    from azr_jax import config as config_lib
    from azr_jax.train_setup import check_workdir

    cfg = config_lib.load_config(CONFIG, ["train.steps=3"])
    check_workdir(cfg, tmp_path, write=True)
    before = (tmp_path / "config.json").read_text()
    real_write_text = Path.write_text

    def write_half_then_fail(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", write_half_then_fail)
    resumed = config_lib.load_config(CONFIG, ["train.steps=4"])  # an allowed change on resume
    with pytest.raises(UserError, match="cannot write .*: disk full"):  # one line, and the failure did happen
        check_workdir(resumed, tmp_path, write=True)
    monkeypatch.undo()
    assert (tmp_path / "config.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "inputs.json", "trainer.lock"]
    check_workdir(resumed, tmp_path, write=True)
    assert config_lib.load_config(str(tmp_path / "config.json")).train.steps == 4


def test_a_second_trainer_on_a_running_workdir_is_refused_before_it_writes(tmp_path):
    """Two trainers on one workdir both ran to exit status 0: the second replaced metrics.jsonl
    under the first, and their checkpoints interleaved. The workdir is locked while a run holds it."""
    import os
    import socket

    from azr_jax import config as config_lib
    from azr_jax.train_setup import check_workdir

    cfg = config_lib.load_config(CONFIG, ["train.steps=3"])
    first = check_workdir(cfg, tmp_path, write=True)
    before = (tmp_path / "config.json").read_text()
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    with pytest.raises(UserError, match=f"workdir .* is in use by another trainer \\({holder}\\); wait for it"):
        check_workdir(config_lib.load_config(CONFIG, ["train.steps=4"]), tmp_path, write=True)
    assert (tmp_path / "config.json").read_text() == before  # the second changed nothing
    assert check_workdir(cfg, tmp_path, write=False) is None  # other processes of the run do not lock
    first.release()  # the run ended (a killed process releases it too: the lock is the kernel's)
    check_workdir(config_lib.load_config(CONFIG, ["train.steps=4"]), tmp_path, write=True).release()


def test_resume_step_beside_a_running_trainer_is_refused_by_the_lock_not_by_the_pruned_step(tmp_path):
    """`train --resume-step N` while a trainer (keep_checkpoints=1) runs: by the time it looked,
    the run had pruned N, so it was told "no complete checkpoint for step N; available: [M]",
    and the same for M a step later, never that a trainer runs in the workdir."""
    from azr_jax import config as config_lib
    from azr_jax.train_setup import check_workdir

    cfg = config_lib.load_config(CONFIG, ["train.steps=30", "train.keep_checkpoints=1"])
    running = check_workdir(cfg, tmp_path, write=True)
    (tmp_path / "checkpoints" / "20").mkdir(parents=True)  # the run's only checkpoint; 19 was pruned
    for resume_step in (19, 20, None):
        with pytest.raises(UserError, match=r"is in use by another trainer \(pid \d+ on .*\); wait for it"):
            check_workdir(cfg, tmp_path, write=True, resume_step=resume_step)
    assert check_workdir(cfg, tmp_path, write=False) is None  # the run's other processes only look
    running.release()
    with pytest.raises(UserError, match=r"no complete checkpoint for step 19 .*available: \[20\]"):
        check_workdir(cfg, tmp_path, write=True, resume_step=19)  # no trainer now: the step is the reason
    check_workdir(cfg, tmp_path, write=True, resume_step=20).release()


def test_weights_are_placed_on_the_whole_mesh_from_a_checkpoint_and_at_random_init(tmp_path):
    """On 8 devices both ways of getting weights come out sharded over the mesh, and the train
    state builds from them (weights read onto one device made init_train_state fail)."""
    from azr_jax.train_setup import load_policy

    assert jax.device_count() == 8  # tests/conftest.py
    tiny = load_config(CONFIG, tiny_overrides(make_tokenizer(tmp_path / "tok")))
    for cfg in (load_config("configs/nano.py"), tiny):
        policy = load_policy(cfg)
        for leaf in jax.tree.leaves(policy.params):
            assert len(leaf.sharding.device_set) == 8
        state = policy.init_state(cfg)
        assert any(len(leaf.addressable_shards) == 8 and leaf.addressable_shards[0].data.shape != leaf.shape
                   for leaf in jax.tree.leaves(state.params))  # some are split, not all replicated
        # The state never shares buffers with the loaded weights (the update donates the state;
        # the loaded weights live on as the KL reference).
        for loaded, held in zip(jax.tree.leaves(policy.params), jax.tree.leaves(state.params)):
            assert loaded.addressable_shards[0].data.unsafe_buffer_pointer() != \
                held.addressable_shards[0].data.unsafe_buffer_pointer()
        abstract = policy.init_state(cfg, abstract=True)
        assert all(isinstance(a, jax.ShapeDtypeStruct) and (a.shape, a.dtype, a.sharding) == (b.shape, b.dtype, b.sharding)
                   for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)))


def test_a_workdir_without_a_checkpoint_takes_a_corrected_config(tmp_path):
    """A start that failed before its first checkpoint (say, a mistyped model.hf_dir) must not
    lock its workdir against the corrected command; one with a checkpoint keeps its config."""
    import pytest

    from azr_jax import config as config_lib
    from azr_jax.errors import UserError
    from azr_jax.train_setup import check_workdir

    check_workdir(config_lib.load_config(CONFIG, ["azr.batch_size=2"]), tmp_path, write=True)
    (tmp_path / "checkpoints" / "1.orbax-checkpoint-tmp-5").mkdir(parents=True)  # a killed save
    corrected = config_lib.load_config(CONFIG, ["azr.batch_size=4"])
    check_workdir(corrected, tmp_path, write=True)
    assert config_lib.load_config(str(tmp_path / "config.json")).azr.batch_size == 4
    (tmp_path / "checkpoints" / "1").mkdir()
    with pytest.raises(UserError, match="holds a run of a different config"):
        check_workdir(config_lib.load_config(CONFIG, ["azr.batch_size=8"]), tmp_path, write=True)
    # Without its config.json the run's checkpoints took any config (and it was then written over).
    (tmp_path / "config.json").unlink()
    with pytest.raises(UserError, match="holds checkpoints but no config.json"):
        check_workdir(config_lib.load_config(CONFIG, ["azr.batch_size=8"]), tmp_path, write=True)
    assert not (tmp_path / "config.json").exists()


def test_overrides_with_a_checkpoint_are_refused_not_ignored():
    import pytest

    from azr_jax.errors import UserError
    from azr_jax.train_setup import load_policy

    with pytest.raises(UserError, match="would be ignored"):
        load_policy(load_config("configs/nano.py", ['model.overrides={"num_layerz": 2}']))


def test_a_policy_without_weights_has_the_loaded_ones_shapes_and_reads_no_safetensors(tmp_path):
    """`eval --run` and `convert` take the params from a run's checkpoint: the policy they build
    only describes them (8 devices), so a base whose weights are gone still works."""
    import shutil

    from azr_jax.train_setup import load_policy

    base = tmp_path / "base"
    shutil.copytree("azr_jax/nano/base", base)
    tiny = load_config(CONFIG, tiny_overrides(make_tokenizer(tmp_path / "tok")))
    for cfg in (load_config("configs/nano.py", [f"model.hf_dir={base}"]), tiny):
        loaded, described = load_policy(cfg), load_policy(cfg, weights=False)
        assert described.config == loaded.config
        assert described.tokenizer.encode("def f(a):\n    return a") == loaded.tokenizer.encode("def f(a):\n    return a")
        for a, b in zip(jax.tree.leaves(described.params), jax.tree.leaves(loaded.params)):
            assert isinstance(a, jax.ShapeDtypeStruct) and (a.shape, a.dtype, a.sharding) == (b.shape, b.dtype, b.sharding)
        assert jax.tree.structure(described.init_state(cfg, abstract=True)) == \
            jax.tree.structure(loaded.init_state(cfg, abstract=True))
    (base / "model.safetensors").unlink()
    described = load_policy(load_config("configs/nano.py", [f"model.hf_dir={base}"]), weights=False)
    assert described.config.num_params() == 1085824


def test_a_model_vocabulary_padded_past_the_tokenizer_masks_the_extra_ids(tmp_path):
    # The tiny preset's embedding has more rows than the test tokenizer has tokens (as Qwen2.5's
    # has): the policy's model config records the tokenizer's size, so those ids are never sampled.
    from azr_jax.train_setup import load_policy

    cfg = load_config(CONFIG, tiny_overrides(make_tokenizer(tmp_path / "tok")))
    policy = load_policy(cfg, weights=False)
    assert policy.tokenizer.vocab_size < policy.config.vocab_size
    assert policy.config.tokenizer_vocab_size == policy.tokenizer.vocab_size
    assert "tokenizer_vocab_size" not in policy.config.to_hf_config()  # an export keeps transformers' view


def test_a_missing_benchmark_file_is_said_before_the_seeding_phase(tmp_path, monkeypatch):
    # On a paper preset seeding takes hours: a mistyped eval.data_path must not wait for it.
    import pytest

    from azr_jax.errors import UserError
    from azr_jax.trainer import SelfPlay, train

    def no_seeding(*args, **kwargs):
        raise AssertionError("seeding started before the benchmark was checked")

    monkeypatch.setattr(SelfPlay, "seed_buffers", no_seeding)
    missing = tmp_path / "crux.jsonl"
    cfg = load_config(CONFIG, tiny_overrides(make_tokenizer(tmp_path / "tok")) + [
        "azr.seed_file=null", "azr.induction_seed_file=null", "azr.seed_size=2",
        "eval.benchmark=cruxeval", f"eval.data_path={missing}", "rl.micro_batch_size=8"])
    with pytest.raises(UserError, match="crux.jsonl"):
        train(cfg, tmp_path / "run", progress=False)


def test_a_checkpoint_of_another_shape_than_the_preset_is_named_in_a_warning(tmp_path, caplog):
    """model.preset is not used with model.hf_dir: a paper config pointed at another model's
    checkpoint (its batch sizes and lengths chosen for the preset) must say so, once, by field."""
    import logging

    from azr_jax.train_setup import load_policy

    with caplog.at_level(logging.WARNING, logger="azr_jax.train"):
        load_policy(load_config("configs/nano.py"), weights=False)  # the shipped base is the preset
    assert not [r for r in caplog.records if "model.preset" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="azr_jax.train"):
        load_policy(load_config("configs/nano.py", ["model.preset=qwen2.5-0.5b"]), weights=False)
    (warning,) = [r.getMessage() for r in caplog.records if "model.preset" in r.getMessage()]
    assert "'qwen2.5-0.5b'" in warning and "hidden_size 128 (preset 896)" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="azr_jax.train"):
        load_policy(load_config("configs/nano.py", ["model.preset=qwen2.5-7bb"]), weights=False)
    (warning,) = [r.getMessage() for r in caplog.records if "model.preset" in r.getMessage()]
    assert "ignored with model.hf_dir" in warning and "did you mean 'qwen2.5-7b'" in warning


def test_a_run_resumes_from_a_moved_copy_of_its_base_and_prompts_but_not_from_other_files(tmp_path):
    """The nano config records absolute paths (the base, the prompts, the seed files): a run
    copied to another clone could not resume. Paths may change when what the run reads there
    (config, tokenizer, prompt templates) is the same; seed files are not read on resume."""
    import shutil

    import pytest

    from azr_jax.errors import UserError
    from azr_jax.nano import BASE_DIR
    from azr_jax.train_setup import check_workdir

    first, moved = tmp_path / "clone1", tmp_path / "clone2"
    for clone in (first, moved):
        shutil.copytree(BASE_DIR, clone / "base")
        shutil.copytree(Path("azr_jax/nano/prompts"), clone / "prompts")

    def cfg(clone, *more):
        return load_config("configs/nano.py", [f"model.hf_dir={clone / 'base'}", f"azr.prompt_dir={clone / 'prompts'}",
                                               f"azr.seed_file={clone / 'base' / 'seed_io.jsonl'}", *more])

    run = tmp_path / "run"
    check_workdir(cfg(first), run, write=True)
    (run / "checkpoints" / "15").mkdir(parents=True)
    check_workdir(cfg(moved), run, write=True)  # the same files elsewhere: resumes
    assert load_config(str(run / "config.json")).model.hf_dir == str(moved / "base")
    edited = first / "prompts" / "solve_deduction.txt"
    edited.write_text(edited.read_text() + "\nBe brief.\n")
    with pytest.raises(UserError, match=r"differs in azr.prompt_dir\)"):  # its base is still the same files
        check_workdir(cfg(first), run, write=False)
    with pytest.raises(UserError, match="differs in model.hf_dir"):  # another base: another tokenizer
        other = tmp_path / "other"
        shutil.copytree(BASE_DIR, other)
        (other / "config.json").write_text((other / "config.json").read_text().replace('"rope_theta": 10000.0', '"rope_theta": 20000.0'))
        check_workdir(cfg(moved, f"model.hf_dir={other}"), run, write=False)


def test_train_help_names_every_key_a_resume_may_change():
    """`train --help` lists the resumable keys by hand (importing train_setup there would load jax
    for --help); this keeps the list from drifting behind RESUMABLE_CHANGES."""
    from azr_jax.train_cli import EPILOG
    from azr_jax.train_setup import RESUMABLE_CHANGES

    text = " ".join(EPILOG.split())
    assert [key for key in RESUMABLE_CHANGES if key not in text] == []


@pytest.mark.parametrize("overrides, named", [
    (["azr.batch_size=17"], "proposer 17 rows, solver 17 rows"),
    (["azr.batch_size=16", "azr.solver_samples=3", "rl.micro_batch_size=32"], "proposer 16 rows, solver 48 rows"),
    (["azr.batch_size=16", "azr.train_learnability_rollouts=true"], "learnability rollouts"),
    (["azr.batch_size=16"], None),
    (["azr.batch_size=17", "rl.loss_agg=token-mean"], None),
])
def test_partly_filled_per_micro_batch_blocks_are_named_in_a_warning(overrides, named, caplog):
    """Under token-mean-per-micro-batch, a part's last block weighs as a full one however few
    real rows it holds: a row count off the block size silently reweighs rows."""
    from azr_jax.train_setup import warn_partial_loss_blocks

    cfg = load_config(None, ["rl.loss_agg=token-mean-per-micro-batch", "rl.micro_batch_size=16", *overrides])
    with caplog.at_level("WARNING", logger="azr_jax.train_setup"):
        warn_partial_loss_blocks(cfg)
    warned = [r.getMessage() for r in caplog.records if "token-mean-per-micro-batch" in r.getMessage()]
    if named is None:
        assert warned == []
    else:
        assert len(warned) == 1 and named in warned[0], warned


@pytest.mark.parametrize("field, value, message", [
    ("rope_theta", '"abc"', "'rope_theta' must be a positive finite number"),  # failed deep in the sampler
    ("rms_norm_eps", "-1", "'rms_norm_eps' must be a positive finite number"),  # every gradient non-finite
    ("tie_word_embeddings", '"no"', "'tie_word_embeddings' must be true or false"),  # read as tied
    ("max_position_embeddings", "0", "'max_position_embeddings' must be a positive int"),
    ("num_layer", "2", r"unknown ModelConfig field\(s\) \['num_layer'\]"),
    ("extra_eos_token_ids", '["x"]', "'extra_eos_token_ids' must be a list of token ids"),  # a ValueError traceback
    ("eos_token_id", '"a"', "'eos_token_id' must be a token id"),  # the sampler's stop id
])
def test_bad_model_overrides_are_refused_before_the_workdir_is_written(tmp_path, field, value, message):
    import json

    from azr_jax.train_setup import check_inputs

    tok = make_tokenizer(tmp_path / "tok")
    items = [item for item in tiny_overrides(tok) if not item.startswith("model.overrides=")]
    model = {"vocab_size": 1024, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
             "num_kv_heads": 1, "head_dim": 16, field: json.loads(value)}
    cfg = load_config(CONFIG, items + [f"model.overrides={json.dumps(model)}"])
    with pytest.raises(UserError, match=f"model.overrides: .*{message}"):
        check_inputs(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_warmup_the_run_never_finishes_is_named_in_a_warning(caplog):
    from azr_jax.train_setup import warn_ineffective_settings

    for steps, warned in ((3, True), (45, False)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="azr_jax.train_setup"):
            warn_ineffective_settings(load_config("configs/nano.py", [f"train.steps={steps}"]))  # warmup 5
        assert any("never reaches optim.learning_rate" in r.getMessage() for r in caplog.records) == warned


@pytest.mark.parametrize("name", ["", ".", "..", "../../x", "a/b", "a\\b"])
def test_a_name_that_is_not_a_directory_name_cannot_make_the_default_workdir(name, tmp_path, monkeypatch, capsys):
    from azr_jax.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(Path(CONFIG).absolute()), "--set", f"name={name}"]) == 2
    assert "is not a plain directory name" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------------------
# Gaps a mutation audit found (each check below could be dropped or loosened unnoticed)
# ----------------------------------------------------------------------------------------------

# The keys a resume may change (RESUMABLE_CHANGES), written out, each with a changed value.
RESUMABLE = {"train.steps": 20, "train.save_every": 5, "train.keep_checkpoints": 7, "train.log_every": 3,
             "train.eval_every": -1, "train.audit_every": 0, "sandbox.workers": 3, "sandbox.isolation": "none",
             "sandbox.seccomp": False, "model.remat": "full", "model.scan_layers": False, "sampling.max_rows": 8,
             "rl.logits_chunk": 64, "rl.attention_chunk": 64, "sampling.prefill_chunk": 128,
             "mesh.shape": {"data": 1, "fsdp": 4, "tensor": 2}, "mesh.rules": {"batch": "data", "embed": None}}


def _changed(config: dict, key: str, value) -> dict:
    import copy

    out = copy.deepcopy(config)
    *section, leaf = key.split(".")
    (out[section[0]] if section else out)[leaf] = value
    return out


def test_a_resume_may_change_the_layout_keys_and_no_other_key():
    from azr_jax.config import Config, to_dict
    from azr_jax.train_setup import allowed_config_change

    old = to_dict(Config())
    for key, value in RESUMABLE.items():
        assert allowed_config_change(old, _changed(old, key, value)) == [], key
    keys = [f"{section}.{leaf}" for section, part in old.items() if isinstance(part, dict) for leaf in part] + ["name"]
    for key in keys:
        if key not in RESUMABLE:  # what a step computes (seed files are dropped later, by check_workdir)
            assert allowed_config_change(old, _changed(old, key, "changed")) == [key], key
    # A key the run's config.json lacks (written by an older version): its value then is unknown.
    lacking = _changed(old, "rl.kl_type", None)
    del lacking["rl"]["kl_type"]
    assert allowed_config_change(lacking, old) == ["rl.kl_type"]
    # A linear schedule decays over train.steps as a cosine one does.
    linear = _changed(old, "optim.schedule", "linear")
    assert allowed_config_change(linear, _changed(linear, "train.steps", 20)) == [
        "train.steps (optim.schedule decays over it)"]
    # model.overrides is one key, compared whole (as mesh.shape and mesh.rules are)
    assert allowed_config_change(old, _changed(old, "model.overrides", {"hidden_size": 64})) == ["model.overrides"]


def test_a_resume_may_name_other_seed_files(tmp_path):
    # A resume takes its buffers from the checkpoint: neither seed file is read again.
    from azr_jax.train_setup import check_workdir

    check_workdir(load_config(CONFIG, ["azr.seed_file=a.jsonl", "azr.induction_seed_file=b.jsonl"]), tmp_path,
                  write=True).release()
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)
    check_workdir(load_config(CONFIG, ["azr.seed_file=c.jsonl", "azr.induction_seed_file=d.jsonl"]), tmp_path,
                  write=False)


def test_a_moved_base_and_tokenizer_are_compared_file_by_file(tmp_path):
    """What inputs.json keeps of a base: its config and tokenizer files by bytes, its weight files
    by name and size; of a tokenizer file: the file itself and the side files beside it."""
    from azr_jax.train_setup import check_workdir

    def base(name, tokenizer_json=b"{}", weights=b"w" * 8, spm=b"spm"):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "tokenizer.json").write_bytes(tokenizer_json)
        (d / "model.safetensors").write_bytes(weights)
        (d / "spm.model").write_bytes(spm)  # a SentencePiece file: not one of the side files by name
        return d

    def cfg(d):
        return load_config(CONFIG, [f"model.hf_dir={d}", f"model.tokenizer={d / 'spm.model'}"])

    run = tmp_path / "run"
    check_workdir(cfg(base("first")), run, write=True).release()
    (run / "checkpoints" / "1").mkdir(parents=True)
    check_workdir(cfg(base("copy")), run, write=False)  # the same files at another path
    for name, change, differs in [("tok", {"tokenizer_json": b'{"a": 1}'}, "model.hf_dir, model.tokenizer"),
                                  ("bigger", {"weights": b"w" * 9}, "model.hf_dir"),
                                  ("spm", {"spm": b"other"}, "model.tokenizer")]:
        with pytest.raises(UserError, match=f"differs in {differs}\\)"):
            check_workdir(cfg(base(name, **change)), run, write=False)
    # Without the fingerprints (a run from before inputs.json, or one without these keys) a new
    # path cannot be shown to hold the same files.
    for inputs in (None, "{}"):
        (run / "inputs.json").unlink(missing_ok=True)
        if inputs:
            (run / "inputs.json").write_text(inputs)
        with pytest.raises(UserError, match=r"differs in model.hf_dir, model.tokenizer\)"):
            check_workdir(cfg(tmp_path / "copy"), run, write=False)


def test_a_checkpoint_past_train_steps_is_refused_and_the_step_a_resume_takes_is_checked(tmp_path):
    import json

    from azr_jax.train_setup import check_workdir

    def cfg(steps):
        return load_config(CONFIG, [f"train.steps={steps}"])

    check_workdir(cfg(3), tmp_path, write=True).release()
    for step in (2, 3):
        (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
    check_workdir(cfg(3), tmp_path, write=False)  # the run's last step: the same command re-evaluates
    with pytest.raises(UserError, match="holds a checkpoint of step 3, past train.steps=2"):  # the newest
        check_workdir(cfg(2), tmp_path, write=False)
    check_workdir(cfg(2), tmp_path, write=False, resume_step=2)  # going back to step 2
    with pytest.raises(UserError, match=r"no complete checkpoint for step 9 .*available: \[2, 3\]"):
        check_workdir(cfg(3), tmp_path, write=False, resume_step=9)
    # An interrupted --resume-step 2 (its rollback record): a plain resume takes step 2, not 3.
    (tmp_path / "checkpoints" / "rollback.json").write_text(json.dumps({"step": 2, "abandoned": [3]}))
    check_workdir(cfg(2), tmp_path, write=False)


def test_a_config_json_that_is_not_a_config_is_refused(tmp_path):
    from azr_jax.train_setup import check_workdir

    for text, match in (("[1, 2]", "does not hold a config"), ("{not json", "is unreadable")):
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(UserError, match=match):
            check_workdir(load_config(CONFIG), tmp_path, write=True)


def test_a_model_directory_given_as_workdir_keeps_its_config_json(tmp_path):
    """--workdir pointed at a Hugging Face model directory (a config.json, no checkpoints) took it
    for a start that had failed: a warning, then the model's config.json was written over."""
    import shutil

    from azr_jax.train_setup import check_workdir

    model = tmp_path / "base"
    shutil.copytree(Path(__file__).parents[2] / "azr_jax" / "nano" / "base", model)
    before = sorted(p.name for p in model.iterdir()), (model / "config.json").read_bytes()
    with pytest.raises(UserError, match=r"base/config.json is not an azr-jax run config \(a model directory\?\), "
                                        r"and training would replace it; use a new --workdir"):
        check_workdir(load_config(CONFIG), model, write=True)
    assert (sorted(p.name for p in model.iterdir()), (model / "config.json").read_bytes()) == before
    # a config.json with only some of a run config's sections is not one either
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text('{"model": {"preset": "nano"}, "vocab_size": 786}')
    with pytest.raises(UserError, match="not an azr-jax run config"):
        check_workdir(load_config(CONFIG), tmp_path / "partial", write=True)


def test_a_workdir_whose_outputs_another_user_owns_is_refused_before_anything_loads(tmp_path, monkeypatch):
    # A writable workdir with a read-only checkpoints/ (a run made by another user): the first save
    # failed after a whole step, and Orbax then held the exit for minutes (simulated: root writes anywhere).
    import os

    from azr_jax import jsonl, trainer

    def no_loading(*args, **kwargs):
        raise AssertionError("the inputs were read before the workdir was checked")

    monkeypatch.setattr(trainer, "check_inputs", no_loading)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    for name in ("checkpoints", "metrics.jsonl"):
        monkeypatch.setattr(jsonl.os, "access", lambda path, mode, name=name:
                            not (Path(path) == run / name and mode & os.W_OK))
        with pytest.raises(UserError, match=f"--workdir {run}: {run / name} is not writable"):
            trainer.train(load_config(CONFIG), run, progress=False)


def test_a_failed_write_releases_the_workdir_lock_at_once(tmp_path, monkeypatch):
    # Not only when the exception is collected: a caller may keep it (a log, a retry loop).
    from azr_jax.train_setup import check_workdir

    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", fail)
        with pytest.raises(UserError, match="disk full") as kept:
            check_workdir(load_config(CONFIG), tmp_path, write=True)
    check_workdir(load_config(CONFIG), tmp_path, write=True).release()  # not "in use by another trainer"
    assert kept.value is not None


def test_a_missing_base_directory_is_said_before_anything_loads(tmp_path):
    from azr_jax.train_setup import check_inputs, load_policy

    cfg = load_config("configs/nano.py", [f"model.hf_dir={tmp_path / 'gone'}"])
    for check in (lambda: check_inputs(cfg, tmp_path / "run"), lambda: load_policy(cfg, weights=False)):
        with pytest.raises(UserError, match="gone is not a directory"):
            check()
    (tmp_path / "weights.safetensors").write_bytes(b"")  # a file where the directory belongs
    cfg = load_config("configs/nano.py", [f"model.hf_dir={tmp_path / 'weights.safetensors'}"])
    with pytest.raises(UserError, match="weights.safetensors is not a directory"):
        check_inputs(cfg, tmp_path / "run")


def test_the_model_section_decides_dtypes_layer_loop_and_tokenizer(tmp_path, monkeypatch):
    from azr_jax import models
    from azr_jax.nano import BASE_DIR
    from azr_jax.train_setup import load_policy

    # A random init of zeros in the dtype asked for (compiling the real one takes seconds).
    real_init = models.init_params
    monkeypatch.setattr(models, "init_params", lambda cfg, key, dtype: jax.tree.map(
        lambda s: jax.numpy.zeros(s.shape, s.dtype), jax.eval_shape(lambda k: real_init(cfg, k, dtype=dtype), key)))
    # param_dtype for the weights (read, described or initialised), compute_dtype for the
    # activations, scan_layers for the layer loop (the nano config says false)
    nano = ["model.param_dtype=bfloat16", "model.compute_dtype=float32"]
    random_init = ["model.hf_dir=null", f"model.tokenizer={BASE_DIR / 'tokenizer.model'}"]
    for items, weights in ((nano, True), (nano, False), (nano + random_init, True)):
        policy = load_policy(load_config("configs/nano.py", items), weights=weights)
        assert {leaf.dtype for leaf in jax.tree.leaves(policy.params)} == {jax.numpy.dtype("bfloat16")}, (items, weights)
        assert policy.compute_dtype == jax.numpy.float32 and policy.config.scan_layers is False
    # A random init needs a tokenizer, and a tokenizer must fit the model's vocabulary: model.tokenizer
    # wins over the base's own (this one has 1000 tokens, the nano base 786 rows).
    with pytest.raises(UserError, match="needs weights"):
        load_policy(load_config("configs/nano.py", ["model.hf_dir=null"]), weights=False)
    tok = make_tokenizer(tmp_path / "tok")
    with pytest.raises(UserError, match="tokenizer has 1000 tokens but the model only 786"):
        load_policy(load_config("configs/nano.py", [f"model.tokenizer={tok}"]), weights=False)


def test_selfplay_batches_come_in_the_reference_order():
    from azr_jax.train_setup import SELFPLAY_ROLES

    # gen_i, pred_i, gen_o, pred_o: each task's propose batch, then its solve batch
    assert SELFPLAY_ROLES(["abduction", "deduction"]) == [("propose", "abduction"), ("solve", "abduction"),
                                                          ("propose", "deduction"), ("solve", "deduction")]


def test_a_warmup_as_long_as_the_run_is_named_in_a_warning(caplog):
    # warmup 5 in 5 steps: the last update's rate is still 4/5 of optim.learning_rate
    from azr_jax.train_setup import warn_ineffective_settings

    with caplog.at_level("WARNING", logger="azr_jax.train_setup"):
        warn_ineffective_settings(load_config("configs/nano.py", ["train.steps=5", "optim.warmup_steps=5"]))
    assert any("never reaches optim.learning_rate" in r.getMessage() for r in caplog.records)


def test_the_tokenizers_stop_ids_come_before_the_model_configs():
    from types import SimpleNamespace

    from azr_jax.train_setup import Policy

    policy = Policy(config=SimpleNamespace(stop_token_ids=[2]), params=None, tokenizer=SimpleNamespace(eos_ids=[5, 6]),
                    mesh=None, rules={}, compute_dtype=None, peak_flops=None)
    assert policy.stop_ids == (5, 6)
    policy.tokenizer.eos_ids = []  # a tokenizer that names none: the checkpoint's generation config
    assert policy.stop_ids == (2,)


def test_the_policys_advantages_see_per_prompt_groups_and_the_length_warning_counts_eval(tmp_path, monkeypatch, caplog):
    from azr_jax.rl.advantages import NUM_TRRPP_GROUPS, compute_advantages
    from azr_jax.train_setup import load_policy, warn_rollouts_past_context

    cfg = load_config(CONFIG, [*tiny_overrides(make_tokenizer(tmp_path / "tok")), "rl.estimator=grpo",
                               "eval.max_response_len=7200"])  # 1024 + 7200 > 8192 positions
    monkeypatch.setattr("azr_jax.bench.common.peak_numbers", lambda kind: (1e12, None))
    with caplog.at_level("WARNING", logger="azr_jax.train"):
        policy = load_policy(cfg, weights=False)  # shapes only: nothing initialised
    assert policy.peak_flops == 1e12 * jax.device_count()  # the MFU's denominator: every device's peak
    # Loading does not warn (eval and convert load the same policy but never read
    # sampling.max_prompt_len); training, which samples under these budgets, does.
    assert not [r for r in caplog.records if "max_position_embeddings" in r.getMessage()]
    with caplog.at_level("WARNING", logger="azr_jax.train"):
        warn_rollouts_past_context(cfg, policy.config)
    (warning,) = [r.getMessage() for r in caplog.records if "max_position_embeddings" in r.getMessage()]
    assert warning.startswith("sampling.max_prompt_len + the longest response (8224 tokens) is over the "
                              "model's max_position_embeddings (8192)")
    # grpo: each prompt's samples are a group of their own, with ids from NUM_TRRPP_GROUPS on
    rewards = np.array([1.0, 0.0, 0.0, 0.0, 0.5, 0.5], np.float32)
    groups = np.array([NUM_TRRPP_GROUPS + g for g in (0, 0, 1, 1, 2, 2)], np.int32)
    mask = np.ones((6, 3), np.int32)
    got = np.asarray(policy.advantages_fn(rewards, mask, groups))
    want = np.asarray(compute_advantages(cfg.rl, rewards, mask, groups, num_groups=NUM_TRRPP_GROUPS + 6))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0, 0] > 0 > got[1, 0]


def test_a_file_system_without_locks_is_a_warning_not_another_trainer(tmp_path, monkeypatch, caplog):
    import errno

    from azr_jax import train_setup

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(train_setup.fcntl, "flock", no_locks)
    with caplog.at_level("WARNING", logger="azr_jax.train"):
        train_setup.WorkdirLock(tmp_path).release()
    assert any("make sure no other trainer runs" in r.getMessage() for r in caplog.records)

