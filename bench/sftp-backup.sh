#!/usr/bin/env bash
# SFTP benchmark: a full vmstash backup of a running libvirt VM over SSH on
# loopback (qemu+ssh://root@127.0.0.1:PORT/system) against OpenSSH's own
# `sftp` copying the same disk files with its fastest cipher (aes128-gcm),
# alternating the two in one run. See bench/README.md.
#
# Usage: sudo bench/sftp-backup.sh
#   ROUNDS=3                          rounds (each: one vmstash full backup, one sftp copy)
#   QCOW2=1                           1: the VM has a second, qcow2 disk; 0: the raw disk only
#   BENCH_DIR=/var/tmp/vmstash-bench  where the repositories, restores, keys and logs go
#   KEEP=1                            keep the run's directory (last repository, keys, logs)
#   RAW_SIZE=2G RAW_DATA_MIB=768      the raw disk (vda): size, and MiB of files in it
#   QCOW2_SIZE=1G QCOW2_DATA_MIB=410  the qcow2 disk (vdb): virtual size, MiB of files
#   VMSTASH_BIN=PATH                  a vmstash binary to use instead of building one
#   GUEST=halt                        halt: the guest boots a 36-byte multiboot kernel that halts
#                                     its CPU (an idle guest, as on KVM); seabios: no kernel, so
#                                     SeaBIOS finds nothing to boot and TCG spins one core at 100 %
#
# Exit status: 0 the bar passed, 2 it failed, 1 the benchmark itself failed
# (a command failed, or the restored disks differ from the VM's disks).
set -euo pipefail

ROOT="$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib/common.sh
. "$ROOT/bench/lib/common.sh"
BENCH_DIR="${BENCH_DIR:-/var/tmp/vmstash-bench}"
ROUNDS="${ROUNDS:-3}"
QCOW2="${QCOW2:-1}"
KEEP="${KEEP:-0}"
RAW_SIZE="${RAW_SIZE:-2G}"
RAW_DATA_MIB="${RAW_DATA_MIB:-768}"
QCOW2_SIZE="${QCOW2_SIZE:-1G}"
QCOW2_DATA_MIB="${QCOW2_DATA_MIB:-410}"
GUEST="${GUEST:-halt}"

# The bar, from the issue.
BAR_RATIO=1.0   # sftp time / vmstash full backup time >=
CIPHER="aes128-gcm@openssh.com"

URI_LOCAL="qemu:///system"
IMAGES_DIR="/var/lib/libvirt/images"
QEMU_LOG_DIR="/var/log/libvirt/qemu"
PREFIX="vmstash-bench-"
NAME="$PREFIX$$"
IMGDIR="$IMAGES_DIR/$NAME"

use_passwords vmstash

need_positive_int ROUNDS
[[ "$QCOW2" =~ ^[01]$ ]] || die "QCOW2 must be 0 or 1"
[[ "$GUEST" =~ ^(halt|seabios)$ ]] || die "GUEST must be halt or seabios"
need_root "images on loop devices, a private sshd with root login, page cache dropped"

# --- setup --------------------------------------------------------------------
# Sampled before this script's own build and image making add to it.
sample_load
install_deps
bash "$ROOT/scripts/test-services.sh" start
use_vmstash
for tool in virsh qemu-img sftp ssh-keygen jq perl cmp; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/install-deps.sh)"
done
[ -x /usr/sbin/sshd ] || die "/usr/sbin/sshd not found (run scripts/install-deps.sh)"
[ -x /usr/bin/time ] || die "/usr/bin/time not found (run scripts/install-deps.sh)"
OPENSSH_VERSION="$(ssh -V 2>&1 | awk '{sub(/,$/, "", $1); print $1}')"

