#!/usr/bin/env bash
# Simulates a multi-host job on one machine: N processes x D CPU devices each, joined with
# jax.distributed over 127.0.0.1. Every process runs the same mmjax command.
#
#   launch/local_multiprocess.sh 2 4 train --config configs/smoke_clip.py --workdir runs/mp
#
# Exits non-zero if any process fails; logs go to WORKDIR-less files /tmp/mmjax_proc_<i>.log
# unless MMJAX_LOG_DIR is set.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS mmjax-subcommand [args...]" >&2
  exit 2
fi
nproc=$1; ndev=$2; shift 2
port=${MMJAX_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
logdir=${MMJAX_LOG_DIR:-/tmp}
# The caller's other XLA flags are kept; the device count is this script's.
flags=$(echo " ${XLA_FLAGS:-}" | sed -E 's/ --xla_force_host_platform_device_count=[0-9]+//g')
pids=()
for ((i = 0; i < nproc; i++)); do
  XLA_FLAGS="$flags --xla_force_host_platform_device_count=$ndev" JAX_PLATFORMS=cpu \
  MMJAX_COORDINATOR="127.0.0.1:$port" MMJAX_NUM_PROCESSES=$nproc MMJAX_PROCESS_ID=$i \
    python -m mmjax.cli "$@" > "$logdir/mmjax_proc_$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill ${pids[*]} 2>/dev/null' INT TERM
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see $logdir/mmjax_proc_$i.log" >&2
    status=1
  fi
done
exit $status
