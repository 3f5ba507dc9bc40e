#!/usr/bin/env bash
# Starts, stops or reports the daemons the end-to-end tests need: virtlogd
# and libvirtd, reachable at qemu:///system. Idempotent: `start` leaves
# running daemons alone. sshd is not started here: every test starts its
# own private sshd on a free port (tests/e2e/fixtures/sshd.rs).
#
#   scripts/test-services.sh start    start what is not running, wait until
#                                     `virsh -c qemu:///system` answers
#   scripts/test-services.sh stop     stop libvirtd and virtlogd (domains of
#                                     test processes that are gone are removed
#                                     first; running guests keep running)
#   scripts/test-services.sh status   exit 0 when qemu:///system answers
#
# Without systemd as PID 1 (containers, microVMs) the daemons are started
# directly. Two things such machines lack are done here instead:
#
# - udev: /dev/kvm stays root:root 0600, so libvirt finds that the QEMU
#   user cannot use KVM although its capability probe (run as root) could,
#   declares its capability cache stale and re-probes QEMU on every domain
#   start (~4 s each). The udev rule's group and mode are applied instead.
#   The test domains still run under TCG (<domain type='qemu'>).
# - a PID 1 that reaps orphans promptly: libvirt daemonizes QEMU, so an
#   exiting QEMU is reaped by PID 1, and `virsh destroy` waits until the
#   zombie is gone (~1.6 s per domain with a slow reaper). libvirtd is run
#   under a tiny perl child subreaper (prctl PR_SET_CHILD_SUBREAPER) that
#   reaps them at once.
#
# No qemu.conf change is needed: the test disks live under
# /var/lib/libvirt/images (traversable by the libvirt-qemu user), dynamic
# ownership hands them to that user while a domain runs, and without AppArmor
# or SELinux in the kernel libvirt uses only its DAC security driver.
set -euo pipefail

URI="qemu:///system"
LIBVIRTD_PID=/run/libvirtd.pid
VIRTLOGD_PID=/run/virtlogd.pid
LOG_DIR=/var/log/libvirt

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

say() { echo "test-services: $*" >&2; }
die() { say "$*"; exit 1; }

systemd_is_init() { [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; }

# The pid in pidfile $1, when that process is alive.
live_pid() {
  local pid
  pid="$($SUDO cat "$1" 2>/dev/null || true)"
  [ -n "$pid" ] && $SUDO kill -0 "$pid" 2>/dev/null && echo "$pid"
}

virsh_ok() { $SUDO virsh -c "$URI" list --all >/dev/null 2>&1; }

wait_for() { # seconds, command...
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

need() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] ||
      die "$t is missing: run scripts/install-deps.sh"
  done
}

fix_kvm_node() {
  if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
    $SUDO chgrp kvm /dev/kvm
    $SUDO chmod 0660 /dev/kvm
  fi
}

start_virtlogd() {
  [ -n "$(live_pid "$VIRTLOGD_PID")" ] && return 0
  $SUDO /usr/sbin/virtlogd -d
  wait_for 10 live_pid "$VIRTLOGD_PID" >/dev/null || die "virtlogd did not start; see $LOG_DIR/virtlogd.log"
  say "virtlogd started (pid $(live_pid "$VIRTLOGD_PID"))"
}

start_libvirtd() {
  if [ -z "$(live_pid "$LIBVIRTD_PID")" ]; then
    if [ "$(uname -m)" = x86_64 ] && command -v perl >/dev/null; then
      # syscall 157 = prctl on x86_64; 36 = PR_SET_CHILD_SUBREAPER. The
      # reaper lives as long as libvirtd or any orphan it adopted.
      # shellcheck disable=SC2016
      # In the foreground libvirtd logs to stderr; keep its usual log file.
      $SUDO env LIBVIRT_LOG_OUTPUTS="3:file:$LOG_DIR/libvirtd.log" setsid -f perl -e '
        syscall(157, 36, 1, 0, 0, 0) == 0 or die "prctl: $!\n";
        defined(my $pid = fork) or die "fork: $!\n";
        if ($pid == 0) { exec { $ARGV[0] } @ARGV or die "exec: $!\n" }
        1 while wait != -1;
      ' /usr/sbin/libvirtd </dev/null >>"$LOG_DIR/libvirtd-stdio.log" 2>&1
    else
      $SUDO /usr/sbin/libvirtd -d
    fi
  fi
  wait_for 30 virsh_ok || die "libvirtd does not answer at $URI; see $LOG_DIR/libvirtd.log"
  say "libvirtd answers at $URI (pid $(live_pid "$LIBVIRTD_PID" || echo '?'))"
}