check_bench_dir 6 "(a repository and sftp's copies)"
[ -d "$IMAGES_DIR" ] || die "$IMAGES_DIR does not exist (libvirt-daemon-system makes it)"
avail_kib="$(free_kib "$IMAGES_DIR")"
[ "$avail_kib" -ge $((3 * 1024 * 1024)) ] ||
  die "$IMAGES_DIR has $((avail_kib / 1024)) MiB free; the VM's disks need about 3 GiB"

virsh_() { virsh -c "$URI_LOCAL" "$@"; }

# Domains and disk directories of earlier runs that were killed (their pid is
# gone), as the e2e fixtures sweep theirs.
sweep_stale() {
  local d pid
  while read -r d; do
    case "$d" in
      "$PREFIX"*)
        pid="${d#"$PREFIX"}"
        [[ "$pid" =~ ^[0-9]+$ ]] || continue
        [ -d "/proc/$pid" ] && continue
        virsh_ destroy "$d" >/dev/null 2>&1 || true
        virsh_ undefine --snapshots-metadata --checkpoints-metadata "$d" >/dev/null 2>&1 || true
        rm -f -- "$QEMU_LOG_DIR/$d.log"
        note "removed the leftover domain $d"
        ;;
    esac
  done < <(virsh_ list --all --name 2>/dev/null)
  for d in "$IMAGES_DIR/$PREFIX"*; do
    [ -d "$d" ] || continue
    pid="${d##*/"$PREFIX"}"
    if ! [[ "$pid" =~ ^[0-9]+$ ]] || [ -d "/proc/$pid" ]; then continue; fi
    rm -rf -- "$d"
    note "removed the leftover directory $d"
  done
}
sweep_stale

make_run_dir sftp
SSHD_PID=""
DEFINED=0
# cleanup: what trap_cleanup undoes when the script exits, however it exits.
cleanup() {
  set +e
  if [ -n "$SSHD_PID" ]; then
    kill "$SSHD_PID" 2>/dev/null
    wait "$SSHD_PID" 2>/dev/null
  fi
  if [ "$DEFINED" = 1 ]; then
    virsh_ destroy "$NAME" >/dev/null 2>&1
    virsh_ undefine --snapshots-metadata --checkpoints-metadata "$NAME" >/dev/null 2>&1 ||
      note "warning: could not undefine $NAME"
  fi
  rm -rf -- "$IMGDIR"
  rm -f -- "$QEMU_LOG_DIR/$NAME.log"
  finish_run_dir "(the VM and its disks are removed)"
}
trap_cleanup
mkdir -p "$W/home" "$W/cache"

setup_drop_caches

# --- the VM's disks -------------------------------------------------------------
# vda: raw, GPT + ext4 with RAW_DATA_MIB of files, the rest holes.
# vdb: qcow2, converted from another such image (another seed: no file is
# shared with vda, so deduplication across the disks does not help vmstash).
mkdir -p -- "$IMGDIR"
VDA="$IMGDIR/vda.raw"
note "building vda: raw, $RAW_SIZE, $RAW_DATA_MIB MiB of files (scripts/make-disk-image.sh)"
bash "$ROOT/scripts/make-disk-image.sh" -s 1 "$VDA" "$RAW_SIZE" "$RAW_DATA_MIB"
DISK_FILES=("$VDA")
DISK_DESC=("vda raw")
if [ "$QCOW2" = 1 ]; then
  VDB="$IMGDIR/vdb.qcow2"
  note "building vdb: qcow2, $QCOW2_SIZE, $QCOW2_DATA_MIB MiB of files"
  bash "$ROOT/scripts/make-disk-image.sh" -s 2 "$IMGDIR/vdb-source.raw" "$QCOW2_SIZE" "$QCOW2_DATA_MIB"
  quiet qemu-img-convert qemu-img convert -q -f raw -O qcow2 "$IMGDIR/vdb-source.raw" "$VDB"
  rm -f -- "$IMGDIR/vdb-source.raw"
  DISK_FILES+=("$VDB")
  DISK_DESC+=("vdb qcow2")
