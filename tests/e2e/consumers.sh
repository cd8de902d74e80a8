#!/usr/bin/env bash
# The installed component as a codebase uses it: `cmake --install` into a fresh prefix, then a C
# program built with pkg-config and the MPI compiler wrapper, and a C++ program built with
# find_package(longattn CONFIG), against that prefix only; both run under mpirun -np 3 (the C one also
# in one process) and check their results against one-process calls (tests/consumers/).
# usage: consumers.sh BUILD_DIR SOURCE_DIR MPIRUN... (the launcher up to, not including, the rank count)
set -euo pipefail
build=$1 src=$2
shift 2
mpirun=("$@")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cmake --install "$build" --prefix "$dir/prefix" > /dev/null
# Nothing of the build's own flags in what a consumer is given.
if grep -rEq -- "-march|-Werror|/roots/" "$dir/prefix/lib/cmake" "$dir/prefix/lib/pkgconfig"; then
  echo "FAIL: the package leaks the build's flags or include roots"; exit 1
fi
export PKG_CONFIG_PATH="$dir/prefix/lib/pkgconfig"
mpicc -std=c99 -Wall -Werror "$src/tests/consumers/c/main.c" $(pkg-config --cflags --libs longattn-mpi) -lm \
  -Wl,-rpath,"$dir/prefix/lib" -o "$dir/c_consumer"
cmake -S "$src/tests/consumers/cpp" -B "$dir/cpp" -DCMAKE_PREFIX_PATH="$dir/prefix" -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$dir/cpp" > /dev/null
"${mpirun[@]}" 3 "$dir/c_consumer"
"${mpirun[@]}" 1 "$dir/c_consumer"
"${mpirun[@]}" 3 "$dir/cpp/cpp_consumer"
echo PASS
