#!/usr/bin/env bash
# The fixed cost of a VM backup: a running VM with two 512 MiB disks (qcow2
# and raw, half full of random data) in which nothing changed, backed up
# again over SSH with the hashblocks helper. What is left when no data moves:
# SSH, the helper's start, the commands on the host (virsh, qemu-img), the
# external snapshot and its commit, hashing the disks on the host.
#
# Usage: sudo bench/vm-fixed-cost.sh
#   VMSTASH_BIN=PATH       the vmstash to measure (the helper must be beside it; else built)
#   BEFORE_BIN=PATH        another vmstash (with its helper beside it) to measure in the same
#                          run, e.g. the previous commit's: its figures are printed first
#   ROUNDS=5               no-change incrementals per binary (the median is reported)
#   BENCH_DIR=/var/tmp/vmstash-bench   KEEP=0
#
# Per binary: one full backup, then ROUNDS incrementals with nothing changed;
# reported: their median wall time, the SSH exec channels each one opened (from
# sshd's log), and the bytes on the lo interface. Then the same images under a
# QEMU started without libvirt, backed up by the measured binary through its
# QMP socket (qmp+ssh://): one full, ROUNDS no-change incrementals. Bar (issue
# 14): both medians <= 1.5 s. Exit status: 0 bar passed, 2 failed, 1 the
# benchmark failed.
set -euo pipefail

ROOT="$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib/common.sh
. "$ROOT/bench/lib/common.sh"
BENCH_DIR="${BENCH_DIR:-/var/tmp/vmstash-bench}"
ROUNDS="${ROUNDS:-5}"
KEEP="${KEEP:-0}"
BAR_SECS=1.5
URI_LOCAL="qemu:///system"
IMAGES_DIR="/var/lib/libvirt/images"
need_positive_int ROUNDS
use_passwords vmstash
need_root "private sshd with root login, libvirt"

sample_load
install_deps
bash "$ROOT/scripts/test-services.sh" start
if [ -n "${VMSTASH_BIN:-}" ]; then
  VMSTASH="$VMSTASH_BIN"
else
  (cd "$ROOT" && cargo build --release -p vmstash && bash scripts/build-helper.sh)
  VMSTASH="$ROOT/target/release/vmstash"
fi
BINS=()
[ -z "${BEFORE_BIN:-}" ] || BINS+=("$BEFORE_BIN")
BINS+=("$VMSTASH")
for b in "${BINS[@]}"; do
  [ -x "$(dirname "$b")/vmstash-hashblocks" ] || die "no helper beside $b (run scripts/build-helper.sh)"
done

mkdir -p "$BENCH_DIR"
make_run_dir fixed-cost
DOM="vmstash-fixed-cost-$$"
IMGDIR="$IMAGES_DIR/$DOM"
mkdir -p "$IMGDIR" "$W/home"
SSHD_PID=""
QEMU_PID=""
virsh_() { virsh -c "$URI_LOCAL" "$@"; }
cleanup() {
  set +e
  [ -z "$QEMU_PID" ] || kill "$QEMU_PID" 2>/dev/null
  remove_halting_vm "$DOM"
  [ -z "$SSHD_PID" ] || kill "$SSHD_PID" 2>/dev/null
  rm -rf -- "$IMGDIR"
  if [ "$KEEP" = 1 ]; then note "kept $W"; else rm -rf -- "$W"; fi
}
# shellcheck source=bench/lib/vm.sh
. "$ROOT/bench/lib/vm.sh"
trap_cleanup

# shellcheck source=bench/lib/sshd.sh
. "$ROOT/bench/lib/sshd.sh"
start_private_sshd "$W/sshd"
note "sshd on 127.0.0.1:$PORT"

# The VM (bench/lib/vm.sh): a guest that halts at once, two disks with 256 MiB of
# random data each.
head -c 256M /dev/urandom >"$W/data"
truncate -s 512M "$IMGDIR/vdb.raw"
dd if="$W/data" of="$IMGDIR/vdb.raw" conv=notrunc status=none
quiet qcow2 qemu-img convert -f raw -O qcow2 "$IMGDIR/vdb.raw" "$IMGDIR/vda.qcow2"
head -c 256M /dev/urandom | dd of="$IMGDIR/vdb.raw" conv=notrunc status=none
rm -f "$W/data"
start_halting_vm "$DOM" "$IMGDIR" "qcow2:$IMGDIR/vda.qcow2" "raw:$IMGDIR/vdb.raw"

