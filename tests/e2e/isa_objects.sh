#!/usr/bin/env bash
# The portable build's guarantee, read off its object files: an instruction beyond x86-64's baseline
# (VEX/EVEX-encoded, mask registers, BMI) appears only in a function of an instruction set's own
# namespace (longattn::kernels::<ns>::<isa>::), and that instruction set's functions use no wider
# registers than it has. A function outside (a standard-library template, one of longattn's inline
# functions) compiled for AVX-512 could be the copy the linker keeps for every caller, and crash a
# machine without AVX-512. Usage: isa_objects.sh "<object files, ;-separated>"
set -u
IFS=';' read -r -a objects <<< "$1"
((${#objects[@]})) || { echo "FAIL: no object files"; exit 1; }
status=0
checked=0
for o in "${objects[@]}"; do
  objdump -h "$o" > /dev/null || { echo "FAIL: cannot read $o"; exit 1; }
  out=$(objdump -d --no-show-raw-insn -C "$o" | awk -v obj="$(basename "$o")" '
    /^[0-9a-f]+ <.*>:$/ { fn = substr($0, index($0, "<") + 1); sub(/>:$/, "", fn); next }
    NF >= 2 && $1 ~ /:$/ {
      op = $2
      wide = (op ~ /^v/ || op ~ /^k/ || op ~ /^(shlx|shrx|sarx|rorx|andn|bzhi|pdep|pext|blsi|blsr|blsmsk|mulx|lzcnt|tzcnt)$/)
      if (!wide) next
      isa = ""
      if (fn ~ /::avx512::/) isa = "avx512"; else if (fn ~ /::avx2::/) isa = "avx2"
      bad = ""
      if (isa == "") bad = "outside an instruction set namespace"
      else if (isa == "avx2" && ($0 ~ /%zmm|%k[0-7]/ || op ~ /^k/)) bad = "AVX-512 in the avx2 set"
      if (bad != "" && !(fn in seen)) { seen[fn] = 1; printf "%s: %s: %s (%s)\n", obj, bad, fn, op }
    }')
  checked=$((checked + 1))
  if [ -n "$out" ]; then echo "$out"; status=1; fi
done
echo "checked $checked object files"
[ $status -eq 0 ] && echo "PASS" || echo "FAIL"
exit $status
