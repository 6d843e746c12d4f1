#!/usr/bin/env bash
# One workload against one fresh single-member server, with the server's CPU time per
# operation (or per delivered watch event): what a saturated run costs the server, apart
# from what the load generator on the same cores costs. Used for A/B runs of two builds and
# for etcd beside them; run each side at least twice, alternating.
#
# Usage: benches/server-cpu.sh [--pin] BINARY -- PLINTH-BENCH-ARGS...
#   BINARY   a `plinth` or an `etcd` binary (told apart by its name)
#   --pin    server on CPU 0, load generator on CPU 1 (taskset)
# Environment: BENCH_BIN (plinth-bench, default target/release/plinth-bench), PORT (client
# port on 127.0.0.1, default 40379; the peer port is PORT + 1).
# Prints one line: server, events/s or ops/s, server CPU µs per event or operation, errors.
# Example (the saturated watch row):
#   benches/server-cpu.sh target/release/plinth -- --conns 4 --clients 50 --total 6000 \
#     watch --streams 10 --watchers-per-stream 100 --key-space-size 10 --val-size 64
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pin=0
if [[ ${1:-} == --pin ]]; then pin=1; shift; fi
bin=${1:?usage: benches/server-cpu.sh [--pin] BINARY -- PLINTH-BENCH-ARGS...}
shift
[[ ${1:-} == -- ]] && shift
bench=${BENCH_BIN:-$root/target/release/plinth-bench}
port=${PORT:-40379}
dir=$(mktemp -d "${TMPDIR:-/tmp}/server-cpu.XXXXXX")
me=server-cpu.sh
# shellcheck source=benches/single-server.sh
source "$root/benches/single-server.sh"
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(ticks)
timeout 600 "${bench_pin[@]}" "$bench" --endpoints "127.0.0.1:$port" --json --progress never "$@" >"$dir/out.json"
after=$(ticks)
python3 - "$dir/out.json" "$((after - before))" "$(getconf CLK_TCK)" "$(basename "$bin")" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); cpu_s = int(sys.argv[2]) / int(sys.argv[3]); name = sys.argv[4]
extra = d.get("extra", {})
if "events" in extra:
    n, rate, unit = extra["events"], extra["events_per_s"], "event"
else:
    n, rate, unit = d["ok"], d["throughput"], "op"
print(f"{name}: {rate:,.0f} {unit}s/s, server CPU {cpu_s * 1e6 / max(n, 1):.3f} us per {unit}, errors {d['errors']}")
PY
