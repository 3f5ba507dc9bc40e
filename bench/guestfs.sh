#!/usr/bin/env bash
# Guest-filesystem benchmark (issue 15): files inside XFS on LVM and inside compressed Btrfs,
# read through `vmstash mount` from a backed-up 20 GiB disk, against the kernel reading the
# same filesystems from the mount's own .raw files (loop-mounted), in one run; and `vmstash
# find` over 30 snapshots. See bench/README.md.
#
# The disk: GPT, p1 an LVM physical volume holding the logical volume root (XFS), p2 Btrfs
# mounted with compress=zstd. Each filesystem holds a directory of MANY_FILES files, a 1 GiB
# file (random bytes in XFS; compressible text in Btrfs) and, in XFS, a file nine
# directories deep.
#
# Usage: sudo bench/guestfs.sh
#   BENCH_DIR=/var/tmp/vmstash-bench  where the disk, repository and mountpoints go
#   KEEP=1                         keep the run's directory
#   MANY_FILES=10000 BIG_MIB=1024  the listing's files, and the big files' size
#   SNAPSHOTS=30                   snapshots `find` searches
#   VMSTASH_BIN=PATH               a vmstash binary to use instead of building one
#
# Bars (from the issue): first byte of the deep file < 1 s after `vmstash mount` starts (cold);
# `ls -l` of each big directory < 1 s (cold mount); reading each 1 GiB file >= 0.8 x the
# kernel's speed; `find` of a path over SNAPSHOTS snapshots < 5 s.
# Exit status: 0 every bar passed, 2 a bar failed, 1 the benchmark itself failed.
set -euo pipefail

ROOT="$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib/common.sh
. "$ROOT/bench/lib/common.sh"
BENCH_DIR="${BENCH_DIR:-/var/tmp/vmstash-bench}"
KEEP="${KEEP:-0}"
MANY_FILES="${MANY_FILES:-10000}"
BIG_MIB="${BIG_MIB:-1024}"
SNAPSHOTS="${SNAPSHOTS:-30}"
BAR_FIRST_BYTE=1.0
BAR_LIST=1.0
BAR_READ_RATIO=0.8
BAR_FIND=5.0

use_passwords vmstash
need_positive_int MANY_FILES
need_positive_int BIG_MIB
need_positive_int SNAPSHOTS
need_root "filesystems are built on loop devices; page cache is dropped"
sample_load
install_deps
use_vmstash
check_bench_dir $((BIG_MIB * 5 / 1024 + 4))
make_run_dir guestfs
setup_drop_caches
MNT="$W/mnt"
REF="$W/ref"
VG="benchvg$$"
MOUNT_PID=""
cleanup() {
  umount "$REF" 2>/dev/null || true
  stop_mount
  finish_run_dir
}
trap_cleanup
mkdir -p "$MNT" "$REF"

# --- the disk -------------------------------------------------------------------------
# fill_tree DIR KIND: the files both filesystems get; KIND "random" or "text" for the big one.
fill_tree() {
  local dir="$1"
  mkdir -p "$dir/many" "$dir/usr/share/doc/a/b/c/d/e/f/g"
  echo deep >"$dir/usr/share/doc/a/b/c/d/e/f/g/file"
  echo "/dev/mapper/root / xfs defaults 0 0" >"$dir/fstab"
  python3 - "$dir/many" "$MANY_FILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"file-{i:06d}.conf"), "w") as f:
        f.write(f"{i}\n")
PY
  if [ "$2" = random ]; then
    head -c $((BIG_MIB << 20)) /dev/urandom >"$dir/big"
  else
    python3 - "$dir/big" "$BIG_MIB" <<'PY'
import sys
n = int(sys.argv[2]) << 20
line = b"".join(b"%08d a log line that compresses about four to one, as logs do\n" % i for i in range(16384))
with open(sys.argv[1], "wb") as f:
    while n > 0:
        f.write(line[:n]); n -= len(line)
PY
  fi
}

note "making the XFS root and the Btrfs filesystem (untimed)"
XFS_IMG="$W/root.xfs"
truncate -s $((BIG_MIB * 2 + 1024))M "$XFS_IMG"
quiet mkfs-xfs mkfs.xfs -q "$XFS_IMG"
mount -o loop "$XFS_IMG" "$REF"
fill_tree "$REF" random
umount "$REF"
BTRFS_IMG="$W/btrfs.img"
truncate -s $((BIG_MIB * 2 + 1024))M "$BTRFS_IMG"
quiet mkfs-btrfs mkfs.btrfs -q "$BTRFS_IMG"
mount -o loop,compress=zstd "$BTRFS_IMG" "$REF"
fill_tree "$REF" text
umount "$REF"

