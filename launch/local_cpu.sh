#!/usr/bin/env bash
# One process on this machine's CPU, optionally split into N simulated devices (as a TPU
# slice would be), e.g. to try a mesh:
#
#   launch/local_cpu.sh 8 train --config configs/smoke_clip.py --config.mesh.fsdp=2 --config.mesh.tensor=2
set -euo pipefail
ndev=${1:?usage: $0 NUM_DEVICES mmjax-subcommand [args...]}; shift
XLA_FLAGS="--xla_force_host_platform_device_count=$ndev" JAX_PLATFORMS=cpu exec python -m mmjax.cli "$@"
