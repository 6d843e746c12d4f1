#!/usr/bin/env bash
# Soak: for SECONDS seconds, alternate a process-fault scenario (tests/tests/linearizability.rs,
# a 3-member cluster under SIGKILL/SIGSTOP with its history checked for linearizability and
# its watches for etcd's guarantees) and a batch of deterministic simulation seeds
# (raft-log/tests/sim.rs), each with a fresh seed. Progress and every failure's seed and
# output go to stderr and to a log directory; stdout gets exactly one line at the end:
#
#   soak: H histories checked, V violations, F faults injected, S seeds
#
# H counts the process histories put through the checker, V the failed runs (a violation,
# or a run that could not finish: no leader, no final read), F the process faults injected,
# S the seeds run (process scenarios and simulation seeds together).
#
# usage: scripts/soak.sh SECONDS      (make soak SECONDS=S)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

secs=${1:?usage: scripts/soak.sh SECONDS}
[[ $secs =~ ^[0-9]+$ ]] || { echo "soak: SECONDS must be a whole number, not '$secs'" >&2; exit 2; }
# Simulation seeds per batch between two process scenarios.
sim_batch=20

logs=$(mktemp -d "${TMPDIR:-/tmp}/plinth-soak-XXXXXX")
echo "soak: logs in $logs" >&2
scripts/cargo build -q -p grpc-api --bin plinth >&2 || exit 1
scripts/cargo test -q -p plinth-tests --test linearizability --no-run >&2 || exit 1
scripts/cargo test -q -p raft-log --test sim --no-run >&2 || exit 1

end=$(( $(date +%s) + secs ))
base=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
histories=0 violations=0 faults=0 seeds=0 n=0
while (( $(date +%s) < end )); do
  n=$((n + 1))
  seed=$(( (base << 16) + n ))
  out="$logs/lin-$seed.log"
  if PLINTH_LIN_SEED=$seed scripts/cargo test -q -p plinth-tests --test linearizability -- --nocapture >"$out" 2>&1; then
    rc=0
  else
    rc=1
  fi
  seeds=$((seeds + 1))
  # One `lin-run:` line per scenario of the test binary (each one checked history).
  found=0
  while read -r line; do
    histories=$((histories + 1))
    f=$(sed -E 's/.* ([0-9]+) faults$/\1/' <<<"$line")
    v=$(sed -E 's/.* ([0-9]+) violations,.*/\1/' <<<"$line")
    faults=$((faults + f))
    found=$((found + v))
  done < <(grep -o 'lin-run: .*' "$out")
  # A failed run that reported no violation could not finish (no leader, no final read):
  # it counts as one.
  if (( rc != 0 && found == 0 )); then
    found=1
  fi
  violations=$((violations + found))
  if (( rc != 0 )); then
    echo "soak: process scenario FAILED, replay: PLINTH_LIN_SEED=$seed scripts/cargo test -p plinth-tests --test linearizability (output: $out)" >&2
  else
    echo "soak: process seed $seed ok ($(grep -c 'lin-run: ' "$out") histories)" >&2
    rm -f "$out"
  fi

  for (( k = 0; k < sim_batch; k++ )); do
    (( $(date +%s) < end )) || break
    sim=$(( base * 64 + n * sim_batch + k ))
    out="$logs/sim-$sim.log"
    seeds=$((seeds + 1))
    # A seed runs in the test of its parity (even: 3 nodes, odd: 5 nodes).
    if PLINTH_SIM_SEED=$sim scripts/cargo test -q -p raft-log --test sim -- three_nodes five_nodes >"$out" 2>&1; then
      rm -f "$out"
    else
      violations=$((violations + 1))
      echo "soak: simulation FAILED, replay: PLINTH_SIM_SEED=$sim scripts/cargo test -p raft-log --test sim (output: $out)" >&2
    fi
  done
done
echo "soak: $histories histories checked, $violations violations, $faults faults injected, $seeds seeds"
