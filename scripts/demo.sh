#!/usr/bin/env bash
# The one-command demo: build vmstash, make a small VM disk image, back it up,
# change a few MiB of it, back it up again, restore both snapshots, prove each
# restore is bit-identical to the disk as it was, mount the repository and read
# both snapshots through the mount, and verify the repository.
#
# Usage: sudo scripts/demo.sh        (root: the disk image is built on a loop device)
#   KEEP=1      keep the demo's working directory instead of removing it
#   TMPDIR=DIR  where the working directory is made (default /tmp)
set -euo pipefail

ROOT="$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
VMSTASH="$ROOT/target/release/vmstash"
KEEP="${KEEP:-0}"

WORK=""
cleanup() {
  local rc=$?
  if [ -n "$WORK" ] && mountpoint -q "$WORK/kernel-view" 2>/dev/null; then
    umount "$WORK/kernel-view"
  fi
  if [ -n "${MOUNT_PID:-}" ] && kill -0 "$MOUNT_PID" 2>/dev/null; then
    kill -TERM "$MOUNT_PID" 2>/dev/null
    wait "$MOUNT_PID" 2>/dev/null
    fusermount3 -u -z "$WORK/mnt" 2>/dev/null
  fi
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$KEEP" = 1 ]; then
      echo "Kept the working directory: $WORK"
    else
      rm -rf -- "$WORK"
    fi
  fi
  if [ "$rc" -ne 0 ]; then
    echo "demo: FAILED (exit $rc)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '\n== %s\n' "$*"; }
# run CMD...: show a command, then run it.
run() {
  printf '$ %s\n' "$*"
  "$@"
}
# vm ARGS...: show and run vmstash (shown as "vmstash", the binary is $VMSTASH).
vm() {
  printf '$ vmstash %s\n' "$*"
  "$VMSTASH" "$@"
}
human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1"; }
die() {
  echo "demo: error: $*" >&2
  exit 1
}
# summary_field JSON FIELD: one field of a backup summary.
summary_field() { jq -er --arg f "$2" '.[$f]' <<<"$1"; }
# backup_json: back up the demo disk with --json; prints the summary line.
backup_json() {
  local out last
  printf '$ vmstash --json backup --disk %s\n' "$DISK" >&2
  out="$("$VMSTASH" --json backup --disk "$DISK")" || die "vmstash backup failed"
  last="$(tail -n 1 <<<"$out")"
  jq -e '.message_type == "summary"' <<<"$last" >/dev/null 2>&1 ||
    die "vmstash --json backup: last line of stdout is not a summary object: $last"
  printf '%s\n' "$last"
}
sha() { sha256sum -- "$1" | cut -d' ' -f1; }

[ "$(id -u)" -eq 0 ] || die "run as root: the demo disk image is built on a loop device"

step "Installing system packages (scripts/install-deps.sh)"
SKIP_RUST_TOOLS=1 bash "$ROOT/scripts/install-deps.sh"

step "Building vmstash and its hashblocks helper (cargo build --release -p vmstash; scripts/build-helper.sh)"
(cd "$ROOT" && cargo build --release -p vmstash)
[ -x "$VMSTASH" ] || die "$VMSTASH was not built"
bash "$ROOT/scripts/build-helper.sh"
echo "To use them from anywhere: install -m 0755 $ROOT/target/release/vmstash $ROOT/target/release/vmstash-hashblocks /usr/local/bin/"

WORK="$(mktemp -d -t vmstash-demo.XXXXXX)"
DISK="$WORK/disk.img"
export VMSTASH_REPOSITORY="$WORK/repo"
export VMSTASH_PASSWORD="vmstash-demo-password"
unset VMSTASH_PASSWORD_FILE VMSTASH_PASSWORD_COMMAND
echo "Working directory: $WORK ($([ "$KEEP" = 1 ] && echo kept || echo removed) at the end)"
echo "Repository:        $VMSTASH_REPOSITORY"
echo "Password:          VMSTASH_PASSWORD=$VMSTASH_PASSWORD (a demo value set by this script;"
echo "                   use --password-file or --password-command for real repositories)"

step "Making a 256 MiB VM disk image: GPT, one ext4 partition, 64 MiB of files"
run bash "$ROOT/scripts/make-disk-image.sh" "$DISK" 256M 64
disk_size="$(stat -c %s -- "$DISK")"
echo "disk.img: $(human "$disk_size") in size, $(human "$(($(stat -c %b -- "$DISK") * 512))") allocated (the rest is holes)"
sha_first="$(sha "$DISK")"

step "Creating the repository"
vm init

step "First backup"
s1="$(backup_json)"
snap1="$(summary_field "$s1" snapshot_id)"
added1="$(summary_field "$s1" bytes_added)"
read1="$(summary_field "$s1" bytes_read)"
secs1="$(printf %.1f "$(summary_field "$s1" duration_seconds)")"
echo "snapshot $snap1: read $(human "$read1"), added $(human "$added1") in ${secs1}s"
[ "$(summary_field "$s1" disk_bytes)" -eq "$disk_size" ] ||
  die "summary disk_bytes $(summary_field "$s1" disk_bytes) != image size $disk_size"

step "Changing 4 MiB inside the disk (random data written at offset 96 MiB, as a guest would)"
run dd if=/dev/urandom of="$DISK" bs=1M count=4 seek=96 conv=notrunc status=none
sha_second="$(sha "$DISK")"
[ "$sha_first" != "$sha_second" ] || die "the image did not change"

step "Second backup: only the changed chunks are new"
s2="$(backup_json)"
snap2="$(summary_field "$s2" snapshot_id)"
added2="$(summary_field "$s2" bytes_added)"
read2="$(summary_field "$s2" bytes_read)"
secs2="$(printf %.1f "$(summary_field "$s2" duration_seconds)")"
echo "snapshot $snap2: read $(human "$read2"), added $(human "$added2") in ${secs2}s"
[ "$snap1" != "$snap2" ] || die "the second backup reused snapshot id $snap1"

step "Snapshots"
vm snapshots

step "Restoring the latest snapshot"
vm restore latest --target "$WORK/restore-latest"
restored="$WORK/restore-latest/disk.raw"
[ -f "$restored" ] || die "restore latest did not write $restored"
[ "$(sha "$restored")" = "$sha_second" ] || die "restore latest: $restored differs from the disk as it was at the second backup"
echo "restore-latest/disk.raw is bit-identical to disk.img at the second backup (sha256 $sha_second)"

step "Restoring the first snapshot"
vm restore "$snap1" --target "$WORK/restore-first"
restored="$WORK/restore-first/disk.raw"
[ -f "$restored" ] || die "restore $snap1 did not write $restored"
[ "$(sha "$restored")" = "$sha_first" ] || die "restore $snap1: $restored differs from the disk as it was at the first backup"
echo "restore-first/disk.raw is bit-identical to disk.img at the first backup (sha256 $sha_first)"
echo "restored files: $(human "$(stat -c %s -- "$restored")") in size, $(human "$(($(stat -c %b -- "$restored") * 512))") allocated"

step "Mounting the repository (FUSE, read-only) and reading the backups through it"
MNT="$WORK/mnt"
mkdir -p "$MNT"
printf '$ vmstash mount %s &\n' "$MNT"
"$VMSTASH" mount "$MNT" 2>"$WORK/mount.log" &
MOUNT_PID=$!
for _ in $(seq 1 200); do
  [ -d "$MNT/vms" ] && break
  kill -0 "$MOUNT_PID" 2>/dev/null || die "vmstash mount exited: $(cat "$WORK/mount.log")"
  sleep 0.05
done
[ -d "$MNT/vms" ] || die "the mount did not appear: $(cat "$WORK/mount.log")"
run ls "$MNT/vms/disk" "$MNT/vms/disk/latest" "$MNT/vms/disk/latest/disk"
[ "$(sha "$MNT/vms/disk/latest/disk.raw")" = "$sha_second" ] || die "the mounted latest image differs from the disk"
[ "$(sha "$MNT/snapshots/${snap1:0:8}/disk.raw")" = "$sha_first" ] || die "the mounted first image differs"
echo "vms/disk/latest/disk.raw and snapshots/${snap1:0:8}/disk.raw read bit-identical through the mount"

step "File-level recovery: the first snapshot's files, through the same mount"
P1="$MNT/snapshots/${snap1:0:8}/disk/p1"
run ls -l "$P1" "$P1/var/log"
run head -n 3 "$P1/var/log/syslog"
# The kernel's view of the same partition, from the restored first image: every
# file, link, mode, owner and mtime must match what the mount shows.
KVIEW="$WORK/kernel-view"
mkdir -p "$KVIEW"
p1_size="$(stat -c %s -- "$MNT/snapshots/${snap1:0:8}/disk/p1.raw")"
mount -o "ro,loop,offset=$((2048 * 512)),sizelimit=$p1_size" "$restored" "$KVIEW"
run diff -r --no-dereference "$P1" "$KVIEW" || die "the mounted files differ from the kernel's view of the partition"
[ "$(cd "$P1" && find . -printf '%p %m %U %G %T@ %n %l\n' | sort | sha256sum)" = \
  "$(cd "$KVIEW" && find . -printf '%p %m %U %G %T@ %n %l\n' | sort | sha256sum)" ] ||
  die "modes, owners, mtimes, link counts or symlink targets differ from the kernel's view"
umount "$KVIEW"
echo "every file of snapshot ${snap1:0:8}'s ext4 partition, with modes, owners, mtimes and links, as the kernel shows it"
run kill -TERM "$MOUNT_PID"
wait "$MOUNT_PID" || die "vmstash mount did not exit cleanly: $(cat "$WORK/mount.log")"

step "Verifying every byte in the repository"
vm check --read-data

step "Repository statistics"
vm stats

repo_bytes="$(du -sb -- "$VMSTASH_REPOSITORY" | cut -f1)"
step "Summary"
cat <<EOF
  disk image:       $(human "$disk_size") raw disk, 64 MiB of files in ext4
  first backup:     added $(human "$added1") in ${secs1}s (snapshot ${snap1:0:8})
  second backup:    4 MiB changed, added $(human "$added2") in ${secs2}s (snapshot ${snap2:0:8})
  repository:       $(human "$repo_bytes") on disk for both snapshots
  restores:         latest and first snapshot, each bit-identical to the disk at its backup
  mount:            both snapshots read bit-identical through vmstash mount, and the
                    files inside the first one's ext4 partition as the kernel shows them
  check --read-data passed
Demo finished successfully.
EOF
