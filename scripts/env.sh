# Source this to run cargo by hand with the same RocksDB environment as scripts/cargo
# (after scripts/cargo has run once on this machine).
_plinth_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_plinth_ver=$(awk '/^name = "librocksdb-sys"/ { getline; gsub(/"/, "", $3); print $3 }' "$_plinth_root/Cargo.lock")
if [[ -f ${PLINTH_CACHE:-$HOME/.cache/plinth}/librocksdb-sys-$_plinth_ver/librocksdb.a ]]; then
  export ROCKSDB_LIB_DIR="${PLINTH_CACHE:-$HOME/.cache/plinth}/librocksdb-sys-$_plinth_ver" ROCKSDB_STATIC=1
fi
unset _plinth_root _plinth_ver
