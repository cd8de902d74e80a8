#!/usr/bin/env bash
# The main job: 4 ranks of the quickstart config (causal ring over zigzag shards) with its fp64
# check; exits non-zero if the check fails. Extra arguments go to longattn-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_mpi_yield_when_idle=1
mpirun --oversubscribe -np 4 ./build/longattn-bench --config configs/quickstart.ini "$@"
