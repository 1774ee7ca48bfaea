#!/usr/bin/env bash
# mutant-mount side by side with the mounts users already know, in one run on one disk: the raw
# directory, bindfs (a passthrough FUSE file system: the cost of FUSE itself), rclone mount of a
# local directory with --vfs-cache-mode writes, and mutant-mount over the local store and over
# the simulated network profiles. Prints one markdown table; every figure is also a ratio to
# the baselines measured in this same run (the machine is shared and noisy).
#
#   scripts/bench.sh            default sizes (20-40 minutes)
#   scripts/bench.sh --quick    small sizes, a few minutes
#
# Environment (defaults in brackets; --quick lowers them):
#   BENCH_DIR            where the file systems under test live [~/.cache/mutant-mount/bench]
#   BENCH_SIZE_MB        the sequential file [1024]
#   BENCH_PROFILE_MB     the sequential file on the simulated network profiles [256]
#   BENCH_SMALL_FILES    4 KiB files for tar x, ls -lR and rsync [10000]
#   BENCH_BIG_MB         the file written while peak memory is sampled [4096]
#   BENCH_RANDREAD_SECS  duration of the random 4 KiB reads [15]
#   BENCH_SYSTEMS        which systems, space-separated [raw bindfs rclone mutant mutant-lan mutant-wan]
#   BENCH_BUILD=0        use the release binary as it is, without cargo build --release
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

quick=0
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done
if [ $quick = 1 ]; then
  : "${BENCH_SIZE_MB:=128}" "${BENCH_PROFILE_MB:=64}" "${BENCH_SMALL_FILES:=1000}"
  : "${BENCH_BIG_MB:=512}" "${BENCH_RANDREAD_SECS:=5}"
fi
BENCH_DIR=${BENCH_DIR:-$HOME/.cache/mutant-mount/bench}
SIZE_MB=${BENCH_SIZE_MB:-1024}
PROFILE_MB=${BENCH_PROFILE_MB:-256}
SMALL_FILES=${BENCH_SMALL_FILES:-10000}
BIG_MB=${BENCH_BIG_MB:-4096}
RANDREAD_SECS=${BENCH_RANDREAD_SECS:-15}
SYSTEMS=${BENCH_SYSTEMS:-raw bindfs rclone mutant mutant-lan mutant-wan}

# The simulated network profiles (--simulate; the second time of a pair is per MiB moved).
# LAN: the local Autonomi network as measured, 20 ms + 200 ms per 4 MiB for a get and
# 60 ms + 700 ms per 4 MiB for a write, 32 operations in flight (SimConfig::local_network).
# WAN: an internet-like guess, not a measurement: a home uplink of ~10 Mbit/s shared by the
# writes in flight, longer round trips: 80 ms + 1.5 s per 4 MiB for a get, 200 ms + 3 s per
# 4 MiB for a write, 16 in flight.
PROFILE_LAN="get=20ms+50ms,put=60ms+175ms,concurrency=32"
PROFILE_WAN="get=80ms+375ms,put=200ms+750ms,concurrency=16"
# Chunk (= pad) size and pad operations in flight of a mount over the local store
# (engine::DEFAULT_SCRATCHPAD_SIZE, EngineOptions::default().parallelism): the ideal follows.
CHUNK_BYTES=4190208
PARALLELISM=16

RESULTS=$BENCH_DIR/results.tsv
MUTANT=$CARGO_TARGET_DIR/release/mutant-mount

# --- set-up -------------------------------------------------------------------------------------
need_apt=()
for pair in fusermount3:fuse3 bindfs:bindfs rclone:rclone fio:fio rsync:rsync python3:python3; do
  command -v "${pair%%:*}" >/dev/null || need_apt+=("${pair#*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ "${BENCH_BUILD:-1}" != 0 ]; then
  echo "== cargo build --release (benchmarks measure what users install)"
  cargo build --release --bin mutant-mount
fi
case " $SYSTEMS " in
  *" mutant"*) [ -x "$MUTANT" ] || { echo "no $MUTANT: build it, or drop BENCH_BUILD=0" >&2; exit 1; } ;;
esac

mkdir -p "$BENCH_DIR"
: >"$RESULTS"
notes=()
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u '+%Y-%m-%d %H:%M UTC')

# --- mounting, and unmounting everything on any exit -------------------------------------------
declare -A PIDS=() # mount point -> pid of the process serving it
MNT="" PID=""      # the current system's mount point and server

