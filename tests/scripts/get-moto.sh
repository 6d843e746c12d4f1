#!/usr/bin/env bash
# Fetch moto's S3-compatible server (PyPI `moto[server]`) into a virtualenv cached outside
# the build tree, for the backup tests' S3 target.
#
# Usage: tests/scripts/get-moto.sh [DEST]
#   DEST defaults to ${PLINTH_CACHE:-$HOME/.cache/plinth}/moto-5.1
# Prints the path of moto_server. Idempotent; fast when already cached.
set -euo pipefail
dest=${1:-${PLINTH_CACHE:-$HOME/.cache/plinth}/moto-5.1}
if [[ -x $dest/bin/moto_server ]]; then
  echo "$dest/bin/moto_server"
  exit 0
fi
python=${PYTHON:-python3}
# Build in a sibling directory and rename, so an interrupted run leaves no half-made venv.
stage=$(mktemp -d "${dest}.XXXXXX")
trap 'rm -rf "$stage"' EXIT
"$python" -m venv "$stage" >&2
"$stage/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.1.*' >&2
mv "$stage" "$dest"
trap - EXIT
echo "$dest/bin/moto_server"
