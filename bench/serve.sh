#!/usr/bin/env bash
# `vmstash serve` against the command line (issue 16): the same full backup of a running VM
# over SSH, once by `vmstash backup --connect` and once as a job through the daemon's HTTPS
# API, into fresh repositories, rounds alternating which goes first; then what 100 clients
# watching a running job's Server-Sent Events cost the daemon, and its idle footprint.
#
# Usage: sudo bench/serve.sh
#   VMSTASH_BIN=PATH       the vmstash to measure (the helper must be beside it; else built)
#   ROUNDS=3               backups per way (the median is reported)
#   CLIENTS=100            SSE clients
#   WATCH_SECS=20          how long the daemon's CPU time is sampled, without and with clients
#   BENCH_DIR=/var/tmp/vmstash-bench   KEEP=0
#
# The VM (bench/lib/vm.sh) halts at once; its raw disk is 2 GiB with 768 MiB of random data.
# An API backup is timed from the POST to the job's final state, as its event stream tells.
# The SSE cost: a backup job slowed by the daemon's test hook (VMSTASH_TEST_PROGRESS_DELAY_MS,
# 100 ms after each chunk: the job runs for minutes, reading little, with progress events at
# every chunk), the daemon's CPU time (utime + stime of /proc/PID/stat) over WATCH_SECS with no
# client, then over WATCH_SECS with CLIENTS curl processes on /v1/jobs/{id}/events over TLS;
# the difference over the wall time is the share of one core the clients cost.
# Bars: API backup median <= 1.03 x CLI median; SSE clients < 5 % of one core; idle RSS
# <= 30 MiB. Exit status: 0 bars passed, 2 one failed, 1 the benchmark failed.
set -euo pipefail

ROOT="$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib/common.sh
. "$ROOT/bench/lib/common.sh"
BENCH_DIR="${BENCH_DIR:-/var/tmp/vmstash-bench}"
ROUNDS="${ROUNDS:-3}"
CLIENTS="${CLIENTS:-100}"
WATCH_SECS="${WATCH_SECS:-20}"
KEEP="${KEEP:-0}"
IMAGES_DIR="/var/lib/libvirt/images"
need_positive_int ROUNDS
need_positive_int CLIENTS
need_positive_int WATCH_SECS
use_passwords vmstash
need_root "private sshd with root login, libvirt"

sample_load
install_deps
bash "$ROOT/scripts/test-services.sh" start
if [ -n "${VMSTASH_BIN:-}" ]; then
  VMSTASH="$VMSTASH_BIN"
else
  (cd "$ROOT" && cargo build --release -p vmstash && bash scripts/build-helper.sh)
  VMSTASH="${CARGO_TARGET_DIR:-$ROOT/target}/release/vmstash"
fi
[ -x "$(dirname "$VMSTASH")/vmstash-hashblocks" ] || die "no helper beside $VMSTASH (run scripts/build-helper.sh)"

