#!/usr/bin/env bash
# Cloud TPU VMs: create a slice, install mmjax on every worker, run the same command on all.
#
#   launch/tpu_vm.sh create  NAME ZONE ACCELERATOR [VERSION]   # e.g. my-pod us-central2-b v4-32
#   launch/tpu_vm.sh install NAME ZONE                          # clones this repo's origin + pip install
#   launch/tpu_vm.sh run     NAME ZONE -- train --config configs/smoke_clip.py --workdir gs://bucket/run
#   launch/tpu_vm.sh delete  NAME ZONE
#
# jax.distributed finds the other workers by itself on TPU VMs, so `run` passes no
# coordinator flags. The workdir should be a gs:// path every worker can reach. Each worker
# keeps its own data cache (--data_dir, default ~/.cache/mmjax).
set -euo pipefail
cmd=${1:?usage: $0 create|install|run|delete NAME ZONE ...}; name=${2:?NAME}; zone=${3:?ZONE}; shift 3
ssh_all() { gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"; }
case "$cmd" in
  create)
    accelerator=${1:?ACCELERATOR, e.g. v4-32}; version=${2:-tpu-ubuntu2204-base}
    gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$accelerator" --version "$version" ;;
  install)
    repo=${MMJAX_REPO:-$(git remote get-url origin)}; ref=${MMJAX_REF:-$(git rev-parse HEAD)}
    ssh_all "set -e; rm -rf mmjax; git clone -q $repo mmjax; cd mmjax; git checkout -q $ref;
             bash launch/install.sh tpu" ;;
  run)
    [ "${1:-}" = "--" ] && shift
    ssh_all "cd mmjax && python -m mmjax.cli $(printf '%q ' "$@")" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet ;;
  *) echo "unknown command $cmd: use create, install, run or delete" >&2; exit 2 ;;
esac
