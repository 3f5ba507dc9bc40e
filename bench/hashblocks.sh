#!/usr/bin/env bash
# hashblocks benchmark: how much an incremental VM backup over SSH moves and
# how long it takes, with the helper hashing disks on the host. Bytes are
# counted on the wire: the `lo` interface's tx counter around each backup.
#
# Usage: sudo bench/hashblocks.sh
#   SIZES="512M 4G"      disk sizes of the incremental scenario (one VM each)
#   FILL=90              percent of each disk holding (random) data
#   CHANGE_PCT=1         percent of the disk rewritten before the incremental
#   EXTENT_KIB=1024      the changes are extents of this size at random 4 KiB-aligned offsets
#   DROP_CACHES=1        1: drop the page cache before each backup (cold disk reads)
#   BENCH_DIR=/var/tmp/vmstash-bench   KEEP=0   VMSTASH_BIN=PATH (else built)
#
# Scenarios, all through `vmstash backup --connect qemu+ssh://root@127.0.0.1:PORT/system`
# of shut-off domains (their disks are read in place; no snapshot):
#   incremental  per size: full backup, rewrite CHANGE_PCT %, incremental backup;
#                bar: bytes <= 5 % (512M) / 2 % (4G) of the full's, time <= 50 % / 20 %
#   sparse       a 4 GiB disk with 64 MiB of data: the full backup moves about the data only
#   clone        a second domain on a copy of the 512M disk, into the same repository:
#                moves almost nothing (bar here: <= 1 % of its disk's full backup)
# Each scenario's last snapshot is restored and compared with the disk (cmp).
# Exit status: 0 all bars passed, 2 a bar failed, 1 the benchmark failed.
set -euo pipefail

ROOT="$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib/common.sh
. "$ROOT/bench/lib/common.sh"
BENCH_DIR="${BENCH_DIR:-/var/tmp/vmstash-bench}"
SIZES="${SIZES:-512M 4G}"
FILL="${FILL:-90}"
CHANGE_PCT="${CHANGE_PCT:-1}"
EXTENT_KIB="${EXTENT_KIB:-1024}"
DROP_CACHES="${DROP_CACHES:-1}"
KEEP="${KEEP:-0}"
URI_LOCAL="qemu:///system"
IMAGES_DIR="/var/lib/libvirt/images"
PREFIX="vmstash-hbench-"
use_passwords vmstash
need_root "private sshd with root login, libvirt, page cache"

install_deps
bash "$ROOT/scripts/test-services.sh" start
# Not use_vmstash: the build here makes the helper too, and it is the helper
# beside the binary that must be there.
if [ -n "${VMSTASH_BIN:-}" ]; then
  VMSTASH="$VMSTASH_BIN"
else
  (cd "$ROOT" && cargo build --release -p vmstash && bash scripts/build-helper.sh)
  VMSTASH="$ROOT/target/release/vmstash"
fi
[ -x "$(dirname "$VMSTASH")/vmstash-hashblocks" ] ||
  die "no helper beside $VMSTASH (run scripts/build-helper.sh)"

mkdir -p "$BENCH_DIR"
make_run_dir hashblocks
IMGDIR="$IMAGES_DIR/$PREFIX$$"
mkdir -p "$IMGDIR" "$W/home"
SSHD_PID=""
DOMAINS=()
virsh_() { virsh -c "$URI_LOCAL" "$@"; }
# cleanup: what trap_cleanup undoes when the script exits, however it exits.
cleanup() {
  local d
  set +e
  [ -z "$SSHD_PID" ] || kill "$SSHD_PID" 2>/dev/null
  for d in "${DOMAINS[@]}"; do virsh_ undefine "$d" >/dev/null 2>&1; done
  rm -rf -- "$IMGDIR"
  # Not finish_run_dir: this run leaves BENCH_DIR in place, even empty.
  if [ "$KEEP" = 1 ]; then note "kept $W"; else rm -rf -- "$W"; fi
}
trap_cleanup
# DROP_CACHES=1: drop_caches empties the page cache before each backup (and
# fails the run where that is not allowed); 0: it only syncs.
CAN_DROP="$DROP_CACHES"

# shellcheck source=bench/lib/sshd.sh
. "$ROOT/bench/lib/sshd.sh"
start_private_sshd "$W/sshd"
note "sshd on 127.0.0.1:$PORT"