cleanup() {
  local mnt
  for mnt in "${!PIDS[@]}"; do
    fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null || true
    wait "${PIDS[$mnt]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# calc EXPR: floating-point arithmetic.
calc() { python3 -c "print($1)"; }

wait_mounted() { # MNT PID
  for _ in $(seq 1 600); do
    mountpoint -q "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "the server of $1 exited before mounting" >&2; return 1; }
    sleep 0.1
  done
  echo "$1 not mounted after 60 s" >&2
  return 1
}

# mount_sys SYSTEM DIR: serves DIR/back (or DIR/data for mutant-mount) on DIR/mnt; sets MNT, PID.
mount_sys() {
  local sys=$1 dir=$2
  mkdir -p "$dir/back" "$dir/mnt"
  case $sys in
    raw) MNT=$dir/back PID=""; return 0 ;;
    bindfs) bindfs -f "$dir/back" "$dir/mnt" 2>>"$dir/server.log" & ;;
    rclone)
      RCLONE_CONFIG=/dev/null rclone mount ":local:$dir/back" "$dir/mnt" --vfs-cache-mode writes \
        --cache-dir "$dir/rclone-cache" 2>>"$dir/server.log" & ;;
    mutant*)
      local sim=()
      case $sys in
        mutant-lan) sim=(--simulate "$PROFILE_LAN" --upload staged) ;;
        mutant-wan) sim=(--simulate "$PROFILE_WAN" --upload staged) ;;
      esac
      "$MUTANT" -f --data-dir "$dir/data" "${sim[@]}" "$dir/mnt" 2>>"$dir/server.log" & ;;
  esac
  PID=$! MNT=$dir/mnt
  PIDS[$MNT]=$PID
  wait_mounted "$MNT" "$PID"
}

unmount_sys() {
  [ -n "$PID" ] || return 0
  fusermount3 -u "$MNT"
  wait "$PID" || { echo "the server of $MNT failed at unmount; see its server.log" >&2; return 1; }
  unset "PIDS[$MNT]"
  PID=""
}

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
}

# Cold start: unmount, drop the kernel's caches (page cache of the mount and of the disk under
# it), mount again. On the network profiles, also the local tier's cache (everything is uploaded
# by then), so that reads come from the (simulated) network, as on a new machine.
remount_cold() { # SYSTEM DIR
  unmount_sys
  case $1 in mutant-lan | mutant-wan) rm -rf "$2"/data/tier-simulated/cache ;; esac
  drop_caches || true
  mount_sys "$1" "$2"
}

# --- pad operations: mutant-mount logs its counters on SIGUSR1 ----------------------------------
# ops_snapshot DIR: "creates updates gets parts" so far (0 0 0 0 for the other systems).
ops_snapshot() {
  local log=$1/server.log
  case $sys in mutant*) ;; *) echo "0 0 0 0"; return ;; esac
  # Background commits of namespace changes land within a second: let them.
  sleep 2
  local before
  before=$(grep -c 'store operations so far' "$log" || true)
  kill -USR1 "$PID"
  for _ in $(seq 1 100); do
    [ "$(grep -c 'store operations so far' "$log" || true)" -gt "$before" ] && break
    sleep 0.1
  done
  grep 'store operations so far' "$log" | tail -1 |
    sed -E 's/.*creates=([0-9]+) updates=([0-9]+) gets=([0-9]+) exists=[0-9]+ parts=([0-9]+).*/\1 \2 \3 \4/'
}

# record WORKLOAD SYSTEM VALUE UNIT OPS_BEFORE OPS_AFTER: one row of results.tsv.
record() {
  local ops="" profile=""
  case $2 in
    mutant*)
      read -r c0 u0 g0 p0 <<<"$5"
      read -r c1 u1 g1 p1 <<<"$6"
      ops="$((c1 - c0))/$((u1 - u0))/$((g1 - g0))/$((p1 - p0))" ;;
  esac
  case $2 in
    mutant-lan*) profile=$PROFILE_LAN ;;
    mutant-wan*) profile=$PROFILE_WAN ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$ops" "$profile" >>"$RESULTS"
  printf '   %-22s %-28s %10s %s  %s\n' "$1" "$2" "$3" "$4" "${ops:+pad ops c/u/g/p $ops}"
}

