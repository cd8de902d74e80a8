#!/usr/bin/env bash
# longattn's CPU kernels against PyTorch SDPA and FlexAttention, side by side (scripts/peers.py).
# Needs the build (scripts/setup.sh) and the venv (scripts/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/peers.py "$@"
