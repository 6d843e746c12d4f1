#!/usr/bin/env bash
# Snapshot and HashKV of a large keyspace, etcd 3.5.1 against Plinth: one fresh member of
# each, alternating, filled by etcd's own `benchmark put` (N keys of 256 B, sequential), then
# `etcdctl snapshot save` and `etcdctl endpoint hashkv` timed, and `etcdutl snapshot status`
# of each file printed.
#
# Usage: ETCD_BENCHMARK=/path/to/benchmark benches/snapshot-scale.sh [KEYS] [RUNS]
#   KEYS defaults to 1000000, RUNS (per server) to 2.
# Environment: ETCD_BENCHMARK (required: etcd's tools/benchmark binary, see BENCHMARKS.md),
# PLINTH_BIN (prebuilt plinth; built otherwise), BENCH_TMP (data dirs; default /tmp),
# PORT (client port; the peer port is PORT + 1; default 24101).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
keys=${1:-1000000}
runs=${2:-2}
[[ -x ${ETCD_BENCHMARK:-} ]] || { echo "set ETCD_BENCHMARK to the etcd benchmark binary" >&2; exit 2; }
if [[ -z ${PLINTH_BIN:-} ]]; then
  "$root/scripts/cargo" build --release -q -p grpc-api --bin plinth
  PLINTH_BIN=$root/target/release/plinth
fi
bin=$("$root/tests/scripts/get-etcd.sh")
port=${PORT:-24101}
peer=$((port + 1))
tmp=$(mktemp -d "${BENCH_TMP:-/tmp}/snapshot-scale.XXXXXX")
server=
cleanup() {
  [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
now() { date +%s.%N; }

for ((run = 1; run <= runs; run++)); do
  for kind in etcd plinth; do
    dir=$tmp/$kind-$run
    flags=(--data-dir "$dir/d" --listen-client-urls "http://127.0.0.1:$port"
      --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$peer"
      --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "default=http://127.0.0.1:$peer")
    mkdir -p "$dir"
    if [[ $kind == etcd ]]; then
      "$bin/etcd" "${flags[@]}" --quota-backend-bytes 8000000000 >"$dir/log" 2>&1 &
    else
      "$PLINTH_BIN" serve "${flags[@]}" >"$dir/log" 2>&1 &
    fi
    server=$!
    for _ in $(seq 100); do
      "$bin/etcdctl" --endpoints "127.0.0.1:$port" endpoint health >/dev/null 2>&1 && break
      sleep 0.1
    done
    "$ETCD_BENCHMARK" --endpoints "127.0.0.1:$port" --conns 10 --clients 100 put --total "$keys" \
      --key-size 16 --val-size 256 --sequential-keys --key-space-size "$keys" >"$dir/fill.txt" 2>&1
    t0=$(now)
    "$bin/etcdctl" --endpoints "127.0.0.1:$port" snapshot save "$dir/s.db" >/dev/null 2>&1
    t1=$(now)
    "$bin/etcdctl" --endpoints "127.0.0.1:$port" endpoint hashkv --command-timeout 300s >/dev/null
    t2=$(now)
    status=$("$bin/etcdutl" snapshot status "$dir/s.db" -w json)
    printf '%s run %d: snapshot save %.2f s, %s bytes; hashkv %.2f s; etcdutl status %s\n' \
      "$kind" "$run" "$(echo "$t1 - $t0" | bc)" "$(stat -c %s "$dir/s.db")" "$(echo "$t2 - $t1" | bc)" "$status"
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=
    rm -rf "$dir"
  done
done
