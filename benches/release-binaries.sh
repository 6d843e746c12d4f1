# Sourced by the benchmark scripts (with `root` set to the repository): unless both PLINTH_BIN
# and BENCH_BIN name prebuilt binaries, builds the release `plinth` and `plinth-bench` with
# scripts/cargo and points the unset ones at them.
if [[ -z ${PLINTH_BIN:-} || -z ${BENCH_BIN:-} ]]; then
  "$root/scripts/cargo" build --release -p grpc-api --bin plinth -p plinth-benches --bin plinth-bench >&2
  PLINTH_BIN=${PLINTH_BIN:-$root/target/release/plinth}
  BENCH_BIN=${BENCH_BIN:-$root/target/release/plinth-bench}
fi
