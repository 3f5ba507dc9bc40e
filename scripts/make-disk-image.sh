#!/usr/bin/env bash
# Builds a raw, sparse VM disk image for tests, the demo and the benchmarks:
# a GPT with one Linux partition holding an ext4 filesystem, filled with about
# DATA_MIB MiB of mixed data (half compressible text: logs, CSV, small and
# multi-MiB files, nested directories, a symlink and a hard link; half random
# data: a few large files and many small ones). The rest of the disk is left
# unwritten, so it stays a hole in the image file.
#
# Usage: make-disk-image.sh [-v] [-s SEED] OUT SIZE DATA_MIB
#   OUT       image file to write (replaced if it exists)
#   SIZE      disk size, as accepted by truncate(1): 256M, 2G, 2147483648
#   DATA_MIB  MiB of file data to put in the filesystem
#   -v        report progress on stderr
#   -s SEED   seed for file sizes and text content (default 1); the random
#             half comes from /dev/urandom, so it differs on every run
#
# Environment:
#   MANY_FILES=N  also create the directory /many in the filesystem holding N
#                 small text files (f00000, f00001, ...; about 40 bytes each,
#                 one 4 KiB block each on disk), on top of DATA_MIB. Default 0:
#                 no such directory. bench/mount.sh lists it through the mount.
#
# Needs root (loop devices, mount). Safe to run several times at once: each
# run has its own loop devices and mount directory, and every mount and loop
# device it made is released on exit, also on failure or interruption.
set -euo pipefail

usage() {
  echo "usage: $0 [-v] [-s SEED] OUT SIZE DATA_MIB" >&2
  exit 2
}

VERBOSE=0
SEED=1
while getopts ":vs:h" opt; do
  case "$opt" in
    v) VERBOSE=1 ;;
    s) SEED="$OPTARG" ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ "$#" -eq 3 ] || usage
OUT="$1"
SIZE="$2"
DATA_MIB="$3"

log() {
  if [ "$VERBOSE" -eq 1 ]; then
    echo "make-disk-image: $*" >&2
  fi
}
die() {
  echo "make-disk-image: error: $*" >&2
  exit 1
}

