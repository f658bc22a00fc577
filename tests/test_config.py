"""The typed config: loading, `--set` overrides, validation, clear errors."""

import json
import re
import subprocess
import sys
import time

import pytest

from azr_jax.config import Config, apply_overrides, from_dict, load_config, to_dict, to_json
from azr_jax.errors import UserError
from azr_jax.nano import BASE_DIR


def test_defaults_carry_paper_hyperparameters():
    cfg = Config()
    assert cfg.azr.n_references == 6 and cfg.azr.n_solver_samples == 8 and cfg.azr.num_inputs == 10
    assert cfg.optim.learning_rate == 1e-6 and cfg.optim.grad_clip_norm == 1.0
    assert cfg.sampling.temperature == 1.0 and cfg.sampling.top_p == 1.0
    assert cfg.azr.learnability_temperature == 1.0  # never greedy (AZR_SPEC §3.2)


def test_overrides_are_typed():
    cfg = apply_overrides(Config(), ["azr.n_references=4", "rl.dual_clip=null", "optim.learning_rate=3e-6",
                                     "azr.task_types=[\"deduction\"]", "model.overrides.num_layers=2",
                                     "rl.estimator=grpo", "train.seed=7"])
    assert cfg.azr.n_references == 4
    assert cfg.rl.dual_clip is None
    assert cfg.optim.learning_rate == 3e-6
    assert cfg.azr.task_types == ["deduction"]
    assert cfg.model.overrides == {"num_layers": 2}
    assert cfg.rl.estimator == "grpo" and cfg.train.seed == 7


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(UserError, match="did you mean 'azr.n_references'"):
        apply_overrides(Config(), ["azr.n_refrences=3"])
    with pytest.raises(UserError, match="unknown config key 'nope.x'"):
        apply_overrides(Config(), ["nope.x=1"])


@pytest.mark.parametrize("item, match", [
    ("azr.n_references=many", "expects an int"),
    ("azr.solver_task_lag=maybe", "expects a bool"),
    ("rl.whiten_stats=median", "must be one of"),
    ("azr.batch_size=0", "must be positive"),
    ("azr.seed_size=-1", "0 = no seeding phase"),
    ("train.keep_checkpoints=0", "must be positive"),  # Orbax would delete every checkpoint
    ("rl.estimator=bogus", "must be one of"),
    ("sandbox.workers=-3", "0 = one per CPU core"),
    ('mesh.shape={"data": 1, "fsdp": "abc"}', "positive int or -1"),
    ('mesh.rules={"batch": "bogus_axis"}', "must name distinct axes of mesh.shape"),
    ('mesh.rules={"batch": ["fsdp", "fsdp"]}', "must name distinct axes"),  # a DuplicateSpecError later
    ("train.save_every=0", "must be positive"),
    ("train.log_every=0", "must be positive"),
    ("azr.seed_max_rounds=0", "must be positive"),
    ("azr.solver_samples=0", "must be positive"),
    ("azr.answer_diversity_coef=-0.1", "coef 0 = off"),
    ("azr.answer_diversity_level=shape", "must be one of"),
    ("eval.samples=4", "needs eval.temperature > 0"),
    ("azr.task_types=[\"translation\"]", "unknown task type"),
    ("sampling.temperature=0", "must be > 0"),  # the update divides the logits by it
    ("sampling.prefill_chunk=-1", "must be >= 0"),
    ("rl.logits_chunk=-2", "must be >= 0"),
    ("rl.dual_clip=1.0", "must be > 1 or null"),
    ("sampling.eval_temperature=0.7", "set eval.temperature"),  # nothing reads it
    ("rl.old_logprobs=sampler", "must be one of"),
    ("eval.benchmark=humaneval", "must be one of"),  # said at load, not after a seeding phase
    ("eval.benchmark=cruxeval", "needs eval.data_path"),
    ("train.audit_every=-1", "0 = no rollout audit"),
    ("novalue", "key=value"),
    # Values that used to pass and fail (or do nothing) deep inside a run:
    ("sampling.temperature=NaN", "must be a finite number"),  # every update skipped as non-finite
    ("sandbox.timeout_s=Infinity", "must be a finite number"),
    ("azr.learnability_temperature=0", "must be positive"),  # greedy rollouts: no learnability signal
    ("sampling.top_k=-1", "must be >= 0"),
    ("sampling.length_buckets=[]", "positive token counts"),  # an IndexError at step 1
    ("sampling.length_buckets=[0, -5]", "positive token counts"),
    ("azr.n_references=-1", "must be >= 0"),  # a ValueError inside Grain at step 1
    ("eval.max_response_len=0", "must be positive"),  # after the whole seeding phase
    ("eval.max_items=-3", "must be >= 0"),
    ("train.eval_every=-7", r"-1 \(never\)"),
    ("optim.learning_rate=-1", "must be >= 0"),  # trains in the wrong direction
    ("optim.b2=2", r"must be in \[0, 1\)"),
    ("optim.grad_clip_norm=0", "or null for no clipping"),
    ("rl.clip_eps_low=1.5", r"must be in \(0, 1\)"),
    ("rl.kl_coef=-1", "must be >= 0"),
    ("azr.max_output_chars=-1", "must be >= 0"),
    ("pretrain.batch_size=0", "must be positive"),  # a ZeroDivisionError after the tokenizer
    ("pretrain.steps=0", "must be positive"),  # an untrained model and a NaN loss in the record
    ("eval.data_path=/x.jsonl", "only with eval.benchmark=cruxeval"),  # silently evaluated nano
    ("model.compute_dtype=float16", "must be one of"),  # no loss scaling: gradients underflow
    ("sampling.max_rows=0", "must be positive"),
    ("rl.dual_clip=none", r"\(JSON null for none\)"),  # Python's spelling, lower-cased: say JSON's
    ("mesh.shape=[1, 2]", "'mesh.shape' expects a mapping"),  # not a dict() of the list, nor its TypeError
    # Set by each command after the overrides: accepted, then replaced without a word.
    ("model.overrides.scan_layers=false", r"scan_layers is not a model field to override \(set model.scan_layers"),
    ("model.overrides.tokenizer_vocab_size=10", "tokenizer_vocab_size is not a model field to override"),
])
def test_bad_values_are_user_errors(item, match):
    with pytest.raises(UserError, match=match):
        apply_overrides(Config(), [item])