mkdir -p "$BENCH_DIR"
make_run_dir serve
setup_drop_caches
DOM="vmstash-serve-$$"
IMGDIR="$IMAGES_DIR/$DOM"
mkdir -p "$IMGDIR" "$W/home"
SSHD_PID=""
DAEMON_PID=""
CURL_PIDS=()
cleanup() {
  set +e
  for p in "${CURL_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  [ -z "$DAEMON_PID" ] || { kill "$DAEMON_PID" 2>/dev/null; wait "$DAEMON_PID" 2>/dev/null; }
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

truncate -s 2G "$IMGDIR/vda.raw"
head -c 768M /dev/urandom | dd of="$IMGDIR/vda.raw" conv=notrunc status=none
start_halting_vm "$DOM" "$IMGDIR" "raw:$IMGDIR/vda.raw"

# The daemon: one repository per API round and one for the SSE job, the hypervisor over the
# private sshd.
printf '%s\n' "$VMSTASH_PASSWORD" >"$W/pass"
chmod 600 "$W/pass"
DPORT="$(free_port)"
{
  printf '[server]\nlisten = "127.0.0.1:%s"\nstate_dir = "%s"\n' "$DPORT" "$W/state"
  for r in $(seq 1 "$ROUNDS") sse; do
    quiet "init-api-$r" "$VMSTASH" -r "$W/repo-api-$r" init
    printf '[repositories.r%s]\nlocation = "%s"\npassword_file = "%s"\n' "$r" "$W/repo-api-$r" "$W/pass"
  done
  printf '[hypervisors.kvm]\nuri = "%s"\nidentity = "%s"\nknown_hosts = "%s"\n' "$CONNECT" "$KEY" "$KH"
} >"$W/vmstash.toml"
# start_daemon [ENV=VALUE...]: starts the daemon with extra environment; waits for it.
start_daemon() {
  env "$@" HOME="$W/home" "$VMSTASH" serve --config "$W/vmstash.toml" </dev/null >>"$LOGS/daemon.out" 2>>"$LOGS/daemon.err" &
  DAEMON_PID=$!
  for _ in $(seq 1 300); do
    if [ -f "$W/state/tls/cert.pem" ] &&
      curl -sf --cacert "$W/state/tls/cert.pem" "https://127.0.0.1:$DPORT/v1/health" >/dev/null 2>&1; then
      return 0
    fi
    kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon exited: $(tail -n 20 "$LOGS/daemon.err")"
    sleep 0.1
  done
  die "the daemon did not answer: $(tail -n 20 "$LOGS/daemon.err")"
}
stop_daemon() {
  kill "$DAEMON_PID"
  wait "$DAEMON_PID" || true
  DAEMON_PID=""
}
TOKEN="$("$VMSTASH" serve --config "$W/vmstash.toml" token create --role operator)"
api() { # METHOD PATH [BODY]
  curl -sS --fail-with-body --cacert "$W/state/tls/cert.pem" -H "Authorization: Bearer $TOKEN" \
    -X "$1" ${3:+-H 'Content-Type: application/json' --data "$3"} "https://127.0.0.1:$DPORT$2"
}
# api_backup REPO: a backup job through the API, waited for on the job's own event stream
# (the way a client learns that a job ended, without polling: a poll loop's curl and jq would
# take CPU from the backup); sets B_MS (POST to the final state's event).
api_backup() {
  local t0 id line event="" state="" stream
  t0="$(date +%s%N)"
  id="$(api POST /v1/jobs "{\"kind\":\"backup\",\"hypervisor\":\"kvm\",\"repository\":\"$1\",\"vms\":[\"$DOM\"]}" | jq -r .id)"
  while IFS= read -r line; do
    case "$line" in
      "event: "*) event="${line#event: }" ;;
      "data: "*)
        [ "$event" = job ] || continue
        case "$line" in
          *'"state":"succeeded"'*) state=succeeded && break ;;
          *'"state":"failed"'* | *'"state":"canceled"'*) state=failed && break ;;
        esac
        ;;
    esac
  done < <(curl -sSN --cacert "$W/state/tls/cert.pem" -H "Authorization: Bearer $TOKEN" \
    -H "Last-Event-ID: 0" "https://127.0.0.1:$DPORT/v1/jobs/$id/events")
  stream=$!
  B_MS=$((($(date +%s%N) - t0) / 1000000))
  kill "$stream" 2>/dev/null || true
  [ "$state" = succeeded ] || die "API backup $id did not succeed: $(api GET "/v1/jobs/$id")"
}
# cpu_ticks: the daemon's utime + stime (clock ticks).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$DAEMON_PID/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$DAEMON_PID/status"; }

start_daemon
sleep 5
IDLE_T0="$(cpu_ticks)"
sleep 10
IDLE_CPU="$(calc 2 "($(cpu_ticks) - $IDLE_T0) / $(getconf CLK_TCK) / 10 * 100")"
IDLE_RSS="$(rss_kib)"
note "idle: ${IDLE_RSS} KiB RSS, ${IDLE_CPU} % of a core"

CLI_MS=()
API_MS=()
for r in $(seq 1 "$ROUNDS"); do
  quiet "init-cli-$r" "$VMSTASH" -r "$W/repo-cli-$r" init
  if [ $((r % 2)) = 1 ]; then order="cli api"; else order="api cli"; fi
  for way in $order; do
    drop_caches
    if [ "$way" = cli ]; then
      ssh_vm_backup "cli-$r" "$VMSTASH" "$W/repo-cli-$r" "$DOM"
      CLI_MS+=("$B_MS")
    else
      api_backup "r$r"
      API_MS+=("$B_MS")
    fi
    note "round $r: $way full backup $B_MS ms"
  done
