#!/usr/bin/env bash
# Installs what building and testing Plinth needs on a fresh Debian machine that has only Rust,
# gcc, Python and git:
#   - libclang (libclang-dev): librocksdb-sys's bindgen loads it at build time;
#   - protoc (protobuf-compiler, 3.21 on Debian 12): etcd-client's build script, used by the
#     tests and the load generator, finds it on PATH. 3.x is also what raft-proto accepts, so a
#     protoc on PATH breaks no other build (grpc-api uses its own vendored protoc).
#   - make;
#   - the tests' tools: curl, openssl and iproute2's ip.
# Idempotent and quiet when everything is already there.
#
# The checks are functions over a root directory (PLINTH_SETUP_ROOT, default /) so that
# scripts/test-setup.sh can prove them against fake directory trees; `--check` prints what is
# missing and installs nothing.
set -euo pipefail

root="${PLINTH_SETUP_ROOT:-}"

# bindgen (through clang-sys) loads `libclang.so` or a versioned `libclang-N.so` from the LLVM and
# system library directories; Debian's libclang-dev provides them together with clang's builtin
# headers, which bindgen needs as well. Only those names count: `libclang-cpp.so.N` (the C++
# interface library, preinstalled on some images) is not what bindgen loads, and a bare runtime
# `libclang.so.1` comes without the headers.
have_libclang() {
  local dir f name
  for dir in "$root"/usr/lib/llvm-*/lib "$root"/usr/lib/*-linux-gnu "$root"/usr/lib "$root"/usr/local/lib; do
    [[ -d $dir ]] || continue
    for f in "$dir"/libclang*.so*; do
      [[ -e $f ]] || continue
      name=${f##*/}
      case $name in
        libclang.so | libclang-[0-9]*.so) return 0 ;;
      esac
    done
  done
  return 1
}

# A protoc that etcd-client's build finds on PATH (prost-build runs `protoc` unless PROTOC is
# set) and that reports a 3.x version (raft-proto's check).
have_protoc() {
  local dir
  local IFS=:
  for dir in $PATH; do
    if [[ -x $root$dir/protoc ]]; then
      "$root$dir/protoc" --version 2>/dev/null | grep -Eq '^libprotoc 3\.' && return 0
    fi
  done
  return 1
}

# An executable named $1 on PATH (under the root).
have_command() {
  local dir
  local IFS=:
  for dir in $PATH; do
    [[ -x $root$dir/$1 ]] && return 0
  done
  return 1
}

missing=()
have_libclang || missing+=(libclang-dev)
have_protoc || missing+=(protobuf-compiler)
have_command make || missing+=(make)
# The tests' tools: curl (HTTP endpoints over TLS), openssl (scripts/gen-certs.sh and
# certificate checks), ip (network namespaces of the partition tests).
have_command curl || missing+=(curl)
have_command openssl || missing+=(openssl)
have_command ip || missing+=(iproute2)

if [[ ${1:-} == --check ]]; then
  echo "${missing[*]}"
  exit 0
fi

if ((${#missing[@]})); then
  sudo=""
  if [[ $(id -u) != 0 ]]; then sudo="sudo"; fi
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
