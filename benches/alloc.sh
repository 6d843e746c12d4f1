#!/usr/bin/env bash
# Server CPU per operation: one single-member server BIN under plinth-bench put (60,000 puts,
# 100 clients) and range (60,000 point gets), printing throughput, p99 and the server's
# utime+stime per operation. Used to compare builds of the same source (the allocator: a
# default build against `--no-default-features`), alternating, on the same machine.
#
# Usage: benches/alloc.sh BIN TAG     (BENCH_BIN: a release plinth-bench; default
# target/release/plinth-bench)
set -uo pipefail
BIN=$1; TAG=$2
BENCH=${BENCH_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/plinth-bench}
D=$(mktemp -d "${TMPDIR:-/tmp}/plinth-alloc-$TAG-XXXXXX")
trap 'kill $PID 2>/dev/null; rm -rf "$D"' EXIT
$BIN serve --data-dir $D/data --listen-client-urls http://127.0.0.1:44379 --advertise-client-urls http://127.0.0.1:44379 --listen-peer-urls http://127.0.0.1:44380 --initial-advertise-peer-urls http://127.0.0.1:44380 --initial-cluster default=http://127.0.0.1:44380 > $D/log 2>&1 &
PID=$!
for i in $(seq 1 100); do $BENCH --endpoints 127.0.0.1:44379 --total 1 --progress never --json put 2>/dev/null | grep -q "\"ok\":1," && break; sleep 0.2; done
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' /proc/$PID/stat; }
run() { # label, args...
  local label=$1; shift
  local t0=$(ticks)
  local out=$($BENCH --endpoints 127.0.0.1:44379 --conns 10 --clients 100 --progress never --json "$@")
  local t1=$(ticks)
  local ok=$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["ok"], round(d["throughput"]), d["latency_ms"]["p99"], file=sys.stdout); print(d["errors_by_message"], file=sys.stderr)')
  set -- $ok
  echo "$TAG $label: ok=$1 tput=$2/s p99=$3ms server_cpu_us_per_op=$(awk -v a=$t0 -v b=$t1 -v hz=$hz -v n=$1 'BEGIN{printf "%.1f", (b-a)/hz*1e6/n}')"
}
run put --total 60000 put --key-size 8 --val-size 256 --key-space-size 100000
run range --total 60000 range --keys 0
kill $PID; wait $PID 2>/dev/null
