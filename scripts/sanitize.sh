#!/usr/bin/env bash
# The unit and mpi tests under AddressSanitizer + UndefinedBehaviorSanitizer (g++, CPU only) in
# build-asan/. Any sanitizer report (a leak included) fails the test that printed it.
# Usage: scripts/sanitize.sh [extra ctest args]. SANITIZE_ALL_RANKS=1 also runs mpi_dist_np5 and np8
# (together about 4 more minutes on 2 cores under ASan).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# Leaks in our code are errors; OpenMPI's own are suppressed by library name. fast_unwind_on_malloc=0:
# OpenMPI's libraries have no frame pointers, so only the slow unwinder sees their frames (and their
# names: the MCA components are dlclose'd before the leak check). mpirun passes these variables on to
# the ranks it starts.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:fast_unwind_on_malloc=0:check_initialization_order=1
export LSAN_OPTIONS=suppressions=$root/tests/sanitize/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLONGATTN_SANITIZE=ON \
  -DLONGATTN_WITH_CUDA=OFF -DLONGATTN_WITH_NCCL=OFF >/dev/null
cmake --build build-asan -j2
exclude=()
[ "${SANITIZE_ALL_RANKS:-0}" = 1 ] || exclude=(-E '^mpi_dist_np(5|8)$')
ctest --test-dir build-asan -L 'unit|mpi' "${exclude[@]}" -j2 --output-on-failure "$@"
