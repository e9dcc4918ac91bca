#!/usr/bin/env bash
# Runs every fuzz target in turn, each for RUNS executions or SECONDS seconds, whichever comes
# first, at low priority, with libFuzzer's RSS and per-input time limits; prints each target's
# final statistics line. Usage: fuzz/run_all.sh [RUNS] [SECONDS] [targets...]
set -uo pipefail
cd "$(dirname "$0")"
RUNS=${1:-1000000}
SECS=${2:-3600}
shift 2 2>/dev/null || true
TARGETS=${*:-"idx config_json npy safetensors pickle pt_zip image"}
mkdir -p logs
for t in $TARGETS; do
  mkdir -p corpus/$t artifacts/$t
  nice -n 10 cargo +nightly fuzz run -s none -O "$t" corpus/$t -- \
    -runs="$RUNS" -max_total_time="$SECS" -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -timeout=10 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix=artifacts/$t/ >logs/$t.log 2>&1
  echo "$t: exit $? $(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' logs/$t.log | tail -1)"
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' logs/$t.log
  ls artifacts/$t
done