def test_training_on_learnability_rollouts_needs_one_temperature():
    with pytest.raises(UserError, match="learnability_temperature == sampling.temperature"):
        apply_overrides(Config(), ["azr.train_learnability_rollouts=true", "azr.learnability_temperature=0.5"])
    assert apply_overrides(Config(), ["azr.train_learnability_rollouts=true"]).azr.train_learnability_rollouts


def test_json_round_trip(tmp_path):
    cfg = apply_overrides(Config(), ["azr.boundary_reward=0.0", "name=x"])
    p = tmp_path / "config.json"
    p.write_text(to_json(cfg))
    assert load_config(p) == cfg
    assert to_dict(from_dict(json.loads(p.read_text()))) == to_dict(cfg)


def test_python_config_files(tmp_path):
    good = tmp_path / "good.py"
    good.write_text("from azr_jax.config import Config, AZRSection\n"
                    "config = Config(name='t', azr=AZRSection(batch_size=4))\n")
    assert load_config(good, ["azr.n_solver_samples=2"]).azr.n_solver_samples == 2
    bad = tmp_path / "bad.py"
    bad.write_text("config = 3\n")
    with pytest.raises(UserError, match="must be an azr_jax.config.Config"):
        load_config(bad)
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.py")
    # A directory (a run's workdir, say) is named as one, not as a missing file.
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(UserError, match=r"run is a directory; give a \.py preset or a config\.json$"):
        load_config(run)
    (run / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"is a directory; .*\(its config\.json: .*run/config\.json\)"):
        load_config(run)
    # A config file that exits (sys.exit(0): the command ended with status 0, having done nothing)
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(UserError, match="exits.py failed to load: SystemExit: 0$"):
        load_config(exits)
    exits.write_text("from azr_jax.config import Config\ndef get_config():\n    raise SystemExit(3)\n")
    with pytest.raises(UserError, match=r"exits.py: get_config\(\) failed: SystemExit: 3$"):
        load_config(exits)
    # A .py config goes through the same type checks as a config.json (a dataclass checks none).
    typed = tmp_path / "typed.py"
    typed.write_text("from azr_jax.config import Config, TrainSection\nconfig = Config(train=TrainSection(steps=[10]))\n")
    with pytest.raises(UserError, match="typed.py: config key 'train.steps' expects an int"):
        load_config(typed)
    raising = tmp_path / "raising.py"
    raising.write_text("def get_config():\n    raise KeyError('model')\n")
    with pytest.raises(UserError, match="get_config\\(\\) failed: KeyError"):
        load_config(raising)
    both = tmp_path / "both.py"
    both.write_text("from azr_jax.config import Config\nconfig = Config(name='a')\n"
                    "def get_config():\n    return Config(name='b')\n")
    with pytest.raises(UserError, match="both.py defines both `config` and `get_config\\(\\)`"):
        load_config(both)
    listed = tmp_path / "config.json"
    listed.write_text("[1, 2]")
    with pytest.raises(UserError, match="must be a mapping"):
        load_config(listed)


def test_output_paths_are_checked_before_the_work(tmp_path):
    from azr_jax.cli import main

    def error_line(argv):
        r = subprocess.run([sys.executable, "-m", "azr_jax.cli", *argv], capture_output=True, text=True)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("azr-jax: error:"), r.stderr[-2000:]
        return lines[0]

    rollouts = tmp_path / "in.jsonl"
    rollouts.write_text("")
    assert "is a directory" in error_line(["score", "--in", str(rollouts), "--out", str(tmp_path)])
    assert "does not exist" in error_line(["eval", "--config", "configs/nano.py", "--out", str(tmp_path / "no" / "x.json")])
    assert "does not exist" in error_line(["bench", "executor", "--out", str(tmp_path / "no" / "x.json")])
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert "is not a directory" in error_line(["pretrain", "--config", "configs/nano_base.py", "--out", str(a_file)])
    assert "is not a directory" in error_line(["train", "--config", "configs/nano.py", "--workdir", str(a_file)])
    assert "--checkpoint {} is not a directory".format(a_file) in error_line(
        ["eval", "--config", "configs/nano.py", "--checkpoint", str(a_file)])  # it named model.hf_dir
    # a file above the directory to create: a NotADirectoryError traceback, for convert only
    # after restoring the checkpoint
    under = f"{a_file} is not a directory"
    assert under in error_line(["train", "--config", "configs/nano.py", "--workdir", str(a_file / "sub")])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert under in error_line(["convert", "--run", str(run), "--out", str(a_file / "sub")])
    # eval names a wrong --run as convert does (it said "config file not found: .../config.json")
    assert f"--run {tmp_path / 'no_run'} is not a training run directory" in error_line(
        ["eval", "--run", str(tmp_path / "no_run")])
    # a write that fails (a full disk): a last line naming --out, after the work for score
    one_line = tmp_path / "one.jsonl"
    one_line.write_text("not json\n")
    r = subprocess.run([sys.executable, "-m", "azr_jax.cli", "score", "--in", str(one_line), "--out", "/dev/full"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.splitlines()[-1] == "azr-jax: error: --out /dev/full: write failed (No space left on device)"
    from pathlib import Path

    assert Path("/dev/full").is_char_device()  # written in place, never replaced by a file


def test_cli_reports_bad_input_as_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "azr_jax.cli", "score", "--in", str(tmp_path / "nope.jsonl"),
                        "--out", str(tmp_path / "o.jsonl")], capture_output=True, text=True)
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("azr-jax: error:"), r.stderr


def test_an_empty_option_value_is_refused_before_the_command_runs(tmp_path, capsys, monkeypatch):
    """`--workdir ""` (an unset shell variable) ran as no --workdir, training into runs/<name>;
    `eval --out ""` evaluated and wrote nothing; `score --config ""` used the defaults unsaid."""
    from azr_jax import cli

    monkeypatch.chdir(tmp_path)
    for argv, flag in [(["train", "--config", "configs/nano.py", "--workdir", ""], "--workdir"),
                       (["train", "--config", "configs/nano.py", "--work="], "--workdir"),
                       (["eval", "--config", "configs/nano.py", "--out", ""], "--out"),
                       (["score", "--in", "in.jsonl", "--out", "o.jsonl", "--config", ""], "--config"),
                       (["bench", "executor", "--out", ""], "--out"),
                       (["repro", "model", "--hf-dir", "x", "--text-file", ""], "--text-file")]:
        assert cli.main(argv) == 2, argv
        assert capsys.readouterr().err == (f"azr-jax: error: {flag} is given an empty value (an unset shell "
                                           f"variable?); give it a value\n")
    assert list(tmp_path.iterdir()) == []  # no runs/ made


