#!/usr/bin/env bash
# The comparison's gpu preset on one GPU machine (H100/H200 with 16 cores; <= 8 minutes is the target): every
# pre-training method on the same mined hands, probed and fine-tuned (benchmarks/gpu/compare_device.py).
# Needs in the tree: .device-compare (made on a CPU machine by compare_device.py --prepare) and the Ray kit.
# Figures (card named), the report, the plot and the log land in $OUT/compare; data stays in a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/compare_device}
if [ -f .device-kit/on-device.sh ]; then source .device-kit/on-device.sh; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu/compare_device.py --out "$OUT/compare" "$@"
