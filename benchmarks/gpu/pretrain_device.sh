#!/usr/bin/env bash
# The pretrain GPU check on a single-GPU machine (H100/H200 with 16 cores, no package registry; < 5 minutes):
# the training step's images/s, SiMHand-W's weights at eight workers' batch, and jobs/pretrain.py through Ray.
# Needs the Ray kit in the tree (.device-kit, made on a machine with a registry by ../shared/device/make-kit.sh).
# Figures (card named) print as they come and land in $OUT/pretrain/figures.json with the job's log.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/pretrain_device}
if [ -f .device-kit/on-device.sh ]; then source .device-kit/on-device.sh; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu/pretrain_device.py --out "$OUT/pretrain" "$@"
