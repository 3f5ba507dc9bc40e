#!/usr/bin/env bash
# Forget + prune benchmark: vmstash against restic on the same history of a
# raw VM disk image (VERSIONS backups, each a few % changed), in one run; and
# how much a vmstash backup slows down while a prune runs. See bench/README.md.
#
# Usage: sudo bench/forget-prune.sh
#   VERSIONS=10                    versions of the image backed up by both tools (> 3)
#   IMAGE_SIZE=2G DATA_MIB=768     the disk image: size, and MiB of files in it
#   CHANGE_PCT=5                   % of the image's data (1 MiB blocks) rewritten per version
#   SEED=1                         seed of the image's text and of the rewrites
#   BENCH_DIR=/var/tmp/vmstash-bench-prune  where the image, repositories and restores go
#   KEEP=1                         keep the run's directory (image, every repository, logs)
#   VMSTASH_BIN=PATH               a vmstash binary to use instead of building one
#
# Exit status: 0 every bar passed, 2 a bar failed, 1 the benchmark itself failed
# (a command failed, a pruned repository failed its check or did not shrink,
# or a restore was not bit-identical to the image).
set -euo pipefail

ROOT="$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib/common.sh
. "$ROOT/bench/lib/common.sh"
BENCH_DIR="${BENCH_DIR:-/var/tmp/vmstash-bench-prune}"
VERSIONS="${VERSIONS:-10}"
IMAGE_SIZE="${IMAGE_SIZE:-2G}"
DATA_MIB="${DATA_MIB:-768}"
CHANGE_PCT="${CHANGE_PCT:-5}"
SEED="${SEED:-1}"
KEEP="${KEEP:-0}"
KEEP_LAST=3                # forget --keep-last, both tools

# The bar, from the issue.
BAR_PRUNE_SPEEDUP=3.0      # restic forget --prune time / vmstash forget --prune --instant-delete time >=
BAR_RSS_MIB=300            # vmstash forget --prune / prune peak RSS, MiB <=
BAR_BACKUP_SLOWDOWN=1.5    # vmstash backup time during a prune / the same backup alone <=

use_passwords vmstash restic

if ! [[ "$VERSIONS" =~ ^[0-9]+$ ]] || [ "$VERSIONS" -le "$KEEP_LAST" ]; then
  die "VERSIONS must be an integer above $KEEP_LAST (forget --keep-last $KEEP_LAST must forget something)"
fi
if ! [[ "$CHANGE_PCT" =~ ^[0-9]+$ ]] || [ "$CHANGE_PCT" -lt 1 ] || [ "$CHANGE_PCT" -gt 50 ]; then
  die "CHANGE_PCT must be an integer from 1 to 50"
fi
need_nonneg_int SEED
need_root "the image is built on a loop device; page cache is dropped"

# --- setup --------------------------------------------------------------------
# Sampled before this script's own build and image making add to it.
sample_load
install_deps
use_vmstash
use_restic
command -v python3 >/dev/null || die "python3 not installed (rewrites the image between versions)"
command -v setsid >/dev/null || die "setsid not installed (util-linux)"
check_bench_dir 10

make_run_dir run
# The process group of the prune started in the background (step 4), while it runs.
BG_PID=""
# cleanup: what trap_cleanup undoes when the script exits, however it exits.
cleanup() {
  set +e
  if [ -n "$BG_PID" ]; then
    kill -TERM -- "-$BG_PID" 2>/dev/null
    wait "$BG_PID" 2>/dev/null
  fi
  finish_run_dir
}
trap_cleanup
export RESTIC_CACHE_DIR="$W/restic-cache"

# Dropping the page cache before each timed step makes every tool read its
# repository (and the image) from disk, whatever ran before.
setup_drop_caches

