#!/usr/bin/env bash
# Soak: for SECONDS seconds, alternate a process-fault scenario of tests/tests/linearizability.rs
# (a real cluster under one kind of fault, its history checked for linearizability and its
# watches for etcd's guarantees, and every member's HashKV compared at the end) and a batch of
# deterministic simulation seeds (raft-log/tests/sim.rs, and every fourth one the whole-member
# simulation grpc-api/tests/node_sim.rs), each with a fresh seed. The process
# scenarios take turns in the order of `scenarios` below: 3 and 5 members under SIGKILL and
# SIGSTOP, network partitions (namespaces; needs root), membership changes, a full disk
# (tmpfs; needs root), fsync failing with EIO, corrupted files at restart, slow and lossy peer
# links (a delaying proxy). Progress and every failure's seed and output go to stderr and to a
# log directory; stdout gets exactly one line at the end:
#
#   soak: H histories checked, V violations, F faults injected (KIND N, ...), S seeds
#
# H counts the process histories put through the checker, V the failed runs (a violation,
# or a run that could not finish: no leader, no final read, members that never converged),
# F the process faults injected, with the count of each kind in parentheses, S the seeds run
# (process scenarios and simulation seeds together).
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
# The process scenarios, one per round, in turn (test names in tests/tests/linearizability.rs).
scenarios=(
  linearizable_under_leader_kills_and_pauses
  a_lone_member_linearizable_under_kills_and_pauses
  linearizable_under_partitions
  linearizable_under_fsync_errors
  five_members_under_leader_kills_and_pauses
  linearizable_under_membership_changes
  linearizable_with_a_full_disk
  kubernetes_shaped_traffic_under_leader_kills_and_pauses
  linearizable_across_corrupted_files_at_restart
  kubernetes_shaped_under_partitions
  five_members_kubernetes_shaped_under_leader_kills_and_pauses
  linearizable_over_slow_and_lossy_links
  kubernetes_shaped_over_slow_and_lossy_links
)

logs=$(mktemp -d "${TMPDIR:-/tmp}/plinth-soak-XXXXXX")
echo "soak: logs in $logs" >&2
scripts/cargo build -q -p grpc-api --bin plinth >&2 || exit 1
scripts/cargo test -q -p plinth-tests --test linearizability --no-run >&2 || exit 1
scripts/cargo test -q -p raft-log --test sim --no-run >&2 || exit 1
scripts/cargo test -q -p grpc-api --test node_sim --no-run >&2 || exit 1

end=$(( $(date +%s) + secs ))
base=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
histories=0 violations=0 faults=0 seeds=0 n=0
declare -A kinds=()
while (( $(date +%s) < end )); do
  n=$((n + 1))
  seed=$(( (base << 16) + n ))
  scenario=${scenarios[$(( (n - 1) % ${#scenarios[@]} ))]}
  out="$logs/lin-$scenario-$seed.log"
  if PLINTH_LIN_SEED=$seed scripts/cargo test -q -p plinth-tests --test linearizability -- \
      --exact "$scenario" --include-ignored --nocapture >"$out" 2>&1; then
    rc=0
  else
    rc=1
  fi
  seeds=$((seeds + 1))
  # One `lin-run:` line per checked history:
  #   lin-run: NAME, seed S, 1 history, V violations, F faults: KIND N, KIND N
  found=0 lines=0
  while read -r line; do
    lines=$((lines + 1))
    histories=$((histories + 1))
    f=$(sed -E 's/.* ([0-9]+) faults:.*/\1/' <<<"$line")
    v=$(sed -E 's/.* ([0-9]+) violations,.*/\1/' <<<"$line")
    faults=$((faults + f))
    found=$((found + v))
    by_kind=$(sed -E 's/.* faults: ?//' <<<"$line")
    IFS=',' read -ra pairs <<<"$by_kind"
    for pair in "${pairs[@]}"; do
      read -r kind count <<<"$pair"
      [[ -n ${kind:-} && ${count:-} =~ ^[0-9]+$ ]] || continue
      kinds[$kind]=$(( ${kinds[$kind]:-0} + count ))
    done
  done < <(grep -o 'lin-run: .*' "$out")
  # A failed run that reported no violation could not finish (no leader, no final read):
  # it counts as one.
  if (( rc != 0 && found == 0 )); then
    found=1
  fi
  violations=$((violations + found))
  if (( rc != 0 )); then
    echo "soak: process scenario $scenario FAILED, replay: PLINTH_LIN_SEED=$seed scripts/cargo test -p plinth-tests --test linearizability -- --exact $scenario --include-ignored (output: $out)" >&2
  elif (( lines == 0 )); then
    echo "soak: process scenario $scenario checked no history (skipped?): $(grep -m1 SKIPPED "$out")" >&2
  else
    echo "soak: process scenario $scenario seed $seed ok" >&2
    rm -f "$out"
  fi

  for (( k = 0; k < sim_batch; k++ )); do
    (( $(date +%s) < end )) || break
    sim=$(( base * 64 + n * sim_batch + k ))
    out="$logs/sim-$sim.log"
    seeds=$((seeds + 1))
    # A seed runs in the test of its parity (even: 3 nodes, odd: 5 nodes). Every fourth
    # seed goes to the whole-member simulation (grpc-api/tests/node_sim.rs), the rest to the
    # log simulation (raft-log/tests/sim.rs).
    if (( k % 4 == 3 )); then
      test=(-p grpc-api --test node_sim -- three_members five_members)
    else
      test=(-p raft-log --test sim -- three_nodes five_nodes)
    fi
    if PLINTH_SIM_SEED=$sim scripts/cargo test -q "${test[@]}" >"$out" 2>&1; then
      rm -f "$out"
    else
      violations=$((violations + 1))
      echo "soak: simulation FAILED, replay: PLINTH_SIM_SEED=$sim scripts/cargo test ${test[*]:0:3} (output: $out)" >&2
    fi
  done
done
by_kind=""
for kind in $(printf '%s\n' "${!kinds[@]}" | sort); do
  by_kind+="${by_kind:+, }$kind ${kinds[$kind]}"
done
echo "soak: $histories histories checked, $violations violations, $faults faults injected ($by_kind), $seeds seeds"
