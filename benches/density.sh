#!/usr/bin/env bash
# Tenant density: many tenants on one 3-member Plinth cluster on this machine, against the
# price of one idle 3-member etcd cluster (what etcd-per-tenant costs per tenant).
#
# Prints, for Plinth with TENANTS tenants:
#   time to create them (plinth tenant create, one after the other), RSS per member after
#   creation and after IDLE seconds idle, idle CPU per member (% of one core over IDLE s),
#   restart time of one member (kill -9, start, until every tenant port answers), and the
#   first-write latency of idle tenants (p50/p99/max): SAMPLE of them with `etcdctl put`,
#   process start included, each followed at once by a second write while awake (etcdctl's
#   own share), and SAMPLE others with a one-put plinth-bench run, the request alone;
# and for etcd 3.5.1: RSS and idle CPU per member of one idle 3-member cluster.
#
# Usage: benches/density.sh [--tenants N] [--idle S] [--sample N] [--out DIR]
# Environment: PLINTH_BIN / BENCH_BIN (prebuilt release binaries; otherwise built with scripts/cargo),
# PLINTH_CACHE (etcd cache), PORT_BASE (default 20000; members use PORT_BASE..+9, tenant
# ports start at PORT_BASE+100 + 2000*member). Everything is killed on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
TENANTS=${TENANTS:-1000}
IDLE=${IDLE:-30}
SAMPLE=${SAMPLE:-50}
OUT=${OUT:-}
# Below the ephemeral range (32768-60999 on Linux): a member's own outgoing peer connection
# can otherwise hold a tenant's port as its local port, and that tenant never listens.
PORT_BASE=${PORT_BASE:-20000}
while [[ $# -gt 0 ]]; do
  case $1 in
    --tenants) TENANTS=$2; shift 2 ;;
    --idle) IDLE=$2; shift 2 ;;
    --sample) SAMPLE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
(( TENANTS < 2000 )) || { echo "at most 1999 tenants (tenant port ranges of the members)" >&2; exit 2; }
(( 2 * SAMPLE <= TENANTS )) || { echo "--sample is at most half of --tenants (each way writes its own idle tenants)" >&2; exit 2; }

# shellcheck source=benches/release-binaries.sh
source "$root/benches/release-binaries.sh"
etcd_bin=$("$root/tests/scripts/get-etcd.sh")
OUT=${OUT:-$(mktemp -d "${BENCH_TMP:-/tmp}/plinth-density-XXXXXX")}
mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

client_port() { echo $((PORT_BASE + $1)); }
peer_port() { echo $((PORT_BASE + 5 + $1)); }
tenant_base() { echo $((PORT_BASE + 100 + 2000 * $1)); }

# ticks of CPU (utime + stime) of a pid, and its RSS in KiB
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)

start_plinth() { # member index 0..2
  local i=$1 cluster=""
  for j in 0 1 2; do cluster+="p$j=http://127.0.0.1:$(peer_port $j),"; done
  "$PLINTH_BIN" serve --name "p$i" --data-dir "$OUT/plinth-$i" \
    --listen-client-urls "http://127.0.0.1:$(client_port "$i")" --advertise-client-urls "http://127.0.0.1:$(client_port "$i")" \
    --listen-peer-urls "http://127.0.0.1:$(peer_port "$i")" --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$i")" \
    --initial-cluster "${cluster%,}" --tenant-client-port-base "$(tenant_base "$i")" \
    >> "$OUT/plinth-$i.log" 2>&1 &
  echo $!
}

wait_port() { # port, timeout seconds
  local deadline=$((SECONDS + $2))
  until "$etcd_bin/etcdctl" --endpoints "127.0.0.1:$1" --command-timeout=2s endpoint health >/dev/null 2>&1; do
    (( SECONDS < deadline )) || { echo "127.0.0.1:$1 did not become healthy" >&2; return 1; }
    sleep 0.2
  done
}

idle_cpu() { # pids...: prints % of one core of each over IDLE seconds
  local before=() after=() p
  for p in "$@"; do before+=("$(cpu_ticks "$p")"); done
  sleep "$IDLE"
  for p in "$@"; do after+=("$(cpu_ticks "$p")"); done
  local k
  for k in "${!before[@]}"; do
    awk -v a="${after[$k]}" -v b="${before[$k]}" -v hz="$hz" -v s="$IDLE" 'BEGIN { printf "%.1f ", 100 * (a - b) / hz / s }'
  done
}

pctl() { # label: percentiles of the microsecond figures on stdin
  sort -n | awk -v l="$1" '{ a[NR] = $1 } END { printf "%s: p50 %.1f ms, p99 %.1f ms, max %.1f ms\n", l, a[int(NR * 0.5 + 0.5)] / 1000, a[int(NR * 0.99 + 0.5)] / 1000, a[NR] / 1000 }'
}