# quiet, mib, verdict and drop_caches are in bench/lib/common.sh.
bytes() { numfmt --from=iec "${1%B}"; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", 100 * a / b}'; }

# define NAME DISK: a shut-off TCG domain with one raw virtio disk.
define() {
  cat >"$W/$1.xml" <<EOF
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
EOF
  quiet "define-$1" virsh_ define "$W/$1.xml"
  DOMAINS+=("$1")
}

# random_extents FILE COUNT KIB LIMIT_BYTES: rewrite COUNT extents of KIB KiB
# at random 4 KiB-aligned offsets below LIMIT_BYTES.
random_extents() {
  local file="$1" count="$2" kib="$3" limit="$4" i off
  for ((i = 0; i < count; i++)); do
    off=$(($(shuf -i 0-$(((limit - kib * 1024) / 4096)) -n 1) * 4))
    dd if=/dev/urandom of="$file" bs=1K seek="$off" count="$kib" conv=notrunc status=none
  done
}

# backup LABEL REPO DOMAIN: one timed backup (ssh_vm_backup in bench/lib/sshd.sh); sets
# B_WIRE (bytes on lo), B_SECS, B_READ (vmstash's bytes_read).
backup() {
  drop_caches
  ssh_vm_backup "$1" "$VMSTASH" "$2" "$3"
  B_SECS="$(secs "$B_MS")"
  B_READ="$(tail -n 1 "$LOGS/$1.out" | jq -r .bytes_read)"
}

verify() { # REPO DISK
  rm -rf "$W/restore"
  quiet "restore" env HOME="$W/home" "$VMSTASH" -r "$1" restore latest --target "$W/restore"
  cmp -s "$W/restore/vda.raw" "$2" || die "restored disk differs from $2"
  rm -rf "$W/restore"
}

# A FAIL verdict fails the run.
RESULT=PASS
ROWS=()

for size in $SIZES; do
  total="$(bytes "$size")"
  case "$size" in 4G) bar_bytes=2 bar_time=20 ;; *) bar_bytes=5 bar_time=50 ;; esac
  disk="$IMGDIR/inc-$size.raw"
  data=$((total / 100 * FILL / 1048576))
  note "incremental $size: disk with $data MiB of random data"
  truncate -s "$size" "$disk"
  dd if=/dev/urandom of="$disk" bs=1M count="$data" conv=notrunc status=none
  dom="$PREFIX$$-inc-$size"
  define "$dom" "$disk"
  repo="$W/repo-$size"
  quiet "init-$size" env HOME="$W/home" "$VMSTASH" -r "$repo" init
  backup "full-$size" "$repo" "$dom"
  f_wire=$B_WIRE f_secs=$B_SECS
  extents=$((total * CHANGE_PCT / 100 / (EXTENT_KIB * 1024)))
  random_extents "$disk" "$extents" "$EXTENT_KIB" "$((data * 1048576))"
  backup "incr-$size" "$repo" "$dom"
  i_wire=$B_WIRE i_secs=$B_SECS i_read=$B_READ
  verify "$repo" "$disk"
  v_bytes="$(verdict "$i_wire * 100 <= $f_wire * $bar_bytes")"
  v_time="$(verdict "$i_secs * 100 <= $f_secs * $bar_time")"
  [ "$v_bytes$v_time" = PASSPASS ] || RESULT=FAIL
  ROWS+=("$(printf '%-12s %6s %10s %8s %10s %8s %9s %-6s %9s %-6s' incremental "$size" \
    "$(mib "$f_wire")" "$f_secs" "$(mib "$i_wire")" "$i_secs" \
    "$(pct "$i_wire" "$f_wire")%" "$v_bytes<=$bar_bytes%" "$(pct "$i_secs" "$f_secs")%" "$v_time<=$bar_time%")")
  note "incremental $size: $extents extents changed; read $(mib "$i_read") MiB of changed chunks"
  if [ "$size" = 512M ]; then CLONE_SRC="$disk" CLONE_REPO="$repo" CLONE_FULL=$f_wire; fi
done

note "sparse: a 4 GiB disk with 64 MiB of data"
disk="$IMGDIR/sparse.raw"
truncate -s 4G "$disk"
for off in 100 1500 3000 4000; do
  dd if=/dev/urandom of="$disk" bs=1M seek="$off" count=16 conv=notrunc status=none
done
define "$PREFIX$$-sparse" "$disk"
quiet init-sparse env HOME="$W/home" "$VMSTASH" -r "$W/repo-sparse" init
backup sparse "$W/repo-sparse" "$PREFIX$$-sparse"
verify "$W/repo-sparse" "$disk"
v="$(verdict "$B_WIRE <= 64 * 1048576 * 1.05 + 4 * 1048576")"
[ "$v" = PASS ] || RESULT=FAIL
ROWS+=("$(printf '%-12s %6s %10s %8s %10s %8s %9s %-6s' sparse 4G "$(mib $((64 << 20)))" "-" \
  "$(mib "$B_WIRE")" "$B_SECS" "$(pct "$B_WIRE" $((64 << 20)))%" "$v<=105%+4MiB")")

if [ -n "${CLONE_SRC:-}" ]; then
  note "clone: a second domain on a copy of the 512M disk"
  cp --sparse=always "$CLONE_SRC" "$IMGDIR/clone.raw"
  define "$PREFIX$$-clone" "$IMGDIR/clone.raw"
  backup clone "$CLONE_REPO" "$PREFIX$$-clone"
  verify "$CLONE_REPO" "$IMGDIR/clone.raw"
  v="$(verdict "$B_WIRE * 100 <= $CLONE_FULL")"
  [ "$v" = PASS ] || RESULT=FAIL
  ROWS+=("$(printf '%-12s %6s %10s %8s %10s %8s %9s %-6s' clone 512M "$(mib "$CLONE_FULL")" "-" \
    "$(mib "$B_WIRE")" "$B_SECS" "$(pct "$B_WIRE" "$CLONE_FULL")%" "$v<=1%")")
fi

echo
echo "vmstash backups over SSH (loopback) with the hashblocks helper; bytes = lo tx bytes"
echo "during each backup (all loopback traffic: SSH, TCP/IP overhead included); page cache"
echo "dropped before each backup: $DROP_CACHES; changes: $CHANGE_PCT % of the disk in $EXTENT_KIB KiB extents."
printf '%-12s %6s %10s %8s %10s %8s %9s %-12s %9s %-12s\n' scenario disk full_MiB full_s next_MiB next_s bytes% bar time% bar
printf '%s\n' "${ROWS[@]}"
echo "(sparse: full_MiB is the data written; clone: full_MiB is the 512M disk's full backup)"
[ "$RESULT" = PASS ] || exit 2