# timed CMD...: runs CMD, prints its wall time in seconds.
timed() {
  local t0 t1
  t0=$(now)
  "$@" >/dev/null
  t1=$(now)
  calc "$t1 - $t0"
}

fio_job() { # JOB DIR FILE SIZE_MB [json]
  BENCH_DIR_UT=$2 BENCH_FILE=$3 BENCH_SIZE=${4}m BENCH_RUNTIME=$RANDREAD_SECS \
    fio --output-format=json "benches/$1.fio"
}

# --- the small-file tree: N files of 4 KiB, 100 to a directory, and its tarball -----------------
TREE=$BENCH_DIR/tree-$SMALL_FILES
if [ ! -f "$TREE.tar" ]; then
  echo "== making $SMALL_FILES files of 4 KiB"
  rm -rf "$TREE"
  python3 - "$TREE" "$SMALL_FILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(os.urandom(4096))
EOF
  tar cf "$TREE.tar" -C "$TREE" .
fi
# The mixed tree: as many files of 100 B to 64 KiB (spread evenly on a log scale, as source trees
# and documents are), 100 to a directory.
MIXED=$BENCH_DIR/mixed-$SMALL_FILES
if [ ! -d "$MIXED" ]; then
  echo "== making $SMALL_FILES files of 100 B to 64 KiB"
  python3 - "$MIXED" "$SMALL_FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(n):
    d = os.path.join(root, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(os.urandom(int(100 * (65536 / 100) ** rng.random())))
EOF
fi
MIXED_MB=$(du -sm --apparent-size "$MIXED" | cut -f1)
head -c 1048576 /dev/urandom >"$BENCH_DIR/patch-1MiB"
# The bytes of the sequential write: random (no zero or repeated chunks to skip), read from the
# page cache so the source costs the same little for every system.
SOURCE=$BENCH_DIR/source-$((SIZE_MB > PROFILE_MB ? SIZE_MB : PROFILE_MB))m
[ -f "$SOURCE" ] || head -c "$(((SIZE_MB > PROFILE_MB ? SIZE_MB : PROFILE_MB) << 20))" /dev/urandom >"$SOURCE"
if drop_caches; then
  cold_note="cold = after unmount, drop_caches and mount"
else
  cold_note="cold = after unmount and mount; the page cache could NOT be dropped (no permission), so raw and bindfs cold reads are warm"
fi
notes+=("$cold_note")

# --- the workloads, on one system ---------------------------------------------------------------
run_system() {
  local sys=$1 label=$1 size=$SIZE_MB dir=$BENCH_DIR/$1 s0 s1 t mbs
  case $sys in mutant-lan | mutant-wan) size=$PROFILE_MB label="$sys (${size} MiB file)" ;; esac
  echo "== $label"
  rm -rf "$dir"
  mkdir -p "$dir"
  mount_sys "$sys" "$dir"

  # Sequential write in 1 MiB blocks, timed to the end of close(); then the warm read in the
  # same mount. dd, not fio: fio's own start-up (~0.3 s here) would be counted in the figure.
  cat "$SOURCE" >/dev/null
  s0=$(ops_snapshot "$dir")
  t=$(timed dd if="$SOURCE" of="$MNT/big" bs=1M count="$size" status=none)
  case $sys in
    mutant-lan | mutant-wan)
      # Into the tier at close(); then until the upload has drained (mutant-mount sync).
      record "seq write" "$label" "$(calc "round($size / $t, 1)")" MiB/s "$s0" "$s0"
      t=$(calc "$t + $(timed "$MUTANT" sync "$MNT")")
      s1=$(ops_snapshot "$dir")
      record "seq write + upload" "$label" "$(calc "round($size / $t, 1)")" MiB/s "$s0" "$s1"
      ;;
    *)
      s1=$(ops_snapshot "$dir")
      record "seq write" "$label" "$(calc "round($size / $t, 1)")" MiB/s "$s0" "$s1"
      ;;
  esac
  s0=$s1
  t=$(timed dd if="$MNT/big" of=/dev/null bs=1M status=none)
  s1=$(ops_snapshot "$dir")
  record "seq read, warm" "$label" "$(calc "round($size / $t, 1)")" MiB/s "$s0" "$s1"

  remount_cold "$sys" "$dir"
  s0=$(ops_snapshot "$dir")
  t=$(timed dd if="$MNT/big" of=/dev/null bs=1M status=none)
  s1=$(ops_snapshot "$dir")
  record "seq read, cold" "$label" "$(calc "round($size / $t, 1)")" MiB/s "$s0" "$s1"

  remount_cold "$sys" "$dir"
  s0=$(ops_snapshot "$dir")
  local json
  json=$(fio_job randread "$MNT" big "$size")
  s1=$(ops_snapshot "$dir")
  record "rand 4K read, cold" "$label" \
    "$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))' <<<"$json")" \
    IOPS "$s0" "$s1"

  s0=$s1
  t=$(timed dd if="$BENCH_DIR/patch-1MiB" of="$MNT/big" bs=1M count=1 seek=$((size / 2)) conv=notrunc status=none)
  s1=$(ops_snapshot "$dir")
  record "overwrite 1 MiB" "$label" "$(calc "round($t * 1000)")" ms "$s0" "$s1"

  # Small files: tar x, ls -lR, rsync -a twice (the second has nothing to do).
  s0=$s1
  mkdir "$MNT/tarx"
  t=$(timed tar xf "$TREE.tar" -C "$MNT/tarx")
  s1=$(ops_snapshot "$dir")
  record "tar x" "$label" "$(calc "round($SMALL_FILES / $t)")" files/s "$s0" "$s1"
  s0=$s1
  t=$(timed ls -lR "$MNT/tarx")
  s1=$(ops_snapshot "$dir")
  record "ls -lR" "$label" "$(calc "round($SMALL_FILES / $t)")" files/s "$s0" "$s1"
  local run
  for run in "first" "second, no-op"; do
    s0=$s1
    t=$(timed rsync -a "$TREE/" "$MNT/rsync/")
    s1=$(ops_snapshot "$dir")
    record "rsync -a, $run" "$label" "$(calc "round($SMALL_FILES / $t)")" files/s "$s0" "$s1"
  done
  # Mixed sizes: the copy's speed, then what it cost in pads once committed (and, on the network
  # profiles, uploaded).
  s0=$s1
  t=$(timed rsync -a "$MIXED/" "$MNT/mixed/")
  local drain=0
  case $sys in mutant*) drain=$(timed "$MUTANT" sync "$MNT") ;; esac
  s1=$(ops_snapshot "$dir")
  record "rsync -a, mixed sizes" "$label" "$(calc "round($SMALL_FILES / $t)")" files/s "$s0" "$s1"
  case $sys in
    mutant-lan | mutant-wan)
      # What the upload still needed once the copy was back (mutant-mount sync).
      record "mixed: upload left after" "$label" "$(calc "round($drain * 1000)")" ms "$s0" "$s1"
      record "mixed: copy + upload" "$label" "$(calc "round($t + $drain, 2)")" s "$s0" "$s1"
      ;;
  esac
  case $sys in
    mutant*)
      read -r c0 _ <<<"$s0"
      read -r c1 _ <<<"$s1"
      record "mixed: pads created" "$label" "$(calc "round(($c1 - $c0) / $MIXED_MB, 2)")" \
        "per MB" "$s0" "$s1"
      ;;
  esac
  unmount_sys

  # Peak memory of the server while it writes a big file, on a fresh mount.
  case $sys in
    raw | mutant-lan | mutant-wan) ;;
    *)
      rm -rf "$dir"
      mkdir -p "$dir"
      mount_sys "$sys" "$dir"
      s0=$(ops_snapshot "$dir")
      fio_job seqwrite "$MNT" huge "$BIG_MB" >/dev/null
      local hwm
      hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$PID/status")
      s1=$(ops_snapshot "$dir")
      record "peak RSS, ${BIG_MB} MiB write" "$label" "$((hwm / 1024))" "MiB" "$s0" "$s1"
      unmount_sys
      ;;
  esac
  rm -rf "$dir"
}

