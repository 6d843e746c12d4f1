#!/usr/bin/env bash
# Fetch moto's S3-compatible server (PyPI `moto[server]`) into a virtualenv cached outside
# the build tree, for the backup tests' S3 target.
#
# Usage: tests/scripts/get-moto.sh [DEST]
#   DEST defaults to ${PLINTH_CACHE:-$HOME/.cache/plinth}/moto-5.1
# Prints the path of moto_server. Idempotent; fast when already cached; safe to run from
# several tests at once (they take turns on a lock file beside DEST).
set -euo pipefail
dest=${1:-${PLINTH_CACHE:-$HOME/.cache/plinth}/moto-5.1}
# A finished venv has this marker. A virtualenv cannot be moved once made (its scripts name
# its python by absolute path), so it is built where it stays, and the marker, written last,
# tells a finished one from one whose build was interrupted.
done_marker=$dest/.plinth-complete
if [[ -f $done_marker ]]; then
  echo "$dest/bin/moto_server"
  exit 0
fi
mkdir -p "$(dirname "$dest")"
exec 9> "$dest.lock"
flock 9
if [[ ! -f $done_marker ]]; then
  rm -rf "$dest"
  python=${PYTHON:-python3}
  "$python" -m venv "$dest" >&2
  "$dest/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.1.*' >&2
  touch "$done_marker"
fi
echo "$dest/bin/moto_server"
