#!/usr/bin/env bash
# The label GPU check on a single-GPU machine (H100/H200 with 16 cores; < 5 minutes): the OpenMMLab labeler's
# frames/s alone, then the label stage through Ray at 1 and 0.25 GPU per labeler beside the decode ceiling (every
# CPU decoding the same JPEGs). That machine has torch, numpy, opencv but no OpenMMLab, no Ray and no package
# registry; the kits are made on a machine with one:
#   bash benchmarks/gpu/label_device.sh --make-kit       # .device-kit-mm: mmengine, mmcv-lite, mmdet, mmpose + deps (py3.12 wheels)
#   ../shared/device/make-kit.sh .device-kit             # Ray (for the stage through Ray; ~47 MB)
# The two kits do not fit in one 64 MiB tree (mm kit 46 MB, 35 of them scipy; Ray 47 MB; the tree 3.4 MB), so it
# runs in two parts on the same machine:
#   1. bash benchmarks/gpu/label_device.sh                        (with .device-kit-mm) unpacks the mm kit into
#      .device-site-mm and measures the labeler alone;
#   2. bash benchmarks/gpu/label_device.sh --stage --skip-labeler (with .device-kit) finds .device-site-mm there
#      and runs the label stage through Ray.
# Figures (card named) print as they come and land in $OUT/label/figures.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" = "--make-kit" ]; then
  KIT=${2:-.device-kit-mm}
  PY="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
  rm -rf "$KIT" && mkdir -p "$KIT/whl"
  python3 -m pip download -q $PY -d "$KIT/whl" mmengine==0.10.7 mmcv-lite==2.1.0 mmdet==3.3.0 mmpose==1.3.2 \
    addict yapf termcolor rich markdown-it-py mdurl pygments platformdirs scipy pycocotools shapely \
    terminaltables munkres json_tricks tqdm pyyaml six packaging "setuptools<81"   # mmengine imports pkg_resources
  # xtcocotools (imported by mmpose) has no py3.12 wheel on PyPI: built here with a Python 3.12 against numpy 2.0's
  # headers (runs with any numpy 2), as scripts/setup.sh builds it from source for the venv.
  for c in ${PY312:-} python3.12 /root/.pyenv/versions/3.12*/bin/python; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then PY312=$c; break; fi
  done
  [ -n "${PY312:-}" ] || { echo "needs a Python 3.12 (PY312=...) to build the xtcocotools wheel" >&2; exit 2; }
  BUILD=$(mktemp -d) && "$PY312" -m venv "$BUILD/venv"
  "$BUILD/venv/bin/pip" install -q "numpy==2.0.2" cython setuptools wheel
  "$BUILD/venv/bin/pip" wheel -q --no-deps --no-build-isolation --no-binary xtcocotools xtcocotools==1.14.3 -w "$KIT/whl"
  rm -rf "$BUILD"
  du -sh "$KIT"
  exit 0
fi
OUT=${OUT:-/tmp/label_device}
if [ -f .device-kit/on-device.sh ]; then source .device-kit/on-device.sh; fi
# The OpenMMLab wheels are unpacked into .device-site-mm (git-ignored), which stays on a warm machine: a second call
# right after (carrying .device-kit, Ray) finds it there without carrying the kit again.
if [ -d .device-kit-mm/whl ]; then
  rm -rf .device-site-mm
  python3 -c "import zipfile,glob,sys; [zipfile.ZipFile(w).extractall('.device-site-mm') for w in sorted(glob.glob(sys.argv[1]+'/whl/*'))]" .device-kit-mm
fi
if [ -d .device-site-mm ]; then export PYTHONPATH=$PWD/.device-site-mm${PYTHONPATH:+:$PYTHONPATH}; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu/label_device.py --out "$OUT/label" "$@"
