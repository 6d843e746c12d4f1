# The two commands of the README:
#   make run    start a single-node Plinth on 127.0.0.1:2379 (data dir ./default.plinth)
#   make test   run the whole test suite
#   make soak SECONDS=S   process-fault scenarios and simulation seeds for S seconds
#               (scripts/soak.sh), ending with one `soak: ...` summary line
# Both install what a fresh machine is missing (scripts/setup.sh) and build RocksDB at most
# once per machine (scripts/cargo).

CARGO := scripts/cargo
ARGS ?=
SECONDS ?= 600

.PHONY: run test lint fmt bench fuzz build soak

run:
	$(CARGO) run --release -p grpc-api --bin plinth -- serve $(ARGS)

build:
	$(CARGO) build --release -p grpc-api --bin plinth

test:
	scripts/test-setup.sh
	$(CARGO) build -p grpc-api --bin plinth
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

lint:
	cargo fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

bench:
	$(CARGO) bench -p plinth-benches $(ARGS)

soak:
	scripts/soak.sh $(SECONDS)
