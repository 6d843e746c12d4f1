#!/usr/bin/env bash
# Installs what building Plinth needs on a fresh Debian machine that has only Rust, gcc,
# Python and git: libclang, which librocksdb-sys's bindgen loads at build time.
# Idempotent and quiet when everything is already there.
set -euo pipefail

missing=()
if ! compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null \
   && ! compgen -G "/usr/lib/*/libclang*.so*" >/dev/null; then
  missing+=(libclang-dev)
fi
if ! command -v make >/dev/null; then
  missing+=(make)
fi

if ((${#missing[@]})); then
  sudo=""
  if [[ $(id -u) != 0 ]]; then sudo="sudo"; fi
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