done
stop_daemon

# SSE: a slowed backup job, watched by nobody, then by CLIENTS clients.
start_daemon VMSTASH_TEST_PROGRESS_DELAY_MS=100
SSE_JOB="$(api POST /v1/jobs "{\"kind\":\"backup\",\"hypervisor\":\"kvm\",\"repository\":\"rsse\",\"vms\":[\"$DOM\"]}" | jq -r .id)"
until [ "$(api GET "/v1/jobs/$SSE_JOB" | jq -r '.progress.bytes_scanned > 0')" = true ]; do sleep 0.2; done
HZ="$(getconf CLK_TCK)"
t0="$(cpu_ticks)"
sleep "$WATCH_SECS"
ALONE="$(calc 3 "($(cpu_ticks) - $t0) / $HZ / $WATCH_SECS")"
for i in $(seq 1 "$CLIENTS"); do
  curl -sSN --cacert "$W/state/tls/cert.pem" -H "Authorization: Bearer $TOKEN" \
    "https://127.0.0.1:$DPORT/v1/jobs/$SSE_JOB/events" >"$W/sse-$i.out" 2>/dev/null &
  CURL_PIDS+=($!)
done
sleep 3
t0="$(cpu_ticks)"
ev0="$(grep -c '^event: progress' "$W/sse-1.out" || true)"
sleep "$WATCH_SECS"
WATCHED="$(calc 3 "($(cpu_ticks) - $t0) / $HZ / $WATCH_SECS")"
ev1="$(grep -c '^event: progress' "$W/sse-1.out" || true)"
state="$(api GET "/v1/jobs/$SSE_JOB" | jq -r .state)"
[ "$state" = running ] || die "the SSE job was $state before the sampling ended; raise the delay or the disk size"
for p in "${CURL_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
CURL_PIDS=()
api POST "/v1/jobs/$SSE_JOB/cancel" >/dev/null
RATE="$(calc 1 "($ev1 - $ev0) / $WATCH_SECS")"
SSE_PCT="$(calc 2 "($WATCHED - $ALONE) * 100")"
stop_daemon

CLI_MED="$(median "${CLI_MS[@]}")"
API_MED="$(median "${API_MS[@]}")"
RATIO="$(calc 3 "$API_MED / $CLI_MED")"
echo
echo "vmstash serve vs the command line: full backup of a running TCG VM over SSH (2 GiB raw disk, 768 MiB random data)."
echo "Rounds: $ROUNDS, alternating which goes first; $CACHE_NOTE; 1-minute load at the start: $LOAD_START ($(nproc) CPUs)."
fmt='%-44s %14s\n'
# shellcheck disable=SC2059  # $fmt is this script's own format string
printf "$fmt" "CLI backup, median (s)" "$(secs "$CLI_MED")  [${CLI_MS[*]} ms]"
# shellcheck disable=SC2059
printf "$fmt" "API backup job, median (s)" "$(secs "$API_MED")  [${API_MS[*]} ms]"
# shellcheck disable=SC2059
printf "$fmt" "API / CLI" "$RATIO"
# shellcheck disable=SC2059
printf "$fmt" "daemon CPU, running job, no client" "$(calc 1 "$ALONE * 100") % of a core"
# shellcheck disable=SC2059
printf "$fmt" "daemon CPU, same job, $CLIENTS SSE clients" "$(calc 1 "$WATCHED * 100") % of a core"
# shellcheck disable=SC2059
printf "$fmt" "progress events per second per client" "$RATE"
# shellcheck disable=SC2059
printf "$fmt" "idle daemon" "$IDLE_RSS KiB RSS, $IDLE_CPU % CPU"
r1="$(verdict "$RATIO <= 1.03")"
r2="$(verdict "$SSE_PCT < 5")"
r3="$(verdict "$IDLE_RSS <= 30720")"
echo "bar: API backup <= 1.03 x CLI: $r1"
echo "bar: $CLIENTS SSE clients cost < 5 % of one core (measured $SSE_PCT %): $r2"
echo "bar: idle RSS <= 30 MiB: $r3"
[ "$r1$r2$r3" = PASSPASSPASS ] || exit 2
