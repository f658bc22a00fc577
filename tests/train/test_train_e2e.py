"""`azr-jax train` end to end on a tiny random policy (CPU, one device per process).

Runs share a JAX compilation cache so only the first one pays for compiling. What is checked:
a run produces and scores all six batches, applies updates, checkpoints and logs one metrics line
per step; a run killed with SIGKILL and restarted with the same command ends with exactly the
metric values of an uninterrupted run (so two runs with one seed agree too); two processes under
jax.distributed train exactly as one process on the same mesh; bad input is one line on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from azr_jax.metrics import read_metrics, without_timings

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import make_tokenizer, tiny_overrides  # noqa: E402
from process_group import communicate_all, free_port  # noqa: E402  (tests/, on the path via conftest)
from cpu_flags import xla_flags  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(Path(__file__).parent / "tiny_config.py")
ROLES = [f"{r}/{t}" for t in ("abduction", "deduction", "induction") for r in ("propose", "solve")]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    tok = make_tokenizer(base / "tok")
    e = dict(os.environ)
    # The session's compilation cache (tests/conftest.py) comes with os.environ.
    e.update({"XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu",
              "PYTHONPATH": str(ROOT)})
    return {"base": base, "tok": tok, "env": e}


def _argv(env, workdir, *extra_sets, config=CONFIG):
    argv = [sys.executable, "-m", "azr_jax.cli", "train", "--config", config, "--workdir", str(workdir),
            "--no-progress"]
    for item in tiny_overrides(env["tok"]) + list(extra_sets):
        argv += ["--set", item]
    return argv


def _run(env, workdir, *extra_sets, timeout=600, **kw):
    return subprocess.run(_argv(env, workdir, *extra_sets, **kw), env=env["env"], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def reference_run(env):
    """An uninterrupted 3-step run with the real sampler."""
    workdir = env["base"] / "reference"
    r = _run(env, workdir, "train.steps=3")
    assert r.returncode == 0, r.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_run_writes_metrics_checkpoints_and_audit_files(reference_run):
    records = read_metrics(reference_run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for rec in records:
        for role in ROLES:  # all six batches produced and scored
            assert rec[f"{role}/reward"] is not None and -1.0 <= rec[f"{role}/reward"] <= 1.0
            assert rec[f"{role}/response_len"] > 0
        assert rec["update/tokens"] > 0 and rec["update/grad_norm"] > 0  # an update was applied
        assert rec["buffer/deduction"] >= 1 and rec["generate_s"] > 0
        assert rec["sandbox_errors"] == 0
    assert sorted(int(p.name) for p in (reference_run / "checkpoints").iterdir() if p.name.isdigit()) == [1, 2, 3]
    rollouts = [json.loads(l) for l in (reference_run / "rollouts" / "step_1.jsonl").read_text().splitlines()]
    assert sorted({r["role"] + "/" + r["task"] for r in rollouts}) == sorted(ROLES)
    assert json.loads((reference_run / "config.json").read_text())["train"]["steps"] == 3
    summary = json.loads((reference_run / "summary.json").read_text())
    assert summary["status"] == "completed" and 0.0 <= summary["final_solve_rate"] <= 1.0
    assert "base_solve_rate" in summary and (reference_run / "eval" / "base.json").exists()
    assert sorted(p.name for p in (reference_run / "plots").glob("*.png")) == [
        "heldout_solve_rate.png", "learnability.png", "reward.png", "solve_rate.png", "valid_rate.png"]


@pytest.mark.slow
def test_eval_of_a_run_checkpoint_reproduces_its_final_evaluation(env, reference_run, tmp_path):
    """`azr-jax eval --run WORKDIR` restores the run's newest Orbax checkpoint and gets exactly
    the run's own final evaluation (greedy, same scorer)."""
    out = tmp_path / "eval.json"
    argv = [sys.executable, "-m", "azr_jax.cli", "eval", "--run", str(reference_run), "--out", str(out)]
    r = subprocess.run(argv, env=env["env"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    final = json.loads((reference_run / "eval" / "final.json").read_text())
    assert got["checkpoint"].endswith("(step 3)")
    assert [(i["id"], i["accuracy"], i["response"]) for i in got["items"]] == \
        [(i["id"], i["accuracy"], i["response"]) for i in final["items"]]
    bad = subprocess.run([sys.executable, "-m", "azr_jax.cli", "eval", "--run", str(reference_run), "--step", "9"],
                         env=env["env"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert bad.returncode != 0 and "no complete checkpoint for step 9" in bad.stderr


def _cli(env, *argv, timeout=600):
    return subprocess.run([sys.executable, "-m", "azr_jax.cli", *argv], env=env["env"], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_convert_writes_the_policy_that_eval_and_transformers_read(env, reference_run, tmp_path):
    """`azr-jax convert` turns the run's Orbax checkpoint into a Hugging Face directory: evaluated
    from that directory the policy gives exactly the run's final evaluation, and transformers
    loads the weights and the tokenizer with the same logits and token ids."""
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from azr_jax.models import from_pretrained

    hf = tmp_path / "hf"
    r = _cli(env, "convert", "--run", str(reference_run), "--out", str(hf))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.splitlines()[-1])["step"] == 3
    assert "SentencePiece" not in r.stderr  # a tokenizer.json loads in transformers as it is
    ev = _cli(env, "eval", "--config", str(reference_run / "config.json"), "--checkpoint", str(hf),
              "--out", str(tmp_path / "eval.json"))
    assert ev.returncode == 0, ev.stderr[-3000:]
    got = json.loads((tmp_path / "eval.json").read_text())
    final = json.loads((reference_run / "eval" / "final.json").read_text())
    assert [(i["id"], i["accuracy"], i["response"]) for i in got["items"]] == \
        [(i["id"], i["accuracy"], i["response"]) for i in final["items"]]

    ours = from_pretrained(hf)
    text = "def f(a):\n    return a + 1\n<answer> 42 </answer>"
    ids = ours.tokenizer.encode(text)
    # Not AutoTokenizer: transformers 5 picks Qwen2's tokenizer class from model_type, and this
    # run's tokenizer is not Qwen's (a real Qwen run exports Qwen's own).
    assert PreTrainedTokenizerFast.from_pretrained(hf).encode(text, add_special_tokens=False) == ids
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(hf).eval()(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours.logits(np.array([ids]))), theirs, atol=1e-4)  # 1 row x ~20 tokens

    # Another step is another policy.
    w3 = load_file(str(hf / "model.safetensors"))
    step1 = tmp_path / "step1"
    r = _cli(env, "convert", "--run", str(reference_run), "--step", "1", "--out", str(step1))
    assert r.returncode == 0, r.stderr[-3000:]
    w1 = load_file(str(step1 / "model.safetensors"))
    assert w1.keys() == w3.keys() and any(not np.array_equal(w1[k], w3[k]) for k in w3)
    # --dtype writes the same weights rounded to it.
    bf16 = tmp_path / "bf16"
    r = _cli(env, "convert", "--run", str(reference_run), "--out", str(bf16), "--dtype", "bfloat16")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((bf16 / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(bf16, dtype=torch.bfloat16).state_dict()
    for name, value in w3.items():
        assert loaded[name].dtype == torch.bfloat16
        assert torch.equal(loaded[name], torch.from_numpy(value).to(torch.bfloat16)), name
    # Without --dtype the export takes model.param_dtype (the restored train state is float32).
    pd = tmp_path / "param_dtype"
    r = _cli(env, "convert", "--run", str(reference_run), "--out", str(pd), "--set", "model.param_dtype=bfloat16")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.splitlines()[-1])["dtype"] == "bfloat16"
    assert json.loads((pd / "config.json").read_text())["torch_dtype"] == "bfloat16"


@pytest.mark.slow
def test_convert_refuses_bad_input_in_one_line(env, reference_run, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    for argv, message in [
        (["--run", str(reference_run), "--out", str(full)], "is not empty"),
        (["--run", str(tmp_path), "--out", str(tmp_path / "a")], "is not a training run directory"),
        (["--run", str(reference_run), "--step", "9", "--out", str(tmp_path / "b")], "no complete checkpoint for step 9"),
        (["--run", str(reference_run), "--out", str(tmp_path / "c"), "--max-shard-size", "lots"], "invalid shard size"),
    ]:
        r = _cli(env, "convert", *argv)
        assert r.returncode == 2 and message in r.stderr, (argv, r.stderr[-2000:])
        assert "Traceback" not in r.stderr
    if os.geteuid() == 0:  # a full disk under --out (a small tmpfs): one line, no partial files
        small = tmp_path / "small"
        small.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
        try:
            r = _cli(env, "convert", "--run", str(reference_run), "--out", str(small / "hf"))
            assert r.returncode == 2 and "No space left on device" in r.stderr, r.stderr[-2000:]
            assert "Traceback" not in r.stderr
            assert not any((small / "hf").glob("*.safetensors"))
        finally:
            subprocess.run(["umount", "-l", str(small)], check=False)


@pytest.mark.slow
def test_sigkill_and_restart_ends_with_the_uninterrupted_metrics(env, reference_run):
    workdir = env["base"] / "killed"
    proc = subprocess.Popen(_argv(env, workdir, "train.steps=3"), env=env["env"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    # Kill as soon as step 1 is checkpointed and logged, i.e. in the middle of step 2.
    while time.time() < deadline and proc.poll() is None:
        if (workdir / "checkpoints" / "1" / "commit_success.txt").exists() and read_metrics(workdir / "metrics.jsonl"):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = _run(env, workdir, "train.steps=3")  # the same command resumes
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from checkpoint" in r.stderr
    resumed = [without_timings(x) for x in read_metrics(workdir / "metrics.jsonl")]
    reference = [without_timings(x) for x in read_metrics(reference_run / "metrics.jsonl")]
    assert resumed == reference


@pytest.mark.slow
def test_resume_from_an_older_step_replaces_the_newer_checkpoints(env, reference_run):
    """--resume-step 1 in a finished 3-step run: the newer checkpoints are deleted (else saving
    step 2 collides with the old one), and the rerun ends with the uninterrupted metrics. A
    damaged eval/base.json (kept by the rewind) costs the summary its comparison, not the run
    (it ended in a traceback and exit 1 after the last step, without plots)."""
    workdir = env["base"] / "rewound"
    shutil.copytree(reference_run, workdir)
    (workdir / "eval" / "base.json").write_text('{"solve_rate": 0.')
    r = subprocess.run(_argv(env, workdir, "train.steps=3") + ["--resume-step", "1"], env=env["env"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "deleted the newer checkpoints [2, 3]" in r.stderr
    assert "eval/base.json is damaged" in r.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "completed" and "base_solve_rate" not in summary
    assert (workdir / "plots" / "heldout_solve_rate.png").is_file()
    rerun = [without_timings(x) for x in read_metrics(workdir / "metrics.jsonl")]
    reference = [without_timings(x) for x in read_metrics(reference_run / "metrics.jsonl")]
    assert rerun == reference
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [1, 2, 3]


@pytest.mark.slow
def test_a_run_resumes_on_another_mesh_and_may_bound_the_rows_per_generation(env, reference_run):
    """A checkpoint of a 1-device run resumed on two devices split over `tensor` (a preempted job
    placed on another slice), with sampling.max_rows=1 (a memory knob: every generation decodes one
    prompt's rows at a time): same rollouts and rewards as the uninterrupted run; the update's
    float32 sums, laid out differently, agree to rounding, and so do the sampler's logprobs (the
    sampler/trainer gap metrics stay at the 1e-7 level)."""
    workdir = env["base"] / "other_mesh"
    shutil.copytree(reference_run, workdir)
    r = subprocess.run(_argv(env, workdir, "train.steps=3", 'mesh.shape={"data": 1, "fsdp": 1, "tensor": 2}',
                             "sampling.max_rows=1") + ["--resume-step", "1"],
                       env=dict(env["env"], XLA_FLAGS=xla_flags(2)),
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    rerun = [without_timings(x) for x in read_metrics(workdir / "metrics.jsonl")]
    reference = [without_timings(x) for x in read_metrics(reference_run / "metrics.jsonl")]
    exact = lambda ms: [{k: v for k, v in m.items() if not k.startswith("update/")} for m in ms]
    assert exact(rerun) == exact(reference)
    for a, b in zip(rerun, reference):
        assert a.keys() == b.keys()
        for k in a:
            if k.startswith("update/logprob_gap"):
                assert abs(a[k]) < 1e-5, (k, a[k])
            elif k.startswith("update/") and isinstance(b[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), k
            elif k.startswith("update/"):
                assert a[k] == b[k], k


@pytest.mark.slow
def test_a_resume_step_killed_while_deleting_is_finished_by_the_next_plain_resume(env, reference_run):
    """What a SIGKILL during `--resume-step 1`'s deletions leaves: the rollback record, step 2
    deleted, step 3 (the abandoned continuation's newest) still there. A plain resume must go
    back to step 1, not continue from 3."""
    workdir = env["base"] / "rewind_killed"
    shutil.copytree(reference_run, workdir)
    shutil.rmtree(workdir / "checkpoints" / "2")
    (workdir / "checkpoints" / "rollback.json").write_text('{"step": 1, "abandoned": [2, 3]}\n')
    r = _run(env, workdir, "train.steps=3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "an earlier --resume-step 1 was interrupted" in r.stderr
    assert "deleted the newer checkpoints [3]" in r.stderr
    rerun = [without_timings(x) for x in read_metrics(workdir / "metrics.jsonl")]
    assert rerun == [without_timings(x) for x in read_metrics(reference_run / "metrics.jsonl")]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2", "3"]


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(env):
    workdir = env["base"] / "terminated"
    proc = subprocess.Popen(_argv(env, workdir, "train.steps=50", "train.save_every=100", "train.eval_every=-1"), env=env["env"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and not read_metrics(workdir / "metrics.jsonl"):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    steps = [r["step"] for r in read_metrics(workdir / "metrics.jsonl")]
    assert steps and steps[-1] < 50
    assert (workdir / "checkpoints" / str(steps[-1]) / "commit_success.txt").exists()


@pytest.mark.slow
def test_two_processes_under_jax_distributed_train_as_one_process_on_the_same_mesh(env):
    """On the default (length-packed) update. The padded update's sharded step is checked
    against one device in tests/rl/test_update.py; a second pair of multi-process runs for it
    cost 35 s of a CI budget that is close to its limit."""
    port = free_port()
    procs = []

    def argv(workdir):
        return _argv(env, workdir, "train.steps=2", "train.save_every=100", "sandbox.workers=1", "train.eval_every=-1",
                     "azr.batch_size=2", "rl.micro_batch_size=2", "rl.pack_by_length=true",
                     'mesh.shape={"data": 1, "fsdp": -1, "tensor": 1}', "name=multihost", "train.audit_every=0")

    def digest(err):
        return [l for l in err.splitlines() if "params digest" in l][-1].split("params digest")[-1]

    for pid in range(2):
        e = dict(env["env"], JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen(argv(env["base"] / "multihost"), env=e, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = communicate_all(procs, timeout=900)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    # Process 0 writes the metrics; every process saved its shards of the final checkpoint and
    # the printed parameter digests agree.
    assert digest(outs[0][1]) == digest(outs[1][1])
    two = [without_timings(r) for r in read_metrics(env["base"] / "multihost" / "metrics.jsonl")]
    assert [r["step"] for r in two] == [1, 2]
    # And they train exactly as one process does on the same 2-device mesh: same rollouts,
    # rewards and updates (every metric but the timings), same final params.
    one = subprocess.run(argv(env["base"] / "onehost"), cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(env["env"], XLA_FLAGS=xla_flags(2)))
    assert one.returncode == 0, one.stderr[-3000:]
    assert [without_timings(r) for r in read_metrics(env["base"] / "onehost" / "metrics.jsonl")] == two
    assert digest(one.stderr) == digest(outs[0][1])

    # Exported by both processes (each reads its shards of the params; process 0 writes), the
    # policy is the one a single process exports from the same checkpoint.
    from safetensors.numpy import load_file

    workdir, port = env["base"] / "multihost", free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "azr_jax.cli", "convert", "--run", str(workdir), "--out",
                               str(workdir / "hf2")],
                              env=dict(env["env"], JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(pid)),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in range(2)]
    for p, (_, err) in zip(procs, communicate_all(procs, timeout=600)):
        assert p.returncode == 0, err[-3000:]
    one = _cli(env, "convert", "--run", str(workdir), "--out", str(workdir / "hf1"))
    assert one.returncode == 0, one.stderr[-3000:]
    two, single = load_file(str(workdir / "hf2" / "model.safetensors")), load_file(str(workdir / "hf1" / "model.safetensors"))
    assert two.keys() == single.keys() and all(np.array_equal(two[k], single[k]) for k in two)


@pytest.mark.slow
def test_a_stop_signal_to_one_process_stops_every_process_at_the_same_step(env):
    """Preemption reaches the hosts at different times: SIGTERM to process 0 alone must stop both
    after the same step, with one checkpoint (one process stopping alone left the other waiting
    at the next step's barrier and itself in the collective save: a deadlock)."""
    port = free_port()
    workdir = env["base"] / "multihost_stop"
    procs = []
    for pid in range(2):
        e = dict(env["env"], JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(pid))
        argv = _argv(env, workdir, "train.steps=50", "train.save_every=100", "sandbox.workers=1",
                     "train.eval_every=-1", "train.audit_every=0", "azr.batch_size=2", "rl.micro_batch_size=2",
                     'mesh.shape={"data": 1, "fsdp": -1, "tensor": 1}', "name=multihost_stop")
        procs.append(subprocess.Popen(argv, env=e, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    metrics_path = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (metrics_path.exists() and metrics_path.read_text().strip()):
        time.sleep(0.2)
    procs[0].send_signal(signal.SIGTERM)
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "another process received a stop signal" in outs[1][1]
    steps = [r["step"] for r in read_metrics(metrics_path)]
    assert steps and steps[-1] < 50
    assert sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit()) == [steps[-1]]


@pytest.mark.slow
@pytest.mark.parametrize("missing", ["prompts", "tokenizer"])
def test_an_input_missing_on_one_process_stops_every_process_with_one_error(env, missing):
    """A file each host reads from its own disk is missing on process 1 only: both stop at once
    naming it, where process 0 used to load the weights and then crash in a later collective
    (Orbax's checkpoint manager) with a traceback that did not name the cause."""
    port = free_port()
    workdir = env["base"] / f"multihost_missing_{missing}"
    lost = {"prompts": f"azr.prompt_dir={env['base'] / 'no_prompts_here'}",
            "tokenizer": f"model.tokenizer={env['base'] / 'no_tokenizer_here.json'}"}[missing]
    procs = []
    for pid in range(2):
        e = dict(env["env"], JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(pid))
        argv = _argv(env, workdir, 'mesh.shape={"data": 1, "fsdp": -1, "tensor": 1}', *([lost] if pid == 1 else []))
        procs.append(subprocess.Popen(argv, env=e, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    expected = {"prompts": "checking the inputs failed on process 1: azr.prompt_dir is not a directory",
                "tokenizer": "checking the inputs failed on process 1: tokenizer path "}[missing]
    for p, (_, err) in zip(procs, communicate_all(procs, timeout=120)):
        last = [line for line in err.splitlines() if line.strip()][-1]
        assert p.returncode != 0 and last.startswith("azr-jax: error: " + expected), err[-3000:]
    assert not (workdir / "config.json").exists()  # stopped before anything was written


def _one_error_line(r):
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("azr-jax: error:"), r.stderr[-2000:]
    return lines[0]


def test_bad_config_key_and_type_are_one_line(env):
    assert "did you mean 'azr.batch_size'" in _one_error_line(_run(env, env["base"] / "bad1", "azr.batch_sise=2"))
    assert "expects an int" in _one_error_line(_run(env, env["base"] / "bad2", "azr.batch_size=two"))
    # A combination that is refused (rl.kl_coef > 0 used to be; it is supported now, see the KL test below).
    assert "needs azr.learnability_temperature == sampling.temperature" in _one_error_line(_run(
        env, env["base"] / "bad4", "azr.train_learnability_rollouts=true", "azr.learnability_temperature=0.5"))
    assert "unknown mesh topology" in _one_error_line(subprocess.run(
        _argv(env, env["base"] / "bad3") + ["--mesh", "v9-8"], env=env["env"], capture_output=True, text=True, cwd=ROOT))


def test_workdir_of_a_different_config_is_refused(env):
    workdir = env["base"] / "other"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"name": "someone-else", "azr": {"batch_size": 64}}))
    (workdir / "checkpoints" / "3").mkdir(parents=True)  # without a checkpoint it would start afresh
    assert "holds a run of a different config" in _one_error_line(_run(env, workdir))


@pytest.mark.slow
def test_missing_and_corrupt_checkpoints_are_one_line(env, reference_run):
    import shutil

    workdir = env["base"] / "corrupt"
    shutil.copytree(reference_run, workdir)
    # A train.steps below the checkpoint ran nothing and rewrote summary.json without the run's
    # evaluation (and config.json with the smaller train.steps): refused, nothing touched.
    before = {name: (workdir / name).read_bytes() for name in ("summary.json", "config.json")}
    assert "holds a checkpoint of step 3, past train.steps=2" in _one_error_line(_run(env, workdir, "train.steps=2"))
    assert {name: (workdir / name).read_bytes() for name in before} == before
    assert "no complete checkpoint for step 9" in _one_error_line(subprocess.run(
        _argv(env, workdir, "train.steps=3") + ["--resume-step", "9"], env=env["env"], capture_output=True,
        text=True, cwd=ROOT))
    # in a new workdir: refused before config.json, inputs.json and checkpoints/ are written there
    fresh = env["base"] / "never_ran"
    assert "no complete checkpoint for step 3" in _one_error_line(subprocess.run(
        _argv(env, fresh, "train.steps=3") + ["--resume-step", "3"], env=env["env"], capture_output=True,
        text=True, cwd=ROOT))
    assert not fresh.exists() or not any(fresh.iterdir())
    for f in (workdir / "checkpoints" / "3" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0garbage")
    assert "is corrupt" in _one_error_line(_run(env, workdir, "train.steps=4"))


@pytest.mark.slow
def test_a_stop_in_the_last_step_leaves_the_final_evaluation_to_the_next_start(env):
    """SIGTERM during the last step: checkpoint and exit 0 without the final evaluation (under a
    preemption grace period it would be cut off); the same command then evaluates and writes the
    summary. Given more steps, the finished run keeps that evaluation as the step's own."""
    workdir = env["base"] / "stop_last"

    def scripted(*sets, extra_env=None):
        argv = [sys.executable, str(Path(__file__).parent / "scripted_run.py"), str(workdir), str(env["tok"]),
                "train.eval_every=0", "eval.max_items=3", "eval.max_response_len=8", *sets]
        return subprocess.run(argv, env={**env["env"], **(extra_env or {})}, capture_output=True, text=True,
                              timeout=600, cwd=ROOT)

    r = scripted(extra_env={"SCRIPTED_SIGTERM_AT_STEP": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped at step 2; checkpoint saved" in r.stderr
    assert sorted(p.name for p in (workdir / "eval").iterdir()) == ["base.json"]
    assert not (workdir / "summary.json").exists() and (workdir / "checkpoints" / "2").is_dir()
    r = scripted()
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((workdir / "summary.json").read_text())["step"] == 2
    final = json.loads((workdir / "eval" / "final.json").read_text())
    assert final["step"] == 2 and [x["step"] for x in read_metrics(workdir / "metrics.jsonl")] == [1, 2]
    r = scripted("train.steps=3", "train.eval_every=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((workdir / "eval" / "step_2.json").read_text()) == final
    assert json.loads((workdir / "eval" / "final.json").read_text())["step"] == 3
    assert json.loads((workdir / "summary.json").read_text())["step"] == 3
    # Step 2 is an evaluation step of the longer run: its metrics get that evaluation, as an
    # uninterrupted run's would (they were missing).
    records = read_metrics(workdir / "metrics.jsonl")
    assert [x["step"] for x in records] == [1, 2, 3]
    assert records[1]["eval/solve_rate"] == final["solve_rate"] and "eval/solve_rate" not in records[0]
    assert {k for k in records[1] if k.startswith("eval/solve_rate/")} == {f"eval/solve_rate/{t}" for t in final["per_task"]}


@pytest.mark.slow
def test_valid_proposals_grow_the_buffers(env):
    """With a scripted generator that writes valid proposals, every proposal is validated in the
    sandbox, gets a learnability reward and lands in its buffer."""
    workdir = env["base"] / "scripted"
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "scripted_run.py"), str(workdir),
                        str(env["tok"])], env=env["env"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    records = read_metrics(workdir / "metrics.jsonl")
    assert [x["step"] for x in records] == [1, 2]
    for task in ("deduction", "abduction"):
        assert records[0][f"propose/{task}/valid_rate"] == 1.0
        assert records[0][f"propose/{task}/reward"] == -0.5  # solved by all or none: boundary reward
        assert [x[f"buffer/{task}"] for x in records] == [3, 5]  # identity seed + 2 per step
    buffers = json.loads((workdir / "buffers" / "step_2.json").read_text())
    assert any("return a +" in e["program"] for e in buffers["deduction"]["entries"])
    # The audit file re-scores to what the run trained on, without --config: `score` reads the
    # run's config.json (this run's azr.num_inputs=2 differs from the default 10).
    audit = workdir / "rollouts" / "step_1.jsonl"
    # Each deduction/abduction proposal records the references its prompt showed (from its buffer).
    audited = [json.loads(line) for line in audit.read_text().splitlines()]
    shown = [a["references"] for a in audited if a["role"] == "propose" and a["task"] in ("deduction", "abduction")]
    assert shown and all(refs and all({"program", "input", "output"} <= set(r) for r in refs) for refs in shown)
    assert all("references" not in a for a in audited if a["role"] == "solve" or a["task"] == "induction")
    r = subprocess.run([sys.executable, "-m", "azr_jax.cli", "score", "--in", str(audit), "--out",
                        str(workdir / "rescored.jsonl")], env=env["env"], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    assert r.returncode == 0 and "the run's config" in r.stderr, r.stderr[-2000:]
    assert "does not read" not in r.stderr, r.stderr[-2000:]  # an audit file's own fields are known
    trained = [json.loads(line)["scored"] for line in audit.read_text().splitlines()]
    rescored = [json.loads(line) for line in (workdir / "rescored.jsonl").read_text().splitlines()]
    assert [(t["valid"], t["reward"]) for t in trained] == [(x["valid"], x["reward"]) for x in rescored]
    assert sum(t["valid"] for t in trained) >= 6
    # azr.train_learnability_rollouts: the same step 1 also trains on the solver rollouts of the
    # 6 valid proposals (2 each), so the update sees more tokens; rewards and buffers are unchanged
    more = env["base"] / "scripted_learn"
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "scripted_run.py"), str(more),
                        str(env["tok"]), "train.steps=1", "azr.train_learnability_rollouts=true"], env=env["env"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    with_learn = read_metrics(more / "metrics.jsonl")[0]
    assert with_learn["update/tokens"] > records[0]["update/tokens"]
    for key in ("propose/deduction/reward", "solve/deduction/reward", "buffer/induction"):
        assert with_learn[key] == records[0][key]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    # 3 learnability rollouts per valid proposal: parts of 3k rows, blocks of 4 (empty rows fill them)
    ("azr.train_learnability_rollouts=true", "azr.n_solver_samples=3", "rl.loss_agg=token-mean-per-micro-batch"),
    # the padded update, with both: 3 prompts per batch (18 rows) and 3 rollouts per valid proposal
    ("azr.train_learnability_rollouts=true", "azr.n_solver_samples=3", "azr.batch_size=3", "rl.pack_by_length=false"),
], ids=["per-micro-batch-mean", "padded"])
def test_row_counts_that_are_not_a_multiple_of_the_micro_batch_train(env, extra):
    """These once passed config validation and then failed in the first update (each of the
    padded update's two cases did on its own; one run covers both)."""
    workdir = env["base"] / ("rows_" + "_".join(x.split("=")[0].split(".")[-1] for x in extra))
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "scripted_run.py"), str(workdir),
                        str(env["tok"]), "train.steps=1", "rl.micro_batch_size=4", *extra], env=env["env"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    (record,) = read_metrics(workdir / "metrics.jsonl")
    assert record["update/skipped"] == 0.0 and record["update/tokens"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["trr++", "grpo"])
def test_several_solver_samples_per_task_are_scored_audited_and_trained(env, estimator):
    """`azr.solver_samples=3`: each solver task's prompt is sampled 3 times; every completion is
    scored, audited (ids PROMPT/SAMPLE) and trained on, per prompt group under grpo."""
    workdir = env["base"] / f"solver_samples_{estimator}"
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "scripted_run.py"), str(workdir),
                        str(env["tok"]), "train.steps=1", "azr.batch_size=2", "azr.solver_samples=3",
                        f"rl.estimator={estimator}", "rl.micro_batch_size=4"], env=env["env"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    (record,) = read_metrics(workdir / "metrics.jsonl")
    assert record["update/skipped"] == 0.0 and record["update/tokens"] > 0
    audit = [json.loads(line) for line in (workdir / "rollouts" / "step_1.jsonl").read_text().splitlines()]
    for task in ("abduction", "deduction", "induction"):
        solve = [a for a in audit if a["role"] == "solve" and a["task"] == task]
        assert [a["id"] for a in solve] == [f"1/solve/{task}/{i}/{j}" for i in range(2) for j in range(3)]
        assert all("reward" in a["scored"] for a in solve)
        assert len([a for a in audit if a["role"] == "propose" and a["task"] == task]) == 2


@pytest.mark.slow
def test_valid_tasks_whose_solver_prompt_is_too_long_get_no_rollouts_and_stay_out_of_the_buffers(env):
    """As the reference: a valid proposal whose solver prompt is over sampling.max_prompt_len gets
    solve rate 0 (the boundary reward) and is not added to its buffer."""
    workdir = env["base"] / "scripted_long"
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "scripted_run.py"), str(workdir),
                        str(env["tok"])], env=dict(env["env"], SCRIPTED_LONG_PROGRAMS="1"),
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    records = read_metrics(workdir / "metrics.jsonl")
    for task in ("deduction", "abduction"):
        assert [x[f"propose/{task}/valid_rate"] for x in records] == [1.0, 1.0]
        assert [x[f"propose/{task}/reward"] for x in records] == [-0.5, -0.5]
        assert [x[f"buffer/{task}"] for x in records] == [1, 1]  # only the identity seed
    audit = [json.loads(line) for line in (workdir / "rollouts" / "step_1.jsonl").read_text().splitlines()]
    long_proposals = [a for a in audit if a["role"] == "propose" and a["task"] == "deduction"]
    assert long_proposals and all(a["scored"]["valid"] and a["scored"]["accuracy"] == 0.0
                                  and a["scored"]["solver_prompt_too_long"] for a in long_proposals)
    assert all("solver_responses" not in a for a in long_proposals)


@pytest.mark.slow
def test_seeding_phase_fills_the_seed_buffers_before_step_1(env):
    """`azr.seed_size=5` without seed files: propose-only rounds (cleaned programs, no update)
    until 5 triplets and 5 induction tasks, written as reusable seed files; then self-play."""
    from azr_jax.azr.buffers import IDENTITY_PROGRAM, load_seed_file

    workdir = env["base"] / "seeding"
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "scripted_run.py"), str(workdir),
                        str(env["tok"]), "azr.seed_size=5", "train.steps=1"], env=env["env"], capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((workdir / "seed" / "seeding.json").read_text())
    # one round: 2 abduction + 2 deduction proposals, all valid, + the identity triplet = 5
    assert {k: report["triplets"][k] for k in ("rounds", "proposals", "valid", "added", "size")} == \
        {"rounds": 1, "proposals": 4, "valid": 4, "added": 4, "size": 5}
    assert report["induction"]["size"] == 5 and report["induction"]["rounds"] == 2  # 2 per round + identity
    triplets = load_seed_file(workdir / "seed" / "seed_triplets.jsonl", "deduction")
    assert len(triplets) == 5 and triplets[0]["program"] == IDENTITY_PROGRAM
    for t in triplets[1:]:
        assert "return a +" in t["program"] and "print" not in t["program"] and "#" not in t["program"]
    induction = load_seed_file(workdir / "seed" / "seed_induction.jsonl", "induction")
    assert len(induction) == 5
    # Each phase samples with its own key: the scripted generator derives the programs' constants
    # and the induction inputs from its key, so a shared key would make them coincide.
    constants = {int(t["program"].rsplit("+", 1)[1]) for t in triplets[1:]}
    assert not constants & {int(p["inputs"][0]) for p in induction[1:]}
    rec = read_metrics(workdir / "metrics.jsonl")[0]
    assert (rec["buffer/deduction"], rec["buffer/abduction"], rec["buffer/induction"]) == (7, 7, 7)  # + 2 in step 1
    buffers = json.loads((workdir / "buffers" / "step_1.json").read_text())
    selfplay = [e for e in buffers["deduction"]["entries"] if e["step"] == 1]
    assert len(selfplay) == 2 and all("print(a)" in e["program"] for e in selfplay)  # self-play does not clean

    # A run without induction does not seed it (its phase ran anyway, and wrote a file).
    workdir = env["base"] / "seeding_no_induction"
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "scripted_run.py"), str(workdir),
                        str(env["tok"]), "azr.seed_size=5", "train.steps=1",
                        'azr.task_types=["abduction", "deduction"]'], env=env["env"], capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(json.loads((workdir / "seed" / "seeding.json").read_text())) == ["triplets"]
    assert not (workdir / "seed" / "seed_induction.jsonl").exists()


@pytest.mark.slow
def test_seed_only_ablation_trains_the_solver_on_the_seed_buffers(env):
    """`azr.propose=false`: no proposer batches at all, buffers never grow, solver batches train."""
    workdir = env["base"] / "seed_only"
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "scripted_run.py"), str(workdir),
                        str(env["tok"]), "azr.propose=false"], env=env["env"], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    records = read_metrics(workdir / "metrics.jsonl")
    assert [x["step"] for x in records] == [1, 2]
    for rec in records:
        assert not [k for k in rec if k.startswith("propose/")]
        assert [rec[f"buffer/{t}"] for t in ("abduction", "deduction", "induction")] == [1, 1, 1]
        assert rec["solve/deduction/format_rate"] == 1.0 and rec["update/tokens"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("packed", [True, False], ids=["pack_by_length", "padded"])
def test_kl_to_the_starting_policy_is_zero_at_step_1_and_grows(env, packed):
    """`rl.kl_coef > 0`: the trainer keeps the starting params as the frozen reference; the update
    reports the policy's KL to it (`update/ref_kl`), zero before the first update. The two update
    layouts compute the reference's logprobs in different places (inside the bucketed step; a
    micro-batched pass before the padded one)."""
    workdir = env["base"] / f"kl_{packed}"
    r = _run(env, workdir, "train.steps=2", "rl.kl_coef=0.1", "train.eval_every=-1",
             f"rl.pack_by_length={str(packed).lower()}", "rl.micro_batch_size=2")
    assert r.returncode == 0, r.stderr[-3000:]
    kl = [x["update/ref_kl"] for x in read_metrics(workdir / "metrics.jsonl")]
    assert len(kl) == 2
    assert abs(kl[0]) < 1e-6
    assert kl[1] > 1e-6  # after one update (about 3e-5 here)
