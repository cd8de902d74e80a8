#!/usr/bin/env bash
# The memory a job is refused by is what it holds: each rank's peak RSS growth over the timed runs
# (forward and backward) within 25% of the estimate the bench checks before it starts, for every
# strategy, in fp32 and bf16. A window keeps the compute small next to the memory.
# usage: memory_estimate.sh BENCH MPIRUN... (the launcher command up to, not including, the rank count)
set -uo pipefail
bench=$1
shift
mpirun=("$@")
job=(-b 32K --heads 8 --head-dim 64 --window 128,0 --mode fwd+bwd -n 1 -w 1 --threads 1 --per-rank)
status=0
run() {  # ranks dtype strategy options...
  local P=$1 dtype=$2
  shift 2
  local out
  out=$("${mpirun[@]}" "$P" "$bench" "${job[@]}" -d "$dtype" --strategy "$@" 2>&1) || { echo "$out"; echo "FAIL: $*"; status=1; return; }
  # "... peak +284 MB (1.55x; estimate 307 MB) ..." per rank
  echo "$out" | sed -n 's/.*rank \([0-9]*\) rows.*peak +\([0-9.]*\) MB (.*estimate \([0-9.]*\) MB).*/\1 \2 \3/p' |
    awk -v what="$* $dtype P=$P" '
      { n++; r = $2 / $3; printf "%s rank %d: measured %d MB, estimate %d MB, ratio %.3f\n", what, $1, $2, $3, r
        if (r < 0.75 || r > 1.25) bad++ }
      END { if (n == 0) { print what ": no per-rank lines"; exit 1 } exit bad > 0 }' || status=1
}
run 2 fp32 ring
run 2 bf16 ring
run 2 fp32 ulysses
run 3 bf16 ulysses
run 2 fp32 allgather
run 2 bf16 allgather --kv-head-chunk 2
run 4 fp32 hybrid --ulysses-degree 2
[ $status -eq 0 ] && echo PASS || echo FAIL
exit $status