for sys in $SYSTEMS; do
  case $sys in
    raw | bindfs | rclone | mutant | mutant-lan | mutant-wan) run_system "$sys" ;;
    *) echo "unknown system $sys (raw bindfs rclone mutant mutant-lan mutant-wan)" >&2; exit 2 ;;
  esac
done

# --- the table ----------------------------------------------------------------------------------
notes+=("machine: $(nproc) cores, $(free -g | awk '/^Mem/ {print $2}') GiB RAM, shared; load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end; $started")
notes+=("seq write and reads: dd, 1 MiB blocks (the write copies a random file from the page cache and is timed to the end of close); random reads: fio, 4 KiB at queue depth 1")
notes+=("sizes: sequential file ${SIZE_MB} MiB (${PROFILE_MB} MiB on the network profiles), ${SMALL_FILES} small files of 4 KiB and as many of 100 B to 64 KiB (${MIXED_MB} MB), random reads for ${RANDREAD_SECS} s, peak RSS while writing ${BIG_MB} MiB")
notes+=("profiles: mutant-lan --simulate \"$PROFILE_LAN\"; mutant-wan --simulate \"$PROFILE_WAN\" (an internet-like guess); both --upload staged: writes return once in the local tier (seq write, rsync), and '+ upload' is timed until mutant-mount sync returns; their cold reads drop the tier's cache first")
MIXED_FILES=$SMALL_FILES MIXED_MIB=$MIXED_MB \
  python3 - "$RESULTS" "$CHUNK_BYTES" "$PARALLELISM" "${notes[@]}" <<'EOF' | tee "$BENCH_DIR/results.md"
