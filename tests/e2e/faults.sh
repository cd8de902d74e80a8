#!/usr/bin/env bash
# The bench under faults, one case per call: a rank stopped (SIGSTOP) ends the job through the
# watchdog within its deadline, and mid-transfer the report names the transfer and the ring step; a slow rank that is alive is waited for; a publish that fails half
# way, a rank killed during --save, and Ctrl-C (on one process or on mpirun) leave the earlier output
# set as it was and nothing else; a --save over an earlier set replaces it whole.
# usage: faults.sh CASE BENCH MPIRUN... (the launcher command up to, not including, the rank count)
set -uo pipefail
case_=$1 bench=$2
shift 2
mpirun=("$@")
dir=$(mktemp -d)
trap 'rm -rf "$dir" "$dir.before" "$dir.after" "$dir.log"' EXIT
job=(--strategy ring -b 6K --heads 2 --head-dim 32 --causal true --threads 1 -n 1 -w 1)
fail() { echo "FAIL: $*"; exit 1; }
# Everything in $dir: names and contents, to compare before and after.
snapshot() {
  (cd "$dir" && find . -mindepth 1 | sort | while read -r f; do
     if [ -f "$f" ]; then echo "$f $(cksum < "$f")"; else echo "$f/"; fi
   done)
}
# The first, complete set: out/ with a backward (dq/dk/dv.npy) and r.json beside it.
first_set() {
  "${mpirun[@]}" 3 "$bench" "${job[@]}" --mode fwd+bwd --save "$dir/out" --json "$dir/r.json" > /dev/null ||
    fail "the first run failed"
  [ -f "$dir/out/dq.npy" ] && [ -f "$dir/out/manifest.json" ] || fail "the first set is incomplete"
  snapshot > "$dir.before"
}
same_as_before() {
  snapshot > "$dir.after"
  diff "$dir.before" "$dir.after" || fail "the earlier output set changed, or something was left beside it"
  rm -f "$dir.before" "$dir.after"
}
# After a first set: runs the command, sends it SIGINT after `after` seconds, and checks the line it
# must print and that the first set is as it was; rc is the command's exit code.
interrupted() {  # after line command...
  local after=$1 line=$2 pid
  shift 2
  first_set
  "$@" > "$dir.log" 2>&1 &
  pid=$!
  sleep "$after"
  kill -INT $pid
  wait $pid
  rc=$?
  cat "$dir.log"
  grep -q "$line" "$dir.log" || fail "no line saying the job was interrupted"
  same_as_before
}

