#!/usr/bin/env bash
# The project's one Python environment, .venv/ at the root (ignored by git): the pinned PyTorch (from
# PyPI, with its CUDA libraries, about 5 GB) and numpy, for the peer benchmarks (scripts/sdpa_baseline.py,
# scripts/peer_cpu.py). Idempotent: a venv that already has the pinned versions is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_version=2.15.0
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "venv.sh: python3-venv is missing (run as root, or install it)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c "import torch, numpy, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check "torch==$torch_version" numpy
fi
.venv/bin/python -c "import torch; print('venv: torch', torch.__version__, 'threads', torch.get_num_threads())"