[[ "$DATA_MIB" =~ ^[0-9]+$ ]] || die "DATA_MIB must be a whole number of MiB, got '$DATA_MIB'"
[[ "$SEED" =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer, got '$SEED'"
MANY_FILES="${MANY_FILES:-0}"
[[ "$MANY_FILES" =~ ^[0-9]+$ ]] || die "MANY_FILES must be a non-negative integer, got '$MANY_FILES'"
[ "$(id -u)" -eq 0 ] || die "must run as root (loop devices and mount)"
for tool in sgdisk partx losetup mkfs.ext4 mount umount truncate awk; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/install-deps.sh)"
done

out_dir="$(dirname -- "$OUT")"
[ -d "$out_dir" ] || die "directory $out_dir does not exist"

# Everything below is undone by cleanup(), in reverse order, whatever happens.
TMP_IMG=""
MNT=""
MOUNTED=0
LOOPS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  set +e
  if [ "$MOUNTED" -eq 1 ]; then
    local i
    for i in 1 2 3 4 5; do
      umount "$MNT" 2>/dev/null && break
      sleep 1
    done
    if mountpoint -q "$MNT"; then
      echo "make-disk-image: warning: $MNT busy, lazy unmount" >&2
      umount -l "$MNT"
    fi
  fi
  if [ -n "$MNT" ] && [ -d "$MNT" ]; then
    rmdir "$MNT"
  fi
  local idx
  for ((idx = ${#LOOPS[@]} - 1; idx >= 0; idx--)); do
    losetup -d "${LOOPS[idx]}" 2>/dev/null ||
      echo "make-disk-image: warning: could not detach ${LOOPS[idx]}" >&2
  done
  if [ "$rc" -ne 0 ] && [ -n "$TMP_IMG" ]; then
    rm -f -- "$TMP_IMG"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Build under a temporary name beside OUT, so a failed run leaves no
# half-made image and OUT only ever holds a complete one.
TMP_IMG="$(mktemp -p "$out_dir" ".$(basename -- "$OUT").XXXXXX")"
truncate -s "$SIZE" -- "$TMP_IMG"
disk_bytes="$(stat -c %s -- "$TMP_IMG")"
[ "$disk_bytes" -ge $((64 * 1024 * 1024)) ] || die "SIZE must be at least 64 MiB"
# ext4 metadata (inode tables, journal) takes a few percent; keep 12 % spare.
max_data_mib=$((disk_bytes * 88 / 100 / 1024 / 1024 - 8))
[ "$DATA_MIB" -le "$max_data_mib" ] ||
  die "DATA_MIB $DATA_MIB does not fit in a $SIZE disk (at most $max_data_mib)"
log "disk $OUT: $disk_bytes bytes, $DATA_MIB MiB of data"

sgdisk --clear --new=1:0:0 --typecode=1:8300 --change-name=1:rootfs \
  -- "$TMP_IMG" >/dev/null

loop="$(losetup --find --show --partscan -- "$TMP_IMG")"
LOOPS+=("$loop")
part="${loop}p1"
if command -v udevadm >/dev/null; then
  udevadm settle --timeout=5 2>/dev/null || true
fi
for _ in 1 2 3 4 5 6 7 8 9 10; do
  [ -b "$part" ] && break
  sleep 0.2
done
if [ ! -b "$part" ]; then
  # No partition device: the kernel cannot read GPT (CONFIG_EFI_PARTITION
  # off) or /dev has no node for it. Map the partition's byte range on a loop
  # device of its own instead; what is written to the image is the same.
  read -r start sectors < <(partx --noheadings --raw --nr 1 -o START,SECTORS -- "$TMP_IMG")
  part="$(losetup --find --show --offset $((start * 512)) \
    --sizelimit $((sectors * 512)) -- "$TMP_IMG")"
  LOOPS+=("$part")
  log "no ${loop}p1; partition mapped by offset on $part"
fi
log "partition on $part"

# Inode tables and journal are written now rather than by the kernel's lazy
# init thread after mounting, so the finished image does not depend on how far
# that thread got before the unmount.
mkfs.ext4 -q -F -L vmstash-data -E lazy_itable_init=0,lazy_journal_init=0 -- "$part"

MNT="$(mktemp -d -p "${TMPDIR:-/tmp}" vmstash-img-mnt.XXXXXX)"
mount -t ext4 -- "$part" "$MNT"
MOUNTED=1

# --- the data -----------------------------------------------------------------
MIB=$((1024 * 1024))
data_bytes=$((DATA_MIB * MIB))
text_bytes=$((data_bytes / 2))
random_bytes=$((data_bytes - text_bytes))
RANDOM="$SEED"   # deterministic file sizes for a given seed

# rand_between LO HI: sets REPLY to a number in [LO, HI] from bash's seeded
# $RANDOM. Not for use in $(...): bash reseeds $RANDOM in every subshell.
rand_between() {
  local lo="$1" hi="$2"
  REPLY=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
}

# gen_text KIND BYTES SEED FILE: exactly BYTES bytes of log-, CSV- or
# config-like lines. Compressible like real text (repeated vocabulary, varying
# numbers), but no two files are the same.
gen_text() {
  local kind="$1" bytes="$2" seed="$3" file="$4"
  awk -v kind="$kind" -v total="$bytes" -v seed="$seed" '
    BEGIN {
      srand(seed)
      nw = split("alpha beta gamma delta request response cache miss hit " \
        "timeout retry connection closed opened user session token disk " \
        "volume snapshot backup restore chunk index pack upload download " \
        "worker thread queue scheduler tick flush commit rollback error " \
        "warning notice started finished failed succeeded latency bytes", w, " ")
      nl = split("DEBUG INFO INFO INFO NOTICE WARN ERROR", lv, " ")
      nh = split("web01 web02 db01 db02 cache01 batch03 edge07", hosts, " ")
      written = 0; n = 0
      while (written < total) {
        n++
        if (kind == "log") {
          line = sprintf("2024-%02d-%02dT%02d:%02d:%02d.%03dZ %s %s[%d]: %s %s %s id=%d dur=%dms",
            1 + int(rand() * 12), 1 + int(rand() * 28), int(rand() * 24),
            int(rand() * 60), int(rand() * 60), int(rand() * 1000),
            hosts[1 + int(rand() * nh)], w[1 + int(rand() * nw)], 1000 + int(rand() * 30000),
            lv[1 + int(rand() * nl)], w[1 + int(rand() * nw)], w[1 + int(rand() * nw)],
            int(rand() * 1000000), int(rand() * 5000))
        } else if (kind == "csv") {
          if (n == 1) line = "id,timestamp,host,metric,value,unit,label"
          else line = sprintf("%d,%d,%s,%s_%s,%.3f,%s,%s", n, 1700000000 + n * 7 + int(rand() * 5),
            hosts[1 + int(rand() * nh)], w[1 + int(rand() * nw)], w[1 + int(rand() * nw)],
            rand() * 10000, (rand() < 0.5 ? "ms" : "bytes"), w[1 + int(rand() * nw)])
        } else {
          if (n % 20 == 1) line = sprintf("\n[%s.%s]", w[1 + int(rand() * nw)], w[1 + int(rand() * nw)])
          else line = sprintf("%s_%s = %d  # %s %s %s", w[1 + int(rand() * nw)], w[1 + int(rand() * nw)],
            int(rand() * 65536), w[1 + int(rand() * nw)], w[1 + int(rand() * nw)], w[1 + int(rand() * nw)])
        }
        line = line "\n"
        if (written + length(line) > total) line = substr(line, 1, total - written)
        printf "%s", line
        written += length(line)
      }
    }' >"$file"
}

# Text half: a quarter in many small files in nested directories, the rest in
# multi-MiB logs and CSV files.
log "writing $((text_bytes / MIB)) MiB of text"
mkdir -p "$MNT/var/log/app" "$MNT/srv/data/metrics" "$MNT/etc/app/conf.d"
small_text_budget=$((text_bytes / 4))
written=0
i=0
while [ "$written" -lt "$small_text_budget" ]; do
  i=$((i + 1))
  rand_between 2048 131072
  size="$REPLY"
  [ $((written + size)) -le "$small_text_budget" ] || size=$((small_text_budget - written))
  case $((i % 3)) in
    0) dir="$MNT/var/log/app/$((2020 + i % 4))/$(printf %02d $((1 + i % 12)))"
       kind=log name="app-$i.log" ;;
    1) dir="$MNT/etc/app/conf.d/group$((i % 5))"; kind=conf name="unit-$i.conf" ;;
    *) dir="$MNT/srv/data/metrics/shard$((i % 7))"; kind=csv name="m-$i.csv" ;;
  esac
  mkdir -p "$dir"
  gen_text "$kind" "$size" "$((SEED * 100000 + i))" "$dir/$name"
  written=$((written + size))
done
large_text_budget=$((text_bytes - small_text_budget))
written=0
while [ "$written" -lt "$large_text_budget" ]; do
  i=$((i + 1))
  rand_between 2 16
  size=$((REPLY * MIB))
  rand_between 0 65535
  size=$((size + REPLY))
  [ $((written + size)) -le "$large_text_budget" ] || size=$((large_text_budget - written))
  if [ $((i % 2)) -eq 0 ]; then
    gen_text log "$size" "$((SEED * 100000 + i))" "$MNT/var/log/syslog.$i"
  else
    gen_text csv "$size" "$((SEED * 100000 + i))" "$MNT/srv/data/export-$i.csv"
  fi
  written=$((written + size))
done
first_log="$(find "$MNT/var/log" -name 'syslog.*' -print -quit)"
if [ -n "$first_log" ]; then
  ln -s "$(basename -- "$first_log")" "$MNT/var/log/syslog"
  ln -- "$first_log" "$MNT/srv/data/syslog-archive.hardlink"
fi

# Random half: 60 % in a few large files, 40 % in many small ones.
log "writing $((random_bytes / MIB)) MiB of random data"
mkdir -p "$MNT/var/lib/blobs" "$MNT/home/user/media"
large_random_budget=$((random_bytes * 6 / 10))
n_large=3
for ((j = 1; j <= n_large; j++)); do
  if [ "$j" -lt "$n_large" ]; then
    size=$((large_random_budget / n_large))
  else
    size=$((large_random_budget - (n_large - 1) * (large_random_budget / n_large)))
  fi
  head -c "$size" /dev/urandom >"$MNT/home/user/media/video-$j.bin"
done
small_random_budget=$((random_bytes - large_random_budget))
written=0
j=0
while [ "$written" -lt "$small_random_budget" ]; do
  j=$((j + 1))
  rand_between 4096 524288
  size="$REPLY"
  [ $((written + size)) -le "$small_random_budget" ] || size=$((small_random_budget - written))
  dir="$MNT/var/lib/blobs/$(printf %02x $((j % 16)))"
  mkdir -p "$dir"
  head -c "$size" /dev/urandom >"$dir/obj-$j.bin"
  written=$((written + size))
done

# One directory with many small files, for listing benchmarks (MANY_FILES).
if [ "$MANY_FILES" -gt 0 ]; then
  log "writing $MANY_FILES small files in /many"
  mkdir "$MNT/many"
  for ((k = 0; k < MANY_FILES; k++)); do
    printf -v name 'f%05d' "$k"
    printf 'small file %05d of %d, seed %d\n' "$k" "$MANY_FILES" "$SEED" >"$MNT/many/$name"
  done
fi

if [ "$VERBOSE" -eq 1 ]; then
  log "files: $(find "$MNT" -type f | wc -l), filesystem usage:"
  df -h "$MNT" >&2
fi

sync -f "$MNT"
umount "$MNT"
MOUNTED=0
for ((idx = ${#LOOPS[@]} - 1; idx >= 0; idx--)); do
  losetup -d "${LOOPS[idx]}"
  unset 'LOOPS[idx]'
done
chmod 0644 -- "$TMP_IMG"
mv -f -- "$TMP_IMG" "$OUT"
TMP_IMG=""
log "done: $OUT ($(du -h --apparent-size -- "$OUT" | cut -f1) apparent, $(du -h -- "$OUT" | cut -f1) allocated)"
