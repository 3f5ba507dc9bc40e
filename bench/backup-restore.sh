#!/usr/bin/env bash
# Backup/restore benchmark: vmstash against restic on the same raw VM disk
# image, alternating the two tools in one run. See bench/README.md.
#
# Usage: sudo bench/backup-restore.sh
#   ROUNDS=3                       rounds (each: both tools' full backup, restore, 2nd backup)
#   BENCH_DIR=/var/tmp/vmstash-bench  where the image, repositories and restores go
#   KEEP=1                         keep the run's directory (image, repos, logs)
#   IMAGE_SIZE=2G DATA_MIB=768     the disk image: size, and MiB of files in it
#   VMSTASH_BIN=PATH               a vmstash binary to use instead of building one
#
# Exit status: 0 every bar passed, 2 a bar failed, 1 the benchmark itself failed
# (a command failed, or a restore was not bit-identical to the image).
set -euo pipefail

ROOT="$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib/common.sh
. "$ROOT/bench/lib/common.sh"
BENCH_DIR="${BENCH_DIR:-/var/tmp/vmstash-bench}"
ROUNDS="${ROUNDS:-3}"
IMAGE_SIZE="${IMAGE_SIZE:-2G}"
DATA_MIB="${DATA_MIB:-768}"
KEEP="${KEEP:-0}"

# The bar, from the issue.
BAR_BACKUP_SPEEDUP=4.0     # restic full backup time / vmstash full backup time >=
BAR_RESTORE_SPEEDUP=2.5    # restic restore time / vmstash restore time >=
BAR_REPO_RATIO=1.0         # vmstash repo bytes / restic repo bytes <=
BAR_SECOND_ADDED_PCT=1.0   # 2nd identical backup's added bytes, % of the 1st repo size <
BAR_RSS_MIB=300            # vmstash backup peak RSS, MiB <=

use_passwords vmstash restic

need_positive_int ROUNDS
need_root "the image is built on a loop device; page cache is dropped"

# --- setup --------------------------------------------------------------------
# Sampled before this script's own build and image making add to it.
sample_load
install_deps
use_vmstash
use_restic
check_bench_dir 10

make_run_dir run
# cleanup: what trap_cleanup undoes when the script exits, however it exits.
cleanup() {
  finish_run_dir
}
trap_cleanup
export RESTIC_CACHE_DIR="$W/restic-cache"

# Dropping the page cache before each timed step makes every tool read the
# image (and, for restores, the repository) from disk, whatever ran before.
setup_drop_caches

IMG="$W/disk.img"
note "building the disk image: $IMAGE_SIZE, $DATA_MIB MiB of files (scripts/make-disk-image.sh)"
bash "$ROOT/scripts/make-disk-image.sh" "$IMG" "$IMAGE_SIZE" "$DATA_MIB"
IMG_BYTES="$(stat -c %s -- "$IMG")"
IMG_ALLOC="$(($(stat -c %b -- "$IMG") * 512))"

# timed, quiet, summary_of and the report's helpers are in bench/lib/common.sh.
# same_as_image FILE WHAT: the benchmark is void if a restore is not exact.
same_as_image() {
  [ -f "$1" ] || die "$2 did not write $1"
  cmp -- "$IMG" "$1" >/dev/null || die "$2: $1 differs from the backed-up image"
}

# Per-round results, indexed by round.
declare -a V_BK_MS R_BK_MS V_RS_MS R_RS_MS V_REPO R_REPO V_ADD R_ADD
declare -a V_RSS R_RSS V_RSS2 R_RSS2 V_BK2_MS R_BK2_MS V_ADD_JSON

