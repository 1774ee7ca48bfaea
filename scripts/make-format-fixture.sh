#!/usr/bin/env bash
# Writes a store with the mutant-mount of an older commit, the way a user of that version left
# it, for tests/migration.rs: a tree of every kind of file copied in and committed, then one
# more file whose change a kill -9 left in the journal.
#
#   scripts/make-format-fixture.sh COMMIT NAME    # -> tests/fixtures/NAME.tar.gz
#
# The archive holds `src/` (the tree as copied in, late.txt included) and `data/` (the old
# version's data dir: key, store, journal; 64 KiB chunks so that a small file spans several).
# CHUNK=bytes sets another chunk size; MANY=n adds `many.bin`, a file of n chunks (a file of
# more than 512 chunks keeps them in segments from format 6 on).
# Builds COMMIT in a temporary git worktree with the shared target dir, so the current
# binary has to be built again afterwards.
set -euo pipefail
COMMIT=$1
NAME=$2
CHUNK=${CHUNK:-65536}
MANY=${MANY:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mutant-mount/target}
WORK=$(mktemp -d)
trap 'fusermount3 -uz "$WORK/mnt" 2>/dev/null || true; rm -rf "$WORK"' EXIT

git -C "$REPO" worktree add --detach "$WORK/checkout" "$COMMIT"
(cd "$WORK/checkout" && cargo build --bin mutant-mount)
cp "$CARGO_TARGET_DIR/debug/mutant-mount" "$WORK/old"
git -C "$REPO" worktree remove --force "$WORK/checkout"

SRC=$WORK/src
mkdir -p "$SRC/dir/sub" "$SRC/empty" "$WORK/mnt"
printf 'small\n' >"$SRC/small.txt"
for i in $(seq 40); do printf 'file %s\n' "$i" >"$SRC/dir/sub/f$i"; done
head -c 20000 /dev/urandom >"$SRC/mid.bin"
head -c 200000 /dev/urandom >"$SRC/multi.bin"
truncate -s 1000000 "$SRC/sparse.bin"
printf 'middle' | dd of="$SRC/sparse.bin" bs=1 seek=500000 conv=notrunc status=none
ln -s small.txt "$SRC/link"
mkfifo "$SRC/fifo"
printf 'accents\n' >"$SRC/é ü.txt"
chmod 600 "$SRC/mid.bin"
setfattr -n user.note -v hello "$SRC/small.txt"
if [ "$MANY" -gt 0 ]; then
    head -c $((MANY * CHUNK)) /dev/urandom >"$SRC/many.bin"
fi
# Hard links, where the version has them (format 3 on).
ln "$SRC/multi.bin" "$SRC/dir/multi-link.bin"

mount_old() {
    "$WORK/old" -f --data-dir "$WORK/data" --chunk-size "$CHUNK" "$WORK/mnt" >>"$WORK/log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do mountpoint -q "$WORK/mnt" && return; sleep 0.1; done
    echo "the old mount did not start:" >&2
    cat "$WORK/log" >&2
    exit 1
}

mount_old
if ! cp -a "$SRC/." "$WORK/mnt/" 2>>"$WORK/log"; then
    # Without hard links (link(2) is EPERM, and either name may have come second) the two
    # names become two files, in the source as in the mount.
    rm -f "$SRC/dir/multi-link.bin"
    cp "$SRC/multi.bin" "$SRC/dir/multi-link.bin"
    cp -a "$SRC/multi.bin" "$WORK/mnt/"
    cp -a "$SRC/dir/multi-link.bin" "$WORK/mnt/dir/"
fi
fusermount3 -u "$WORK/mnt"
wait "$PID"

# One more change, acknowledged, then the process killed before or after its commit.
mount_old
printf 'late\n' >"$SRC/late.txt"
cp -a "$SRC/late.txt" "$WORK/mnt/"
kill -9 "$PID"
wait "$PID" || true
fusermount3 -uz "$WORK/mnt"

rm -f "$WORK/data"/*.log
mkdir -p "$REPO/tests/fixtures"
tar czf "$REPO/tests/fixtures/$NAME.tar.gz" -C "$WORK" --xattrs --owner=0 --group=0 src data
echo "wrote tests/fixtures/$NAME.tar.gz ($(du -h "$REPO/tests/fixtures/$NAME.tar.gz" | cut -f1))"
