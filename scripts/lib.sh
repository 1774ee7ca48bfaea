# Shared by the scripts: where the build goes, and mounting a throw-away file system.
# shellcheck shell=bash
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mutant-mount/target}
BIN="$CARGO_TARGET_DIR/debug/mutant-mount"

# mount_fresh DIR [ARGS...]: mounts a new file system on DIR/mnt with its data in DIR/data.
mount_fresh() {
  local dir=$1; shift
  mkdir -p "$dir/mnt"
  "$BIN" --data-dir "$dir/data" --allow-other "$@" "$dir/mnt"
}

unmount() {
  local mnt=$1
  fusermount3 -u "$mnt"
  # The process commits before it exits; wait for it.
  for _ in $(seq 1 300); do
    pgrep -f "mutant-mount.*$mnt" >/dev/null || return 0
    sleep 0.1
  done
  echo "mutant-mount on $mnt did not exit" >&2
  return 1
}
