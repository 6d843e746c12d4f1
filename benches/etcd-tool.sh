#!/usr/bin/env bash
# Plinth against etcd 3.5.1 measured with etcd's own load generator, `tools/benchmark` of the
# etcd repository (built separately: it is Go and not part of this repository), so the
# figures do not depend on plinth-bench.
#
# Each run starts fresh members (etcd or Plinth, same flags, fsync on; one unless --nodes) on
# their own data dirs, runs one `benchmark` invocation against it, and stops it; servers alternate within a
# run and the order flips every run. Prints, per workload, each server's median Requests/sec
# and median p50 / p99 (from the tool's latency distribution), the ratio plinth/etcd, the
# server's CPU per request (from /proc, over the tool's run) and how busy the tool kept its
# cores (CPU seconds / wall seconds: near 1.0 with --pin means the tool, on its one CPU, is
# the limit, not the server).
#
# Usage: ETCD_BENCHMARK=/path/to/benchmark benches/etcd-tool.sh [--runs N] [--pin]
#          [--workloads a,b] [--scale F]
#   --runs N       runs per workload and server (default 2)
#   --pin          the server on CPU 0 and the tool on CPU 1 (taskset), as compare.sh --pin
#   --workloads    subset of the names below (default all)
#   --scale F      multiply every --total (default 1; the totals make a run 4-10 s on a
#                  2-core machine)
#   --nodes N      members per server (default 1); with 3, the tool spreads its connections
#                  over every member, as compare.sh's 3-node runs do, and the CPU column sums
#                  the members
# Environment: ETCD_BENCHMARK (required), PLINTH_BIN (prebuilt plinth; built otherwise), ETCD
# (another etcd server binary; default etcd 3.5.1 from tests/scripts/get-etcd.sh),
# PLINTH_CACHE (etcd cache), PORT_BASE (default 34379), BENCH_TMP (default /tmp).
# Every server is stopped on exit; every run is bounded by a timeout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
me=etcd-tool.sh
RUNS=2 PIN=0 WORKLOADS="" SCALE=1 NODES=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --pin) PIN=1; shift ;;
    --workloads) WORKLOADS=$2; shift 2 ;;
    --scale) SCALE=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    *) echo "$me: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -x ${ETCD_BENCHMARK:-} ]] || { echo "$me: set ETCD_BENCHMARK to etcd's benchmark binary" >&2; exit 2; }
if [[ -z ${PLINTH_BIN:-} ]]; then
  "$root/scripts/cargo" build --release -p grpc-api --bin plinth >&2
  PLINTH_BIN=$root/target/release/plinth
fi
# ETCD names another etcd server binary to compare with (it must take the flags below).
ETCD=${ETCD:-$("$root/tests/scripts/get-etcd.sh")/etcd}
PORT=${PORT_BASE:-34379}
tmp=$(mktemp -d "${BENCH_TMP:-/tmp}/etcd-tool.XXXXXX")
servers=()
stop() {
  local p
  for p in ${servers[@]+"${servers[@]}"}; do kill "$p" 2>/dev/null || true; done
  for p in ${servers[@]+"${servers[@]}"}; do wait "$p" 2>/dev/null || true; done
  servers=()
}
trap 'stop; rm -rf "$tmp"' EXIT

# name | benchmark arguments (global flags, then the command) | setup
# The put, txn-put and range rows are the ones of issue 15's table; the key space and value
# size are compare.sh's. `range` reads one key of 256 B, written before the run.
ALL=(
  "put-1c|--conns 1 --clients 1 put --total 20000 --key-size 8 --val-size 256 --key-space-size 100000|"
  "put-100c|--conns 10 --clients 100 put --total 200000 --key-size 8 --val-size 256 --key-space-size 100000|"
  "range-l-100c|--conns 10 --clients 100 range foo --total 200000 --consistency l|foo"
  "range-s-100c|--conns 10 --clients 100 range foo --total 300000 --consistency s|foo"
  "txn-put-100c|--conns 10 --clients 100 txn-put --total 100000 --txn-ops 4 --key-size 8 --val-size 256 --key-space-size 100000|"
  "txn-put-1op-100c|--conns 10 --clients 100 txn-put --total 200000 --txn-ops 1 --key-size 8 --val-size 256 --key-space-size 100000|"
  "lease-keepalive|--conns 10 --clients 100 lease-keepalive --total 200000|"
  "watch-sat|--conns 10 --clients 100 watch --streams 10 --watch-per-stream 100 --watched-key-total 10 --key-space-size 10 --sequential-keys --put-rate 20000 --put-total 50000|"
)
# watch-sat is the issue's saturated watch row: 1,000 watchers (10 streams of 100) on 10 keys,
# puts at up to 20,000/s, each put delivered to 100 watchers; its figures (and its CPU per
# request) are per event received, from the tool's second summary.
pin_server=() pin_tool=()
if [[ $PIN == 1 ]]; then pin_server=(taskset -c 0) pin_tool=(taskset -c 1); fi