# measure, timed (measure after dropping the page cache), rss_of, show_failure,
# quiet and the report's helpers are in bench/lib/common.sh. A failed setup
# command shows as much of its output as a failed timed one.
QUIET_FAILURE_REPORT=show_failure
# elapsed_ms_of NAME: wall time (ms) from $LOGS/NAME.time ("h:mm:ss" or "m:ss.cc").
elapsed_ms_of() {
  awk -F': ' '/Elapsed \(wall clock\) time/ {
      n = split($2, p, ":"); s = 0
      for (i = 1; i <= n; i++) s = s * 60 + p[i]
      printf "%d\n", s * 1000
    }' "$LOGS/$1.time"
}
# start_bg NAME CMD...: start CMD under /usr/bin/time -v in the background, in
# a process group of its own (so that cleanup can stop it with its child).
start_bg() {
  local name="$1"
  shift
  setsid /usr/bin/time -v -o "$LOGS/$name.time" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err" &
  BG_PID=$!
}
# wait_bg NAME CMD...: wait for the background command; it must succeed.
wait_bg() {
  local rc=0
  wait "$BG_PID" || rc=$?
  BG_PID=""
  if [ "$rc" -ne 0 ]; then
    show_failure "$@"
    exit 1
  fi
}
# pack_bytes REPO: the bytes of its pack files (data/, in both tools' layout).
pack_bytes() { du -sb -- "$1/data" | cut -f1; }
# done_with DIR: remove a repository or restore the run no longer needs (KEEP=1 keeps it).
done_with() {
  [ "$KEEP" = 1 ] || rm -rf -- "$1"
}

# --- the image and its versions -------------------------------------------------
IMG="$W/disk.img"
VREPO="$W/vmstash-repo"          # pruned with --instant-delete
VPRE="$W/vmstash-before-forget"  # every other vmstash scenario starts from a copy of this
RREPO="$W/restic-repo"

# rewrite VERSION: turn the image into version VERSION: CHANGE_PCT % of its
# data (the 1 MiB blocks holding any data, found with SEEK_DATA/SEEK_HOLE;
# the first MiB, with the partition table, left alone) rewritten with
# pseudo-random bytes, blocks and bytes drawn from SEED and VERSION.
REWRITE_PY="$W/rewrite.py"
cat >"$REWRITE_PY" <<'EOF'
import os, random, sys