note "putting them on a 20 GiB disk: p1 an LVM PV with the root volume, p2 the Btrfs"
DISK="$W/bench.img"
truncate -s 20G "$DISK"
XFS_MIB=$(($(stat -c %s "$XFS_IMG") >> 20))
BTRFS_MIB=$(($(stat -c %s "$BTRFS_IMG") >> 20))
P1_MIB=$((XFS_MIB + 64))
printf 'label: gpt\nstart=2048, size=%d, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\nsize=%d\n' \
  $((P1_MIB * 2048)) $((BTRFS_MIB * 2048)) | quiet sfdisk sfdisk -q "$DISK"
PV="$W/pv.img"
truncate -s "${P1_MIB}M" "$PV"
LOOP="$(losetup -f --show "$PV")"
quiet pvcreate pvcreate -q "$LOOP"
quiet vgcreate vgcreate -q -s 4M "$VG" "$LOOP"
quiet vgcfgbackup vgcfgbackup -q -f "$W/vg.txt" "$VG"
PE_START="$(awk '/pe_start = / {print $3; exit}' "$W/vg.txt")"
python3 - "$W/vg.txt" $((XFS_MIB / 4)) <<'PY'
import sys
p, extents = sys.argv[1], int(sys.argv[2])
t = open(p).read()
lv = f'''
	logical_volumes {{
		root {{
			id = "benchr-0000-0000-0000-0000-0000-000001"
			status = ["READ", "WRITE", "VISIBLE"]
			segment_count = 1
			segment1 {{
				start_extent = 0
				extent_count = {extents}
				type = "striped"
				stripe_count = 1
				stripes = ["pv0", 0]
			}}
		}}
	}}
'''
end = t.rfind("}")
open(p, "w").write(t[:end] + lv + t[end:])
PY
quiet vgcfgrestore vgcfgrestore -q -f "$W/vg.txt" "$VG"
losetup -d "$LOOP"
dd if="$XFS_IMG" of="$PV" bs=1M seek=$((PE_START / 2048)) conv=notrunc,sparse status=none
dd if="$PV" of="$DISK" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$BTRFS_IMG" of="$DISK" bs=1M seek=$((1 + P1_MIB)) conv=notrunc,sparse status=none
rm -f "$PV"

note "backing up the disk $SNAPSHOTS times, a little changed each time (untimed)"
REPO="$W/repo"
quiet init "$VMSTASH" -r "$REPO" init
for i in $(seq 1 "$SNAPSHOTS"); do
  # Churn outside the filesystems (the PV's free extents), so each snapshot differs.
  head -c 1M /dev/urandom | dd of="$DISK" bs=1M seek=$((1 + P1_MIB - 8)) conv=notrunc status=none
  quiet "backup-$i" "$VMSTASH" -r "$REPO" backup --disk "$DISK"
done