fi

# Sizes: apparent (what sftp copies), allocated (what is on disk) and virtual
# (the guest-visible disk vmstash backs up).
FILE_BYTES=0
VIRT_BYTES=0
declare -a D_APP D_ALLOC D_VIRT
for i in "${!DISK_FILES[@]}"; do
  f="${DISK_FILES[i]}"
  D_APP[i]="$(stat -c %s -- "$f")"
  D_ALLOC[i]="$(($(stat -c %b -- "$f") * 512))"
  D_VIRT[i]="$(qemu-img info --output=json -- "$f" | jq -r '."virtual-size"')"
  FILE_BYTES=$((FILE_BYTES + D_APP[i]))
  VIRT_BYTES=$((VIRT_BYTES + D_VIRT[i]))
done

# --- the VM -----------------------------------------------------------------------
# As tests/e2e/fixtures/libvirt.rs: TCG, no OS, no NIC, no graphics. With
# GUEST=halt the guest boots a multiboot kernel that is only `cli; hlt`
# (header: magic, flags 0x10000, checksum, load at 1 MiB, entry 1 MiB + 32),
# so it idles as a real guest on KVM would; without it TCG busy-loops in
# SeaBIOS and takes one of the machine's cores from both tools.
OS_BOOT="    <boot dev='hd'/>"
if [ "$GUEST" = halt ]; then
  printf '\x02\xb0\xad\x1b\x00\x00\x01\x00\xfe\x4f\x51\xe4\x00\x00\x10\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20\x00\x10\x00\xfa\xf4\xeb\xfd' >"$IMGDIR/halt.bin"
  OS_BOOT="    <kernel>$IMGDIR/halt.bin</kernel>"
fi
disk_xml() { # file format target
  printf "    <disk type='file' device='disk'>\n      <driver name='qemu' type='%s'/>\n      <source file='%s'/>\n      <target dev='%s' bus='virtio'/>\n    </disk>\n" "$2" "$1" "$3"
}
{
  cat <<EOF
<domain type='qemu'>
  <name>$NAME</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
$OS_BOOT
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
EOF
  disk_xml "$VDA" raw vda
  if [ "$QCOW2" = 1 ]; then disk_xml "$VDB" qcow2 vdb; fi
  cat <<EOF
    <controller type='usb' model='none'/>
    <serial type='pty'/>
    <console type='pty'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
} >"$IMGDIR/domain.xml"
DEFINED=1
quiet virsh-define virsh_ define "$IMGDIR/domain.xml"
quiet virsh-start virsh_ start "$NAME"
note "domain $NAME running with ${#DISK_FILES[@]} disk(s)"

# The domain must be back on its original disk files, with no block job,
# after every backup.
check_domain() {
  local state list i target
  state="$(virsh_ domstate "$NAME" | sed '/^$/d')"
  [ "$state" = running ] || die "after $1: $NAME is '$state', not running"
  list="$(virsh_ domblklist "$NAME")"
  for i in "${!DISK_FILES[@]}"; do
    target="${DISK_DESC[i]%% *}"
    awk -v t="$target" -v f="${DISK_FILES[i]}" '$1 == t && $2 == f {ok = 1} END {exit !ok}' <<<"$list" ||
      die "after $1: $target of $NAME is not on ${DISK_FILES[i]}: $list"
  done
}

# --- a private sshd -------------------------------------------------------------
# shellcheck source=bench/lib/sshd.sh
. "$ROOT/bench/lib/sshd.sh"
start_private_sshd "$W/sshd"
note "sshd on 127.0.0.1:$PORT (pid $SSHD_PID)"

# OpenSSH client options, as the fixture's client_opts(): no user or system
# config, only the client key, strict host key checking, never a prompt.
SSH_OPTS=(-F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes
  -o GlobalKnownHostsFile=/dev/null -o "UserKnownHostsFile=$KH" -o LogLevel=ERROR
  -o ConnectTimeout=10 -i "$KEY")
