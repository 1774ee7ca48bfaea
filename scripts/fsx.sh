#!/usr/bin/env bash
# Runs fsx (random reads, writes, mmap, truncates, close/reopen, fsync, checked against a model)
# on a mount with a small chunk size, for several seeds.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ops=${FSX_OPS:-3000}
seeds=${FSX_SEEDS:-"1 2 3 4"}
work=$(mktemp -d)
trap 'fusermount3 -uz "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
mount_fresh "$work" --chunk-size 65536
for seed in $seeds; do
  (cd "$work" && fsx -q -f "$ROOT/tests/conf/fsx.toml" -N "$ops" -S "$seed" -P "$work" "$work/mnt/fsx-$seed") \
    || { echo "fsx seed $seed failed"; tail -30 "$work"/*.fsxlog 2>/dev/null; exit 1; }
  echo "fsx: seed $seed, $ops operations: ok"
  cp "$work/mnt/fsx-$seed" "$work/fsx-$seed.served"
done
unmount "$work/mnt"
# After a remount each file is read from the store, not the page cache: the same bytes.
mount_fresh "$work" --chunk-size 65536
for seed in $seeds; do
  cmp "$work/mnt/fsx-$seed" "$work/fsx-$seed.served" || { echo "fsx seed $seed: differs after a remount"; exit 1; }
done
echo "fsx: every file reads back the same after a remount"
unmount "$work/mnt"