vmstash_full() {
  local r="$1" repo="$W/r$1/vmstash-repo"
  quiet "r$r-vmstash-init" "$VMSTASH" -r "$repo" init
  timed "r$r-vmstash-backup1" "$VMSTASH" -r "$repo" --json backup --disk "$IMG"
  V_BK_MS[r]="$T_MS"
  V_RSS[r]="$T_RSS_KIB"
  local s
  s="$(summary_of "r$r-vmstash-backup1")"
  [ "$(jq -r .disk_bytes <<<"$s")" = "$IMG_BYTES" ] ||
    die "vmstash backup summary: disk_bytes $(jq -r .disk_bytes <<<"$s") != image size $IMG_BYTES"
  V_REPO[r]="$(repo_bytes "$repo")"
}
restic_full() {
  local r="$1" repo="$W/r$1/restic-repo"
  quiet "r$r-restic-init" restic -r "$repo" init
  timed "r$r-restic-backup1" restic -r "$repo" backup "$IMG"
  R_BK_MS[r]="$T_MS"
  R_RSS[r]="$T_RSS_KIB"
  R_REPO[r]="$(repo_bytes "$repo")"
}
vmstash_restore() {
  local r="$1" repo="$W/r$1/vmstash-repo" dir="$W/r$1/vmstash-restore"
  timed "r$r-vmstash-restore" "$VMSTASH" -r "$repo" restore latest --target "$dir"
  V_RS_MS[r]="$T_MS"
  same_as_image "$dir/disk.raw" "vmstash restore"
  rm -rf -- "$dir"
}
restic_restore() {
  local r="$1" repo="$W/r$1/restic-repo" dir="$W/r$1/restic-restore"
  timed "r$r-restic-restore" restic -r "$repo" restore latest --target "$dir"
  R_RS_MS[r]="$T_MS"
  same_as_image "$dir$IMG" "restic restore"
  rm -rf -- "$dir"
}
vmstash_second() {
  local r="$1" repo="$W/r$1/vmstash-repo"
  timed "r$r-vmstash-backup2" "$VMSTASH" -r "$repo" --json backup --disk "$IMG"
  V_BK2_MS[r]="$T_MS"
  V_RSS2[r]="$T_RSS_KIB"
  V_ADD[r]=$(($(repo_bytes "$repo") - V_REPO[r]))
  V_ADD_JSON[r]="$(summary_of "r$r-vmstash-backup2" | jq -r .bytes_added)"
}
restic_second() {
  local r="$1" repo="$W/r$1/restic-repo"
  timed "r$r-restic-backup2" restic -r "$repo" backup "$IMG"
  R_BK2_MS[r]="$T_MS"
  R_RSS2[r]="$T_RSS_KIB"
  R_ADD[r]=$(($(repo_bytes "$repo") - R_REPO[r]))
}

note "$CACHE_NOTE"
note "work directory $W ($fstype); $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
  mkdir -p "$W/r$r"
  # Odd rounds run vmstash first in each phase, even rounds restic first.
  if [ $((r % 2)) -eq 1 ]; then order=(vmstash restic); else order=(restic vmstash); fi
  for phase in full restore second; do
    for tool in "${order[@]}"; do
      note "round $r/$ROUNDS: $tool $phase"
      "${tool}_${phase}" "$r"
    done
  done
  rm -rf -- "$W/r$r"
done

# --- report -------------------------------------------------------------------
v_bk="$(median "${V_BK_MS[@]}")"; r_bk="$(median "${R_BK_MS[@]}")"
v_rs="$(median "${V_RS_MS[@]}")"; r_rs="$(median "${R_RS_MS[@]}")"
v_bk2="$(median "${V_BK2_MS[@]}")"; r_bk2="$(median "${R_BK2_MS[@]}")"
v_repo="$(median "${V_REPO[@]}")"; r_repo="$(median "${R_REPO[@]}")"
v_add="$(median "${V_ADD[@]}")"; r_add="$(median "${R_ADD[@]}")"
# Peak RSS: the largest over every backup of the run, full and second.
v_rss="$(maxof "${V_RSS[@]}" "${V_RSS2[@]}")"; r_rss="$(maxof "${R_RSS[@]}" "${R_RSS2[@]}")"
v_rss_mib="$(calc 0 "$v_rss / 1024")"; r_rss_mib="$(calc 0 "$r_rss / 1024")"

bk_speedup="$(calc 2 "$r_bk / $v_bk")"
rs_speedup="$(calc 2 "$r_rs / $v_rs")"
repo_ratio="$(calc 3 "$v_repo / $r_repo")"
# Added bytes of the 2nd backup as % of that round's 1st repo size, median.
v_add_pcts=(); r_add_pcts=()
for ((r = 1; r <= ROUNDS; r++)); do
  v_add_pcts+=("$(calc 4 "100 * ${V_ADD[r]} / ${V_REPO[r]}")")
  r_add_pcts+=("$(calc 4 "100 * ${R_ADD[r]} / ${R_REPO[r]}")")
