#!/usr/bin/env bash
# Train and evaluate the CIFAR-10 model on one GPU in one command (about 9 minutes on an H100):
#
#   bash benchmarks/gpu_run.sh OUT_DIR [--smoke] [--minutes M] [--data TAR_XZ] [--wheels DIR]
#
# Needs .data/cifar10-train.tar.xz (cp ../shared/data/cifar10-train.tar.xz .data/) and, for the
# diffusers column of the benchmark, diffusers' wheel in .whl/. Runs from the source tree
# (src/ on PYTHONPATH, nothing installed); benchmarks/gpu_run.py says what each stage does, and
# benchmarks/gpu_unpack.py puts what OUT_DIR holds back together.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$root/benchmarks/gpu_run.py" "$@"
