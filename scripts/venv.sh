#!/usr/bin/env bash
# The project's one Python environment, .venv/ at the root (ignored by git): the pinned PyTorch (from
# PyPI, with its CUDA libraries: about 5 GB, a few minutes), numpy, mpi4py, pytest, matplotlib (the
# scaling study's plots) and the bindings' build tools, then longattn itself by `pip install .` (the CPU kernels; about 90 s on 2 cores). The
# Python tests and the peer benchmarks run in it. Idempotent for the pinned packages.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_version=2.15.0
# mpi4py and the package build against MPI, CMake and the compilers that scripts/setup.sh installs.
for tool in mpicc cmake g++; do
  if ! command -v "$tool" >/dev/null; then
    echo "venv.sh: $tool is missing: run scripts/setup.sh first (it installs the build tools and MPI)" >&2
    exit 1
  fi
done
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "venv.sh: python3-venv is missing (run as root, or install it)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
pins=("torch==$torch_version" numpy==2.4.6 mpi4py==4.1.2 pytest==9.2.0 nanobind==3.1.0 scikit-build-core==1.1.2
      matplotlib==3.11.2)
if ! .venv/bin/python -c "import torch, numpy, mpi4py, pytest, nanobind, scikit_build_core, matplotlib, sys
sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check "${pins[@]}"
fi
# The package, built with the same CMake (pyproject.toml), its build tools taken from the venv.
CMAKE_BUILD_PARALLEL_LEVEL=2 .venv/bin/pip install -q --disable-pip-version-check --no-build-isolation .
root=$(pwd)
(cd /tmp && "$root/.venv/bin/python" -c "import torch, longattn; print('venv: torch', torch.__version__, '| longattn', longattn.__version__, longattn.cpu_isa())")
