#!/usr/bin/env bash
# libFuzzer runs of the bench's input parsers (tests/fuzz): the INI / command-line parser and the .npy
# reader, built with clang, ASan and UBSan into build-fuzz/. Usage: scripts/fuzz.sh [SECONDS per target, 60]
# First replays every committed regression input (tests/fuzz/regressions/TARGET/*), then fuzzes a
# copy of the seed corpus (tests/fuzz/corpus/TARGET; the committed corpus is not grown). A crash,
# timeout, leak or out-of-memory input is saved as tests/fuzz/regressions/TARGET/{crash,timeout,leak,oom}-*
# (to be committed as a regression case once fixed); the script then exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
[[ "$secs" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: SECONDS must be a whole number, got '$secs'" >&2; exit 2; }
targets=(options npy)

# clang 19 (Debian 12's clang 14 and 16 cannot capture structured bindings in lambdas under OpenMP,
# which the strategies do), libFuzzer (in compiler-rt), clang's OpenMP runtime and llvm-symbolizer (for
# stack traces with names), as root via apt-get when missing.
llvm=19
pkgs=(cmake make clang-$llvm libclang-rt-$llvm-dev libomp-$llvm-dev llvm-$llvm libopenmpi-dev libboost-program-options-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "fuzz.sh: missing packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The host libraries (with MPI: the bench library calls the strategies' parsers; no CUDA, NCCL, tests);
# clang's warnings are not errors here (-Werror
# is for the project's compiler, g++).
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang-$llvm -DCMAKE_CXX_COMPILER=clang++-$llvm -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLONGATTN_FUZZ=ON -DLONGATTN_WERROR=OFF -DLONGATTN_BUILD_TESTS=OFF \
  -DLONGATTN_WITH_MPI=ON -DLONGATTN_WITH_CUDA=OFF -DLONGATTN_WITH_NCCL=OFF >/dev/null
cmake --build build-fuzz -j2 --target "${targets[@]/#/fuzz_}"

export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0
export ASAN_SYMBOLIZER_PATH=/usr/lib/llvm-$llvm/bin/llvm-symbolizer UBSAN_SYMBOLIZER_PATH=/usr/lib/llvm-$llvm/bin/llvm-symbolizer
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMP_NUM_THREADS=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export TMPDIR=$work
flags=(-timeout=10 -rss_limit_mb=4096 -malloc_limit_mb=4096 -print_final_stats=1)
status=0
for t in "${targets[@]}"; do
  bin=build-fuzz/tests/fuzz/fuzz_$t
  reg=tests/fuzz/regressions/$t
  dict=()
  [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
  # Regression inputs: each run once; every one must pass.
  if [ -d "$reg" ] && [ -n "$(ls -A "$reg")" ]; then
    echo "== fuzz_$t: replaying $(ls -A "$reg" | wc -l) regression inputs from $reg"
    for f in "$reg"/*; do
      if ! "$bin" "${flags[@]}" "$f" >"$work/replay.log" 2>&1; then
        echo "fuzz.sh: fuzz_$t fails on regression input $f:" >&2
        grep -E 'ERROR|SUMMARY|runtime error|#[0-9]+ ' "$work/replay.log" | head -20 >&2
        status=1
      fi
    done
  fi
  # Fuzzing: a scratch copy of the seeds; findings go to the regression folder.
  mkdir -p "$work/corpus-$t" "$reg"
  cp -r "tests/fuzz/corpus/$t/." "$work/corpus-$t/"
  echo "== fuzz_$t: ${secs}s from $(ls -A "$work/corpus-$t" | wc -l) seeds"
  if ! "$bin" "${flags[@]}" "${dict[@]}" -max_total_time="$secs" -artifact_prefix="$reg/" \
      "$work/corpus-$t" >"$work/fuzz-$t.log" 2>&1; then
    echo "fuzz.sh: fuzz_$t found a failing input (saved under $reg/):" >&2
    grep -E 'ERROR|SUMMARY|runtime error|Test unit written|#[0-9]+ ' "$work/fuzz-$t.log" | head -30 >&2
    status=1
  fi
  grep -E '^stat::number_of_executed_units|^Done|DONE' "$work/fuzz-$t.log" || true
  rmdir "$reg" 2>/dev/null || true  # no findings and nothing committed: leave no empty folder
done
exit $status