# --- the mount --------------------------------------------------------------------------
start_mount() {
  "$VMSTASH" -r "$REPO" mount "$MNT" 2>"$LOGS/mount-$1.err" &
  MOUNT_PID=$!
}
stop_mount() {
  if [ -n "$MOUNT_PID" ]; then
    fusermount3 -u "$MNT" 2>/dev/null || true
    wait "$MOUNT_PID" 2>/dev/null || true
    MOUNT_PID=""
  fi
}
# wait_for PATH: until PATH reads (the mount is up), at most 120 s.
wait_for() {
  local end=$((SECONDS + 120))
  until head -c 1 -- "$1" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || die "$1 did not appear in the mount"
    sleep 0.01
  done
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
DISK_DIR="$MNT/vms/bench/latest/bench"
ROOT_DIR="$DISK_DIR/$VG/root"

drop_caches
t0="$(now_ms)"
start_mount first-byte
wait_for "$ROOT_DIR/usr/share/doc/a/b/c/d/e/f/g/file"
FIRST_BYTE_MS=$(($(now_ms) - t0))
stop_mount

# list NAME DIR: `ls -l` of DIR on a fresh mount with a cold cache; sets LIST_MS.
list() {
  drop_caches
  start_mount "$1"
  wait_for "$DISK_DIR/p1.raw"
  measure "$1" ls -l "$2"
  LIST_MS=$T_MS
  [ "$(grep -c '^-' "$LOGS/$1.out")" -eq "$MANY_FILES" ] || die "$2 lists $(grep -c '^-' "$LOGS/$1.out") files"
  stop_mount
}
list ls-xfs "$ROOT_DIR/many"
LIST_XFS_MS=$LIST_MS
list ls-btrfs "$DISK_DIR/p2/many"
LIST_BTRFS_MS=$LIST_MS

# read_both NAME FS_DIR RAW MOUNT_OPTS: the big file read through vmstash's filesystem, then
# through the kernel from the same mount's RAW; sets VM_MS and KERNEL_MS.
read_both() {
  drop_caches
  start_mount "$1"
  wait_for "$DISK_DIR/p1.raw"
  measure "$1-vmstash" cat "$2/big"
  VM_MS=$T_MS
  mount -o "loop,ro,$4" "$3" "$REF"
  drop_caches
  measure "$1-kernel" cat "$REF/big"
  KERNEL_MS=$T_MS
  cmp "$2/big" "$REF/big" || die "$1: the big file differs between vmstash and the kernel"
  umount "$REF"
  stop_mount
}
read_both read-xfs "$ROOT_DIR" "$DISK_DIR/$VG/root.raw" norecovery
XFS_VM_MS=$VM_MS XFS_KERNEL_MS=$KERNEL_MS
read_both read-btrfs "$DISK_DIR/p2" "$DISK_DIR/p2.raw" ""
BTRFS_VM_MS=$VM_MS BTRFS_KERNEL_MS=$KERNEL_MS

drop_caches
measure find-path "$VMSTASH" -r "$REPO" --json find --vm bench /usr/share/doc/a/b/c/d/e/f/g/file
FIND_PATH_MS=$T_MS
[ "$(jq '.[0].versions | length' "$LOGS/find-path.out")" -eq "$SNAPSHOTS" ] || die "find-path: not $SNAPSHOTS versions"
drop_caches
measure find-glob "$VMSTASH" -r "$REPO" --json find --vm bench --changed 'file-000042.conf'
FIND_GLOB_MS=$T_MS

# --- the report -------------------------------------------------------------------------------
mbps() { calc 0 "$BIG_MIB / ($1 / 1000)"; }
FAILED=0
row() { # WHAT VALUE BAR VERDICT
  printf '%-58s %12s   bar %-10s %s\n' "$1" "$2" "$3" "$4"
  [ "$4" = PASS ] || FAILED=1
}
echo
echo "vmstash guest filesystems: 20 GiB disk, XFS root on LVM + zstd Btrfs, $MANY_FILES-file dirs, $BIG_MIB MiB files, $SNAPSHOTS snapshots"
echo "load average at start $LOAD_START on $(nproc) CPUs; $CACHE_NOTE"
row "first byte of a file 9 dirs deep in XFS-on-LVM" "$(secs "$FIRST_BYTE_MS") s" "< $BAR_FIRST_BYTE s" "$(verdict "$FIRST_BYTE_MS / 1000 < $BAR_FIRST_BYTE")"
row "ls -l of $MANY_FILES files, XFS" "$(secs "$LIST_XFS_MS") s" "< $BAR_LIST s" "$(verdict "$LIST_XFS_MS / 1000 < $BAR_LIST")"
row "ls -l of $MANY_FILES files, Btrfs" "$(secs "$LIST_BTRFS_MS") s" "< $BAR_LIST s" "$(verdict "$LIST_BTRFS_MS / 1000 < $BAR_LIST")"
row "read $BIG_MIB MiB from XFS: vmstash $(mbps "$XFS_VM_MS") MB/s, kernel $(mbps "$XFS_KERNEL_MS") MB/s" "$(calc 2 "$XFS_KERNEL_MS / $XFS_VM_MS") x" ">= $BAR_READ_RATIO x" "$(verdict "$XFS_KERNEL_MS / $XFS_VM_MS >= $BAR_READ_RATIO")"
row "read $BIG_MIB MiB from Btrfs zstd: vmstash $(mbps "$BTRFS_VM_MS") MB/s, kernel $(mbps "$BTRFS_KERNEL_MS") MB/s" "$(calc 2 "$BTRFS_KERNEL_MS / $BTRFS_VM_MS") x" ">= $BAR_READ_RATIO x" "$(verdict "$BTRFS_KERNEL_MS / $BTRFS_VM_MS >= $BAR_READ_RATIO")"
row "find a path over $SNAPSHOTS snapshots" "$(secs "$FIND_PATH_MS") s" "< $BAR_FIND s" "$(verdict "$FIND_PATH_MS / 1000 < $BAR_FIND")"
printf '%-58s %12s   (no bar: walks every filesystem of every snapshot)\n' "find a name glob over $SNAPSHOTS snapshots" "$(secs "$FIND_GLOB_MS") s"
[ "$FAILED" = 0 ] || exit 2
