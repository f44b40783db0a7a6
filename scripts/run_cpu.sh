#!/usr/bin/env bash
# The CPU a command costs, split by who spent it: the system PostgreSQL (its postmaster and every
# backend it reaped meanwhile), the Citus nodes of ../shared/citus, and the command with its
# children. On a machine with two cores the wall clock of a CPU-bound run cannot go below half
# their sum, so this tells which side a change to the test loop saved.
#
#   scripts/run_cpu.sh ./dev test --fast
#   TODO_RLS_TEST_TABLESPACE= scripts/run_cpu.sh ./dev test   # without the RAM-disk tablespace
#
# Reads /proc/<postmaster>/stat (utime, stime, cutime, cstime); run it as root or as the
# servers' OS user. A server that is not running counts as 0.
set -euo pipefail

PGDATA_SYSTEM=${PGDATA_SYSTEM:-$(ls -d /var/lib/postgresql/*/main 2>/dev/null | tail -1)}
CITUS_CLUSTER=${CLUSTER:-/tmp/citus/cluster}

ticks() {  # data directories... -> CPU ticks of their postmasters and reaped children
  local total=0 dir pid
  for dir in "$@"; do
    [ -f "$dir/postmaster.pid" ] || continue
    pid=$(head -1 "$dir/postmaster.pid")
    [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat")))
  done
  echo "$total"
}
citus_dirs=("$CITUS_CLUSTER"/coordinator "$CITUS_CLUSTER"/worker1 "$CITUS_CLUSTER"/worker2)
hz=$(getconf CLK_TCK)

system_before=$(ticks "$PGDATA_SYSTEM")
citus_before=$(ticks "${citus_dirs[@]}")
times=$(mktemp)
status=0
/usr/bin/time -f "%e %U %S" -o "$times" "$@" || status=$?
# (time writes "Command exited with non-zero status N" first when the command fails.)
read -r wall user sys < <(tail -1 "$times")
rm -f "$times"
system=$(( $(ticks "$PGDATA_SYSTEM") - system_before ))
citus=$(( $(ticks "${citus_dirs[@]}") - citus_before ))
awk -v w="$wall" -v u="$user" -v s="$sys" -v p="$system" -v c="$citus" -v hz="$hz" 'BEGIN {
  printf "run_cpu: wall %.1f s | CPU-seconds: system PostgreSQL %.1f, Citus nodes %.1f, the command and its children %.1f, in all %.1f\n",
    w, p / hz, c / hz, u + s, p / hz + c / hz + u + s }' >&2
exit "$status"
