#!/usr/bin/env bash
# Backups: throughput of a full backup, the write latency a running backup costs, and the
# time to restore, on one single-member Plinth on this machine.
#
# Loads KEYS keys (KEY_SIZE-byte keys, VAL_SIZE-byte values) with plinth-bench, then prints:
#   full backup of the tenant (plinth backup now --full): seconds, keys/s, MB/s of logical
#   data (keys + values) and of the object written;
#   put throughput and p50/p99 (plinth-bench put over min(KEYS, 100000) keys, CLIENTS clients,
#   DURATION s) without and with full backups running back to back, RUNS runs each,
#   alternating;
#   offline restore of the newest backup (plinth restore) into a new data dir: seconds, keys/s.
#
# Usage: benches/backup.sh [--keys N] [--runs N] [--duration S] [--out DIR]
# Environment: PLINTH_BIN, BENCH_BIN (prebuilt release binaries; otherwise built with
# scripts/cargo), KEY_SIZE (32), VAL_SIZE (256), CLIENTS (100), PORT (42379). Everything is
# killed on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
KEYS=${KEYS:-1000000}
RUNS=${RUNS:-2}
DURATION=${DURATION:-15}
KEY_SIZE=${KEY_SIZE:-32}
VAL_SIZE=${VAL_SIZE:-256}
CLIENTS=${CLIENTS:-100}
PORT=${PORT:-42379}
OUT=${OUT:-}
while [[ $# -gt 0 ]]; do
  case $1 in
    --keys) KEYS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

# shellcheck source=benches/release-binaries.sh
source "$root/benches/release-binaries.sh"
OUT=${OUT:-$(mktemp -d "${BENCH_TMP:-/tmp}/plinth-backup-XXXXXX")}
mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
endpoint=127.0.0.1:$PORT

"$PLINTH_BIN" serve --data-dir "$OUT/data" \
  --listen-client-urls "http://$endpoint" --advertise-client-urls "http://$endpoint" \
  --listen-peer-urls "http://127.0.0.1:$((PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((PORT + 1))" \
  --initial-cluster "default=http://127.0.0.1:$((PORT + 1))" \
  --backup-dir "$OUT/backups" --backup-full-interval 1000h --backup-delta-interval 1000h \
  --quota-backend-bytes $((16 << 30)) >> "$OUT/plinth.log" 2>&1 &
pids+=($!)
disown
deadline=$((SECONDS + 60))
until "$PLINTH_BIN" backup list --backup-dir "$OUT/backups" 2>/dev/null | grep -q full; do
  (( SECONDS < deadline )) || { echo "plinth did not start (log: $OUT/plinth.log)" >&2; exit 1; }
  sleep 0.2
done

json_field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }
now_s() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

echo "== loading $KEYS keys ($KEY_SIZE B keys, $VAL_SIZE B values; results in $OUT)"
"$BENCH_BIN" --endpoints "$endpoint" --conns 10 --clients "$CLIENTS" --total "$KEYS" --progress never put \
  --sequential-keys --key-space-size "$KEYS" --key-size "$KEY_SIZE" --val-size "$VAL_SIZE" > /dev/null

t0=$(now_s)
full=$("$PLINTH_BIN" backup now --endpoints "$endpoint" --full -w json)
t1=$(now_s)
secs=$(elapsed "$t0" "$t1")
size=$(echo "$full" | json_field 'd["backups"][-1]["size_bytes"]')
records=$(echo "$full" | json_field 'd["backups"][-1]["records"]')
logical=$((KEYS * (KEY_SIZE + VAL_SIZE)))
echo "full backup: $secs s for $records records; $(awk -v k="$KEYS" -v s="$secs" 'BEGIN { printf "%.0f", k / s }') keys/s;" \
  "$(awk -v b="$logical" -v s="$secs" 'BEGIN { printf "%.1f", b / s / 1e6 }') MB/s of keys and values," \
  "object $(awk -v b="$size" 'BEGIN { printf "%.1f", b / 1e6 }') MB ($(awk -v b="$size" -v s="$secs" 'BEGIN { printf "%.1f", b / s / 1e6 }') MB/s)"

space=$(( KEYS < 100000 ? KEYS : 100000 ))
put_run() { # label
  "$BENCH_BIN" --endpoints "$endpoint" --conns 10 --clients "$CLIENTS" --duration "$DURATION" --progress never --json put \
    --key-space-size "$space" --key-size "$KEY_SIZE" --val-size "$VAL_SIZE" > "$OUT/put-$1.json"
  local tput p50 p99
  tput=$(json_field 'round(d["throughput"])' < "$OUT/put-$1.json")
  p50=$(json_field 'd["latency_ms"]["p50"]' < "$OUT/put-$1.json")
  p99=$(json_field 'd["latency_ms"]["p99"]' < "$OUT/put-$1.json")
  echo "put $1: $tput/s, p50 $p50 ms, p99 $p99 ms"
}

for run in $(seq 1 "$RUNS"); do
  put_run "without-backup-$run"
  rm -f "$OUT/stop"
  ( until [[ -f $OUT/stop ]]; do "$PLINTH_BIN" backup now --endpoints "$endpoint" --full -w json > /dev/null || true; done ) &
  loop=$!
  put_run "with-backup-$run"
  touch "$OUT/stop"
  wait "$loop"
done
echo "backups taken: $(grep -c 'backup taken' "$OUT/plinth.log")"

kill -9 "${pids[0]}" 2>/dev/null || true
t0=$(now_s)
restore=$("$PLINTH_BIN" restore --backup-dir "$OUT/backups" --data-dir "$OUT/restored" --name r \
  --initial-cluster r=http://127.0.0.1:1 --initial-advertise-peer-urls http://127.0.0.1:1 -w json)
t1=$(now_s)
secs=$(elapsed "$t0" "$t1")
keys=$(echo "$restore" | json_field 'd["keys"]')
echo "restore: $keys keys in $secs s ($(awk -v k="$keys" -v s="$secs" 'BEGIN { printf "%.0f", k / s }') keys/s)"