case $case_ in
  stop)  # rank 1 stops itself at its first timed iteration; the watchdog's deadline is 3 s
    start=$(date +%s)
    out=$(timeout 60 "${mpirun[@]}" 3 "$bench" "${job[@]}" --mode fwd+bwd --timeout 3 --inject-stop 1 2>&1)
    rc=$? took=$(( $(date +%s) - start ))
    echo "$out"; echo "exit $rc after $took s"
    [ $rc -eq 3 ] || fail "expected exit 3 (the watchdog), got $rc"
    echo "$out" | grep -Eq "watchdog: rank 1 \(.*\) sent no heartbeat for [0-9.]+ s .*this rank was waiting for" ||
      fail "no watchdog report naming rank 1 and the wait"
    # Start-up and the warmup take a few seconds here; a missed deadline would run into timeout's 60 s.
    [ $took -le 25 ] || fail "the job took $took s to end"
    ;;
  stop-mid-transfer)  # rank 1 stops half a second into an iteration: its successor names the receive
    # A forward of several seconds (3.4 s on a Zen 5), so the stop lands inside its ring on any CPU
    # (at 32K a fast one had finished the forward and waited in the next call's agreement). The deadline
    # leaves rank 2 time to finish its own step and reach the receive: at 3 s a slower CPU (a 2-core Xeon,
    # 3 ranks) still had rank 2 computing when it expired, and the report rightly named no transfer.
    out=$(timeout 60 "${mpirun[@]}" 3 "$bench" --strategy ring -b 64K --heads 2 --head-dim 64 --causal true \
          --threads 1 --mode fwd -n 1 -w 1 --timeout 8 --inject-stop 1 --inject-stop-after-s 0.5 2>&1)
    rc=$?
    echo "$out"
    [ $rc -eq 3 ] || fail "expected exit 3 (the watchdog), got $rc"
    echo "$out" | grep -Eq "rank 2 \(.*\): watchdog: rank 1 .* waiting for a receive of [0-9.]+ MiB from rank 1 \(tag [0-9]+\) for [0-9.]+ s, in ring (forward|backward) step [0-9]+" ||
      fail "the report does not name the receive from rank 1 and the ring step"
    ;;
  slow)  # rank 1 sleeps 8 s, far past the 2 s deadline, but its heartbeats go on: the job completes
    out=$("${mpirun[@]}" 3 "$bench" "${job[@]}" --mode fwd+bwd --timeout 2 --inject-sleep 1 --inject-sleep-s 8 2>&1)
    rc=$?
    echo "$out"
    [ $rc -eq 0 ] || fail "a slow rank was not waited for (exit $rc)"
    echo "$out" | grep -q "Check: PASSED" || fail "no passing check"
    ;;
  publish-fails)  # the --json is in place when the directory's publish fails: both roll back
    first_set
    out=$("${mpirun[@]}" 3 "$bench" "${job[@]}" --mode fwd --save "$dir/out" --json "$dir/r.json" \
          --inject-publish-failure 1 2>&1)
    rc=$?
    echo "$out"
    [ $rc -eq 1 ] || fail "expected exit 1, got $rc"
    echo "$out" | grep -q "nothing is published, the old files are as they were" || fail "no message"
    same_as_before
    ;;
  save-killed)  # rank 2 dies (SIGKILL) with one file of the new set written; the others are ended by MPI
    first_set
    out=$("${mpirun[@]}" 3 "$bench" "${job[@]}" --mode fwd --save "$dir/out" --json "$dir/r.json" --inject-save-kill 2 2>&1)
    rc=$?
    echo "$out"
    [ $rc -ne 0 ] || fail "the job succeeded"
    echo "$out" | grep -Eq "signal 9|Killed" || fail "rank 2 was not the one killed"
    same_as_before
    ;;
  replace)  # a forward-only --save over a fwd+bwd set: no dq/dk/dv.npy of the old run stays
    first_set
    "${mpirun[@]}" 3 "$bench" "${job[@]}" --mode fwd --save "$dir/out" > /dev/null || fail "the second run failed"
    [ "$(ls "$dir/out" | tr '\n' ' ')" = "lse.npy manifest.json out.npy " ] || fail "mixed set: $(ls "$dir/out")"
    [ "$(ls -A "$dir" | tr '\n' ' ')" = "out r.json " ] || fail "left beside it: $(ls -A "$dir")"
    ;;
  interrupt)  # Ctrl-C (SIGINT to a single-process run) during a long run
    interrupted 2 "interrupted (Ctrl-C)" "$bench" -b 64K --heads 4 --head-dim 64 --mode fwd+bwd -n 50 -w 0 \
      --peak false --save "$dir/out" --json "$dir/r.json"
    [ $rc -eq 130 ] || fail "expected exit 130 (SIGINT), got $rc"
    ;;
  interrupt-mpi)  # Ctrl-C on mpirun (SIGINT to it; it sends SIGTERM to every rank) during a run
    interrupted 3 "rank 0: terminated (SIGTERM: the job was interrupted" "${mpirun[@]}" 3 "$bench" --strategy ring \
      -b 48K --heads 2 --head-dim 32 --threads 1 --mode fwd+bwd -n 50 --save "$dir/out" --json "$dir/r.json"
    [ $rc -ne 0 ] || fail "the job succeeded"
    ;;
  *) fail "unknown case $case_" ;;
esac
echo "PASS: $case_"
