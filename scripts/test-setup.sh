#!/usr/bin/env bash
# Proves scripts/setup.sh's detection on machines that lack what it installs, using fake root
# directories: the machine running this test has everything installed, so only a fake tree can
# show that a fresh machine gets libclang-dev and protobuf-compiler. Run by .ci/run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

# fake_root NAME FILE... : a root with the given (empty) files and make, curl, openssl and ip
# on its PATH.
fake_root() {
  local root=$work/$1 f tool
  shift
  mkdir -p "$root/usr/bin"
  for tool in make curl openssl ip; do
    printf '#!/bin/sh\nexit 0\n' >"$root/usr/bin/$tool"
    chmod +x "$root/usr/bin/$tool"
  done
  for f in "$@"; do
    mkdir -p "$root/$(dirname "$f")"
    : >"$root/$f"
  done
  echo "$root"
}

# fake_protoc ROOT VERSION : a protoc on the fake root's PATH that reports VERSION.
fake_protoc() {
  printf '#!/bin/sh\necho "libprotoc %s"\n' "$2" >"$1/usr/bin/protoc"
  chmod +x "$1/usr/bin/protoc"
}

# expect ROOT "MISSING" DESCRIPTION : setup.sh --check on ROOT must print exactly MISSING.
expect() {
  local got
  got=$(PLINTH_SETUP_ROOT=$1 PATH=/usr/bin:/bin "$here/setup.sh" --check)
  if [[ $got == "$2" ]]; then
    echo "ok: $3"
  else
    echo "FAIL: $3: expected to install '$2', setup would install '$got'" >&2
    failures=$((failures + 1))
  fi
}

# The image this was found on: only the C++ interface library, which bindgen cannot load.
root=$(fake_root cpp-only usr/lib/x86_64-linux-gnu/libclang-cpp.so.14 usr/lib/llvm-14/lib/libclang-cpp.so.14)
expect "$root" "libclang-dev protobuf-compiler" "libclang-cpp.so.14 alone is not libclang"

# libclang-cpp-dev's unversioned name is the C++ library too.
root=$(fake_root cpp-dev usr/lib/llvm-14/lib/libclang-cpp.so usr/lib/x86_64-linux-gnu/libclang-cpp.so.14)
fake_protoc "$root" 3.21.12
expect "$root" "libclang-dev" "libclang-cpp.so (unversioned) is not libclang either"

# A runtime-only libclang (libclang1-14) has neither the linkable name nor clang's headers.
root=$(fake_root runtime-only usr/lib/llvm-14/lib/libclang.so.1 usr/lib/x86_64-linux-gnu/libclang-14.so.1)
fake_protoc "$root" 3.21.12
expect "$root" "libclang-dev" "a versioned runtime libclang.so.1 alone is not enough"

# What libclang-dev installs on Debian 12.
root=$(fake_root dev usr/lib/llvm-14/lib/libclang.so usr/lib/llvm-14/lib/libclang-14.so usr/lib/x86_64-linux-gnu/libclang-cpp.so.14)
fake_protoc "$root" 3.21.12
expect "$root" "" "libclang-dev's libclang.so and Debian's protoc 3.21 are enough"

root=$(fake_root versioned usr/lib/x86_64-linux-gnu/libclang-16.so)
fake_protoc "$root" 3.21.12
expect "$root" "" "a versioned libclang-N.so is what bindgen loads"

# A protoc that raft-proto's build would refuse does not count.
root=$(fake_root new-protoc usr/lib/llvm-14/lib/libclang.so)
fake_protoc "$root" 31.1
expect "$root" "protobuf-compiler" "a protoc other than 3.x does not count"

# Nothing at all: every package, make and the tests' tools included.
root=$work/empty
mkdir -p "$root/usr/bin"
expect "$root" "libclang-dev protobuf-compiler make curl openssl iproute2" "an empty machine gets everything"

if ((failures)); then
  echo "test-setup: $failures check(s) failed" >&2
  exit 1
fi
echo "test-setup: all checks passed"
