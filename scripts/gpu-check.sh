#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the gpu tests (CUDA kernels against fp64, the distributed strategies
# on CUDA tensors over MPI with ranks sharing the GPU and over NCCL at one rank), then the CUDA kernel
# table at D=128, L = 4K and 16K, causal and not, next to PyTorch's SDPA flash backend where PyTorch is
# installed, and the watchdog ending a job with a stopped rank. Results land in gpu-out/.
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
# The watchdog with CUDA tensors: rank 1 stops itself (SIGSTOP) and the job must end with exit 3 within
# the 5 s deadline and a few seconds, over MPI with the ranks sharing the GPU, and over NCCL (whose
# communicator the watchdog aborts first) where the machine has two GPUs. All in gpu-out/watchdog.txt.
stopped_rank() {  # name, extra bench options
  local name=$1 rc start
  shift
  start=$(date +%s)
  set +e
  timeout 120 mpirun --oversubscribe -np 2 ./build/longattn-bench --strategy ring -b 16K --heads 4 --head-dim 128 \
    --causal --mode fwd+bwd -n 1 -w 1 --device cuda -d bf16 --timeout 5 --inject-stop 1 "$@" >> gpu-out/watchdog.txt 2>&1
  rc=$?
  set -e
  echo "watchdog $name: exit $rc after $(( $(date +%s) - start )) s (3 expected)" | tee -a gpu-out/watchdog.txt
}
stopped_rank mpi
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  stopped_rank nccl --comm nccl
else
  echo "watchdog nccl: skipped (NCCL needs a GPU per rank; this machine has one)" | tee -a gpu-out/watchdog.txt
fi
