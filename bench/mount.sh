#!/usr/bin/env bash
# Mount benchmark: reading a backed-up raw VM disk image through `vmstash mount`
# against `restic mount`, the same image backed up by both, alternating the two
# tools in one run; and listing a 10,000-file directory inside the guest's
# filesystem through vmstash's mount. See bench/README.md.
#
# Usage: sudo bench/mount.sh
#   ROUNDS=3                       rounds (each: both tools' sequential and random reads, the listing)
#   BENCH_DIR=/var/tmp/vmstash-bench  where the image, repositories and mountpoints go
#   KEEP=1                         keep the run's directory (image, repos, logs)
#   IMAGE_SIZE=2G DATA_MIB=768     the disk image: size, and MiB of files in it
#   MANY_FILES=10000               small files in the guest directory /many (the listing)
#   RANDOM_READS=2000 RANDOM_SEED=1  the random-read step: 4 KiB reads, and the offsets' seed
#   SKIP_LISTING=1                 leave out the guest-directory listing (and its bar)
#   VMSTASH_BIN=PATH               a vmstash binary to use instead of building one
#
# Exit status: 0 every bar passed, 2 a bar failed, 1 the benchmark itself failed
# (a command failed, a mount did not come up, data read through a mount differs
# from the image, or the guest directory is not in vmstash's mount).
set -euo pipefail

ROOT="$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib/common.sh
. "$ROOT/bench/lib/common.sh"
BENCH_DIR="${BENCH_DIR:-/var/tmp/vmstash-bench}"
ROUNDS="${ROUNDS:-3}"
IMAGE_SIZE="${IMAGE_SIZE:-2G}"
DATA_MIB="${DATA_MIB:-768}"
MANY_FILES="${MANY_FILES:-10000}"
RANDOM_READS="${RANDOM_READS:-2000}"
RANDOM_SEED="${RANDOM_SEED:-1}"
SKIP_LISTING="${SKIP_LISTING:-0}"
KEEP="${KEEP:-0}"
MOUNT_TIMEOUT=120          # seconds for a mount to show the image

# The bar, from the issue.
BAR_SEQ_SPEEDUP=3.0        # restic sequential read time / vmstash's >=
BAR_RAND_SPEEDUP=3.0       # restic random-read time / vmstash's >=
BAR_LIST_SECS=1.0          # listing the guest directory, cold mount, seconds <

use_passwords vmstash restic

need_positive_int ROUNDS
need_positive_int MANY_FILES
need_positive_int RANDOM_READS
need_nonneg_int RANDOM_SEED
need_root "the image is built on a loop device; page cache is dropped"

# --- setup --------------------------------------------------------------------
# Sampled before this script's own build and image making add to it.
sample_load
install_deps
use_vmstash
use_restic
command -v fusermount3 >/dev/null || die "fusermount3 not installed (fuse3)"
command -v python3 >/dev/null || die "python3 not installed (the random-read step)"
check_bench_dir 4

make_run_dir mount
MNT_V="$W/mnt-vmstash"
MNT_R="$W/mnt-restic"
V_REPO="$W/vmstash-repo"
R_REPO="$W/restic-repo"
# The running mount processes: tool -> pid (empty when not mounted).
declare -A MOUNT_PID=([vmstash]="" [restic]="")
declare -A MOUNT_DIR=([vmstash]="$MNT_V" [restic]="$MNT_R")

