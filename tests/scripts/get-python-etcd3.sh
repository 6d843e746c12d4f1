#!/usr/bin/env bash
# Fetch the Python `etcd3` client (PyPI etcd3 0.12.0) with its own test suite into a
# virtualenv cached outside the build tree, for the differential run of that suite.
#
# Usage: tests/scripts/get-python-etcd3.sh [DEST]
#   DEST defaults to ${PLINTH_CACHE:-$HOME/.cache/plinth}/python-etcd3-0.12.0
# Prints DEST: DEST/bin/python runs the suite in DEST/suite/tests. Idempotent; fast when
# already cached; safe to run from several tests at once (see cached-venv.sh).
#
# The suite is the package's own (from its sdist), run with the dependency versions its
# code needs (protobuf 3.x for its generated modules, tenacity 6 for its lock retries).
# One line is changed: the suite registers a Hypothesis profile, and newer Hypothesis
# versions refuse its function-scoped fixture with a health check; the profile is given
# that check suppressed and 20 examples per property instead of 100.
set -euo pipefail
source "$(dirname "$0")/cached-venv.sh"
dest=${1:-${PLINTH_CACHE:-$HOME/.cache/plinth}/python-etcd3-0.12.0}
install_suite() {
  local dest=$1
  local pip=("$dest/bin/pip" --quiet --disable-pip-version-check)
  "${pip[@]}" install 'etcd3==0.12.0' 'protobuf==3.20.3' 'grpcio==1.85.3' 'tenacity==6.1.0' 'six==1.17.0' \
    'pytest==9.2.0' 'hypothesis==6.170.27' 'mock==5.2.0' >&2
  "${pip[@]}" download --no-deps --no-binary :all: 'etcd3==0.12.0' -d "$dest/sdist" >&2
  mkdir -p "$dest/suite"
  tar -xzf "$dest/sdist/etcd3-0.12.0.tar.gz" -C "$dest/suite" --strip-components=1 etcd3-0.12.0/tests
  sed -i 's/^settings.register_profile("default", deadline=None)$/from hypothesis import HealthCheck\nsettings.register_profile("default", deadline=None, max_examples=20, suppress_health_check=list(HealthCheck))/' \
    "$dest/suite/tests/test_etcd3.py"
  grep -q 'suppress_health_check' "$dest/suite/tests/test_etcd3.py"
}
cached_venv "$dest" install_suite
echo "$dest"
