#!/usr/bin/env bash
# Train and evaluate the CIFAR-10 model on one GPU in one command (about 9 minutes on an H100):
#
#   bash lab/gpu/run.sh OUT_DIR --data TAR_XZ [--smoke] [--minutes M] [--wheels DIR]
#
# TAR_XZ is the CIFAR-10 training JPEG archive (cifar10-train.tar.xz); DDIM_CIFAR10_TAR may name
# it instead of --data. For the diffusers column of the benchmark, diffusers' wheel in .whl/.
# Runs from the source tree (src/ on PYTHONPATH, nothing installed); lab/gpu/run.py says what
# each stage does, and `python -m lab.gpu.unpack` puts what OUT_DIR holds back together.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
export PYTHONPATH="$root/src:$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m lab.gpu.run "$@"