# unmount DIR: fusermount3 -u, retried while busy, then a lazy umount.
unmount() {
  local dir="$1" i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    mountpoint -q -- "$dir" || return 0
    fusermount3 -u -- "$dir" 2>/dev/null && return 0
    sleep 0.5
  done
  if mountpoint -q -- "$dir"; then
    note "warning: $dir still busy; lazy unmount"
    umount -l -- "$dir" || true
  fi
}
# reap PID: wait up to 30 s for a mount process to end after its unmount, then
# SIGTERM, then SIGKILL. Only this script's own mount processes are signalled.
reap() {
  local pid="$1" i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    note "warning: mount process $pid still running after its unmount; SIGTERM"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
# cleanup: what trap_cleanup undoes when the script exits, however it exits.
cleanup() {
  local tool
  set +e
  for tool in vmstash restic; do
    unmount "${MOUNT_DIR[$tool]}"
    [ -z "${MOUNT_PID[$tool]}" ] || reap "${MOUNT_PID[$tool]}"
  done
  if [ "$KEEP" != 1 ] && { mountpoint -q -- "$MNT_V" || mountpoint -q -- "$MNT_R"; }; then
    note "warning: a mount is still there; kept $W"
  else
    finish_run_dir
  fi
}
trap_cleanup
export RESTIC_CACHE_DIR="$W/restic-cache"
mkdir -p "$MNT_V" "$MNT_R"

# Dropping the page cache before each timed step makes every read go through
# the mount to its repository on disk, whatever an earlier step left in memory.
setup_drop_caches

# quiet, secs and the report's other helpers are in bench/lib/common.sh.
# now_ms: the time in ms, for the steps timed here rather than with measure.
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# --- the image and the two backups ---------------------------------------------
IMG="$W/disk.img"
note "building the disk image: $IMAGE_SIZE, $DATA_MIB MiB of files, $MANY_FILES small files in /many (scripts/make-disk-image.sh)"
MANY_FILES="$MANY_FILES" bash "$ROOT/scripts/make-disk-image.sh" "$IMG" "$IMAGE_SIZE" "$DATA_MIB"
IMG_BYTES="$(stat -c %s -- "$IMG")"
IMG_ALLOC="$(($(stat -c %b -- "$IMG") * 512))"
IMG_SHA="$(sha256sum -- "$IMG" | cut -d' ' -f1)"
# vmstash names the series and the disk after the image file without its
# extension: vms/disk/latest/disk.raw. restic shows the file at its absolute path.
NAME="$(basename -- "$IMG" .img)"
declare -A IMAGE_IN=(
  [vmstash]="$MNT_V/vms/$NAME/latest/$NAME.raw"
  [restic]="$MNT_R/snapshots/latest$IMG"
)
GUEST_DIR="$MNT_V/vms/$NAME/latest/$NAME/p1/many"

note "backing up the image with both tools (untimed)"
quiet vmstash-init "$VMSTASH" -r "$V_REPO" init
quiet vmstash-backup "$VMSTASH" -r "$V_REPO" backup --disk "$IMG"
quiet restic-init restic -r "$R_REPO" init
quiet restic-backup restic -r "$R_REPO" backup "$IMG"

# --- mounts -----------------------------------------------------------------------
# Peak RSS of each tool's mount processes (VmHWM, KiB), the largest seen.
declare -A PEAK_RSS=([vmstash]=0 [restic]=0)
MOUNTS=0

# mount_start TOOL: mount TOOL's repository in the background on its own
# directory and wait until the image file is visible in it.
mount_start() {
  local tool="$1" dir="${MOUNT_DIR[$1]}" file="${IMAGE_IN[$1]}" log pid i
  MOUNTS=$((MOUNTS + 1))
  log="$LOGS/mount-$MOUNTS-$tool"
  if [ "$tool" = vmstash ]; then
    "$VMSTASH" -r "$V_REPO" mount "$dir" </dev/null >"$log.out" 2>"$log.err" &
  else
    restic -r "$R_REPO" mount "$dir" </dev/null >"$log.out" 2>"$log.err" &
  fi
  pid=$!
  MOUNT_PID[$tool]="$pid"
  for ((i = 0; i < MOUNT_TIMEOUT * 10; i++)); do
    [ -f "$file" ] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log.out" "$log.err" >&2
      die "$tool mount on $dir exited before $file appeared"
    fi
    sleep 0.1
  done
  if mountpoint -q -- "$dir"; then
    note "$dir holds:"
    ls -la -- "$dir" >&2 || true
  fi
  tail -n 20 "$log.out" "$log.err" >&2
  die "$tool mount: $file did not appear within $MOUNT_TIMEOUT s"
}
# mount_stop TOOL: record the process's peak RSS, unmount, reap the process.
mount_stop() {
  local tool="$1" pid="${MOUNT_PID[$1]}" hwm
  hwm="$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
  if [ -n "$hwm" ] && [ "$hwm" -gt "${PEAK_RSS[$tool]}" ]; then
    PEAK_RSS[$tool]="$hwm"
  fi
  unmount "${MOUNT_DIR[$tool]}"
  reap "$pid"
  MOUNT_PID[$tool]=""
}

# The listing needs vmstash's guest-filesystem view (<disk>/p<N>/...). Look for
# the directory once before the long read steps, so a vmstash without it fails
# at once and says why.
if [ "$SKIP_LISTING" != 1 ]; then
  mount_start vmstash
  if [ ! -d "$GUEST_DIR" ]; then
    # shellcheck disable=SC2012  # shown to a person
    {
      echo "bench: error: $GUEST_DIR is not in vmstash's mount."
      echo "bench: the listing step needs vmstash mount to show the guest filesystem of each"
      echo "bench: partition as <disk>/p<N>/; this vmstash shows under vms/$NAME/latest/:"
      ls -la -- "$MNT_V/vms/$NAME/latest/" 2>&1 | sed 's/^/bench:   /'
      if [ -d "$MNT_V/vms/$NAME/latest/$NAME" ]; then
        echo "bench: and under vms/$NAME/latest/$NAME/:"
        ls -la -- "$MNT_V/vms/$NAME/latest/$NAME/" 2>&1 | sed 's/^/bench:   /'
      fi
      echo "bench: SKIP_LISTING=1 runs the read steps without it."
    } >&2
    exit 1
  fi
  mount_stop vmstash
fi

# --- the steps ----------------------------------------------------------------------
RANDREAD="$W/randread.py"
cat >"$RANDREAD" <<'EOF'
# randread.py FILE IMAGE COUNT SEED: COUNT reads of 4 KiB at 4 KiB-aligned
# offsets drawn with SEED over the whole of FILE; prints the wall time of
# the reads in ms. Then, untimed, reads the same offsets of IMAGE and fails
# (exit 3) if any read differs.
import os
import random
import sys
import time

path, image, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
size = os.stat(image).st_size
rng = random.Random(seed)
offsets = [rng.randrange(size // 4096) * 4096 for _ in range(count)]
t0 = time.monotonic_ns()
fd = os.open(path, os.O_RDONLY)
got = [os.pread(fd, 4096, off) for off in offsets]
os.close(fd)
t1 = time.monotonic_ns()
fd = os.open(image, os.O_RDONLY)
bad = [off for off, data in zip(offsets, got) if os.pread(fd, 4096, off) != data]
os.close(fd)
if bad:
    print(f"{len(bad)} of {count} reads differ from the image, first at offset {bad[0]}",
          file=sys.stderr)
    sys.exit(3)
print((t1 - t0) // 1000000)
EOF

# Per-round results (ms), indexed by round.
declare -a V_SEQ R_SEQ V_RAND R_RAND LIST

# seq_read TOOL ROUND: the whole image with dd bs=1M into /dev/null. In round 1
# the sha256 of the file as read is checked against the image's, untimed,
# right after, on the same mount (so over what the read left in the page cache).
seq_read() {
  local tool="$1" r="$2" file="${IMAGE_IN[$1]}" log="$LOGS/r$2-$1-seq" t0 t1 full part sum
  mount_start "$tool"
  drop_caches
  t0="$(now_ms)"
  dd if="$file" of=/dev/null bs=1M 2>"$log.err" || {
    tail -n 20 "$log.err" >&2
    die "$tool: reading $file failed"
  }
  t1="$(now_ms)"
  full=$((IMG_BYTES / 1048576)) part=$((IMG_BYTES % 1048576 > 0 ? 1 : 0))
  grep -q "^$full+$part records in" "$log.err" ||
    die "$tool: dd of $file did not read $IMG_BYTES bytes: $(head -n 1 "$log.err")"
  if [ "$r" = 1 ]; then
    sum="$(sha256sum -- "$file" | cut -d' ' -f1)"
    [ "$sum" = "$IMG_SHA" ] ||
      die "$tool: the image read through the mount has sha256 $sum, the backed-up image $IMG_SHA"
  fi
  mount_stop "$tool"
  if [ "$tool" = vmstash ]; then V_SEQ[r]=$((t1 - t0)); else R_SEQ[r]=$((t1 - t0)); fi
}
# rand_read TOOL ROUND: RANDOM_READS 4 KiB preads at the same offsets for both
# tools, checked against the image.
rand_read() {
  local tool="$1" r="$2" file="${IMAGE_IN[$1]}" log="$LOGS/r$2-$1-rand" ms
  mount_start "$tool"
  drop_caches
  if ! python3 "$RANDREAD" "$file" "$IMG" "$RANDOM_READS" "$RANDOM_SEED" >"$log.out" 2>"$log.err"; then
    tail -n 20 "$log.err" >&2
    die "$tool: random reads of $file failed (or read wrong data)"
  fi
  ms="$(tail -n 1 "$log.out")"
  [[ "$ms" =~ ^[0-9]+$ ]] || die "$tool: random reads: no time in $log.out"
  mount_stop "$tool"
  if [ "$tool" = vmstash ]; then V_RAND[r]="$ms"; else R_RAND[r]="$ms"; fi
}
# list_dir ROUND: `ls -l GUEST_DIR | wc -l` on a fresh vmstash mount.
list_dir() {
  local r="$1" log="$LOGS/r$1-vmstash-list" t0 t1 n
  mount_start vmstash
  drop_caches
  t0="$(now_ms)"
  # shellcheck disable=SC2012  # `ls -l` (a readdir and a stat per entry) is what is measured
  if ! n="$(LC_ALL=C ls -l -- "$GUEST_DIR" 2>"$log.err" | wc -l)"; then
    tail -n 20 "$log.err" >&2
    die "listing $GUEST_DIR failed: vmstash mount does not show the guest directory /many"
  fi
  t1="$(now_ms)"
  # `ls -l` prints a "total" line before the entries.
  [ "$n" -eq $((MANY_FILES + 1)) ] ||
    die "listing $GUEST_DIR gave $n lines, expected $((MANY_FILES + 1)) (a total line and $MANY_FILES files)"
  mount_stop vmstash
  LIST[r]=$((t1 - t0))
}

note "$CACHE_NOTE"
note "work directory $W ($fstype); $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
  # Odd rounds run vmstash first in each step, even rounds restic first.
  if [ $((r % 2)) -eq 1 ]; then order=(vmstash restic); else order=(restic vmstash); fi
  for tool in "${order[@]}"; do
    note "round $r/$ROUNDS: $tool sequential read"
    seq_read "$tool" "$r"
  done
  for tool in "${order[@]}"; do
    note "round $r/$ROUNDS: $tool random reads"
    rand_read "$tool" "$r"
  done
  if [ "$SKIP_LISTING" != 1 ]; then
    note "round $r/$ROUNDS: vmstash listing of the guest directory"
    list_dir "$r"
  fi
done

# --- report -------------------------------------------------------------------
# ratio A B: A / B with two decimals; a time of 0 ms counts as 1 ms.
ratio() { calc 2 "$1 / ($2 > 0 ? $2 : 1)"; }

v_seq="$(median "${V_SEQ[@]}")"; r_seq="$(median "${R_SEQ[@]}")"
v_rand="$(median "${V_RAND[@]}")"; r_rand="$(median "${R_RAND[@]}")"
seq_speedup="$(ratio "$r_seq" "$v_seq")"
rand_speedup="$(ratio "$r_rand" "$v_rand")"
res_seq="$(verdict "$seq_speedup >= $BAR_SEQ_SPEEDUP")"
res_rand="$(verdict "$rand_speedup >= $BAR_RAND_SPEEDUP")"
if [ "$SKIP_LISTING" != 1 ]; then
  list="$(median "${LIST[@]}")"
  list_secs="$(secs "$list")"
  res_list="$(verdict "$list < $BAR_LIST_SECS * 1000")"
else
  list_secs="skipped"
  res_list="SKIP"
fi

echo
echo "Per round (seconds):"
printf '%-5s %-8s %10s %10s %10s\n' round tool sequential random listing
for ((r = 1; r <= ROUNDS; r++)); do
  if [ "$SKIP_LISTING" != 1 ]; then l="$(secs "${LIST[r]}")"; else l="-"; fi
  printf '%-5s %-8s %10s %10s %10s\n' "$r" vmstash "$(secs "${V_SEQ[r]}")" "$(secs "${V_RAND[r]}")" "$l"
  printf '%-5s %-8s %10s %10s %10s\n' "$r" restic "$(secs "${R_SEQ[r]}")" "$(secs "${R_RAND[r]}")" "-"
done

echo
echo "vmstash mount vs restic $RESTIC_VERSION mount: $(mib "$IMG_BYTES") MiB raw image ($(mib "$IMG_ALLOC") MiB allocated;"
echo "GPT + ext4, $DATA_MIB MiB of files, half text, half random, and /many with $MANY_FILES small files),"
echo "$ROUNDS rounds, medians. A fresh mount of each tool for each timed step; $CACHE_NOTE."
echo "1-minute load average when the benchmark started: $LOAD_START ($(nproc) CPUs)."
echo "Round 1's sequential reads matched the image's sha256 (both tools); every random read matched the image."
echo
fmt='%-40s %10s %10s %-18s %-8s %s\n'
# shellcheck disable=SC2059  # $fmt is this script's own format string
{
  printf "$fmt" metric vmstash restic ratio bar result
  printf "$fmt" "sequential read, whole image (s)" "$(secs "$v_seq")" "$(secs "$r_seq")" \
    "${seq_speedup}x speedup" ">= ${BAR_SEQ_SPEEDUP}x" "$res_seq"
  printf "$fmt" "$RANDOM_READS random 4 KiB reads (s)" "$(secs "$v_rand")" "$(secs "$r_rand")" \
    "${rand_speedup}x speedup" ">= ${BAR_RAND_SPEEDUP}x" "$res_rand"
  printf "$fmt" "ls -l of /many, $MANY_FILES files (s)" "$list_secs" "-" \
    "" "< ${BAR_LIST_SECS} s" "$res_list"
  printf "$fmt" "sequential throughput (MiB/s)" \
    "$(calc 1 "$IMG_BYTES / 1048576 / ($v_seq > 0 ? $v_seq : 1) * 1000")" \
    "$(calc 1 "$IMG_BYTES / 1048576 / ($r_seq > 0 ? $r_seq : 1) * 1000")" "(info)" "" ""
  printf "$fmt" "random read latency (ms per read)" \
    "$(calc 2 "$v_rand / $RANDOM_READS")" "$(calc 2 "$r_rand / $RANDOM_READS")" "(info)" "" ""
  printf "$fmt" "peak RSS of the mount process (MiB, max)" \
    "$(calc 0 "${PEAK_RSS[vmstash]} / 1024")" "$(calc 0 "${PEAK_RSS[restic]} / 1024")" "(info)" "" ""
}
if [ "$SKIP_LISTING" = 1 ]; then
  echo "(SKIP_LISTING=1: the listing bar was not measured)"
fi

for res in "$res_seq" "$res_rand" "$res_list"; do
  [ "$res" = PASS ] || [ "$res" = SKIP ] || exit 2
done
