#!/usr/bin/env bash
# Create .venv in the repo root and install everything from this repo's own files (requirements.txt).
# Idempotent: re-running only installs what is missing. Usage: scripts/setup.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip wheel
# Everything in requirements.txt that installs normally.
$PIP install -r requirements.txt
# xtcocotools: build from source against the installed numpy (its binary wheel targets numpy 1).
$PIP install --no-build-isolation --no-binary xtcocotools "xtcocotools>=1.14"
# mmpose: its declared dependency chumpy does not build; what it really imports is in requirements.txt.
$PIP install --no-deps mmpose==1.3.2
.venv/bin/python -c "import torch, torchvision, ray, faiss, av, cv2, mediapipe, mmdet, mmpose, moto; print('setup ok: torch', torch.__version__, 'ray', ray.__version__, 'cv2', cv2.__version__)"
