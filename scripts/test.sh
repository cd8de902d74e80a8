#!/usr/bin/env bash
# All tests: unit (kernels, pattern), mpi, e2e (the bench CLI). GPU tests skip without a device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ctest --test-dir build --output-on-failure -j2 "$@"
