#!/usr/bin/env bash
# --save writes the in-memory result in global token order whatever the layout and rank count (one
# process, 3 ranks zigzag ring and 2 ranks striped Ulysses agree to fp32 rounding), and --load of files
# holding the synthetic inputs (float32 and float16) reproduces the synthetic run bit for bit.
# usage: save_load.sh BENCH NPY_TOOL MPIRUN... (the launcher command up to, not including, the rank count)
set -euo pipefail
bench=$1 tool=$2
shift 2
mpirun=("$@")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
shape=(--heads 4 --kv-heads 2 --head-dim 24)
job=(--causal true --window 300,0 --doc-lens 250,450 --mode fwd+bwd -n 1 -w 0 --seed 5 --threads 1)
mkdir "$dir"/{single,zigzag3,striped2,in32,loaded32,in16,synth16,loaded16}

"$bench" -b 700 "${shape[@]}" "${job[@]}" --save "$dir/single"
"${mpirun[@]}" 3 "$bench" --strategy ring --layout zigzag -b 700 "${shape[@]}" "${job[@]}" --save "$dir/zigzag3"
"${mpirun[@]}" 2 "$bench" --strategy ulysses --layout striped -b 700 "${shape[@]}" "${job[@]}" --save "$dir/striped2"
for f in out lse dq dk dv; do
  "$tool" diff "$dir/single/$f.npy" "$dir/zigzag3/$f.npy" 1e-5
  "$tool" diff "$dir/single/$f.npy" "$dir/striped2/$f.npy" 1e-5
done

"$tool" make "$dir/in32" 700 4 2 24 5 fp32
"${mpirun[@]}" 3 "$bench" --strategy ring --layout zigzag --load "$dir/in32" "${job[@]}" --save "$dir/loaded32"
for f in out lse dq dk dv; do "$tool" diff "$dir/zigzag3/$f.npy" "$dir/loaded32/$f.npy" 0; done

"$tool" make "$dir/in16" 700 4 2 24 5 fp16
"${mpirun[@]}" 2 "$bench" --strategy ring -d fp16 -b 700 "${shape[@]}" "${job[@]}" --save "$dir/synth16"
"${mpirun[@]}" 2 "$bench" --strategy ring -d fp16 --load "$dir/in16" "${job[@]}" --save "$dir/loaded16"
for f in out lse dq dk dv; do "$tool" diff "$dir/synth16/$f.npy" "$dir/loaded16/$f.npy" 0; done
# Nothing but the final files in any output directory.
if ls -A "$dir"/* | grep -q partial; then echo "temporary files left behind" >&2; exit 1; fi
echo "save/load: OK"
