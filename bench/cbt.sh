#!/usr/bin/env bash
# Changed-block tracking (issue 14): a running VM with one qcow2 disk of
# SIZE_GIB GiB, FILL_PCT % of it random data; then CHANGE_PCT % of it
# rewritten through QEMU in scattered 1 MiB extents (HMP qemu-io, so the dirty
# bitmaps see it). On the same VM and data, in one run:
#
#   vmstash      full and incremental with changed-block tracking (the default),
#                over SSH to 127.0.0.1 with the hashblocks helper
#   vmstash old  full and incremental with --cbt never: today's path before CBT
#                (external snapshot, every allocated byte hashed on the host)
#   virtnbdbackup 1.9.15 (Debian): -l full, then -l inc, on this host; on a
#                second VM with a copy of the same image and the same changes
#                (it refuses to run beside another tool's checkpoints)
#   vmstash QMP  then the first VM's image under a QEMU without libvirt
#                (qmp+ssh://): full, the same number of new extents, incremental
#
# Bars: CBT incremental <= 10 % of its full; >= 3x faster than the --cbt never
# incremental; no slower than virtnbdbackup's incremental while storing fewer
# bytes; bytes read on the host <= 1.2 x the changed extents rounded to chunks;
# the same two for QMP (incremental <= 10 % of its full, bytes read).
#
# Usage: sudo bench/cbt.sh
#   VMSTASH_BIN=PATH (the helper must be beside it; else built)
#   SIZE_GIB=8  FILL_PCT=80  CHANGE_PCT=1  BENCH_DIR=/var/tmp/vmstash-bench  KEEP=0
#   CHANGE_DATA=mixed   what the extents hold: mixed (1/4 random, 1/4 base64 text, 1/2 log
#                       lines; every 10th a copy of the one before) or random (nothing to
#                       compress or share: every tool must store all of it)
# Exit status: 0 every bar passed, 2 one failed, 1 the benchmark failed.
set -euo pipefail

ROOT="$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib/common.sh
. "$ROOT/bench/lib/common.sh"
BENCH_DIR="${BENCH_DIR:-/var/tmp/vmstash-bench}"
SIZE_GIB="${SIZE_GIB:-8}"
FILL_PCT="${FILL_PCT:-80}"
CHANGE_PCT="${CHANGE_PCT:-1}"
CHANGE_DATA="${CHANGE_DATA:-mixed}"
case "$CHANGE_DATA" in mixed | random) ;; *) die "CHANGE_DATA must be mixed or random" ;; esac
KEEP="${KEEP:-0}"
URI_LOCAL="qemu:///system"
IMAGES_DIR="/var/lib/libvirt/images"
need_positive_int SIZE_GIB
need_positive_int FILL_PCT
need_positive_int CHANGE_PCT
use_passwords vmstash
need_root "private sshd with root login, libvirt, dropping the page cache"

sample_load
install_deps
command -v virtnbdbackup >/dev/null || die "virtnbdbackup is not installed (scripts/install-deps.sh installs it)"
VNB_VERSION="$(virtnbdbackup -V 2>&1 | tail -n 1)"
bash "$ROOT/scripts/test-services.sh" start
if [ -n "${VMSTASH_BIN:-}" ]; then
  VMSTASH="$VMSTASH_BIN"
else
  (cd "$ROOT" && cargo build --release -p vmstash && bash scripts/build-helper.sh)
  VMSTASH="$ROOT/target/release/vmstash"
fi
[ -x "$(dirname "$VMSTASH")/vmstash-hashblocks" ] || die "no helper beside $VMSTASH (run scripts/build-helper.sh)"
# Two images, three vmstash repositories and virtnbdbackup's copy: about 6x the data.
check_bench_dir $((SIZE_GIB * FILL_PCT * 6 / 100 + 2)) "(two images, three repositories, virtnbdbackup's copy)"
setup_drop_caches