ENDPOINTS=$(for ((i = 0; i < NODES; i++)); do echo "127.0.0.1:$((PORT + 10 * i))"; done | paste -sd,)
start() { # kind (etcd|plinth)
  local i cluster="" cport pport dir
  for ((i = 0; i < NODES; i++)); do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((PORT + 10 * i + 1))"; done
  for ((i = 0; i < NODES; i++)); do
    cport=$((PORT + 10 * i)) pport=$((PORT + 10 * i + 1)) dir=$tmp/data-m$i
    rm -rf "$dir"
    local args=(--name "m$i" --data-dir "$dir"
      --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport"
      --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport"
      --initial-cluster "$cluster")
    if [[ $1 == etcd ]]; then
      "${pin_server[@]}" "$ETCD" "${args[@]}" >"$tmp/server-m$i.log" 2>&1 &
    else
      "${pin_server[@]}" "$PLINTH_BIN" serve "${args[@]}" >"$tmp/server-m$i.log" 2>&1 &
    fi
    servers+=($!)
  done
  # Ready once the first member's /health reports a leader.
  for _ in $(seq 150); do
    if curl -sf -m 2 "http://127.0.0.1:$PORT/health" | grep -q '"health":"true"'; then return; fi
    sleep 0.1
  done
  echo "$me: $1 did not answer; its first member's log:" >&2
  cat "$tmp/server-m0.log" >&2
  exit 1
}

# CPU ticks (user + system) of every member.
ticks() {
  local p t=0
  for p in "${servers[@]}"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
  echo "$t"
}

# One invocation; prints "rps p50_ms p99_ms".
measure() { # kind, benchmark args, setup key
  local kind=$1 setup=$3 out total
  local -a args
  read -r -a args <<<"$2"
  # --total scaled.
  for i in "${!args[@]}"; do
    if [[ ${args[$i]} == --total || ${args[$i]} == --put-total ]]; then
      total=${args[$((i + 1))]}
      args[i + 1]=$(awk -v t="$total" -v s="$SCALE" 'BEGIN { printf "%d", t * s }')
      # A put of the watch row is delivered to 100 watchers.
      if [[ ${args[$i]} == --put-total ]]; then total=$((total * 100)); fi
    fi
  done
  start "$kind"
  if [[ -n $setup ]]; then
    # `benchmark put` writes binary keys, so the key `range` reads is written over the JSON
    # gateway (both servers serve it).
    curl -sf -X POST "http://127.0.0.1:$PORT/v3/kv/put" \
      -d "{\"key\":\"$(printf %s "$setup" | base64)\",\"value\":\"$(head -c 256 /dev/zero | tr '\0' v | base64 -w0)\"}" >/dev/null
  fi
  local t0 t1 wall_start wall_end
  t0=$(ticks)
  wall_start=$(date +%s.%N)
  # The tool's own CPU (user + system seconds) from bash's `time`, to show when the load
  # generator rather than the server is the limit.
  out=$( { TIMEFORMAT='TOOLCPU %U %S'; time timeout 300 "${pin_tool[@]}" "$ETCD_BENCHMARK" \
    --endpoints "$ENDPOINTS" --precise "${args[@]}" 2>/dev/null; } 2>&1)
  wall_end=$(date +%s.%N)
  t1=$(ticks)
  stop
  awk -v ticks=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v ops="$total" -v scale="$SCALE" \
    -v wall="$(awk -v a="$wall_start" -v b="$wall_end" 'BEGIN { print b - a }')" '
    /Requests\/sec:/ { rps = $2 }
    /^ *50% in/ { p50 = $3 }
    /^ *99% in/ { p99 = $3 }
    /^TOOLCPU/ { tool = $2 + $3 }
    END {
      if (rps == "") exit 1
      n = ops * scale
      printf "%s %.3f %.3f %.1f %.2f\n", rps, p50 * 1000, p99 * 1000, ticks / hz / n * 1e6, tool / wall
    }' <<<"$out"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

printf '| workload | etcd req/s | plinth req/s | plinth/etcd | etcd p50 ms | plinth p50 ms | etcd p99 ms | plinth p99 ms | server CPU µs/op etcd / plinth | tool cores busy etcd / plinth |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for w in "${ALL[@]}"; do
  IFS='|' read -r name args setup <<<"$w"
  if [[ -n $WORKLOADS && ,$WORKLOADS, != *,$name,* ]]; then continue; fi
  : >"$tmp/etcd.txt"
  : >"$tmp/plinth.txt"
  for run in $(seq "$RUNS"); do
    order=(etcd plinth)
    if ((run % 2 == 0)); then order=(plinth etcd); fi
    for kind in "${order[@]}"; do
      line=$(measure "$kind" "$args" "$setup")
      echo "[$me $(date +%T)] $name run $run $kind: $line" >&2
      echo "$line" >>"$tmp/$kind.txt"
    done
  done
  e_rps=$(cut -d' ' -f1 "$tmp/etcd.txt" | median) p_rps=$(cut -d' ' -f1 "$tmp/plinth.txt" | median)
  e50=$(cut -d' ' -f2 "$tmp/etcd.txt" | median) p50=$(cut -d' ' -f2 "$tmp/plinth.txt" | median)
  e99=$(cut -d' ' -f3 "$tmp/etcd.txt" | median) p99=$(cut -d' ' -f3 "$tmp/plinth.txt" | median)
  ecpu=$(cut -d' ' -f4 "$tmp/etcd.txt" | median) pcpu=$(cut -d' ' -f4 "$tmp/plinth.txt" | median)
  etool=$(cut -d' ' -f5 "$tmp/etcd.txt" | median) ptool=$(cut -d' ' -f5 "$tmp/plinth.txt" | median)
  awk -v n="$name" -v er="$e_rps" -v pr="$p_rps" -v e50="$e50" -v p50="$p50" -v e99="$e99" -v p99="$p99" \
    -v ec="$ecpu" -v pc="$pcpu" -v et="$etool" -v pt="$ptool" \
    'BEGIN { printf "| %s | %.0f | %.0f | %.2f | %.3f | %.3f | %.3f | %.3f | %.1f / %.1f | %.2f / %.2f |\n", n, er, pr, pr / er, e50, p50, e99, p99, ec, pc, et, pt }'
done