echo "== Plinth: 3 members, $TENANTS tenants (results in $OUT)"
plinth_pids=()
for i in 0 1 2; do plinth_pids+=("$(start_plinth $i)"); done
pids+=("${plinth_pids[@]}")
wait_port "$(client_port 0)" 60
t0=$(date +%s.%N)
create_us=()
for t in $(seq 1 "$TENANTS"); do
  s=$(date +%s%N)
  "$PLINTH_BIN" tenant create "t$t" --endpoints "127.0.0.1:$(client_port 0)" > /dev/null
  e=$(date +%s%N)
  create_us+=($(( (e - s) / 1000 )))
done
t1=$(date +%s.%N)
echo "create: $TENANTS tenants in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
printf '%s\n' "${create_us[@]}" | pctl "one create (plinth tenant create, incl. process start; it answers once the tenant has a leader and its port is open on the member asked)"
echo "RSS after creation (MiB): $(for p in "${plinth_pids[@]}"; do awk -v k="$(rss_kib "$p")" 'BEGIN { printf "%.0f ", k / 1024 }'; done)"
echo "idle CPU over ${IDLE}s (% of a core per member): $(idle_cpu "${plinth_pids[@]}")"
echo "RSS idle (MiB): $(for p in "${plinth_pids[@]}"; do awk -v k="$(rss_kib "$p")" 'BEGIN { printf "%.0f ", k / 1024 }'; done)"

# First write of idle tenants, through member 0's tenant ports, two ways: `etcdctl put` timed
# from outside (its process start, about 30 ms here, included), and a one-put `plinth-bench`
# run, whose own timer covers the request alone (its connection is set up first; the first
# request still waits for it to be ready, as any client's does). Each way writes its own
# SAMPLE idle tenants. Each etcdctl write is followed at once by a second one to the same
# tenant, still awake (a group sleeps after 2 s idle): etcdctl's cost without a wake.
timed_put() { # tenant, key: prints the microseconds of one `etcdctl put`
  local s e
  s=$(date +%s%N)
  "$etcd_bin/etcdctl" --endpoints "127.0.0.1:$(( $(tenant_base 0) + $1 ))" put "$2" x > /dev/null
  e=$(date +%s%N)
  echo $(( (e - s) / 1000 ))
}
: > "$OUT/first-write-etcdctl-us.txt"
: > "$OUT/second-write-etcdctl-us.txt"
for t in $(seq 1 "$SAMPLE"); do
  timed_put "$t" first >> "$OUT/first-write-etcdctl-us.txt"
  timed_put "$t" second >> "$OUT/second-write-etcdctl-us.txt"
done
pctl "first write of $SAMPLE idle tenants (etcdctl, incl. process start)" < "$OUT/first-write-etcdctl-us.txt"
pctl "a second write to each at once, awake (etcdctl, incl. process start)" < "$OUT/second-write-etcdctl-us.txt"
for t in $(seq $(( SAMPLE + 1 )) $(( 2 * SAMPLE ))); do
  "$BENCH_BIN" --endpoints "127.0.0.1:$(( $(tenant_base 0) + t ))" --total 1 --json --progress never put --key-space-size 1 |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["latency_ms"]["max"] * 1000))'
done > "$OUT/first-write-us.txt"
pctl "first write of $SAMPLE other idle tenants (plinth-bench, the request alone)" < "$OUT/first-write-us.txt"

# Restart of member 2.
kill -9 "${plinth_pids[2]}"
s=$(date +%s.%N)
plinth_pids[2]=$(start_plinth 2)
pids+=("${plinth_pids[2]}")
wait_port "$(( $(tenant_base 2) + TENANTS ))" 300
e=$(date +%s.%N)
echo "restart of a member hosting $TENANTS tenants: $(awk -v a="$s" -v b="$e" 'BEGIN { printf "%.1f", b - a }') s until its last tenant port answers"
echo "RSS after restart (MiB): $(for p in "${plinth_pids[@]}"; do awk -v k="$(rss_kib "$p")" 'BEGIN { printf "%.0f ", k / 1024 }'; done)"
for p in "${plinth_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done

echo "== etcd 3.5.1: one idle 3-member cluster (the price of one tenant with etcd-per-tenant)"
etcd_pids=()
cluster=""
for j in 0 1 2; do cluster+="e$j=http://127.0.0.1:$(peer_port $j),"; done
for i in 0 1 2; do
  "$etcd_bin/etcd" --name "e$i" --data-dir "$OUT/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:$(client_port "$i")" --advertise-client-urls "http://127.0.0.1:$(client_port "$i")" \
    --listen-peer-urls "http://127.0.0.1:$(peer_port "$i")" --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$i")" \
    --initial-cluster "${cluster%,}" >> "$OUT/etcd-$i.log" 2>&1 &
  etcd_pids+=($!)
done
pids+=("${etcd_pids[@]}")
wait_port "$(client_port 0)" 60
"$etcd_bin/etcdctl" --endpoints "127.0.0.1:$(client_port 0)" put first x > /dev/null
echo "idle CPU over ${IDLE}s (% of a core per member): $(idle_cpu "${etcd_pids[@]}")"
echo "RSS idle (MiB): $(for p in "${etcd_pids[@]}"; do awk -v k="$(rss_kib "$p")" 'BEGIN { printf "%.0f ", k / 1024 }'; done)"