make_run_dir cbt
DOM="vmstash-cbt-bench-$$"
DOM_VNB="vmstash-cbt-bench-vnb-$$"
IMGDIR="$IMAGES_DIR/$DOM"
mkdir -p "$IMGDIR" "$W/home" "$W/changes"
SSHD_PID=""
QEMU_PID=""
virsh_() { virsh -c "$URI_LOCAL" "$@"; }
cleanup() {
  set +e
  [ -z "$QEMU_PID" ] || kill "$QEMU_PID" 2>/dev/null
  remove_halting_vm "$DOM" "$DOM_VNB"
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

# The VMs (bench/lib/vm.sh): guests that halt at once, one qcow2 disk each.
FILL_MIB=$((SIZE_GIB * 1024 * FILL_PCT / 100))
note "writing $FILL_MIB MiB of random data into a $SIZE_GIB GiB qcow2 image"
truncate -s "${SIZE_GIB}G" "$W/vda.raw"
head -c "${FILL_MIB}M" /dev/urandom | dd of="$W/vda.raw" conv=notrunc bs=1M status=none
quiet qcow2 qemu-img convert -f raw -O qcow2 "$W/vda.raw" "$IMGDIR/vda.qcow2"
rm -f "$W/vda.raw"
cp --sparse=always "$IMGDIR/vda.qcow2" "$IMGDIR/vda-vnb.qcow2"
start_halting_vm "$DOM" "$IMGDIR" "qcow2:$IMGDIR/vda.qcow2"
start_halting_vm "$DOM_VNB" "$IMGDIR" "qcow2:$IMGDIR/vda-vnb.qcow2"

# vmstash_backup LABEL REPO ARGS...: one backup of $DOM over SSH with the helper, timed from
# a cold page cache; sets T_MS and SUMMARY.
vmstash_backup() {
  local label="$1" repo="$2"
  shift 2
  timed_backup "$label" "$repo" --connect "$CONNECT" --vm "$DOM" "$@"
}
# timed_backup LABEL REPO ARGS...: `vmstash backup ARGS...` over SSH with the helper, timed
# from a cold page cache; sets T_MS and SUMMARY.
timed_backup() {
  local label="$1" repo="$2"
  shift 2
  timed "$label" env -u SSH_AUTH_SOCK HOME="$W/home" "$VMSTASH" -r "$repo" --identity "$KEY" \
    --known-hosts "$KH" --json backup "$@"
  ! grep -q "not using the hashblocks helper" "$LOGS/$label.err" ||
    die "$label did not use the helper: $(cat "$LOGS/$label.err")"
  SUMMARY="$(summary_of "$label")"
}
# vnb_backup LABEL LEVEL: virtnbdbackup at LEVEL into $W/vnb, timed from a cold page cache;
# sets T_MS and VNB_ADDED (bytes its output directory grew by).
vnb_backup() {
  local before
  before="$(du -sb "$W/vnb" 2>/dev/null | cut -f1 || echo 0)"
  timed "$1" virtnbdbackup -d "$DOM_VNB" -l "$2" -o "$W/vnb" -n
  VNB_ADDED=$(($(du -sb "$W/vnb" | cut -f1) - before))
}

quiet init-cbt "$VMSTASH" -r "$W/repo-cbt" init
quiet init-old "$VMSTASH" -r "$W/repo-old" init
note "full backups"
vmstash_backup full-cbt "$W/repo-cbt"
FULL_CBT_MS="$T_MS"
jq -e '.cbt.since == null' <<<"$SUMMARY" >/dev/null || die "the first CBT backup was not a full one: $SUMMARY"
vmstash_backup full-old "$W/repo-old" --cbt never
FULL_OLD_MS="$T_MS"
vnb_backup full-vnb full
FULL_VNB_MS="$T_MS"

# change_data OFFSET N PREVIOUS: the 1 MiB written at OFFSET MiB, the N-th extent. random:
# its own random bytes. mixed (what servers write: pages of data, text, logs, copies): 256 KiB
# random, 256 KiB base64 text, 512 KiB of log lines; every 10th extent a copy of the one
# before it (a file copied).
change_data() {
  if [ "$CHANGE_DATA" = random ]; then
    head -c 1M /dev/urandom
  elif [ -n "$3" ] && [ $(($2 % 10)) = 9 ]; then
    cat -- "$3"
  else
    head -c 256K /dev/urandom
    # The writers die of SIGPIPE when head has enough: not a failure.
    (base64 -w 76 /dev/urandom || :) | head -c 256K
    (yes "$(date -u +%FT%T) web1 nginx[812]: 10.0.$(($2 % 256)).7 GET /shop/item/$1 HTTP/1.1 200 5123" || :) | head -c 512K
  fi
}

# rewrite WRITER: writes EXTENTS distinct random 1 MiB-aligned extents (change_data) by
# calling `WRITER FILE OFFSET_MIB` for each.
EXTENTS=$((SIZE_GIB * 1024 * CHANGE_PCT / 100))
chmod 0755 "$W" "$W/changes"
rewrite() {
  local n=0 prev="" off
  for off in $(shuf -i 0-$((SIZE_GIB * 1024 - 1)) -n "$EXTENTS"); do
    change_data "$off" "$n" "$prev" >"$W/changes/$off"
    chmod 0644 "$W/changes/$off"
    prev="$W/changes/$off"
    n=$((n + 1))
    "$1" "$W/changes/$off" "$off"
  done
}
# Through libvirt, to both VMs.
write_libvirt() {
  local d
  for d in "$DOM" "$DOM_VNB"; do
    virsh_ qemu-monitor-command "$d" --hmp \
      "qemu-io -d virtio-disk0/virtio-backend \"write -s $1 ${2}M 1M\"" >/dev/null
  done
}
note "rewriting $EXTENTS scattered 1 MiB extents through QEMU"
rewrite write_libvirt
CHANGED=$((EXTENTS * 1048576)) # 1 MiB-aligned: exactly this many bytes of chunks

note "incremental backups"
vmstash_backup inc-cbt "$W/repo-cbt"
INC_CBT_MS="$T_MS"
jq -e '.cbt.since != null' <<<"$SUMMARY" >/dev/null || die "the CBT incremental fell back: $(cat "$LOGS/inc-cbt.err")"
HASHED="$(jq -r '.cbt.bytes_hashed' <<<"$SUMMARY")"
ADDED_CBT="$(jq -r '.bytes_added' <<<"$SUMMARY")"
vmstash_backup inc-old "$W/repo-old" --cbt never
INC_OLD_MS="$T_MS"
ADDED_OLD="$(jq -r '.bytes_added' <<<"$SUMMARY")"
vnb_backup inc-vnb inc
INC_VNB_MS="$T_MS"
ADDED_VNB="$VNB_ADDED"

# The first VM's image under a QEMU without libvirt, through its QMP socket.
virsh_ destroy "$DOM" >/dev/null
qemu-system-x86_64 -name "$DOM" -machine pc,accel=tcg -m 128 -nodefaults -display none \
  -kernel "$IMGDIR/halt.bin" -qmp "unix:$W/qmp.sock,server=on,wait=off" \
  -drive "file=$IMGDIR/vda.qcow2,if=virtio,format=qcow2" \
  -daemonize -pidfile "$W/qemu.pid" >"$LOGS/qemu.out" 2>&1 || die "QEMU did not start: $(cat "$LOGS/qemu.out")"
QEMU_PID="$(cat "$W/qemu.pid")"
QMP_URI="qmp+ssh://root@127.0.0.1:$PORT$W/qmp.sock"
HELPER="$(dirname "$VMSTASH")/vmstash-hashblocks"
# Through QMP (the helper's qmp command, here), to the QEMU without libvirt.
write_qmp() {
  local command
  command="$(jq -nc --arg c "qemu-io virtio0 \"write -s $1 ${2}M 1M\"" \
    '{execute: "human-monitor-command", arguments: {"command-line": $c}}')"
  "$HELPER" qmp "$W/qmp.sock" "$command" >/dev/null
}
quiet init-qmp "$VMSTASH" -r "$W/repo-qmp" init
note "QEMU without libvirt: full backup, $EXTENTS new extents, incremental"
timed_backup full-qmp "$W/repo-qmp" --connect "$QMP_URI"
FULL_QMP_MS="$T_MS"
rewrite write_qmp
timed_backup inc-qmp "$W/repo-qmp" --connect "$QMP_URI"
INC_QMP_MS="$T_MS"
jq -e '.cbt.since != null' <<<"$SUMMARY" >/dev/null || die "the QMP incremental fell back: $(cat "$LOGS/inc-qmp.err")"
HASHED_QMP="$(jq -r '.cbt.bytes_hashed' <<<"$SUMMARY")"
ADDED_QMP="$(jq -r '.bytes_added' <<<"$SUMMARY")"