# Two sftp runs per round: a copy of the disk files into a local directory
# (what copying them means; the bar) and a read of them into /dev/null (no
# local writes at all; information).
COPY_DIR="$W/sftp-copy"
BATCH_COPY="$W/sftp-batch-copy"
BATCH_NULL="$W/sftp-batch-null"
for f in "${DISK_FILES[@]}"; do
  printf 'get %s %s/\n' "$f" "$COPY_DIR"
done >"$BATCH_COPY"
for f in "${DISK_FILES[@]}"; do
  printf 'get %s /dev/null\n' "$f"
done >"$BATCH_NULL"
# The same SSH setup for vmstash: its own HOME and cache, no agent.
VM_ENV=(env -u SSH_AUTH_SOCK "HOME=$W/home" "XDG_CACHE_HOME=$W/cache")
VM_SSH=(--identity "$KEY" --known-hosts "$KH")

# --- measuring ----------------------------------------------------------------------
# timed, quiet, summary_of and the report's helpers are in bench/lib/common.sh.
# show_command_failure NAME CMD...: how a failed timed command is shown here:
# the exact command line, its exit status and output, and what to do when this
# vmstash cannot read qcow2 disks over SFTP yet.
show_command_failure() {
  local name="$1"
  shift
  {
    echo "bench: this command failed ($(awk '/Exit status/ {print "exit status " $3}' "$LOGS/$name.time")):"
    printf ' %q' "$@"
    echo
    echo "bench: its stdout:"
    tail -n 20 "$LOGS/$name.out"
    echo "bench: its stderr:"
    tail -n 40 "$LOGS/$name.err"
  } >&2
  if grep -q "qcow2 images over SFTP is not available" "$LOGS/$name.err"; then
    note "this vmstash cannot read qcow2 disks over SFTP yet: run with QCOW2=0 to measure the raw disk only"
  fi
}
TIMED_FAILURE_REPORT=show_command_failure

declare -a V_MS S_MS N_MS V_RSS S_RSS V_READ ORDER

vmstash_round() {
  local r="$1" repo="$W/r$1/repo"
  mkdir -p "$W/r$r"
  quiet "r$r-vmstash-init" "${VM_ENV[@]}" "$VMSTASH" -r "$repo" init
  timed "r$r-vmstash-backup" "${VM_ENV[@]}" "$VMSTASH" -r "$repo" "${VM_SSH[@]}" \
    backup --connect "$CONNECT" --vm "$NAME" --json
  V_MS[r]="$T_MS"
  V_RSS[r]="$T_RSS_KIB"
  local s
  s="$(summary_of "r$r-vmstash-backup")"
  [ "$(jq -r .disks <<<"$s")" = "${#DISK_FILES[@]}" ] ||
    die "vmstash backup summary: $(jq -r .disks <<<"$s") disks, the VM has ${#DISK_FILES[@]}: $s"
  [ "$(jq -r .disk_bytes <<<"$s")" = "$VIRT_BYTES" ] ||
    die "vmstash backup summary: disk_bytes $(jq -r .disk_bytes <<<"$s") != the disks' size $VIRT_BYTES"
  V_READ[r]="$(jq -r .bytes_read <<<"$s")"
  check_domain "round $r's backup"
}
sftp_round() {
  local r="$1"
  rm -rf -- "$COPY_DIR"
  mkdir -p -- "$COPY_DIR"
  timed "r$r-sftp" env -u SSH_AUTH_SOCK sftp "${SSH_OPTS[@]}" -c "$CIPHER" -P "$PORT" \
    -b "$BATCH_COPY" root@127.0.0.1
  S_MS[r]="$T_MS"
  S_RSS[r]="$T_RSS_KIB"
  local i
  for i in "${!DISK_FILES[@]}"; do
    cmp -s -- "${DISK_FILES[i]}" "$COPY_DIR/${DISK_FILES[i]##*/}" ||
      die "sftp's copy of ${DISK_FILES[i]} differs from the file (the disk changed under the copy?)"
  done
  rm -rf -- "$COPY_DIR"
}
sftp_null_round() {
  local r="$1"
  timed "r$r-sftp-null" env -u SSH_AUTH_SOCK sftp "${SSH_OPTS[@]}" -c "$CIPHER" -P "$PORT" \
    -b "$BATCH_NULL" root@127.0.0.1
  N_MS[r]="$T_MS"
}

