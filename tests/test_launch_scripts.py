"""The TPU launch scripts against a stub `gcloud` that records its calls (nothing reaches a cloud)."""

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
STUB = """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
case "$*" in
  *describe*) echo ACTIVE ;;
  *scp*) cp "$5" "$STUB_DIR/sent.tgz" ;;
esac
"""


@pytest.fixture
def gcloud(tmp_path):
    (tmp_path / "gcloud").write_text(STUB)
    (tmp_path / "gcloud").chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", STUB_LOG=str(tmp_path / "log"),
               STUB_DIR=str(tmp_path))

    def run(script, *args, **extra):
        proc = subprocess.run(["bash", str(ROOT / "launch" / "tpu" / script), *args], cwd=ROOT,
                              env=dict(env, **extra), capture_output=True, text=True, timeout=120)
        log = (tmp_path / "log").read_text().splitlines() if (tmp_path / "log").exists() else []
        return proc, log

    run.sent = tmp_path / "sent.tgz"
    return run


@pytest.mark.parametrize("args, message", [(("azr-x", "us-east5-a", "v5p-8"), "usage:"),
                                           (("azr-x", "us-east5-a", "v5p-8", "configs/no-such-preset.py"),
                                            "no config configs/no-such-preset.py")])
def test_a_missing_or_wrong_config_is_refused_before_a_slice_is_created(gcloud, args, message):
    proc, calls = gcloud("queued_resource.sh", *args)
    assert proc.returncode == 2, proc.stderr
    assert calls == []  # no queued resource was created
    assert message in proc.stderr


def test_create_flags_and_create_only(gcloud):
    proc, calls = gcloud("queued_resource.sh", "azr-x", "us-east5-a", "v5p-8", "configs/qwen2.5-7b.py",
                         "--set", "model.hf_dir=/mnt/a b", AZR_TPU_CREATE_ONLY="1",
                         AZR_TPU_CREATE_FLAGS="--data-disk source=d,mode=read-only --spot --labels=k=*")
    assert proc.returncode == 0, proc.stderr
    # Split on spaces; the * stays a *, not the names of the files in the working directory.
    assert calls[0].endswith("--runtime-version v2-alpha-tpuv5 --data-disk source=d,mode=read-only --spot --labels=k=*")
    assert not any("scp" in c or "ssh" in c for c in calls)
    assert r"run_all_workers.sh azr-x us-east5-a configs/qwen2.5-7b.py --set model.hf_dir=/mnt/a\ b" in proc.stderr


def test_a_v5e_slice_is_created_under_gclouds_name_for_it(gcloud):
    proc, calls = gcloud("queued_resource.sh", "azr-x", "us-east5-a", "v5e-8", "configs/qwen2.5-7b.py",
                         AZR_TPU_CREATE_ONLY="1")
    assert proc.returncode == 0, proc.stderr
    assert "--accelerator-type v5litepod-8 --runtime-version v2-alpha-tpuv5-lite" in calls[0]


def test_workers_get_the_source_without_caches_and_the_train_command(gcloud):
    proc, calls = gcloud("run_all_workers.sh", "azr-x", "us-east5-a", "configs/nano.py", "--set", "train.steps=2")
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(gcloud.sent) as tar:
        names = tar.getnames()
    assert "pyproject.toml" in names and "azr_jax/cli.py" in names
    assert not [n for n in names if n.split("/")[0] in (".venv", "runs", ".git", ".pytest_cache")
                or "__pycache__" in n or ".egg-info" in n]
    ssh = "\n".join(calls[calls.index(next(c for c in calls if " ssh " in c)):])  # a multi-line command
    assert "azr-jax train --config configs/nano.py --set train.steps=2" in ssh
    assert "bubblewrap" in ssh
    assert "echo $! > train.pid" in ssh and "is still running" in ssh  # no second trainer beside the first
    assert gcloud("run_all_workers.sh", "azr-x", "us-east5-a")[0].returncode == 2


def test_local_sh_refuses_an_unknown_command_before_installing(tmp_path):
    venv = tmp_path / "venv"
    proc = subprocess.run(["bash", str(ROOT / "launch" / "local.sh"), "tset"], env=dict(os.environ, AZR_VENV=str(venv)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage: bash launch/local.sh main|test|selfcheck" in proc.stderr
    assert not venv.exists()


def test_local_sh_refuses_an_old_python_before_installing(tmp_path):
    old = tmp_path / "python3.10"
    old.write_text("#!/usr/bin/env bash\n"
                   "case \"$*\" in *version_info*) exit 1 ;; --version) echo 'Python 3.10.12' ;; esac\n")
    old.chmod(0o755)
    venv = tmp_path / "venv"
    proc = subprocess.run(["bash", str(ROOT / "launch" / "local.sh"), "test"],
                          env=dict(os.environ, AZR_VENV=str(venv), PYTHON=str(old)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "needs Python >= 3.11" in proc.stderr and "Python 3.10.12" in proc.stderr
    assert not venv.exists()


def test_a_config_git_ignores_is_sent_too(gcloud):
    """A config kept under an ignored directory (runs/) passes the existence check, so it must
    reach the workers as well, or they would install for minutes and then not find it."""
    name = f"runs/launch-test-{os.getpid()}.py"
    (ROOT / "runs").mkdir(exist_ok=True)
    (ROOT / name).write_text((ROOT / "configs" / "nano.py").read_text())
    try:
        proc, _ = gcloud("run_all_workers.sh", "azr-x", "us-east5-a", name)
        assert proc.returncode == 0, proc.stderr
        with tarfile.open(gcloud.sent) as tar:
            names = tar.getnames()
        assert name in names and not [n for n in names if n.startswith("runs/") and n != name]
    finally:
        (ROOT / name).unlink()
