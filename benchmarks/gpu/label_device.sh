#!/usr/bin/env bash
# The label GPU check on a lent single-GPU machine, in one call (< 5 minutes on an H100/H200 with 16 cores).
# The machine has torch, numpy, opencv but no OpenMMLab, no Ray and no package registry. Here, once:
#   bash benchmarks/gpu/label_device.sh --make-kit       # .device-kit-mm: mmengine, mmcv-lite, mmdet, mmpose + deps (py3.12 wheels)
#   ../shared/device/make-kit.sh .device-kit             # Ray (for the stage through Ray; ~47 MB)
# Device call (the labeler alone: ~fits in 64 MiB with the mm kit only):
#   run(command="bash benchmarks/gpu/label_device.sh", carry=[".device-kit-mm"], timeout_s=420)
# With Ray as well, if both kits fit in 64 MiB together (check `du -sh .device-kit .device-kit-mm`):
#   run(command="bash benchmarks/gpu/label_device.sh --stage", carry=[".device-kit", ".device-kit-mm"], timeout_s=420)
# Figures (card named) print as they come and land in $OUT/label/figures.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" = "--make-kit" ]; then
  KIT=${2:-.device-kit-mm}
  PY="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
  rm -rf "$KIT" && mkdir -p "$KIT/whl"
  python3 -m pip download -q $PY -d "$KIT/whl" mmengine==0.10.7 mmcv-lite==2.1.0 mmdet==3.3.0 mmpose==1.3.2 \
    addict yapf termcolor rich markdown-it-py mdurl pygments platformdirs scipy pycocotools shapely \
    terminaltables munkres json_tricks xtcocotools tqdm
  du -sh "$KIT"
  exit 0
fi
OUT=${OUT:-/tmp/label_device}
if [ -f .device-kit/on-device.sh ]; then source .device-kit/on-device.sh; fi
if [ -d .device-kit-mm/whl ]; then
  python3 -c "import zipfile,glob,sys; [zipfile.ZipFile(w).extractall('/tmp/site-mm') for w in sorted(glob.glob(sys.argv[1]+'/whl/*'))]" .device-kit-mm
  export PYTHONPATH=/tmp/site-mm${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu/label_device.py --out "$OUT/label" "$@"
