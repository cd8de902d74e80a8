#!/usr/bin/env bash
# Builds the files the hostile-input table (hostile.txt) refers to as @D@/...: FIFOs, configs with a
# byte order mark or control characters, block masks of the wrong size or content, and .npy inputs
# with NaN, Inf, crafted shapes. Usage: hostile_files.sh DIR NPY_TOOL
set -euo pipefail
d=$1 tool=$2
rm -rf "$d"
mkdir -p "$d"/{good,nan,inf,big,fifo_load,huge,neg,badshape,twod,out,out2}
mkfifo "$d/fifo"
"$tool" make "$d/good" 64 2 2 16 1 fp32
# q row 3, head 1, dim 2 of [64, 2, 16] is NaN, Inf, or finite but large enough to overflow the scores
for x in nan inf big; do
  cp "$d"/good/*.npy "$d/$x/"
  v=$x
  [ "$x" = big ] && v=3e38
  "$tool" poke "$d/$x/q.npy" $(( (3 * 2 + 1) * 16 + 2 )) "$v"
done
"$tool" poke "$d/big/k.npy" $(( (5 * 2 + 1) * 16 + 2 )) 3e38  # q.k of row 3 and key 5 overflows to inf
cp "$d"/good/{k,v}.npy "$d/fifo_load/"
mkfifo "$d/fifo_load/q.npy"
# .npy headers by hand: magic, version 1.0, little-endian header length, the dict padded to 64 bytes.
npy() {  # npy FILE SHAPE_TEXT
  local dict="{'descr': '<f4', 'fortran_order': False, 'shape': $2, }"
  local total=$(( (10 + ${#dict} + 1 + 63) / 64 * 64 ))
  local pad=$(( total - 10 - ${#dict} - 1 ))
  local len=$(( total - 10 ))
  { printf '\x93NUMPY\x01\x00'; printf "\\x$(printf %02x $((len % 256)))\\x$(printf %02x $((len / 256)))";
    printf '%s' "$dict"; printf '%*s' "$pad" ''; printf '\n'; } > "$1"
}
for sub in huge neg badshape twod; do cp "$d"/good/{k,v}.npy "$d/$sub/"; done
npy "$d/huge/q.npy" "(4611686018427387904, 2, 16)"
npy "$d/neg/q.npy" "(-64, 2, 16)"
npy "$d/badshape/q.npy" "(64, x, 16)"
npy "$d/twod/q.npy" "(64, 32)"
head -c 8192 /dev/zero >> "$d/twod/q.npy"
printf '\xef\xbb\xbf[pattern]\ncausal = true\n' > "$d/bom.ini"
printf '[pattern]\n\x1b[31mcausal = true\n' > "$d/esc.ini"
printf '[pattern]\nconfig = other.ini\n' > "$d/nested.ini"
printf '[io]\nloud = true\n' > "$d/unknown.ini"
printf '01\n10\n' > "$d/mask2.txt"
printf '0x\n10\n' > "$d/mask_bad.txt"
printf '[pattern]\ncausal = %%value%%\n' > "$d/placeholder.ini"
