#!/usr/bin/env bash
# A write through a follower of a sleeping (hibernated) group, on one 3-member Plinth cluster
# (the default group; election timeout 1 s, so a group sleeps after 2 s idle).
#
# Each of SAMPLE rounds waits until the group sleeps on every member (plinth_raft_groups_awake
# is 0 everywhere), then times one put through a follower with plinth-bench (--total 1, a
# fresh connection made before the put is timed). With --kill-leader, the round first kills
# the leader with SIGKILL (then restarts it once the write was answered): the time is then
# that of a write whose follower still names the dead leader. Prints each round's result
# (ok, or the error and when it came) and latency, then p50/p90/max over the writes served.
#
# Usage: benches/wake-write.sh [--sample N] [--kill-leader]
# Environment: PLINTH_BIN, BENCH_BIN (prebuilt release binaries; otherwise built with
# scripts/cargo), PORT_BASE (default 21000; member i listens on PORT_BASE+10i and +10i+1),
# BENCH_TMP (parent of the data dirs, default /tmp). Everything is killed on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
SAMPLE=${SAMPLE:-20}
KILL=0
PORT_BASE=${PORT_BASE:-21000}
while [[ $# -gt 0 ]]; do
  case $1 in
    --sample) SAMPLE=$2; shift 2 ;;
    --kill-leader) KILL=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
# shellcheck source=benches/release-binaries.sh
source "$root/benches/release-binaries.sh"
command -v curl > /dev/null || { echo "wake-write.sh: curl is not installed" >&2; exit 2; }
dir=$(mktemp -d "${BENCH_TMP:-/tmp}/plinth-wake-write-XXXXXX")
pids=(0 0 0)
cleanup() {
  exec 2> /dev/null # no "Killed" job notices
  for p in "${pids[@]}"; do ((p == 0)) || kill -9 "$p" 2>/dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

client_port() { echo $((PORT_BASE + 10 * $1)); }
peer_port() { echo $((PORT_BASE + 10 * $1 + 1)); }
cluster=""
for j in 0 1 2; do cluster+="w$j=http://127.0.0.1:$(peer_port $j),"; done
start() { # member index
  local i=$1
  "$PLINTH_BIN" serve --name "w$i" --data-dir "$dir/w$i" \
    --listen-client-urls "http://127.0.0.1:$(client_port "$i")" --advertise-client-urls "http://127.0.0.1:$(client_port "$i")" \
    --listen-peer-urls "http://127.0.0.1:$(peer_port "$i")" --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$i")" \
    --initial-cluster "${cluster%,}" >> "$dir/w$i.log" 2>&1 &
  pids[i]=$!
}
metric() { # member, metric name: its value, or nothing while the member does not answer
  curl -s --max-time 2 "http://127.0.0.1:$(client_port "$1")/metrics" | awk -v m="$2" '$1 == m { print $2 }' || true
}
leader() { # the member every running member names as leader... or nothing
  local i
  for i in 0 1 2; do [[ $(metric "$i" etcd_server_is_leader) == 1 ]] && { echo "$i"; return; }; done
}
wait_for() { # seconds, what, command...
  local limit=$1 what=$2 t=0
  shift 2
  until "$@"; do
    ((t++ < limit * 10)) || { echo "wake-write.sh: $what not within ${limit}s" >&2; exit 1; }
    sleep 0.1
  done
}
has_leader() { [[ -n $(leader) ]]; }
all_asleep() {
  local i a
  for i in 0 1 2; do a=$(metric "$i" plinth_raft_groups_awake); [[ $a == 0 ]] || return 1; done
}

for i in 0 1 2; do start "$i"; done
wait_for 30 "a leader" has_leader
: > "$dir/lat"
for s in $(seq "$SAMPLE"); do
  wait_for 60 "every member asleep" all_asleep
  l=$(leader)
  f=$(((l + 1) % 3))
  if ((KILL)); then
    kill -9 "${pids[l]}"
    wait "${pids[l]}" 2> /dev/null || true
  fi
  out=$("$BENCH_BIN" --endpoints "127.0.0.1:$(client_port "$f")" --total 1 --timeout 30 --progress never --json put)
  read -r ok ms err < <(python3 -c 'import json,sys
d = json.loads(sys.argv[1])
errs = list(d["errors_by_message"]) or ["-"]
print(d["ok"], d["latency_ms"]["max"] if d["ok"] else round(d["elapsed_s"] * 1000, 1), errs[0].replace(" ", "_"))' "$out")
  echo "round $s: leader w$l, write through w$f: ok=$ok ${ms} ms ${err}"
  ((ok == 1)) && echo "$ms" >> "$dir/lat"
  if ((KILL)); then
    start "$l"
    wait_for 60 "the killed member back with a leader" bash -c "[[ \$(curl -s --max-time 2 http://127.0.0.1:$(client_port "$l")/metrics | awk '\$1 == \"etcd_server_has_leader\" { print \$2 }') == 1 ]]"
  fi
done
sort -n "$dir/lat" | awk -v n="$SAMPLE" '{ a[NR] = $1 } END {
  if (NR == 0) { printf "answered 0 of %d\n", n; exit }
  printf "answered %d of %d: p50 %.2f ms, p90 %.2f ms, max %.2f ms\n", NR, n, a[int(NR * 0.5 + 0.5)], a[int(NR * 0.9 + 0.5)], a[NR] }'