# The first QEMU capability probe takes from seconds to a minute (under load);
# do it now, not inside the first test's `virsh define`. Cached afterwards in
# /var/cache/libvirt/qemu/capabilities.
warm_capabilities() {
  $SUDO virsh -c "$URI" domcapabilities --virttype qemu --arch x86_64 --machine pc >/dev/null ||
    die "libvirt cannot use qemu-system-x86_64 (virsh domcapabilities failed)"
}

stop_pidfile() { # name pidfile
  local pid
  pid="$(live_pid "$2" || true)"
  if [ -z "$pid" ]; then
    say "$1 is not running"
    return 0
  fi
  $SUDO kill -TERM "$pid"
  wait_for 15 bash -c "! $SUDO kill -0 $pid 2>/dev/null" || die "$1 (pid $pid) did not stop"
  say "$1 stopped"
}

# Test domains are named vmstash-test-<pid>-<n>-<name> by the fixtures;
# those whose test process is gone are leftovers.
destroy_stale_test_domains() {
  local d pid
  virsh_ok || return 0
  while read -r d; do
    case "$d" in
    vmstash-test-*)
      pid="${d#vmstash-test-}"
      pid="${pid%%-*}"
      [ -d "/proc/$pid" ] && continue
      $SUDO virsh -c "$URI" destroy "$d" >/dev/null 2>&1 || true
      $SUDO virsh -c "$URI" undefine --snapshots-metadata --checkpoints-metadata "$d" >/dev/null 2>&1 || true
      $SUDO rm -rf "/var/lib/libvirt/images/vmstash-test-$pid-"*
      say "removed leftover test domain $d"
      ;;
    esac
  done < <($SUDO virsh -c "$URI" list --all --name 2>/dev/null)
  local running
  running="$($SUDO virsh -c "$URI" list --name 2>/dev/null | sed '/^$/d' | tr '\n' ' ')"
  [ -z "$running" ] || say "still running (they keep running; their log pipes to virtlogd end): $running"
}

case "${1:-status}" in
start)
  need virsh
  if systemd_is_init; then
    $SUDO systemctl start virtlogd.socket libvirtd.socket libvirtd.service
    wait_for 30 virsh_ok || die "libvirtd does not answer at $URI"
  else
    need virtlogd libvirtd
    $SUDO mkdir -p "$LOG_DIR/qemu" /run/libvirt
    fix_kvm_node
    start_virtlogd
    start_libvirtd
  fi
  warm_capabilities
  ;;
stop)
  destroy_stale_test_domains
  if systemd_is_init; then
    $SUDO systemctl stop libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket \
      virtlogd.service virtlogd.socket virtlogd-admin.socket
  else
    stop_pidfile libvirtd "$LIBVIRTD_PID"
    stop_pidfile virtlogd "$VIRTLOGD_PID"
  fi
  ;;
status)
  rc=0
  if ! systemd_is_init; then
    echo "virtlogd: $(live_pid "$VIRTLOGD_PID" || echo 'not running')"
    echo "libvirtd: $(live_pid "$LIBVIRTD_PID" || echo 'not running')"
  fi
  if virsh_ok; then echo "$URI: answers"; else echo "$URI: no answer"; rc=1; fi
  exit "$rc"
  ;;
*)
  die "usage: $0 start|stop|status"
  ;;
esac