note "$CACHE_NOTE"
note "work directory $W ($fstype); $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
  # Odd rounds run vmstash first, even rounds sftp first.
  if [ $((r % 2)) -eq 1 ]; then order=(vmstash sftp sftp_null); else order=(sftp_null sftp vmstash); fi
  ORDER[r]="${order[0]}-first"
  for tool in "${order[@]}"; do
    note "round $r/$ROUNDS: $tool"
    "${tool}_round" "$r"
  done
  # Every round backs up into a fresh repository; the last one is restored below.
  if [ "$r" -lt "$ROUNDS" ]; then rm -rf -- "$W/r$r"; fi
done

# --- correctness: restore the last backup, compare with the VM's disks ---------------
note "restoring round $ROUNDS's snapshot and comparing it with the VM's disks"
RESTORE="$W/restore"
quiet restore "${VM_ENV[@]}" "$VMSTASH" -r "$W/r$ROUNDS/repo" restore latest --target "$RESTORE"
[ -f "$RESTORE/vda.raw" ] || die "restore did not write $RESTORE/vda.raw"
cmp -- "$VDA" "$RESTORE/vda.raw" >/dev/null || die "restored vda.raw differs from $VDA"
VERIFIED="vda restored bit-identical to the raw disk (cmp)"
if [ "$QCOW2" = 1 ]; then
  [ -f "$RESTORE/vdb.raw" ] || die "restore did not write $RESTORE/vdb.raw"
  # -U: QEMU holds the image's lock while the domain runs.
  qemu-img compare -U -q -f raw -F qcow2 "$RESTORE/vdb.raw" "$VDB" ||
    die "restored vdb.raw differs from the guest-visible content of $VDB (qemu-img compare)"
  VERIFIED="$VERIFIED; vdb restored identical to the qcow2 disk's content (qemu-img compare)"
fi
rm -rf -- "$RESTORE"

# --- report -------------------------------------------------------------------------
v_ms="$(median "${V_MS[@]}")"
s_ms="$(median "${S_MS[@]}")"
n_ms="$(median "${N_MS[@]}")"
n_ratio="$(calc 2 "$n_ms / $v_ms")"
v_read="$(median "${V_READ[@]}")"
v_rss_mib="$(calc 0 "$(maxof "${V_RSS[@]}") / 1024")"
s_rss_mib="$(calc 0 "$(maxof "${S_RSS[@]}") / 1024")"
ratio="$(calc 2 "$s_ms / $v_ms")"
result="$(verdict "$ratio >= $BAR_RATIO")"
# Throughput: each tool's bytes over its own median time. vmstash reads only
# the allocated data (bytes_read), sftp the whole files, holes included.
v_tput="$(calc 1 "$v_read / 1048576 / ($v_ms / 1000)")"
s_tput="$(calc 1 "$FILE_BYTES / 1048576 / ($s_ms / 1000)")"
v_logical="$(calc 1 "$VIRT_BYTES / 1048576 / ($v_ms / 1000)")"
tput_ratio="$(calc 2 "$v_tput / $s_tput")"

