#!/usr/bin/env bash
# Noisy neighbour: how much one tenant saturating writes hurts a quiet tenant's latency.
#
# Plinth (one member, two tenants, each on its own tenant port): the quiet tenant runs the
# Kubernetes profile (`plinth-bench k8s`) at a fixed rate, first alone, then while the noisy
# tenant runs `plinth-bench put` with NOISY_CLIENTS clients as fast as the server takes them.
# The same pair against one etcd 3.5.1 whose two "tenants" are two key prefixes (the shared-etcd
# model: the profile's keys are under /registry/, the puts' keys are bare decimal numbers, so
# they never overlap; the profile's compactions compact the noisy keys too, as in that model).
#
# Prints, per server, the quiet tenant's p50/p99 alone and beside the neighbour (medians over
# RUNS runs, alone and beside alternating), the p99 rise in percent, and the neighbour's
# throughput.
#
# Usage: benches/noisy.sh [--duration S] [--runs N] [--quiet-rate R] [--noisy-clients N] [--out DIR] [--pin]
#                         [--servers plinth,etcd] [--noisy-nice N] [--quiet-rt]
#   --duration S        seconds of each quiet measurement            (DURATION, default 20)
#   --runs N            alone/beside pairs per server                (RUNS, default 2)
#   --quiet-rate R      the quiet tenant's operations per second     (QUIET_RATE, default 300)
#   --noisy-clients N   the noisy tenant's concurrent clients        (NOISY_CLIENTS, default 100)
#   --pin               servers on CPU 0, load generators on CPU 1 (taskset)
#   --servers LIST      which servers to measure, comma-separated (SERVERS, default plinth,etcd)
#   --noisy-nice N      the neighbour's load generator at nice N     (NOISY_NICE, default 0)
#   --quiet-rt          the quiet tenant's load generator at real-time priority (SCHED_FIFO 1,
#                       `chrt`; needs CAP_SYS_NICE), so that on a shared load CPU its own threads
#                       do not wait behind the neighbour's load generator: each tenant's client
#                       as if on its own machine. The servers are untouched.  (QUIET_RT=1)
# Environment: PLINTH_BIN / BENCH_BIN (prebuilt release binaries; otherwise built with
# scripts/cargo), PLINTH_CACHE (etcd cache), PORT_BASE (default 23000, below the ephemeral
# range). Everything is killed on exit; every run is bounded by a timeout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=${DURATION:-20}
RUNS=${RUNS:-2}
QUIET_RATE=${QUIET_RATE:-300}
NOISY_CLIENTS=${NOISY_CLIENTS:-100}
PORT_BASE=${PORT_BASE:-23000}
PIN=${PIN:-0}
NOISY_NICE=${NOISY_NICE:-0}
QUIET_RT=${QUIET_RT:-0}
OUT=${OUT:-}
SERVERS=${SERVERS:-plinth,etcd}
while [[ $# -gt 0 ]]; do
  case $1 in
    --duration) DURATION=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --quiet-rate) QUIET_RATE=$2; shift 2 ;;
    --noisy-clients) NOISY_CLIENTS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --pin) PIN=1; shift ;;
    --noisy-nice) NOISY_NICE=$2; shift 2 ;;
    --quiet-rt) QUIET_RT=1; shift ;;
    --servers) SERVERS=$2; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

# shellcheck source=benches/release-binaries.sh
source "$root/benches/release-binaries.sh"
etcd_bin=$("$root/tests/scripts/get-etcd.sh")
OUT=${OUT:-$(mktemp -d "${BENCH_TMP:-/tmp}/plinth-noisy-XXXXXX")}
mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

server_cpu=() load_cpu=() quiet_prio=()
if [[ $PIN == 1 ]]; then server_cpu=(taskset -c 0); load_cpu=(taskset -c 1); fi
if [[ $QUIET_RT == 1 ]]; then
  chrt -f 1 true 2>/dev/null || { echo "--quiet-rt: chrt -f 1 is not permitted here (needs CAP_SYS_NICE)" >&2; exit 2; }
  quiet_prio=(chrt -f 1)
fi
client_port=$PORT_BASE
peer_port=$((PORT_BASE + 1))
tenant_base=$((PORT_BASE + 100))
log() { echo "$*" >&2; }

wait_port() { # port, timeout seconds
  local deadline=$((SECONDS + $2))
  until "$etcd_bin/etcdctl" --endpoints "127.0.0.1:$1" --command-timeout=2s endpoint health >/dev/null 2>&1; do
    (( SECONDS < deadline )) || { echo "127.0.0.1:$1 did not become healthy" >&2; return 1; }
    sleep 0.2
  done
}

# The quiet tenant's Kubernetes profile at a fixed rate for DURATION seconds; JSON report to $2.
quiet() { # endpoint, out file
  timeout $((DURATION + 120)) "${load_cpu[@]}" "${quiet_prio[@]}" "$BENCH_BIN" --endpoints "$1" --clients 10 --conns 2 \
    --rate "$QUIET_RATE" --duration "$DURATION" --progress never --json k8s > "$2"
}

revision() { # endpoint
  "$etcd_bin/etcdctl" --endpoints "$1" --command-timeout=5s endpoint status -w json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])'
}

# Empties the quiet tenant's keyspace (the profile's keys are all under /registry/) and compacts it
# away, so that every measured run starts from the same state: the profile names its objects from
# 0 each time, and on a second run over the first run's objects its creates would all fail their
# compare and its updates find nothing to update, a different and cheaper workload.
reset_quiet() { # endpoint
  "$etcd_bin/etcdctl" --endpoints "$1" --command-timeout=60s del --prefix /registry/ > /dev/null
  "$etcd_bin/etcdctl" --endpoints "$1" --command-timeout=60s compaction --physical "$(revision "$1")" > /dev/null
}

