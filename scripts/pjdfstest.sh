#!/usr/bin/env bash
# Runs pjdfstest on a fresh mount and checks the pass count against the pinned one, which may
# only go up (a ratchet): fewer passes fail the run, more ask for the pin to be raised.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
pinned=$(cat "$ROOT/tests/conf/pjdfstest.pinned")
work=$(mktemp -d)
# The tests switch to unprivileged users, who must be able to reach the mount.
chmod 755 "$work"
trap 'fusermount3 -uz "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
mount_fresh "$work"
mkdir "$work/mnt/t" && chmod 777 "$work/mnt/t"
(cd "$work/mnt/t" && pjdfstest -c "$ROOT/tests/conf/pjdfstest.toml" -p "$work/mnt/t" >"$work/out.txt" 2>&1) || true
unmount "$work/mnt"
summary=$(grep '^Summary:' "$work/out.txt" || true)
echo "pjdfstest: $summary"
passed=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<<"$summary")
if [ -z "$passed" ]; then
  tail -50 "$work/out.txt"; echo "pjdfstest did not finish"; exit 1
fi
# Each failure with the first line of its reason.
# (With no failure the greps find nothing: not an error.)
grep -A1 -E '^[a-z_0-9:]+ +FAILED' "$work/out.txt" | grep -v '^--$' | paste - - \
  | awk -F'\t' '{split($1, name, " "); print "  failed: " name[1] ": " $NF}' | sort | head -80 \
  || true
# The failures must be among the expected ones, pinned by name: a new failure fails the run even
# when another test started passing.
expected="$ROOT/tests/conf/pjdfstest.expected-failures"
unexpected=$(grep -E '^[a-z_0-9:]+ +FAILED' "$work/out.txt" | awk '{print $1}' | sort -u \
  | comm -23 - <(grep -v '^#' "$expected" | sort -u) || true)
if [ -n "$unexpected" ]; then
  echo "pjdfstest: failures not in $expected:"; sed 's/^/  /' <<<"$unexpected"; exit 1
fi
if [ "$passed" -lt "$pinned" ]; then
  echo "pjdfstest: $passed passed, fewer than the pinned $pinned"; exit 1
fi
[ "$passed" -gt "$pinned" ] && echo "pjdfstest: $passed passed, more than the pinned $pinned: raise tests/conf/pjdfstest.pinned"
echo "pjdfstest: $passed passed (pinned $pinned)"