echo
echo "Disks of $NAME in $IMGDIR (the files sftp copies; what vmstash backs up):"
printf '%-10s %-12s %12s %13s %14s\n' disk file virtual_MiB apparent_MiB allocated_MiB
for i in "${!DISK_FILES[@]}"; do
  printf '%-10s %-12s %12s %13s %14s\n' "${DISK_DESC[i]}" "${DISK_FILES[i]##*/}" \
    "$(mib "${D_VIRT[i]}")" "$(mib "${D_APP[i]}")" "$(mib "${D_ALLOC[i]}")"
done
if [ "$QCOW2" = 0 ]; then
  echo "(QCOW2=0: the VM has no qcow2 disk in this run)"
fi

echo
echo "Per round (seconds):"
printf '%-5s %-18s %9s %10s %10s %10s %11s %13s\n' round order vmstash sftp_copy copy/vms sftp_null null/vms vms_rss_MiB
for ((r = 1; r <= ROUNDS; r++)); do
  printf '%-5s %-18s %9s %10s %10s %10s %11s %13s\n' "$r" "${ORDER[r]}" \
    "$(secs "${V_MS[r]}")" "$(secs "${S_MS[r]}")" "$(calc 2 "${S_MS[r]} / ${V_MS[r]}")" \
    "$(secs "${N_MS[r]}")" "$(calc 2 "${N_MS[r]} / ${V_MS[r]}")" "$(calc 0 "${V_RSS[r]} / 1024")"
done

echo
echo "vmstash full backup of a running VM over SSH (russh, $CONNECT)"
echo "vs $OPENSSH_VERSION sftp -c $CIPHER copying each disk file into a local directory"
echo "(sftp_copy, the bar) and reading it into /dev/null (sftp_null, information), loopback,"
echo "$ROUNDS round(s), medians. Times are wall clock including a final sync; $CACHE_NOTE."
echo "vmstash's time includes its SSH login, the external snapshot, qemu-img map, writing a"
echo "fresh local repository (chunk, compress, encrypt) and committing the overlays back;"
echo "sftp_copy's includes writing the copies (sftp writes holes as data, no sparse files)."
echo "sftp copies whole files, holes included ($(mib "$FILE_BYTES") MiB); vmstash reads only the"
echo "allocated data the hypervisor's qemu-img map reports (bytes_read $(mib "$v_read") MiB)."
echo "1-minute load average when the benchmark started: $LOAD_START ($(nproc) CPUs)."
echo "Guest: GUEST=$GUEST ($([ "$GUEST" = halt ] && echo "CPU halted, idle as on KVM" || echo "SeaBIOS busy-loop under TCG, one core taken from both tools"))."
echo "Correctness: $VERIFIED."
echo
fmt='%-34s %12s %12s %-26s %-10s %s\n'
# shellcheck disable=SC2059  # $fmt is this script's own format string
{
  printf "$fmt" metric vmstash sftp ratio bar result
  printf "$fmt" "full backup / sftp copy time (s)" "$(secs "$v_ms")" "$(secs "$s_ms")" \
    "${ratio}x (sftp/vmstash)" ">= ${BAR_RATIO}x" "$result"
  printf "$fmt" "full backup / sftp to /dev/null (s)" "$(secs "$v_ms")" "$(secs "$n_ms")" \
    "${n_ratio}x (sftp/vmstash)" "(info)" ""
  printf "$fmt" "peak RSS (MiB, max of rounds)" "$v_rss_mib" "$s_rss_mib" "" "(info)" ""
  printf "$fmt" "bytes moved (MiB)" "$(mib "$v_read")" "$(mib "$FILE_BYTES")" \
    "vmstash: bytes_read" "(info)" ""
  printf "$fmt" "effective throughput (MiB/s)" "$v_tput" "$s_tput" \
    "${tput_ratio}x (vmstash/sftp)" "(info)" ""
}
echo "(effective throughput: bytes each tool moved / its median time; vmstash per guest-visible"
echo " disk byte: $v_logical MiB/s. sftp cannot copy only the allocated bytes, so this line"
echo " compares the transfer rates, holes aside.)"

[ "$result" = PASS ] || exit 2