# backup LABEL BIN REPO: one backup (ssh_vm_backup in bench/lib/sshd.sh); sets B_MS,
# B_EXECS (exec channels), B_WIRE (bytes on lo).
backup() { ssh_vm_backup "$1" "$2" "$3" "$DOM"; }

declare -A MEDIAN EXECS WIRE
for i in "${!BINS[@]}"; do
  bin="${BINS[$i]}"
  repo="$W/repo-$i"
  quiet "init-$i" "$bin" -r "$repo" init
  note "$bin: full backup"
  backup "full-$i" "$bin" "$repo"
  times=()
  for r in $(seq 1 "$ROUNDS"); do
    backup "incr-$i-$r" "$bin" "$repo"
    times+=("$B_MS")
  done
  MEDIAN[$i]="$(median "${times[@]}")"
  EXECS[$i]="$B_EXECS"
  WIRE[$i]="$B_WIRE"
  note "$bin: no-change incrementals ${times[*]} ms"
done

# The same disks under a QEMU without libvirt, through its QMP socket.
virsh_ destroy "$DOM" >/dev/null
qemu-system-x86_64 -name "$DOM" -machine pc,accel=tcg -m 128 -nodefaults -display none \
  -kernel "$IMGDIR/halt.bin" -qmp "unix:$W/qmp.sock,server=on,wait=off" \
  -drive "file=$IMGDIR/vda.qcow2,if=virtio,format=qcow2" \
  -drive "file=$IMGDIR/vdb.raw,if=virtio,format=raw" \
  -daemonize -pidfile "$W/qemu.pid" >"$LOGS/qemu.out" 2>&1 || die "QEMU did not start: $(cat "$LOGS/qemu.out")"
QEMU_PID="$(cat "$W/qemu.pid")"
QMP_URI="qmp+ssh://root@127.0.0.1:$PORT$W/qmp.sock"
quiet init-qmp "$VMSTASH" -r "$W/repo-qmp" init
note "$VMSTASH: full backup through QMP"
ssh_backup full-qmp "$VMSTASH" "$W/repo-qmp" "$QMP_URI"
times=()
for r in $(seq 1 "$ROUNDS"); do
  ssh_backup "incr-qmp-$r" "$VMSTASH" "$W/repo-qmp" "$QMP_URI"
  times+=("$B_MS")
done
QMP_MEDIAN="$(median "${times[@]}")"
note "$VMSTASH: no-change incrementals through QMP ${times[*]} ms"

echo
echo "Fixed cost of a VM backup: running TCG VM, 2 x 512 MiB disks (qcow2 + raw, 256 MiB random data each), nothing changed."
echo "Median of $ROUNDS no-change incrementals over SSH to 127.0.0.1 with the helper; 1-minute load at the start: $LOAD_START ($(nproc) CPUs)."
fmt='%-60s %12s %14s %14s\n'
# shellcheck disable=SC2059  # $fmt is this script's own format string
printf "$fmt" binary "median (s)" "exec channels" "bytes on lo"
for i in "${!BINS[@]}"; do
  # shellcheck disable=SC2059
  printf "$fmt" "${BINS[$i]}" "$(secs "${MEDIAN[$i]}")" "${EXECS[$i]}" "${WIRE[$i]}"
done
# shellcheck disable=SC2059
printf "$fmt" "$VMSTASH (QMP, no libvirt)" "$(secs "$QMP_MEDIAN")" "$B_EXECS" "$B_WIRE"
last=$((${#BINS[@]} - 1))
res="$(verdict "${MEDIAN[$last]} / 1000 <= $BAR_SECS && $QMP_MEDIAN / 1000 <= $BAR_SECS")"
echo "bar: no-change incremental <= ${BAR_SECS} s (libvirt and QMP): $res"
[ "$res" = PASS ] || exit 2
