#!/usr/bin/env bash
# Fetch moto's S3-compatible server (PyPI `moto[server]`) into a virtualenv cached outside
# the build tree, for the backup tests' S3 target.
#
# Usage: tests/scripts/get-moto.sh [DEST]
#   DEST defaults to ${PLINTH_CACHE:-$HOME/.cache/plinth}/moto-5.1
# Prints the path of moto_server. Idempotent; fast when already cached; safe to run from
# several tests at once (see cached-venv.sh).
set -euo pipefail
source "$(dirname "$0")/cached-venv.sh"
dest=${1:-${PLINTH_CACHE:-$HOME/.cache/plinth}/moto-5.1}
install_moto() {
  "$1/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.1.*' >&2
}
cached_venv "$dest" install_moto
echo "$dest/bin/moto_server"
