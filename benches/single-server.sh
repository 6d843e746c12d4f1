# Sourced by the single-server benchmark scripts (server-cpu.sh, ack-before-sync.sh): starts
# one fresh member of `bin` (a `plinth` or an `etcd` binary, told apart by its name) on
# 127.0.0.1:$port (peer port $port + 1) with its data in $dir, and waits until a linearizable
# read answers. Expects `bin`, `bench`, `port`, `dir` and `pin` (1: the server on CPU 0 and the
# load generator on CPU 1) to be set; optional: `server_wrap` (a command the server runs under,
# e.g. valgrind), `server_args` (extra arguments of `plinth serve`; not given to etcd) and
# `ready_tries` (tenths of a second to wait for the answer, default 100).
# Sets `pid` (the server), `bench_pin` (the prefix for the load generator) and an EXIT trap
# that stops the server and removes $dir. `me` names the calling script in errors.
server_pin=() bench_pin=()
if [[ $pin == 1 ]]; then server_pin=(taskset -c 0) bench_pin=(taskset -c 1); fi
server_pin+=(${server_wrap[@]+"${server_wrap[@]}"})
urls=(--listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port"
  --listen-peer-urls "http://127.0.0.1:$((port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))")
if [[ $(basename "$bin") == etcd* ]]; then
  "${server_pin[@]}" "$bin" --data-dir "$dir/data" "${urls[@]}" \
    --initial-cluster "default=http://127.0.0.1:$((port + 1))" >"$dir/server.log" 2>&1 &
else
  "${server_pin[@]}" "$bin" serve --data-dir "$dir/data" "${urls[@]}" ${server_args[@]+"${server_args[@]}"} \
    >"$dir/server.log" 2>&1 &
fi
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
# Ready once a linearizable read answers (a leader is elected).
# (plinth-bench exits 0 with failed requests; its JSON counts the answered ones.)
ready=0
for _ in $(seq "${ready_tries:-100}"); do
  if "$bench" --endpoints "127.0.0.1:$port" --json --total 1 --progress never range --keys 0 2>/dev/null |
    grep -q '"ok":1,'; then
    ready=1
    break
  fi
  sleep 0.1
done
if [[ $ready != 1 ]]; then
  echo "$me: $bin did not answer on 127.0.0.1:$port; its log:" >&2
  cat "$dir/server.log" >&2
  exit 1
fi
