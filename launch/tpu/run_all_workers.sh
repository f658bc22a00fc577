#!/usr/bin/env bash
# Copy this checkout to every worker of a TPU VM and run `azr-jax train` on all of them at once.
#   launch/tpu/run_all_workers.sh NAME ZONE CONFIG [azr-jax train args...]
# On a slice with several hosts, run it with AZR_TPU_MULTIHOST=1 set here: every worker then joins
# jax.distributed (JAX discovers the coordinator on TPU VMs); each host runs its own sandbox pool.
# Give a --workdir on a filesystem all workers share (e.g. a GCS FUSE mount): checkpoints are
# written by every host. azr-jax needs Python >= 3.11 on the workers; where the image's python3 is
# older, install one there and name it with AZR_PYTHON (e.g. AZR_PYTHON=python3.11).
# The sandbox wants bubblewrap (docs/sandbox.md): each worker installs it with `sudo apt-get`
# when it is missing, and says so when it cannot (the sandbox then falls back to unshare).
set -euo pipefail
usage="usage: $0 NAME ZONE CONFIG [azr-jax train args...]"
[ $# -ge 3 ] || { echo "$usage" >&2; exit 2; }
name="$1"; zone="$2"; config="${3#./}"; shift 3
here="$(cd "$(dirname "$0")/../.." && pwd)"
case "$config" in
  /*) ;;  # a path on the workers; it cannot be checked from here
  *) [ -f "$here/$config" ] || { echo "[azr-jax] no config $config in $here (CONFIG is relative to the checkout)" >&2; exit 2; } ;;
esac
archive="$(mktemp -d)/azr-jax.tgz"
pack() {
  if git -C "$here" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked files and untracked ones git does not ignore: no virtualenv, runs, caches (the
    # pytest cache alone holds a 0.5 GB model) or build leftovers. A tracked file deleted in the
    # work tree is skipped, not an error (GNU tar and bsdtar both read a NUL-separated list).
    # CONFIG itself goes too when git ignores it (a config kept under runs/, say).
    # (`|| exit`: set -e is off in a function called before `||`; this exits the list's subshell)
    { git -C "$here" ls-files -z --cached --others --exclude-standard || exit
      case "$config" in /*) ;; *) if git -C "$here" check-ignore -q -- "$config"; then printf '%s\0' "$config"; fi ;; esac
    } | while IFS= read -r -d '' f; do if [ -e "$here/$f" ]; then printf '%s\0' "$f"; fi; done \
      | tar -C "$here" --null -T - -czf "$archive"
  else
    tar -C "$here" --exclude=.venv --exclude=runs --exclude=.git --exclude=.pytest_cache \
      --exclude=__pycache__ --exclude='*.egg-info' -czf "$archive" .
  fi
}
# The pipeline's status (pipefail) decides: no partial tree is sent, and the failure is named.
pack || { echo "[azr-jax] packing $here for the workers failed (see above); nothing was sent" >&2
          rm -rf "$(dirname "$archive")"; exit 1; }
case "$config" in
  /*) ;;
  *) members="$(tar -tzf "$archive")"  # read whole: grep -q would stop tar mid-list (pipefail)
     grep -qxF -e "$config" -e "./$config" <<< "$members" || {
       echo "[azr-jax] $config is not in what the workers receive (an excluded directory): put it under configs/" >&2
       rm -rf "$(dirname "$archive")"; exit 2; } ;;
esac
gcloud compute tpus tpu-vm scp "$archive" "$name":~/azr-jax.tgz --zone "$zone" --worker=all
rm -rf "$(dirname "$archive")"
args=""  # printf with no arguments would still print one empty, quoted argument
[ $# -eq 0 ] || args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "
  set -e
  # A second launch must not start a second trainer beside the first (both would write the
  # workdir) or overwrite its log.
  if [ -f ~/azr-jax/train.pid ] && kill -0 \$(cat ~/azr-jax/train.pid) 2>/dev/null; then
    echo \"azr-jax train (pid \$(cat ~/azr-jax/train.pid)) is still running on \$(hostname); stop it first\" >&2
    exit 3; fi
  # One command a line: under set -e a failure inside an a && b list would not stop the script.
  mkdir -p ~/azr-jax
  tar -xzf ~/azr-jax.tgz -C ~/azr-jax
  cd ~/azr-jax
  if [ -f train.log ]; then mv train.log train.log.\$(date +%Y%m%d-%H%M%S); fi
  py=${AZR_PYTHON:-python3}
  \$py -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo \"azr-jax needs Python >= 3.11; \$(hostname) has \$(\$py --version 2>&1): set AZR_PYTHON\" >&2; exit 2; }
  \$py -m venv .venv
  .venv/bin/pip install -q -e '.[tpu]'
  command -v bwrap >/dev/null || { sudo -n apt-get update -qq && sudo -n apt-get install -y -qq bubblewrap; } >/dev/null 2>&1 \
    || echo \"warning: \$(hostname) has no bubblewrap; the sandbox falls back to unshare (docs/sandbox.md)\" >&2
  AZR_TPU_MULTIHOST=${AZR_TPU_MULTIHOST:-0} nohup .venv/bin/azr-jax train --config $(printf '%q' "$config")$args > train.log 2>&1 &
  echo \$! > train.pid
  echo started on \$(hostname), pid \$!"