def test_cli_help_lists_commands():
    r = subprocess.run([sys.executable, "-m", "azr_jax.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    listed = re.findall(r"^    (\w+)", r.stdout, re.MULTILINE)  # one command per line, as a word
    assert listed == ["train", "score", "eval", "convert", "pretrain", "bench", "repro", "selfcheck"], r.stdout


@pytest.mark.parametrize("task_types", ['[]', '["deduction", "deduction"]'])
def test_task_types_must_be_distinct_and_not_empty(task_types):
    with pytest.raises(UserError, match="distinct task types"):
        apply_overrides(Config(), [f"azr.task_types={task_types}"])


def test_resuming_with_another_length_is_refused_only_for_a_decaying_schedule():
    from azr_jax.config import to_dict
    from azr_jax.train_setup import allowed_config_change

    def as_dict(*items):
        return to_dict(apply_overrides(Config(), list(items)))

    assert allowed_config_change(as_dict("train.steps=10"), as_dict("train.steps=20")) == []
    cosine = "optim.schedule=cosine"
    assert allowed_config_change(as_dict(cosine, "train.steps=10"), as_dict(cosine, "train.steps=20")) == [
        "train.steps (optim.schedule decays over it)"]


def test_a_resume_may_raise_the_prompt_limit_but_not_lower_it():
    """The batch builder's way out of prompts that outgrew the limit is to raise it."""
    from azr_jax.config import to_dict
    from azr_jax.train_setup import allowed_config_change

    def as_dict(*items):
        return to_dict(apply_overrides(Config(), list(items)))

    small, large = as_dict("sampling.max_prompt_len=1024"), as_dict("sampling.max_prompt_len=2048")
    assert allowed_config_change(small, large) == []
    assert allowed_config_change(large, small) == ["sampling.max_prompt_len"]
    assert allowed_config_change(as_dict("sampling.max_prompt_len=8192"), as_dict("sampling.max_rows=8")) == [
        "sampling.max_prompt_len"]  # back to the default 6144: lowered
    assert allowed_config_change(as_dict("sampling.max_rows=64"), as_dict("sampling.max_rows=8")) == []


def test_a_decaying_schedule_needs_steps_after_the_warmup():
    with pytest.raises(UserError, match=r"train.steps \(5\) must be > optim.warmup_steps \(5\)"):
        apply_overrides(Config(), ["optim.schedule=cosine", "optim.warmup_steps=5", "train.steps=5"])
    # A constant schedule decays nothing: a warmup as long as the run (or longer) is allowed.
    assert apply_overrides(Config(), ["optim.warmup_steps=5", "train.steps=5"]).optim.warmup_steps == 5


def test_a_seed_size_over_the_buffer_cap_is_refused():
    """Seeding would run all its rounds without ever filling the capped buffer."""
    with pytest.raises(UserError, match="azr.seed_size=8 is larger than azr.buffer_cap=4"):
        apply_overrides(Config(), ["azr.seed_size=8", "azr.buffer_cap=4"])
    assert apply_overrides(Config(), ["azr.seed_size=4", "azr.buffer_cap=4"]).azr.seed_size == 4


def test_a_seeding_phase_with_both_seed_files_is_refused():
    base = ["azr.seed_file=a.jsonl", "azr.induction_seed_file=b.jsonl"]
    with pytest.raises(UserError, match="both buffers come from seed files"):
        apply_overrides(Config(), base + ["azr.seed_size=16"])
    assert apply_overrides(Config(), base + ["azr.seed_size=0"]).azr.seed_size == 0
    assert apply_overrides(Config(), base[:1] + ["azr.seed_size=16"]).azr.seed_size == 16  # seeds induction


def test_the_default_model_preset_loads_in_a_fresh_process():
    """`model.preset="nano"` (the default) was only known once `azr-jax pretrain` had imported it."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "from azr_jax.models import get_preset; print(get_preset('nano').num_layers)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().isdigit(), r.stderr[-2000:]


def test_memory_layout_keys_may_change_on_resume():
    from azr_jax.config import to_dict
    from azr_jax.train_setup import allowed_config_change

    def as_dict(*items):
        return to_dict(apply_overrides(Config(), list(items)))

    assert allowed_config_change(as_dict("model.remat=none", "model.scan_layers=true"),
                                 as_dict("model.remat=full", "model.scan_layers=false")) == []
    assert allowed_config_change(as_dict("model.compute_dtype=float32"), as_dict("model.compute_dtype=bfloat16")) == [
        "model.compute_dtype"]
    # another mesh: a layout (tests/train/test_train_e2e.py resumes a run on one)
    assert allowed_config_change(as_dict('mesh.shape={"data": 1, "fsdp": 8, "tensor": 1}'),
                                 as_dict('mesh.shape={"data": 1, "fsdp": 4, "tensor": 2}')) == []


# ----------------------------------------------------------------------------------------------
# Values that used to load and then fail (or misbehave) inside a run
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("item, match", [
    ("sandbox.memory_mb=-1", "'sandbox.memory_mb' must be positive"),  # every job over 25 ms failed, unreported
    ("sandbox.max_file_mb=0", "'sandbox.max_file_mb' must be positive"),
    ("sandbox.max_open_files=0", "'sandbox.max_open_files' must be positive"),
    ("sandbox.max_processes=-2", "'sandbox.max_processes' must be positive"),
    # Set as 64-bit rlimits in every job: an OverflowError there, scored as the program's runtime error
    ("sandbox.memory_mb=8796093022208", r"'sandbox.memory_mb' must be < 2\*\*43"),
    ("sandbox.max_file_mb=9000000000000", r"'sandbox.max_file_mb' must be < 2\*\*43"),
    ("sandbox.max_open_files=9223372036854775807", r"'sandbox.max_open_files' must be < 2\*\*62"),
    ("sandbox.max_processes=9223372036854775806", r"'sandbox.max_processes' must be < 2\*\*62"),
    ('azr.banned_words=["os.system", 3]', "list of non-empty strings"),  # a TypeError at step 1
    ('azr.banned_words=["os.system", ""]', "list of non-empty strings"),  # "" is in every program
    ("train.seed=-1", r"'train.seed' must be in \[0, 2\*\*32\)"),  # key(-1) is key(2**32 - 1)
    ("train.seed=4294967296", r"must be in \[0, 2\*\*32\)"),  # key(2**32) is key(0)
    ("train.seed=9223372036854775808", r"must be in \[0, 2\*\*32\)"),  # an OverflowError in training
    ("pretrain.seed=-1", r"'pretrain.seed' must be in \[0, 2\*\*32\)"),
    # The schedule's count is int32: an OverflowError traceback at the first update
    ("optim.warmup_steps=2147483648", r"'optim.warmup_steps' must be < 2\*\*31"),
    ("optim.warmup_steps=1e20", r"'optim.warmup_steps' must be < 2\*\*31"),
    ("train.steps=2147483648", r"'train.steps' must be < 2\*\*31"),  # the cosine/linear decay length
    ("pretrain.steps=2147483648", r"'pretrain.steps' must be < 2\*\*31"),  # its optax schedule too
    ("azr.num_inputs=1", "'azr.num_inputs' must be >= 2"),  # induction tasks with no visible pair
    ("azr.max_output_chars=1", r"0 \(no clipping\) or >= 2"),  # clipped to the whole text
    # The host's poll() for the answer counts int milliseconds: every job a sandbox failure
    ("sandbox.timeout_s=1e9", r"'sandbox.timeout_s' must be at most 1000000 s"),
    ("sandbox.timeout_s=1000000.5", r"'sandbox.timeout_s' must be at most 1000000 s"),
])
def test_out_of_range_values_that_reached_the_run_are_refused(item, match):
    with pytest.raises(UserError, match=match):
        apply_overrides(Config(), [item])


def test_smallest_accepted_values_still_load():
    cfg = apply_overrides(Config(), ["azr.num_inputs=2", "azr.max_output_chars=2", "train.seed=4294967295",
                                     "sandbox.memory_mb=1", "azr.banned_words=[]"])
    assert (cfg.azr.num_inputs, cfg.azr.max_output_chars, cfg.train.seed) == (2, 2, 2**32 - 1)
    assert apply_overrides(Config(), ["azr.max_output_chars=0"]).azr.max_output_chars == 0  # 0 = never clip
    assert apply_overrides(Config(), [f"optim.eps={2.0**-126!r}"]).optim.eps == 2.0**-126
    largest_b = 1 - 2**-24  # the float32 just below 1
    assert apply_overrides(Config(), [f"optim.b1={largest_b!r}", f"optim.b2={largest_b!r}"]).optim.b2 == largest_b
    longest = apply_overrides(Config(), ["train.steps=2147483647", "optim.warmup_steps=2147483647"])
    assert longest.train.steps == longest.optim.warmup_steps == 2**31 - 1
    assert apply_overrides(Config(), ["sandbox.timeout_s=1e6"]).sandbox.timeout_s == 1e6
    big = apply_overrides(Config(), ["sandbox.memory_mb=8796093022207", "sandbox.max_file_mb=8796093022207"]).sandbox
    assert big.memory_mb << 20 < 2**63 and big.max_file_mb << 20 < 2**63
    tiny = apply_overrides(Config(), ["sampling.temperature=1e-30", "eval.temperature=1e-30"])
    assert tiny.sampling.temperature == tiny.eval.temperature == 1e-30


def _preset(tmp_path, body: str):
    path = tmp_path / "preset.py"
    path.write_text("from azr_jax.config import *\nconfig = " + body + "\n")
    return path


def test_a_preset_may_leave_a_required_value_to_set(tmp_path):
    """The file is type-checked alone; the cross-field checks run once, after --mesh and --set."""
    from azr_jax.config import read_config_file
    from azr_jax.run_presets import with_mesh

    preset = _preset(tmp_path, 'Config(eval=EvalSection(benchmark="cruxeval"))')
    assert load_config(preset, ["eval.data_path=crux.jsonl"]).eval.data_path == "crux.jsonl"
    cfg = apply_overrides(with_mesh(read_config_file(preset), "v4-8"), ["eval.data_path=crux.jsonl"])
    assert cfg.eval.data_path == "crux.jsonl" and cfg.mesh.shape["fsdp"] == 4
    with pytest.raises(UserError, match="needs eval.data_path"):
        load_config(preset)  # still required in the end
    # `azr-jax train` reads its --config the same way.
    import argparse

    from azr_jax.train_cli import resolve_config

    args = argparse.Namespace(config=str(preset), mesh="v4-8", overrides=["eval.data_path=crux.jsonl"])
    assert resolve_config(args).eval.data_path == "crux.jsonl"
    dumped = tmp_path / "config.json"
    dumped.write_text(json.dumps({"eval": {"benchmark": "cruxeval"}}))
    assert load_config(dumped, ["eval.data_path=crux.jsonl"]).eval.benchmark == "cruxeval"
    # Type errors in the file still name it, on one line.
    dumped.write_text(json.dumps({"train": {"steps": "many"}}))
    with pytest.raises(UserError, match=r"config file .*config.json: config key 'train.steps' expects an int"):
        load_config(dumped, ["train.steps=3"])


def test_unknown_keys_far_from_every_key_still_get_a_pointer():
    # `azr.batch` is 0.78 alike to `azr.batch_size`: still suggested; with nothing alike, the reference
    with pytest.raises(UserError, match=re.escape("unknown config key 'azr.batch'; did you mean 'azr.batch_size'?")):
        apply_overrides(Config(), ["azr.batch=4"])
    with pytest.raises(UserError, match=re.escape("unknown config key 'nope.x'; every key is listed in docs/config.md")):
        apply_overrides(Config(), ["nope.x=1"])


def test_a_config_file_that_does_not_parse_or_define_a_config_is_one_error(tmp_path):
    """Each is one line naming the file, not a traceback, and a .py defining no config is not
    silently the defaults."""
    cases = [("bad.json", '{"name": ', "bad.json is not valid JSON"),
             ("deep.json", "[" * 100_000, "deep.json could not be read: RecursionError"),
             ("digits.json", '{"train": {"steps": 1' + "0" * 5000 + "}}", "digits.json could not be read: ValueError"),
             ("broken.py", "config = Confg()\n", "broken.py failed to load: NameError"),
             ("empty.py", "name = 'x'\n", "empty.py must define `config = Config\\(...\\)` or `get_config\\(\\)`")]
    for name, text, match in cases:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(UserError, match=match):
            load_config(path)


def test_a_json_config_that_cannot_be_read_is_one_error(tmp_path, monkeypatch):
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"name": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(UserError, match="latin.json is not UTF-8 text"):
        load_config(latin)
    ok = tmp_path / "ok.json"
    ok.write_text('{"name": "caf\u00e9"}', encoding="utf-8")
    assert load_config(ok).name == "caf\u00e9"

    def unreadable(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(ok), "read_bytes", unreadable)
    with pytest.raises(UserError, match="ok.json could not be read: PermissionError"):
        load_config(ok)


@pytest.mark.parametrize("item, parent", [("mesh.rules.batch.x=1", "mesh.rules.batch"),
                                          ("mesh.shape.fsdp.x=1", "mesh.shape.fsdp")])
def test_a_key_past_a_plain_value_names_the_key(item, parent):
    key = item.split("=")[0]
    with pytest.raises(UserError, match=f"config key '{key}': '{parent}' is .*, which has no keys to set"):
        apply_overrides(Config(), [item])
    assert apply_overrides(Config(), ["model.overrides.rope.factor=2"]).model.overrides == {"rope": {"factor": 2}}


def test_setting_a_whole_section_keeps_the_other_values(tmp_path):
    preset = _preset(tmp_path, "Config(azr=AZRSection(n_solver_samples=2, batch_size=16))")
    cfg = load_config(preset, ['azr={"batch_size": 4}'])
    assert cfg.azr.batch_size == 4 and cfg.azr.n_solver_samples == 2  # the preset's, not the default 8
    with pytest.raises(UserError, match="did you mean 'azr.batch_size'"):
        load_config(preset, ['azr={"batch_sise": 4}'])
    with pytest.raises(UserError, match="'azr.batch_size' expects an int"):
        load_config(preset, ['azr={"batch_size": "four"}'])
    with pytest.raises(UserError, match="'azr' expects a section"):
        load_config(preset, ["azr=4"])


@pytest.mark.parametrize("items, match", [
    (["mesh.shape.tensr=2"], "mesh axis 'tensr'; did you mean 'tensor'"),
    (['mesh.shape={"data": 1, "fsdp": -1, "tensor": 1, "tensr": 1}'], "did you mean 'tensor'"),
    (["mesh.rules.vocabb=tensor"], "no such logical axis; did you mean 'vocab'"),
    (["mesh.rules.batch=fsdp", "mesh.shape.data=2"], "'mesh.shape.data' is 2, but no mesh.rules entry uses"),
    # -1 on an unused axis takes every device for repeated work; two -1s were left to make_mesh
    (["mesh.rules.batch=data", "mesh.rules.embed=null"], "'mesh.shape.fsdp' is -1, but no mesh.rules entry uses"),
    (['mesh.shape={"data": -1, "fsdp": -1, "tensor": 1}'], r"at most one axis may be -1"),
    (['mesh.rules={"batch": "data"}'], "'mesh.rules' has no entry for length, vocab, embed, heads, kv_heads"),
])
def test_misspelt_mesh_axes_and_rules_are_refused(items, match):
    with pytest.raises(UserError, match=match):
        apply_overrides(Config(), items)


def test_mesh_layouts_in_use_still_load():
    assert apply_overrides(Config(), ['mesh.shape={"data": 2, "fsdp": -1, "tensor": 4}']).mesh.shape["tensor"] == 4
    assert apply_overrides(Config(), ["mesh.rules.batch=fsdp"]).mesh.shape["data"] == 1  # data unused at size 1
    # An axis of one's own is fine once a rule uses it.
    cfg = apply_overrides(Config(), ["mesh.shape.seq=2", "mesh.rules.length=seq"])
    assert cfg.mesh.shape["seq"] == 2 and cfg.mesh.rules["length"] == "seq"


def test_set_values_fit_the_field_type():
    cfg = apply_overrides(Config(), ["name=2024", "model.hf_dir=123", "eval.benchmark=cruxeval",
                                     "eval.data_path=1.5", "azr.propose=0", "azr.clean_programs=1"])
    assert cfg.name == "2024" and cfg.model.hf_dir == "123" and cfg.eval.data_path == "1.5"
    assert cfg.azr.propose is False and cfg.azr.clean_programs is True  # as the strings "0" and "1"
    cfg = apply_overrides(cfg, ["model.hf_dir=null", 'name="quoted"', "name=true"])
    assert cfg.model.hf_dir is None and cfg.name == "true"
    with pytest.raises(UserError, match="expects a bool"):
        apply_overrides(Config(), ["azr.propose=2"])
    for item in ("rl.dual_clip=None", "model.hf_dir=None"):  # the text field took it as the path "None"
        with pytest.raises(UserError, match=f"'{item.split('=')[0]}': write null, not None, to clear it"):
            apply_overrides(Config(), [item])


# ----------------------------------------------------------------------------------------------
# Input paths are checked before the weights load
# ----------------------------------------------------------------------------------------------


def test_input_paths_are_read_before_the_weights(tmp_path, monkeypatch):
    from azr_jax import trainer
    from azr_jax.train_setup import check_inputs

    def no_loading(cfg):
        raise AssertionError("load_policy ran before the input paths were checked")

    monkeypatch.setattr(trainer, "load_policy", no_loading)
    missing = tmp_path / "missing.jsonl"
    base = apply_overrides(Config(), [f"model.tokenizer={BASE_DIR}"])  # a random init: nothing loads
    for items, match in [([f"azr.seed_file={missing}"], "seed file not found"),
                         ([f"azr.induction_seed_file={missing}"], "seed file not found"),
                         ([f"azr.prompt_dir={missing}"], "azr.prompt_dir is not a directory"),
                         (["eval.benchmark=cruxeval", f"eval.data_path={missing}"], "benchmark file not found"),
                         # the tokenizer (it was read after config.json, inputs.json and the lock were written)
                         (["model.tokenizer=null"], "model preset 'nano' needs weights"),
                         ([f"model.tokenizer={missing}"], "tokenizer path .* does not exist"),
                         ([f"model.tokenizer={tmp_path}"], "no tokenizer in"),
                         ([f"model.hf_dir={tmp_path}", "model.tokenizer=null"], "no tokenizer in")]:
        with pytest.raises(UserError, match=match):
            trainer.train(apply_overrides(base, items), tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()  # nothing written either
    # A resume reads no seed file (its buffers are in the checkpoint) and a run that never
    # evaluates reads no benchmark file.
    (tmp_path / "resumed" / "checkpoints" / "10").mkdir(parents=True)
    check_inputs(apply_overrides(base, [f"azr.seed_file={missing}"]), tmp_path / "resumed")
    check_inputs(apply_overrides(base, ["eval.benchmark=cruxeval", f"eval.data_path={missing}",
                                        "train.eval_every=-1"]), tmp_path / "fresh")
    with pytest.raises(UserError, match="azr.prompt_dir is not a directory"):
        check_inputs(apply_overrides(base, [f"azr.prompt_dir={missing}"]), tmp_path / "resumed")


@pytest.mark.parametrize("override, hint", [
    ("sampling.temp=0.7", "did you mean 'sampling.temperature'?"),  # was 'sampling.top_p'
    ("optim.lr=1e-4", "did you mean 'optim.learning_rate'?"),  # was 'optim'
    ("rl.kl=0.1", "did you mean 'rl.kl_coef'?"),  # was 'rl.kl_type'
    ("lr=1e-4", "did you mean 'optim.learning_rate' or 'pretrain.learning_rate'?"),  # was 'rl'
    ("train.step=3", "did you mean 'train.steps'?"),  # misspellings still go by spelling
    ("optim.wd=0.1", "did you mean 'optim.weight_decay'?"),  # was 'optim'
    ("azr.bs=4", "did you mean 'azr.batch_size'?"),  # was 'azr'
    ("warmup=5", "did you mean 'optim.warmup_steps' or 'pretrain.warmup_steps'?"),  # was one of them
    ("optim.entropy=0.01", "did you mean 'rl.entropy_coef'?"),  # was 'optim.eps'
])
def test_common_short_names_point_to_the_key_they_abbreviate(override, hint):
    with pytest.raises(UserError, match=re.escape(hint)):
        load_config("configs/nano.py", [override])


# ----------------------------------------------------------------------------------------------
# Every range check, every type check (one untested entry can be dropped unnoticed)
# ----------------------------------------------------------------------------------------------

POSITIVE_KEYS = [
    "azr.batch_size", "azr.n_solver_samples", "azr.solver_samples", "azr.buffer_cap", "sandbox.timeout_s",
    "sandbox.memory_mb", "sandbox.max_file_mb", "sandbox.max_open_files", "sandbox.max_processes",
    "sampling.max_prompt_len", "sampling.max_response_len", "sampling.max_rows", "rl.micro_batch_size",
    "train.steps", "train.save_every", "train.keep_checkpoints", "train.log_every", "azr.seed_max_rounds",
    "azr.learnability_temperature", "eval.samples", "eval.max_response_len", "optim.eps",
    "pretrain.corpus_programs", "pretrain.max_program_steps", "pretrain.vocab_size", "pretrain.steps",
    "pretrain.batch_size", "pretrain.seq_len", "pretrain.learning_rate",
]
NOT_NEGATIVE_KEYS = [
    "azr.n_references", "azr.max_output_chars", "sampling.top_k", "eval.max_items", "optim.learning_rate",
    "optim.warmup_steps", "optim.weight_decay", "rl.kl_coef", "rl.logits_chunk", "rl.attention_chunk",
    "sampling.prefill_chunk", "pretrain.warmup_steps", "pretrain.weight_decay",
]


def test_every_count_and_size_is_range_checked():
    """A zero prompt limit, micro-batch or step count loaded fine and failed (or did nothing)
    deep inside a run; each key is named in its error."""
    for key in POSITIVE_KEYS:
        with pytest.raises(UserError, match=f"'{re.escape(key)}' must be positive, got 0"):
            apply_overrides(Config(), [f"{key}=0"])
    for key in NOT_NEGATIVE_KEYS:
        with pytest.raises(UserError, match=f"'{re.escape(key)}' must be >= 0, got -1"):
            apply_overrides(Config(), [f"{key}=-1"])
        apply_overrides(Config(), [f"{key}=0"] + (["azr.max_output_chars=0"] if key == "azr.max_output_chars" else []))


@pytest.mark.parametrize("item, match", [
    ("optim.b2=1", r"'optim.b2' must be in \[0, 1\)"),  # the second moment would never move off 0
    ("optim.b1=1", r"'optim.b1' must be in \[0, 1\)"),
    ("optim.b1=-0.1", r"'optim.b1' must be in \[0, 1\)"),  # the closed lower end: below it, not at it
    # 1 in float32, where AdamW's bias correction 1 - b**t is then 0: NaN weights at the first update
    ("optim.b2=0.99999999", r"'optim.b2' is 0.99999999, which float32 \(the update's precision\) rounds to 1"),
    ("optim.b1=0.99999999", r"'optim.b1' is 0.99999999, which float32"),
    ("rl.clip_eps_low=0", r"'rl.clip_eps_low' must be in \(0, 1\)"),  # no room for the ratio to move
    ("mesh.shape.data=0", "'mesh.shape.data' must be a positive int or -1"),
    ("azr.seed_size=5", "azr.seed_size=5 is larger than azr.buffer_cap=4"),  # one over the cap
    ("azr.answer_diversity_max=-0.5", "answer_diversity_max must be >= 0"),  # a penalty for a valid task
    ("eval.temperature=-1", "eval.temperature must be >= 0"),
    # Below 1e-30 float32 holds a temperature as 0 (sampled at T = 1, not near-greedy) or overflows the logits
    ("eval.temperature=1e-45", r"'eval.temperature' is 1e-45: a temperature must be 0 \(greedy\) or >= 1e-30"),
    ("sampling.temperature=1e-31", r"'sampling.temperature' is 1e-31: a temperature must be 0"),
    ("azr.learnability_temperature=1e-40", r"'azr.learnability_temperature' is 1e-40"),
    # Below float32's smallest normal number AdamW's eps is 0: a zero gradient made NaN weights
    ("optim.eps=1e-40", r"'optim.eps' is 1e-40: it must be >= 2\*\*-126"),
    ("optim.eps=1e-38", r"'optim.eps' is 1e-38: it must be >= 2\*\*-126"),  # subnormal in float32: flushed too
    ("eval.samples=2", "eval.samples=2 needs eval.temperature > 0"),  # pass@2 of two identical answers
])
def test_range_boundaries_are_refused(item, match):
    with pytest.raises(UserError, match=match):
        apply_overrides(Config(), ["azr.buffer_cap=4", item])


@pytest.mark.parametrize("item, match", [
    ("train.steps=2.5", "'train.steps' expects an int, got 2.5"),  # was cut to 2
    ("azr.batch_size=true", "'azr.batch_size' expects an int, got True"),  # was 1
    ("optim.learning_rate=true", "'optim.learning_rate' expects a float, got True"),  # was 1.0
    ("train.steps=\uff15", "'train.steps' expects an int, got '\uff15'"),  # a full-width 5: was 5
    ("optim.learning_rate=\u0661e-4", "'optim.learning_rate' expects a float, got '\u0661e-4'"),  # Arabic-Indic 1
])
def test_set_values_of_another_type_are_not_converted(item, match):
    with pytest.raises(UserError, match=match):
        apply_overrides(Config(), [item])
    assert apply_overrides(Config(), ["train.steps=3.0"]).train.steps == 3  # a whole number is one


def test_a_config_file_is_type_checked_key_by_key(tmp_path):
    """A config.json (edited by hand, or from another version) gets the checks a --set gets: a
    misspelt key is an error, not a silently ignored line; values are not converted across types."""
    p = tmp_path / "config.json"
    for data, match in [({"train": {"stepz": 3}}, r"unknown config key 'train.stepz'; did you mean 'train.steps'"),
                        ({"name": 3}, "'name' expects a string, got 3"),
                        ({"azr": {"batch_size": 4.5}}, "'azr.batch_size' expects an int"),
                        ({"train": {"steps": "2.5"}}, "'train.steps' expects an int, got '2.5'")]:  # as text: not cut to 2
        p.write_text(json.dumps(data))
        with pytest.raises(UserError, match=match):
            load_config(p)
    p.write_text(json.dumps({"azr": {"propose": "0", "clean_programs": "1", "train_propose": "no"}}))
    cfg = load_config(p)
    assert (cfg.azr.propose, cfg.azr.clean_programs, cfg.azr.train_propose) == (False, True, False)
    yaml = tmp_path / "config.yaml"
    yaml.write_text("{}")
    with pytest.raises(UserError, match="config file must be .py or .json"):
        load_config(yaml)


def test_set_splits_at_the_first_equals_sign_and_trims_the_key():
    cfg = apply_overrides(Config(), ["name=a=b", " azr.batch_size =4"])
    assert cfg.name == "a=b" and cfg.azr.batch_size == 4


def test_an_override_leaves_the_config_it_started_from_unchanged():
    """Configs are frozen values: the resume check compares the checkpoint's config with the new
    one, and a --set that wrote into a shared dict changed both."""
    base = Config()
    new = apply_overrides(base, ["model.overrides.rope.factor=2", "mesh.shape.fsdp=4"])
    assert new.model.overrides == {"rope": {"factor": 2}} and new.mesh.shape["fsdp"] == 4
    assert base.model.overrides == {} and base.mesh.shape == {"data": 1, "fsdp": -1, "tensor": 1}
    nested = apply_overrides(new, ["model.overrides.rope.kind=linear"])
    assert new.model.overrides == {"rope": {"factor": 2}} and nested.model.overrides["rope"]["kind"] == "linear"


def test_the_off_values_of_optional_checks_load():
    """0 and null are documented as "off": the range checks must not refuse them."""
    cfg = apply_overrides(Config(), ["train.audit_every=0", "optim.grad_clip_norm=null", "rl.dual_clip=null",
                                     "eval.temperature=0", "sandbox.workers=0", "train.eval_every=-1"])
    assert (cfg.train.audit_every, cfg.optim.grad_clip_norm, cfg.rl.dual_clip) == (0, None, None)


def test_train_set_overrides_win_over_the_mesh_topology():
    """`train --mesh` lays the preset out on the topology, and a --set of mesh.shape given with it
    still wins (the documented order: preset, --mesh, then --set)."""
    import argparse

    from azr_jax.train_cli import resolve_config

    laid_out = resolve_config(argparse.Namespace(config="configs/nano.py", mesh="v4-8", overrides=[]))
    assert laid_out.mesh.shape["fsdp"] == 4
    shape = {"data": 2, "fsdp": 2, "tensor": 1}
    both = resolve_config(argparse.Namespace(config="configs/nano.py", mesh="v4-8",
                                             overrides=[f"mesh.shape={json.dumps(shape)}"]))
    assert both.mesh.shape == shape


def test_no_command_is_a_usage_error(capsys):
    """`azr-jax` alone prints its usage and exits 2 (not an IndexError or AttributeError)."""
    from azr_jax.cli import main

    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2 and "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_the_executable_passes_its_exit_status_and_leaves_at_once_after_an_error_or_interrupt(monkeypatch):
    """`run()` asks main() for the process-exit mode, exits with its status, and after an error
    (2) or an interrupt (130) leaves with os._exit before the interpreter's shutdown."""
    from azr_jax import cli

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    modes = []
    for status in (0, 1, 2, 130):
        monkeypatch.setattr(cli, "main", lambda process_exit=False, status=status: modes.append(process_exit) or status)
        monkeypatch.setattr(cli.os, "_exit", fake_exit)
        at_once = status in (2, 130)
        with pytest.raises(Exited if at_once else SystemExit) as stop:
            cli.run()
        assert (stop.value.args[0] if at_once else stop.value.code) == status
    assert modes == [True] * 4


def test_an_error_exit_does_not_wait_for_library_threads():
    """A library thread still waiting when the command fails (Orbax's save threads after a save
    that could not create its directory wait 300 s) does not hold the error exit."""
    code = ("import threading, time\n"
            "from azr_jax import cli\n"
            "def failing_command(process_exit=False):\n"
            "    threading.Thread(target=time.sleep, args=(120,)).start()  # not a daemon\n"
            "    print('output before the error')\n"
            "    return 2\n"
            "cli.main = failing_command\n"
            "cli.run()\n")
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert r.returncode == 2 and r.stdout == "output before the error\n", (r.returncode, r.stdout, r.stderr)
    assert time.monotonic() - start < 60


def test_the_last_error_line_silences_stderr_behind_it():
    """`_say_last` writes its line and then nothing else reaches stderr: not Python's stream and
    not a raw write to file descriptor 2 (a library thread's traceback at shutdown)."""
    code = ("import os, sys\nfrom azr_jax.cli import _say_last\nprint('before', file=sys.stderr)\n"
            "_say_last('azr-jax: error: last\\n')\nprint('after', file=sys.stderr, flush=True)\nos.write(2, b'raw\\n')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "before\nazr-jax: error: last\n", r.stderr


def test_main_from_python_leaves_stderr_open_and_the_executable_has_the_last_word():
    """`cli.main(argv)` called from a program (process_exit False) prints its error and leaves
    stderr working for the caller; the executable's mode (process_exit True) makes its line the
    last on stderr, for an interrupt as for an error."""
    code = ("import os, sys\n"
            "from azr_jax import cli, selfcheck\n"
            "from azr_jax.errors import UserError\n"
            "def fails(args):\n    raise UserError('no good')\n"
            "def interrupted(args):\n    raise KeyboardInterrupt\n"
            "selfcheck.main = fails\n"
            "assert cli.main(['selfcheck']) == 2\n"
            "selfcheck.main = interrupted\n"
            "assert cli.main(['selfcheck']) == 130\n"
            "print('caller goes on', file=sys.stderr, flush=True)\n"
            "assert cli.main(['selfcheck'], process_exit=True) == 130\n"
            "print('after', file=sys.stderr, flush=True)\nos.write(2, b'raw\\n')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr.splitlines() == [
        "azr-jax: error: no good", "azr-jax: interrupted", "caller goes on", "azr-jax: interrupted"], r.stderr


# ----------------------------------------------------------------------------------------------
# Gaps a mutation audit found: each of these checks could be dropped or loosened unnoticed
# ----------------------------------------------------------------------------------------------

# Every key with a fixed set of values (config._CHOICES), written out: a dropped entry would let
# a misspelt value through to the run (rl.kl_type=k2 took the k1/k3 branch it happened to fall in).
CHOICE_KEYS = [
    "model.compute_dtype", "model.param_dtype", "model.remat", "azr.buffer_eviction", "azr.pred_data_mix",
    "azr.f_replace_location", "azr.code_location", "azr.answer_diversity_level", "sandbox.isolation",
    "rl.estimator", "rl.whiten_stats", "rl.kl_type", "rl.old_logprobs", "rl.loss_agg", "optim.schedule",
    "eval.benchmark",
]


def test_every_key_with_a_set_of_values_refuses_another():
    for key in CHOICE_KEYS:
        with pytest.raises(UserError, match=f"'{re.escape(key)}' must be one of"):
            apply_overrides(Config(), [f"{key}=bogus"])


def test_a_negative_count_or_size_is_refused_as_zero_is():
    # -1 is not 0: a check written `== 0` (or an abs() somewhere) would pass it
    for key in POSITIVE_KEYS:
        with pytest.raises(UserError, match=f"'{re.escape(key)}' must be positive, got -1"):
            apply_overrides(Config(), [f"{key}=-1"])


@pytest.mark.parametrize("items, match", [
    (["rl.clip_eps_high=1"], r"'rl.clip_eps_high' must be in \(0, 1\)"),  # the open upper end
    (["sampling.top_p=0"], r"sampling.top_p in \(0, 1\]"),  # a nucleus of no tokens
    (["sampling.top_p=1.5"], r"sampling.top_p in \(0, 1\]"),  # the closed upper end: said at load, not by the sampler
    (["sandbox.workers=-1"], r"0 = one per CPU core"),  # -1 is not a count of workers
    (["sampling.length_buckets=[0]"], "positive token counts"),  # 0 alone, not next to a negative one
    (["sampling.length_buckets=[true, 512]"], "positive token counts"),  # a bool is not a token count
    (["train.eval_every=-2"], r"-1 \(never\)"),  # the first value below -1
    (["optim.schedule=linear", "optim.warmup_steps=5", "train.steps=5"], "'linear' decays to 0"),  # not only cosine
    (["mesh.shape.data=true"], "'mesh.shape.data' must be a positive int or -1"),  # True is not a size of 1
    (["mesh.shape.fsdp=-2"], "'mesh.shape.fsdp' must be a positive int or -1"),  # only -1 means "the rest"
    (["azr.seed_file=a.jsonl", "azr.induction_seed_file=b.jsonl", "azr.seed_size=1"], "both buffers come from seed files"),
])
def test_values_just_past_a_boundary_are_refused(items, match):
    with pytest.raises(UserError, match=match):
        apply_overrides(Config(), items)


def test_values_at_the_open_boundaries_load():
    cfg = apply_overrides(Config(), ["optim.b1=0", "optim.b2=0"])  # no momentum: [0, 1) includes 0
    assert (cfg.optim.b1, cfg.optim.b2) == (0.0, 0.0)


def test_set_takes_the_usual_spellings_of_bools_and_numbers():
    """Not every value a user types is JSON: `True` (Python's), `yes`, `.5` and `1_000` are read
    as the field's type, as `true` and `0.5` are."""
    cfg = apply_overrides(Config(), ["azr.propose=False", "azr.clean_programs=yes", "sandbox.seccomp=No",
                                     "sampling.temperature=.5", "train.steps=1_000"])
    assert (cfg.azr.propose, cfg.azr.clean_programs, cfg.sandbox.seccomp) == (False, True, False)
    assert cfg.sampling.temperature == 0.5 and cfg.train.steps == 1000


def test_tuples_in_a_python_config_load_as_lists(tmp_path):
    """A preset may write a list field as a tuple; it loads as the list config.json gives back, so
    that a resume compares equal values (a tuple is never == the list read from JSON)."""
    preset = _preset(tmp_path, 'Config(azr=AZRSection(task_types=("deduction",)), '
                               'sampling=SamplingSection(length_buckets=(64, 128)))')
    cfg = load_config(preset)
    assert cfg.azr.task_types == ["deduction"] and type(cfg.sampling.length_buckets) is list
    dumped = tmp_path / "config.json"
    dumped.write_text(to_json(cfg))
    assert load_config(dumped) == cfg


def test_from_dict_checks_the_whole_config():
    # from_dict is load_config's building block for plain data: the cross-field checks run too
    with pytest.raises(UserError, match="'azr.batch_size' must be positive"):
        from_dict({"azr": {"batch_size": 0}})
    assert from_dict({"azr": {"batch_size": 4}}).azr.batch_size == 4
