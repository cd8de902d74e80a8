#!/usr/bin/env bash
# All tests: unit (kernels, pattern), mpi, e2e (the bench CLI), python (the bindings in the project's
# venv, which this makes: scripts/venv.sh). GPU tests skip without a device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh   # the packages and the build
bash scripts/venv.sh    # the venv (PyTorch...) and `pip install .`
bash scripts/setup.sh   # the build again, now with the Python extension
ctest --test-dir build --output-on-failure -j2 "$@"