echo
echo "Changed-block tracking: running TCG VM, one ${SIZE_GIB} GiB qcow2 disk ${FILL_PCT} % random data;"
echo "$EXTENTS scattered 1 MiB extents ($(mib "$CHANGED") MiB, ${CHANGE_PCT} %, $CHANGE_DATA data) rewritten through QEMU. Cold page cache before each run."
echo "vmstash over SSH to 127.0.0.1 with the helper; virtnbdbackup $VNB_VERSION on this host. 1-minute load at the start: $LOAD_START ($(nproc) CPUs)."
fmt='%-34s %12s %16s\n'
# shellcheck disable=SC2059  # $fmt is this script's own format string
printf "$fmt" run "time (s)" "stored (MiB)"
# shellcheck disable=SC2059
{
  printf "$fmt" "vmstash full (CBT)" "$(secs "$FULL_CBT_MS")" -
  printf "$fmt" "vmstash full (--cbt never)" "$(secs "$FULL_OLD_MS")" -
  printf "$fmt" "virtnbdbackup full" "$(secs "$FULL_VNB_MS")" -
  printf "$fmt" "vmstash incremental (CBT)" "$(secs "$INC_CBT_MS")" "$(mib "$ADDED_CBT")"
  printf "$fmt" "vmstash incremental (--cbt never)" "$(secs "$INC_OLD_MS")" "$(mib "$ADDED_OLD")"
  printf "$fmt" "virtnbdbackup incremental" "$(secs "$INC_VNB_MS")" "$(mib "$ADDED_VNB")"
  printf "$fmt" "vmstash full (QMP, no libvirt)" "$(secs "$FULL_QMP_MS")" -
  printf "$fmt" "vmstash incremental (QMP)" "$(secs "$INC_QMP_MS")" "$(mib "$ADDED_QMP")"
}
echo "read on the host by the CBT incremental: $(mib "$HASHED") MiB, by the QMP one: $(mib "$HASHED_QMP") MiB (changed, rounded to chunks: $(mib "$CHANGED") MiB each time)"
echo "ratios: CBT inc / CBT full $(calc 3 "$INC_CBT_MS / $FULL_CBT_MS"), --cbt never inc / CBT inc $(calc 2 "$INC_OLD_MS / $INC_CBT_MS")x, virtnbdbackup inc / CBT inc $(calc 2 "$INC_VNB_MS / $INC_CBT_MS")x"
failed=0
bar() { # description, awk expression
  local res
  res="$(verdict "$2")"
  echo "bar: $1: $res"
  [ "$res" = PASS ] || failed=1
}
bar "CBT incremental <= 10 % of the CBT full" "$INC_CBT_MS <= 0.10 * $FULL_CBT_MS"
bar "CBT incremental >= 3x faster than --cbt never" "$INC_OLD_MS >= 3 * $INC_CBT_MS"
bar "CBT incremental no slower than virtnbdbackup's" "$INC_CBT_MS <= $INC_VNB_MS"
bar "CBT incremental stores fewer bytes than virtnbdbackup's" "$ADDED_CBT < $ADDED_VNB"
bar "bytes read on the host <= 1.2 x changed chunks" "$HASHED <= 1.2 * $CHANGED"
bar "QMP incremental <= 10 % of the QMP full" "$INC_QMP_MS <= 0.10 * $FULL_QMP_MS"
bar "QMP: bytes read on the host <= 1.2 x changed chunks" "$HASHED_QMP <= 1.2 * $CHANGED"
[ "$failed" = 0 ] || exit 2
