#!/usr/bin/env bash
# The pretrain GPU check on a lent single-GPU machine, in one call (< 5 minutes on an H100/H200 with 16 cores).
# Here, once:   ../shared/device/make-kit.sh .device-kit
# Device call:  run(command="bash benchmarks/gpu/pretrain_device.sh", carry=[".device-kit"], timeout_s=420)
# Figures (card named) print as they come and land in $OUT/pretrain/figures.json with the job's log.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/pretrain_device}
if [ -f .device-kit/on-device.sh ]; then source .device-kit/on-device.sh; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu/pretrain_device.py --out "$OUT/pretrain" "$@"