import os
import sys

results, chunk_bytes, parallelism = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
notes = sys.argv[4:]
rows = [line.rstrip("\n").split("\t") for line in open(results) if line.strip()]
value = {(r[0], r[1]): float(r[2]) for r in rows}
LOWER_IS_BETTER = {"ms", "s"}


def ms(s):
    s = s.strip()
    for unit, scale in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * scale
    return float(s) * 1e-3


def ideal(profile, workload):
    """MiB/s the store allows: `p` pads in flight, each taking latency + size x time per MiB.
    p = min(engine parallelism, the profile's concurrency)."""
    cfg = dict(kv.split("=") for kv in profile.split(","))
    # A warm read is served by the kernel's page cache: no pad moves, no ideal from the profile.
    # On the profiles a write returns once in the tier: its ideal is for the upload.
    op = {
        "seq write + upload": "put",
        "seq read, cold": "get",
    }.get(workload)
    if op is None:
        return None
    latency, per_mib = (ms(t) for t in cfg[op].split("+"))
    p = min(parallelism, int(cfg.get("concurrency", 0)) or parallelism)
    mib = chunk_bytes / 2**20
    return p * mib / (latency + mib * per_mib)


def mixed_ideal_seconds(profile, system):
    """The least a copy of the mixed tree into the tier and its upload can take: the copy's own
    time (no byte goes up before it is written) plus one pad's write (the last pack written
    still has to cross), or the tree at the profile's rate if that is longer."""
    files_per_s = value.get(("rsync -a, mixed sizes", system))
    if not files_per_s:
        return None
    cfg = dict(kv.split("=") for kv in profile.split(","))
    latency, per_mib = (ms(t) for t in cfg["put"].split("+"))
    mib = chunk_bytes / 2**20
    copy = int(os.environ["MIXED_FILES"]) / files_per_s
    return max(copy + latency + mib * per_mib, float(os.environ["MIXED_MIB"]) / ideal(profile, "seq write + upload"))


def ratio(workload, unit, v, base):
    b = value.get((workload, base))
    if b is None or b == 0 or v == 0:
        return ""
    if unit == "MiB":  # memory: the system's peak over the baseline's
        return f"{v / b:.2f}x mem"
    return f"{(b / v if unit in LOWER_IS_BETTER else v / b):.2f}"


print("| workload | system | result | vs raw | vs bindfs | vs rclone | of ideal | pad ops c/u/g/p |")
print("|---|---|---|---|---|---|---|---|")
for workload, system, v, unit, ops, profile in rows:
    v = float(v)
    frac = ""
    if profile:
        i = ideal(profile, workload)
        if i:
            frac = f"{v / i:.0%} of {i:.0f} MiB/s"
        if workload == "mixed: copy + upload":
            i = mixed_ideal_seconds(profile, system)
            frac = f"{i / v:.0%} of {i:.1f} s" if i else ""
    shown = f"{v:g} {unit}"
    print(f"| {workload} | {system} | {shown} | "
          + " | ".join(ratio(workload, unit, v, b) if system != b else "1" for b in ("raw", "bindfs", "rclone"))
          + f" | {frac} | {ops} |")
print()
print("Ratios are speed relative to the baseline (>1: faster), except peak RSS (the system's over the baseline's).")
print("Pad ops (mutant-mount only): pad creates/updates/gets the mount did during the workload, and reads of part of a pad (local store only: no network operation).")
for note in notes:
    print(f"- {note}")
EOF
echo "(also in $BENCH_DIR/results.md)"
