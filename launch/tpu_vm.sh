#!/usr/bin/env bash
# Cloud TPU VMs (queued resources; one slice or several): create, install, run, logs, status,
# stop, delete, up (= create + install + run). The logic, and the full usage, are in
# launch/tpu_vm.py (stdlib Python 3.8+, testable); this wrapper only runs it.
#
#   launch/tpu_vm.sh create  my-pod --zone us-central2-b --accelerator v4-32 [--spot]
#   launch/tpu_vm.sh install my-pod --zone us-central2-b
#   launch/tpu_vm.sh run     my-pod --zone us-central2-b -- train --config configs/clip_webdataset.py \
#                            --workdir gs://BUCKET/runs/clip --data_dir gs://BUCKET/data
#   launch/tpu_vm.sh logs|status|stop|delete my-pod --zone us-central2-b
#   launch/tpu_vm.sh --dry-run VERB ...   (or DRY_RUN=1): print the commands, one a line, run none
#   launch/tpu_vm.sh --help
set -euo pipefail
exec python3 "$(dirname "$0")/tpu_vm.py" "$@"
