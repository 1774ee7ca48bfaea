#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what it needs, then runs the unit,
# property and crash tests, the real-mount tests, pjdfstest and fsx, and (unless
# MUTANT_NETWORK_TESTS=0) the tests against a local Autonomi network.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

need_apt=()
for pair in fusermount3:fuse3 rsync:rsync sqlite3:sqlite3 setfattr:attr; do
  command -v "${pair%%:*}" >/dev/null || need_apt+=("${pair#*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v pjdfstest >/dev/null || cargo install pjdfstest --version 0.2.2 --locked
command -v fsx >/dev/null || cargo install fsx --version 0.3.2 --locked

echo "== build"
cargo build --all-targets
echo "== cargo test"
cargo test -- --test-threads=2
echo "== fsx"
scripts/fsx.sh
echo "== pjdfstest"
scripts/pjdfstest.sh
if [ "${MUTANT_NETWORK_TESTS:-1}" != 0 ] && [ -x scripts/local-network.sh ] && [ -f tests/network.rs ]; then
  echo "== tests against a local Autonomi network"
  scripts/local-network.sh start
  trap 'scripts/local-network.sh stop' EXIT
  cargo test --test network --test network_mount -- --ignored --test-threads=1 --nocapture
fi
echo "== all tests passed"