# RUNS pairs of (alone, beside) measurements of the quiet endpoint; results under $OUT/$3.
# Beside: the neighbour's puts start 2 s before the quiet run and are killed when it ends; the
# neighbour's rate is its endpoint's revision delta over that window (less the quiet run's
# writes when both share one keyspace).
measure() { # quiet endpoint, noisy endpoint, name
  local run order mode res np rev0 rev1 t0 t1
  for run in $(seq 1 "$RUNS"); do
    # Alternate which comes first, so a drift of the machine does not favour one side.
    if (( run % 2 )); then order="alone beside"; else order="beside alone"; fi
    for mode in $order; do
      res="$OUT/$3-$mode-$run.json"
      reset_quiet "$1"
      if [[ $mode == alone ]]; then
        quiet "$1" "$res"
      else
        rev0=$(revision "$2")
        t0=$(date +%s.%N)
        timeout $((DURATION + 300)) "${load_cpu[@]}" nice -n "$NOISY_NICE" "$BENCH_BIN" --endpoints "$2" --clients "$NOISY_CLIENTS" --conns 10 \
          --duration $((DURATION + 300)) --progress never put --key-space-size 100000 --val-size 256 > /dev/null 2>&1 &
        np=$!
        sleep 2 # the neighbour reaches saturation first
        quiet "$1" "$res"
        kill "$np" 2>/dev/null || true
        wait "$np" 2>/dev/null || true
        t1=$(date +%s.%N)
        rev1=$(revision "$2")
        python3 - "$res" "$rev0" "$rev1" "$t0" "$t1" "$([[ $1 == "$2" ]] && echo shared || echo own)" \
          > "$OUT/$3-noisy-$run.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
quiet_writes = sum(r["kinds"].get(k, {}).get("ok", 0) for k in ("create", "update", "delete"))
delta = int(sys.argv[3]) - int(sys.argv[2]) - (quiet_writes if sys.argv[6] == "shared" else 0)
print(json.dumps({"throughput": delta / (float(sys.argv[5]) - float(sys.argv[4]))}))
PY
      fi
      log "  $3 $mode run $run: $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); l=r['latency_ms']; print('p50 %.2f ms, p99 %.2f ms, %.0f ops/s, %d errors, %d failed compares' % (l['p50'], l['p99'], r['throughput'], r['errors'], r['extra']['txn_conflicts']))" "$res")"
    done
  done
}

wanted() { [[ ,$SERVERS, == *,$1,* ]]; }

if wanted plinth; then
log "== Plinth: one member, tenants quiet and noisy (results in $OUT)"
"${server_cpu[@]}" "$PLINTH_BIN" serve --name p0 --data-dir "$OUT/plinth" \
  --listen-client-urls "http://127.0.0.1:$client_port" --advertise-client-urls "http://127.0.0.1:$client_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --tenant-client-port-base "$tenant_base" >> "$OUT/plinth.log" 2>&1 &
plinth_pid=$!
pids+=("$plinth_pid")
wait_port "$client_port" 60
ports=()
for t in quiet noisy; do
  "$PLINTH_BIN" tenant create "$t" --endpoints "127.0.0.1:$client_port" > /dev/null
  n=$("$PLINTH_BIN" tenant show "$t" --endpoints "127.0.0.1:$client_port" -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["number"])')
  ports+=($((tenant_base + n)))
  wait_port "$((tenant_base + n))" 60
done
measure "127.0.0.1:${ports[0]}" "127.0.0.1:${ports[1]}" plinth
kill -9 "$plinth_pid" 2>/dev/null || true
wait "$plinth_pid" 2>/dev/null || true
fi

if wanted etcd; then
log "== etcd 3.5.1: one member, the two tenants as two key prefixes"
"${server_cpu[@]}" "$etcd_bin/etcd" --name e0 --data-dir "$OUT/etcd" \
  --listen-client-urls "http://127.0.0.1:$client_port" --advertise-client-urls "http://127.0.0.1:$client_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "e0=http://127.0.0.1:$peer_port" >> "$OUT/etcd.log" 2>&1 &
etcd_pid=$!
pids+=("$etcd_pid")
wait_port "$client_port" 60
measure "127.0.0.1:$client_port" "127.0.0.1:$client_port" etcd
kill -9 "$etcd_pid" 2>/dev/null || true
wait "$etcd_pid" 2>/dev/null || true
fi

python3 - "$OUT" "$RUNS" "$SERVERS" <<'EOF'
import json, statistics, sys
out, runs, servers = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
def load(name): return json.load(open(f"{out}/{name}.json"))
print("| server | quiet p50 alone | quiet p99 alone | quiet p50 beside | quiet p99 beside | p99 rise | neighbour puts/s | quiet errors |")
print("|---|---|---|---|---|---|---|---|")
for s in (s for s in ("plinth", "etcd") if s in servers):
    med = lambda mode, q: statistics.median(load(f"{s}-{mode}-{r}")["latency_ms"][q] for r in range(1, runs + 1))
    noisy = statistics.median(load(f"{s}-noisy-{r}")["throughput"] for r in range(1, runs + 1))
    errors = sum(load(f"{s}-{m}-{r}")["errors"] for m in ("alone", "beside") for r in range(1, runs + 1))
    a99, b99 = med("alone", "p99"), med("beside", "p99")
    print(f"| {s} | {med('alone', 'p50'):.2f} ms | {a99:.2f} ms | {med('beside', 'p50'):.2f} ms | {b99:.2f} ms | "
          f"{100 * (b99 - a99) / a99:+.0f} % | {noisy:,.0f} | {errors} |")
EOF
