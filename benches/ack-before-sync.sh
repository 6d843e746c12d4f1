#!/usr/bin/env bash
# Does a single-member server answer a write before the WAL fdatasync that makes it durable
# has returned? One client puts one key at a time (its next put waits for the answer), so
# while an fdatasync runs the only unanswered put is the one it persists; any write to a
# client socket during it is that put's answer (or HTTP/2 housekeeping on the same socket).
# The syscalls are recorded with `perf record` on the syscalls tracepoints, which, unlike
# strace, barely slows the server.
#
# etcd before 3.5.5 does answer early in a one-member cluster (its apply runs beside the WAL
# save; etcd-io/etcd#14370): this is how much of the single-write latency it saves.
#
# Usage: benches/ack-before-sync.sh [--pin] BINARY
#   BINARY   a `plinth` or an `etcd` binary (told apart by its name)
#   --pin    server on CPU 0, load generator on CPU 1 (taskset)
# Environment: BENCH_BIN (plinth-bench, default target/release/plinth-bench), PORT (client
# port on 127.0.0.1, default 40379; the peer port is PORT + 1), SECONDS_TRACED (default 2).
# Needs `perf` with access to tracepoints (root, or kernel.perf_event_paranoid <= -1).
# Prints one line: server, fdatasyncs, writes to client sockets, and how many of them (and
# what share) happened while a WAL fdatasync was running; then the put's rate and p50.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pin=0
if [[ ${1:-} == --pin ]]; then pin=1; shift; fi
bin=${1:?usage: benches/ack-before-sync.sh [--pin] BINARY}
bench=${BENCH_BIN:-$root/target/release/plinth-bench}
port=${PORT:-40379}
traced=${SECONDS_TRACED:-2}
command -v perf >/dev/null || { echo "ack-before-sync.sh: needs perf" >&2; exit 1; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/ack-before-sync.XXXXXX")
me=ack-before-sync.sh
# shellcheck source=benches/single-server.sh
source "$root/benches/single-server.sh"
"${bench_pin[@]}" "$bench" --endpoints "127.0.0.1:$port" --json --progress never --clients 1 --conns 1 \
  --duration $((traced + 3)) put --key-space-size 100000 --val-size 256 >"$dir/out.json" &
load=$!
sleep 1.5
perf record -q -e syscalls:sys_enter_fdatasync,syscalls:sys_exit_fdatasync \
  -e syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg \
  -p "$pid" -o "$dir/perf.data" -- sleep "$traced" >/dev/null 2>&1
wait $load
perf script -i "$dir/perf.data" -F tid,time,event,trace >"$dir/trace.txt" 2>/dev/null
python3 - "$dir/trace.txt" "$dir/out.json" "$(basename "$bin")" <<'PY'
import json, re, sys
lines = open(sys.argv[1]).read().splitlines()
fd = lambda l: re.search(r'fd: (0x[0-9a-f]+)', l).group(1)
tid = lambda l: l.split()[0]
# The WAL is the fd fdatasync'ed most often (one per put); another thread's syncs of another
# fd (Plinth's zero-ahead thread) are not the put's.
counts = {}
for l in lines:
    if 'sys_enter_fdatasync' in l:
        counts[fd(l)] = counts.get(fd(l), 0) + 1
wal = max(counts, key=counts.get) if counts else None
synced = set(counts)
in_sync = {}  # thread -> whether it is inside an fdatasync of the WAL
syncs = writes = early = 0
for l in lines:
    if 'sys_enter_fdatasync' in l:
        in_sync[tid(l)] = fd(l) == wal
        syncs += fd(l) == wal
    elif 'sys_exit_fdatasync' in l:
        in_sync.pop(tid(l), None)
    elif 'sys_enter_' in l and fd(l) not in synced:
        writes += 1
        early += any(in_sync.values())
r = json.load(open(sys.argv[2]))
print(f"{sys.argv[3]}: WAL fdatasyncs {syncs}, writes to client sockets {writes}, "
      f"of them while a WAL fdatasync ran {early} ({100 * early / max(writes, 1):.0f} %); "
      f"put at 1 client {r['throughput']:.0f}/s, p50 {r['latency_ms']['p50']:.3f} ms")
PY
