#!/usr/bin/env bash
# Instructions per operation: one fresh single-member `plinth serve` under valgrind's callgrind,
# warmed with WARMUP operations of a plinth-bench workload, then counted over TOTAL more.
# Instruction counts repeat within about 1 % from run to run where wall time on this shared
# machine moves by 10-25 %, so this is how two builds of the same source are compared when
# the difference is a few per cent. Counts are of the server's user-space instructions only
# (the kernel's socket and disk work is not in them), at valgrind's speed (about 1,000 puts/s),
# so batches are smaller than at full load.
#
# The store's periodic flush (every 10 s, `--experimental-log-purge-interval-ms`) is moved out
# of the counted window (PURGE_MS, default 1 hour): at full speed it falls once per 100,000-
# 200,000 puts, under valgrind once per ~5,000, and each one writes level-0 files that
# compactions then rewrite. Clock-driven, it was 17 % of a 40,000-put count (118,439 and 114,562
# instructions per put, against 94,947 and 94,863 without it), where a full-speed profile of the
# same workload puts RocksDB's background threads at 6 % of the server's CPU. RocksDB still
# flushes when a memtable fills, which depends on the operations alone, as at full speed.
#
# Usage: benches/callgrind.sh BINARY -- PLINTH-BENCH-WORKLOAD...
#   e.g. benches/callgrind.sh target/release/plinth -- lease-keepalive
#        benches/callgrind.sh target/release/plinth -- put --key-space-size 100000 --val-size 256
# Environment: BENCH_BIN (plinth-bench, default target/release/plinth-bench), PORT (client port
# on 127.0.0.1, default 41379; the peer port is PORT + 1), CLIENTS (10), CONNS (2),
# WARMUP (5000), TOTAL (20000), KEEP (a directory to keep the callgrind profile in, for
# callgrind_annotate), PURGE_MS (above). Needs valgrind (apt: valgrind).
# Prints one line: the workload, instructions counted, instructions per operation.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:?usage: benches/callgrind.sh BINARY -- PLINTH-BENCH-WORKLOAD...}
shift
[[ ${1:-} == -- ]] && shift
(($# > 0)) || { echo "callgrind.sh: no workload given" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
bench=${BENCH_BIN:-$root/target/release/plinth-bench}
port=${PORT:-41379}
clients=${CLIENTS:-10} conns=${CONNS:-2} warmup=${WARMUP:-5000} total=${TOTAL:-20000}
dir=$(mktemp -d "${TMPDIR:-/tmp}/callgrind.XXXXXX")
out=${KEEP:-$dir}
mkdir -p "$out"
pin=0
me=callgrind.sh
# valgrind starts the server 20-50 times slower: wait up to a minute for its first answer.
server_wrap=(valgrind --tool=callgrind "--callgrind-out-file=$out/callgrind.out.%p")
ready_tries=600
server_args=(--experimental-log-purge-interval-ms "${PURGE_MS:-3600000}")
# shellcheck source=benches/single-server.sh
source "$root/benches/single-server.sh"
run_load() { # operations, workload...
  local n=$1
  shift
  timeout 1200 "$bench" --endpoints "127.0.0.1:$port" --clients "$clients" --conns "$conns" --total "$n" \
    --json --progress never "$@" >"$dir/load.json"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["errors"] == 0 else 1)' "$dir/load.json" ||
    { echo "callgrind.sh: the workload had errors: $(cat "$dir/load.json")" >&2; exit 1; }
}
run_load "$warmup" "$@"
callgrind_control -z "$pid" >/dev/null 2>&1
run_load "$total" "$@"
callgrind_control -d "$pid" >/dev/null 2>&1
profile=$(ls "$out"/callgrind.out."$pid".* | head -n 1)
ir=$(callgrind_annotate "$profile" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$* : $ir instructions over $total operations, $((ir / total)) per operation"