path, version, seed, pct = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
MIB = 1 << 20
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
blocks, off = set(), 0
while off < size:
    try:
        start = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:  # ENXIO: only a hole after off
        break
    end = os.lseek(fd, start, os.SEEK_HOLE)
    blocks.update(range(start // MIB, (end - 1) // MIB + 1))
    off = end
blocks.discard(0)
blocks = sorted(blocks)
rng = random.Random(seed * 1_000_003 + version)
chosen = sorted(rng.sample(blocks, max(1, round(len(blocks) * pct / 100))))
for b in chosen:
    n = min(MIB, size - b * MIB)
    os.pwrite(fd, rng.getrandbits(8 * n).to_bytes(n, "little"), b * MIB)
os.fsync(fd)
os.close(fd)
print(len(chosen), len(blocks))
EOF
declare -a CHANGED_MIB
rewrite() {
  local out
  out="$(python3 "$REWRITE_PY" "$IMG" "$1" "$SEED" "$CHANGE_PCT")" || die "rewriting the image for version $1 failed"
  CHANGED_MIB[$1]="${out%% *}"
  DATA_BLOCKS="${out##* }"
}

note "$CACHE_NOTE"
note "work directory $W ($fstype)"
note "building the disk image: $IMAGE_SIZE, $DATA_MIB MiB of files (scripts/make-disk-image.sh)"
bash "$ROOT/scripts/make-disk-image.sh" -s "$SEED" "$IMG" "$IMAGE_SIZE" "$DATA_MIB"
IMG_BYTES="$(stat -c %s -- "$IMG")"

# --- setup: VERSIONS backups with each tool (untimed) ----------------------------
BACKUP=(backup --name img --disk "$IMG")
vmstash_snapshots() { "$VMSTASH" -r "$1" --json snapshots | jq length; }
restic_snapshots() { restic -r "$1" snapshots --json | jq length; }

quiet vmstash-init "$VMSTASH" -r "$VREPO" init
quiet restic-init restic -r "$RREPO" init
declare -a V_BK_MS R_BK_MS
for ((v = 1; v <= VERSIONS; v++)); do
  [ "$v" -eq 1 ] || rewrite "$v"
  note "version $v/$VERSIONS: backups (vmstash, restic)"
  quiet "v$v-vmstash-backup" "$VMSTASH" -r "$VREPO" "${BACKUP[@]}"
  V_BK_MS[v]="$Q_MS"
  quiet "v$v-restic-backup" restic -r "$RREPO" backup "$IMG"
  R_BK_MS[v]="$Q_MS"
done
[ "$(vmstash_snapshots "$VREPO")" = "$VERSIONS" ] || die "vmstash repository does not have $VERSIONS snapshots"
[ "$(restic_snapshots "$RREPO")" = "$VERSIONS" ] || die "restic repository does not have $VERSIONS snapshots"
note "copying the vmstash repository (cp -a) for the other scenarios"
cp -a -- "$VREPO" "$VPRE"
# fresh_copy DIR: a copy of the vmstash repository as it was before any forget.
fresh_copy() { cp -a -- "$VPRE" "$1"; }

# --- timed: forget --keep-last 3 --prune ------------------------------------------
FORGET=(forget --keep-last "$KEEP_LAST" --prune)

note "restic ${FORGET[*]}"
R_BEFORE="$(repo_bytes "$RREPO")"
R_PACKS_BEFORE="$(pack_bytes "$RREPO")"
timed restic-forget-prune restic -r "$RREPO" "${FORGET[@]}"
R_MS="$T_MS"
R_RSS="$T_RSS_KIB"
R_AFTER="$(repo_bytes "$RREPO")"
R_PACKS_AFTER="$(pack_bytes "$RREPO")"

note "vmstash ${FORGET[*]} --instant-delete"
I_BEFORE="$(repo_bytes "$VREPO")"
I_PACKS_BEFORE="$(pack_bytes "$VREPO")"
timed vmstash-instant "$VMSTASH" -r "$VREPO" "${FORGET[@]}" --instant-delete
I_MS="$T_MS"
I_RSS="$T_RSS_KIB"
I_AFTER="$(repo_bytes "$VREPO")"
I_PACKS_AFTER="$(pack_bytes "$VREPO")"

note "vmstash ${FORGET[*]} --keep-delete 0, then prune --keep-delete 0"
TWO="$W/vmstash-two-runs"
fresh_copy "$TWO"
TWO_BEFORE="$(repo_bytes "$TWO")"
TWO_PACKS_BEFORE="$(pack_bytes "$TWO")"
timed vmstash-two-runs-1 "$VMSTASH" -r "$TWO" "${FORGET[@]}" --keep-delete 0
TWO1_MS="$T_MS"
TWO1_RSS="$T_RSS_KIB"
TWO_MID="$(repo_bytes "$TWO")"
timed vmstash-two-runs-2 "$VMSTASH" -r "$TWO" prune --keep-delete 0
TWO2_MS="$T_MS"
TWO2_RSS="$T_RSS_KIB"
TWO_AFTER="$(repo_bytes "$TWO")"
TWO_PACKS_AFTER="$(pack_bytes "$TWO")"

# --- correctness of the pruned repositories -----------------------------------------
# verify_vmstash REPO WHAT SNAPSHOTS: REPO passes `check --read-data`, holds
# SNAPSHOTS snapshots (a regex), and its latest restores to the image as it is now.
verify_vmstash() {
  local repo="$1" what="$2" want="$3" n dir="$W/restore"
  note "checking $what: check --read-data, restore latest, cmp"
  quiet "verify-$what-check" "$VMSTASH" -r "$repo" check --read-data
  n="$(vmstash_snapshots "$repo")"
  [[ "$n" =~ ^($want)$ ]] || die "$what: $n snapshots after the forget, expected $want"
  quiet "verify-$what-restore" "$VMSTASH" -r "$repo" restore latest --target "$dir"
  [ -f "$dir/disk.raw" ] || die "$what: restore latest did not write $dir/disk.raw"
  cmp -- "$IMG" "$dir/disk.raw" >/dev/null || die "$what: the restored latest snapshot differs from the image"
  rm -rf -- "$dir"
}
# shrunk WHAT BEFORE AFTER: a prune that deleted no pack bytes did not do the work timed.
shrunk() {
  [ "$3" -lt "$2" ] || die "$1: the pack files did not shrink ($2 bytes before, $3 after)"
}
note "checking restic: check, $KEEP_LAST snapshots"
quiet verify-restic-check restic -r "$RREPO" check
[ "$(restic_snapshots "$RREPO")" = "$KEEP_LAST" ] || die "restic: not $KEEP_LAST snapshots after the forget"
shrunk "restic forget --prune" "$R_PACKS_BEFORE" "$R_PACKS_AFTER"
verify_vmstash "$VREPO" vmstash-instant "$KEEP_LAST"
shrunk "vmstash --instant-delete" "$I_PACKS_BEFORE" "$I_PACKS_AFTER"
verify_vmstash "$TWO" vmstash-two-runs "$KEEP_LAST"
shrunk "vmstash two runs" "$TWO_PACKS_BEFORE" "$TWO_PACKS_AFTER"
done_with "$RREPO"
done_with "$VREPO"
done_with "$TWO"

# --- backup during prune --------------------------------------------------------------
# The same backup of version VERSIONS+1, from identical copies of the
# repository before the forget: once alone, once while
# `forget --keep-last 3 --prune --keep-delete 0` runs on that copy.
NEXT=$((VERSIONS + 1))
rewrite "$NEXT"

note "vmstash backup of version $NEXT alone"
SOLO="$W/vmstash-backup-alone"
fresh_copy "$SOLO"
timed vmstash-backup-alone "$VMSTASH" -r "$SOLO" "${BACKUP[@]}"
SOLO_MS="$T_MS"
done_with "$SOLO"

note "vmstash backup of version $NEXT while ${FORGET[*]} --keep-delete 0 runs"
CONC="$W/vmstash-backup-during-prune"
fresh_copy "$CONC"
C_BEFORE="$(repo_bytes "$CONC")"
drop_caches
P0_NS="$(date +%s%N)"
start_bg vmstash-prune-under-backup "$VMSTASH" -r "$CONC" "${FORGET[@]}" --keep-delete 0
measure vmstash-backup-during-prune "$VMSTASH" -r "$CONC" "${BACKUP[@]}"
CONC_MS="$T_MS"
if kill -0 "$BG_PID" 2>/dev/null; then PRUNE_OUTLASTED=yes; else PRUNE_OUTLASTED=no; fi
wait_bg vmstash-prune-under-backup "$VMSTASH" -r "$CONC" "${FORGET[@]}" --keep-delete 0
P_MS="$(elapsed_ms_of vmstash-prune-under-backup)"
P_RSS="$(rss_of vmstash-prune-under-backup)"
# Overlap: from the backup's start (the later) to the earlier end.
P1_NS=$((P0_NS + P_MS * 1000000))
OVERLAP_MS=$((((P1_NS < T1_NS ? P1_NS : T1_NS) - T0_NS) / 1000000))
[ "$OVERLAP_MS" -ge 0 ] || OVERLAP_MS=0
C_MID="$(repo_bytes "$CONC")"
# The packs that prune marked while the backup held its lock are deleted by
# the next run, now that the backup has ended: the backup's snapshot must
# survive that intact.
quiet vmstash-prune-after-backup "$VMSTASH" -r "$CONC" prune --keep-delete 0
C_AFTER="$(repo_bytes "$CONC")"
# The forget may or may not have seen the new snapshot: 3 or 4 remain.
verify_vmstash "$CONC" vmstash-backup-during-prune "$KEEP_LAST|$((KEEP_LAST + 1))"
done_with "$CONC"
done_with "$VPRE"

# --- report --------------------------------------------------------------------------
kib_mib() { calc 0 "$1 / 1024"; }

TWO_MS=$((TWO1_MS + TWO2_MS))
prune_speedup="$(calc 2 "$R_MS / $I_MS")"
two_speedup="$(calc 2 "$R_MS / $TWO_MS")"
v_rss_mib="$(kib_mib "$(maxof "$I_RSS" "$TWO1_RSS" "$TWO2_RSS" "$P_RSS")")"
slowdown="$(calc 2 "$CONC_MS / $SOLO_MS")"
res_prune="$(verdict "$prune_speedup >= $BAR_PRUNE_SPEEDUP")"
res_rss="$(verdict "$v_rss_mib <= $BAR_RSS_MIB")"
res_slow="$(verdict "$slowdown <= $BAR_BACKUP_SLOWDOWN")"

echo
echo "Setup backups (untimed steps: seconds, with the page cache as it was; MiB of the image rewritten before each):"
printf '%-8s %10s %10s %14s\n' version vmstash restic rewritten_MiB
for ((v = 1; v <= VERSIONS; v++)); do
  printf '%-8s %10s %10s %14s\n' "$v" "$(secs "${V_BK_MS[v]}")" "$(secs "${R_BK_MS[v]}")" "${CHANGED_MIB[v]:--}"
done

echo
echo "Repository sizes (MiB, du -sb):"
sfmt='%-58s %10s %10s %10s\n'
# shellcheck disable=SC2059  # $sfmt is this script's own format string
{
  printf "$sfmt" "" before after reclaimed
  printf "$sfmt" "restic forget --prune" "$(mib "$R_BEFORE")" "$(mib "$R_AFTER")" "$(mib $((R_BEFORE - R_AFTER)))"
  printf "$sfmt" "vmstash forget --prune --instant-delete" "$(mib "$I_BEFORE")" "$(mib "$I_AFTER")" "$(mib $((I_BEFORE - I_AFTER)))"
  printf "$sfmt" "vmstash forget --prune --keep-delete 0 (1st run: marks)" "$(mib "$TWO_BEFORE")" "$(mib "$TWO_MID")" "$(mib $((TWO_BEFORE - TWO_MID)))"
  printf "$sfmt" "vmstash prune --keep-delete 0 (2nd run: deletes)" "$(mib "$TWO_MID")" "$(mib "$TWO_AFTER")" "$(mib $((TWO_MID - TWO_AFTER)))"
  printf "$sfmt" "vmstash forget --prune during a backup (+ its backup)" "$(mib "$C_BEFORE")" "$(mib "$C_MID")" "$(mib $((C_BEFORE - C_MID)))"
  printf "$sfmt" "vmstash prune --keep-delete 0 after that backup" "$(mib "$C_MID")" "$(mib "$C_AFTER")" "$(mib $((C_MID - C_AFTER)))"
}

echo
echo "vmstash vs restic $RESTIC_VERSION: forget --keep-last $KEEP_LAST --prune after $VERSIONS versions of a"
echo "$(mib "$IMG_BYTES") MiB raw image (GPT + ext4, $DATA_MIB MiB of files; $CHANGE_PCT % of its $DATA_BLOCKS MiB of data rewritten per version)."
echo "One run. Times are wall clock including a final sync; $CACHE_NOTE."
echo "1-minute load average when the benchmark started: $LOAD_START ($(nproc) CPUs)."
echo "Pruned vmstash repositories passed check --read-data and restored the latest version bit-identically; restic passed check."
echo "vmstash two runs: $(secs "$TWO1_MS") s (forget --prune --keep-delete 0) + $(secs "$TWO2_MS") s (prune --keep-delete 0)."
echo "Backup during prune: the prune ran $(secs "$P_MS") s, the backup $(secs "$CONC_MS") s, together for $(secs "$OVERLAP_MS") s;"
echo "the prune was still running when the backup ended: $PRUNE_OUTLASTED."
echo
fmt='%-40s %12s %12s %-24s %-10s %s\n'
# shellcheck disable=SC2059  # $fmt is this script's own format string
{
  printf "$fmt" metric vmstash restic ratio bar result
  printf "$fmt" "forget --prune, instant delete (s)" "$(secs "$I_MS")" "$(secs "$R_MS")" \
    "${prune_speedup}x speedup" ">= ${BAR_PRUNE_SPEEDUP}x" "$res_prune"
  printf "$fmt" "forget --prune, two lock-free runs (s)" "$(secs "$TWO_MS")" "$(secs "$R_MS")" \
    "${two_speedup}x speedup" "(info)" ""
  printf "$fmt" "peak RSS of prunes (MiB, max)" "$v_rss_mib" "$(kib_mib "$R_RSS")" \
    "" "<= ${BAR_RSS_MIB} MiB" "$res_rss"
  printf "$fmt" "backup alone / during prune (s)" "$(secs "$SOLO_MS") / $(secs "$CONC_MS")" "-" \
    "${slowdown} (during/alone)" "<= ${BAR_BACKUP_SLOWDOWN}" "$res_slow"
}
echo "(vmstash peak RSS, MiB: instant $(kib_mib "$I_RSS"), two runs $(kib_mib "$TWO1_RSS") + $(kib_mib "$TWO2_RSS"), during the backup $(kib_mib "$P_RSS"))"

for res in "$res_prune" "$res_rss" "$res_slow"; do
  [ "$res" = PASS ] || exit 2
done