done
v_add_pct="$(calc 3 "$(median "${v_add_pcts[@]}")")"; r_add_pct="$(calc 3 "$(median "${r_add_pcts[@]}")")"

res_bk="$(verdict "$bk_speedup >= $BAR_BACKUP_SPEEDUP")"
res_rs="$(verdict "$rs_speedup >= $BAR_RESTORE_SPEEDUP")"
res_repo="$(verdict "$v_repo <= $r_repo * $BAR_REPO_RATIO")"
res_add="$(verdict "$v_add_pct < $BAR_SECOND_ADDED_PCT")"
res_rss="$(verdict "$v_rss_mib <= $BAR_RSS_MIB")"

echo
echo "Per round (seconds; bytes):"
printf '%-5s %-8s %9s %9s %9s %14s %12s %10s %10s\n' \
  round tool backup restore backup2 repo_after_1st added_by_2nd rss1_MiB rss2_MiB
for ((r = 1; r <= ROUNDS; r++)); do
  printf '%-5s %-8s %9s %9s %9s %14s %12s %10s %10s\n' "$r" vmstash \
    "$(secs "${V_BK_MS[r]}")" "$(secs "${V_RS_MS[r]}")" "$(secs "${V_BK2_MS[r]}")" \
    "${V_REPO[r]}" "${V_ADD[r]}" "$(calc 0 "${V_RSS[r]} / 1024")" "$(calc 0 "${V_RSS2[r]} / 1024")"
  printf '%-5s %-8s %9s %9s %9s %14s %12s %10s %10s\n' "$r" restic \
    "$(secs "${R_BK_MS[r]}")" "$(secs "${R_RS_MS[r]}")" "$(secs "${R_BK2_MS[r]}")" \
    "${R_REPO[r]}" "${R_ADD[r]}" "$(calc 0 "${R_RSS[r]} / 1024")" "$(calc 0 "${R_RSS2[r]} / 1024")"
done
echo "(vmstash's own bytes_added for the 2nd backups: ${V_ADD_JSON[*]})"

echo
echo "vmstash vs restic $RESTIC_VERSION: $(mib "$IMG_BYTES") MiB raw image ($(mib "$IMG_ALLOC") MiB allocated;"
echo "GPT + ext4, $DATA_MIB MiB of files, half text, half random), $ROUNDS rounds, medians."
echo "Times are wall clock including a final sync; $CACHE_NOTE."
echo "1-minute load average when the benchmark started: $LOAD_START ($(nproc) CPUs)."
echo "Restores verified bit-identical to the image with cmp (both tools)."
echo
fmt='%-34s %12s %12s %-26s %-10s %s\n'
# shellcheck disable=SC2059  # $fmt is this script's own format string
{
  printf "$fmt" metric vmstash restic ratio bar result
  printf "$fmt" "full backup time (s)" "$(secs "$v_bk")" "$(secs "$r_bk")" \
    "${bk_speedup}x speedup" ">= ${BAR_BACKUP_SPEEDUP}x" "$res_bk"
  printf "$fmt" "restore time (s)" "$(secs "$v_rs")" "$(secs "$r_rs")" \
    "${rs_speedup}x speedup" ">= ${BAR_RESTORE_SPEEDUP}x" "$res_rs"
  printf "$fmt" "repo size after 1st backup (MiB)" "$(mib "$v_repo")" "$(mib "$r_repo")" \
    "${repo_ratio} (vmstash/restic)" "<= ${BAR_REPO_RATIO}" "$res_repo"
  printf "$fmt" "2nd identical backup adds (%)" "$v_add_pct" "$r_add_pct" \
    "$(mib "$v_add") vs $(mib "$r_add") MiB added" "< ${BAR_SECOND_ADDED_PCT} %" "$res_add"
  printf "$fmt" "peak RSS of backups (MiB, max)" "$v_rss_mib" "$r_rss_mib" \
    "" "<= ${BAR_RSS_MIB} MiB" "$res_rss"
  printf "$fmt" "2nd identical backup time (s)" "$(secs "$v_bk2")" "$(secs "$r_bk2")" \
    "(info)" "" ""
}

for res in "$res_bk" "$res_rs" "$res_repo" "$res_add" "$res_rss"; do
  [ "$res" = PASS ] || exit 2
done
