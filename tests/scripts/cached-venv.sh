# Sourced by the tests' get-*.sh scripts.
#
# cached_venv DEST SETUP: makes a virtualenv at DEST once, then runs `SETUP DEST` (a shell
# function that installs into it). A virtualenv cannot be moved once made (its scripts name
# its python by absolute path), so it is built where it stays; a marker written last tells
# a finished one from one whose build was interrupted, which is built again. Tests running
# at once take turns on a lock file beside DEST. Set PYTHON to use another interpreter.
cached_venv() {
  local dest=$1 setup=$2
  local done_marker=$dest/.plinth-complete
  [[ -f $done_marker ]] && return 0
  mkdir -p "$(dirname "$dest")"
  exec 9>"$dest.lock"
  flock 9
  if [[ ! -f $done_marker ]]; then
    rm -rf "$dest"
    "${PYTHON:-python3}" -m venv "$dest" >&2
    "$setup" "$dest"
    touch "$done_marker"
  fi
  exec 9>&-
}
