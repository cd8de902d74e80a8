#!/usr/bin/env bash
# Installs what longattn needs on Debian (as root, only what is missing) and builds it into build/.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(cmake make g++ libopenmpi-dev openmpi-bin libboost-program-options-dev libgtest-dev libdlpack-dev pkg-config)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# With the project's venv (scripts/venv.sh) the build also has the Python extension, which the python tests
# import from build/python.
py=(-DLONGATTN_PYTHON=OFF)
if [ -x .venv/bin/python ] && .venv/bin/python -c "import nanobind" 2>/dev/null; then
  py=(-DLONGATTN_PYTHON=ON "-DPython_EXECUTABLE=$(pwd)/.venv/bin/python")
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${py[@]}" >/dev/null
cmake --build build -j2
