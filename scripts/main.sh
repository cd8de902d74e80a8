#!/usr/bin/env bash
# The main job: the quickstart benchmark with its fp64 check; exits non-zero if the check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
./build/longattn-bench --config configs/quickstart.ini "$@"
