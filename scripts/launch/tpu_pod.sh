#!/usr/bin/env bash
# mmvit on a Cloud TPU VM pod slice: the same code, environment and command on every worker.
#
#   scripts/launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=P] [--bucket=B] [--dry-run] -- \
#       --config=configs/demo.py --workdir=/mnt/B/runs/demo --config.data_dir=/mnt/B/data
#
# --workdir and data_dir must be one filesystem that every worker sees (every process writes its
# part of each checkpoint). --bucket=B mounts gs://B with gcsfuse at /mnt/B on every worker
# (installed from Google's apt repository where missing), as MaxText does for grain's input;
# a Filestore share works too. mmvit opens them as local paths: gs:// URLs are not read directly.
#
# Steps, each on all workers at once (gcloud compute tpus tpu-vm ssh --worker=all):
#   0. with --bucket: mount gs://B at /mnt/B (--implicit-dirs: folders written by other tools);
#   1. copy: the committed tree of this checkout (git archive HEAD), unpacked in ~/mmvit;
#   2. install: uv from the package index, then `uv sync --locked` and jax's TPU build;
#   3. run: `python -m mmvit.main ARGS` on every worker. JAX finds the coordinator, the process
#      count and each worker's index on a TPU VM itself; the run logs to ~/mmvit/run.log on
#      each worker (process 0 prints the progress).
# A multislice run is the same command on every worker of every slice (the TPU runtime sets
# MEGASCALE_*), with the data axis across slices: --config.mesh_dcn.data=<slices>.
set -euo pipefail

tpu= zone= project= bucket= dry_run=0 jax_tpu="jax[tpu]==0.10.2"
while (( $# )); do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --bucket=*) bucket="${1#*=}"; bucket="${bucket#gs://}"; bucket="${bucket%/}" ;;
    --dry-run|--dry_run) dry_run=1 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (mmvit's own arguments go after --)" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$tpu" || -z "$zone" ]]; then
  echo "tpu_pod.sh: --tpu=NAME and --zone=ZONE are required" >&2; exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ssh=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all)
[[ -n "$project" ]] && ssh+=(--project="$project")
scp=(gcloud compute tpus tpu-vm scp --zone="$zone" --worker=all)
[[ -n "$project" ]] && scp+=(--project="$project")
run_args=$(printf ' %q' "$@")

steps=()
if [[ -n "$bucket" ]]; then
  mount_cmd="command -v gcsfuse >/dev/null || { echo 'deb https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main' | sudo tee /etc/apt/sources.list.d/gcsfuse.list && curl -fsS https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - && sudo apt-get update -q && sudo apt-get install -yq gcsfuse; } && sudo mkdir -p /mnt/$bucket && sudo chown \$USER /mnt/$bucket && { mountpoint -q /mnt/$bucket || gcsfuse --implicit-dirs $bucket /mnt/$bucket; }"
  steps+=("$(printf '%q ' "${ssh[@]}") --command=$(printf %q "$mount_cmd")")
fi
steps+=(
  "git -C $(printf %q "$root") archive --format=tar.gz -o /tmp/mmvit.tar.gz HEAD"
  "$(printf '%q ' "${scp[@]}") /tmp/mmvit.tar.gz $(printf %q "$tpu"):/tmp/mmvit.tar.gz"
  "$(printf '%q ' "${ssh[@]}") --command='mkdir -p ~/mmvit && tar -xzf /tmp/mmvit.tar.gz -C ~/mmvit'"
  "$(printf '%q ' "${ssh[@]}") --command='cd ~/mmvit && python3 -m pip install -q uv && python3 -m uv sync --locked && python3 -m uv pip install -q \"$jax_tpu\"'"
  "$(printf '%q ' "${ssh[@]}") --command='cd ~/mmvit && .venv/bin/python -m mmvit.main$run_args 2>&1 | tee run.log'"
)
for s in "${steps[@]}"; do
  if (( dry_run )); then echo "$s"; else eval "$s"; fi
done
