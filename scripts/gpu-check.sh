#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the gpu tests (CUDA kernels against fp64, the distributed strategies
# on CUDA tensors over MPI with ranks sharing the GPU and over NCCL at one rank), then the CUDA kernel
# table at D=128, L = 4K and 16K, causal and not, next to PyTorch's SDPA flash backend where PyTorch is
# installed. Results land in gpu-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
nvidia-smi -L
mkdir -p gpu-out
ctest --test-dir build -L gpu --output-on-failure 2>&1 | tee gpu-out/ctest.txt
for causal in false true; do
  ./build/longattn-bench --config configs/gpu-kernel.ini --causal "$causal" --csv "gpu-out/kernel-causal-$causal.csv" \
    | tee "gpu-out/kernel-causal-$causal.txt"
  flag=()
  [ "$causal" = true ] && flag=(--causal)
  python3 scripts/sdpa_baseline.py --csv "gpu-out/kernel-causal-$causal.csv" --heads 16 --head-dim 128 "${flag[@]}" \
    | tee "gpu-out/sdpa-causal-$causal.txt" || echo "gpu-check: no SDPA baseline (see above)"
done
