# shellcheck shell=bash
# shellcheck disable=SC2034  # the globals set here (T_MS, RESTIC_VERSION, ...) are read by the scripts
# Shared by the benchmarks in bench/: their messages, the setup each run does
# (root, repository passwords, the load average, system packages, the vmstash
# binary, the scratch directory, the page cache, cleanup on exit), running
# commands with their output logged and timed, and the report's arithmetic.
#
# Source it right after setting ROOT (the repository's root):
#   . "$ROOT/bench/lib/common.sh"
# Defining functions and two settings is all that sourcing it does. Where a
# function says so it uses the caller's BENCH_DIR, KEEP, W (the run's
# directory) and LOGS (where each command's NAME.out, .err and .time go).

# --- messages and checks --------------------------------------------------------
# die MESSAGE: the benchmark itself failed: say why and exit 1, as every script documents.
die() {
  echo "bench: error: $*" >&2
  exit 1
}
# note MESSAGE: a line of progress or a warning, on stderr.
note() { echo "bench: $*" >&2; }

# need_root WHY: refuse to run without root, saying WHY the benchmark needs it.
need_root() { [ "$(id -u)" -eq 0 ] || die "run as root ($1)"; }
# need_positive_int NAME: the knob named NAME must be a whole number above 0.
need_positive_int() { [[ "${!1}" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer"; }
# need_nonneg_int NAME: the knob named NAME (a seed) must be a whole number, 0 or more.
need_nonneg_int() { [[ "${!1}" =~ ^[0-9]+$ ]] || die "$1 must be a non-negative integer"; }

# --- setup ----------------------------------------------------------------------
# use_passwords TOOL...: fixed passwords for the run's fresh vmstash (and restic)
# repositories, and none of the user's password or repository settings, which
# would send the tools elsewhere or make them prompt.
use_passwords() {
  local tool
  for tool in "$@"; do
    case "$tool" in
      vmstash)
        export VMSTASH_PASSWORD="vmstash-bench-password"
        unset VMSTASH_PASSWORD_FILE VMSTASH_PASSWORD_COMMAND VMSTASH_REPOSITORY
        ;;
      restic)
        export RESTIC_PASSWORD="restic-bench-password"
        unset RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND RESTIC_REPOSITORY RESTIC_REPOSITORY_FILE
        ;;
      *) die "use_passwords: no password for $tool" ;;
    esac
  done
}

# sample_load: LOAD_START, the 1-minute load average for the report, with a
# warning when it is above a quarter of the CPUs, since other work skews timings.
sample_load() {
  LOAD_START="$(cut -d' ' -f1 /proc/loadavg)"
  if awk -v l="$LOAD_START" -v n="$(nproc)" 'BEGIN {exit !(l > n / 4)}'; then
    note "warning: load average $LOAD_START on $(nproc) CPUs: other work will disturb the timings"
  fi
}

# install_deps: the system packages (scripts/install-deps.sh), without the Rust
# tools it can also install, which no benchmark needs.
install_deps() { SKIP_RUST_TOOLS=1 bash "$ROOT/scripts/install-deps.sh"; }

# use_vmstash: VMSTASH, the binary measured: $VMSTASH_BIN when set, else this
# tree's release build, built now.
use_vmstash() {
  if [ -n "${VMSTASH_BIN:-}" ]; then
    VMSTASH="$VMSTASH_BIN"
  else
    note "building vmstash (cargo build --release -p vmstash)"
    (cd "$ROOT" && cargo build --release -p vmstash)
    VMSTASH="$ROOT/target/release/vmstash"
  fi
  [ -x "$VMSTASH" ] || die "no vmstash binary at $VMSTASH"
}

# use_restic: restic must be installed; RESTIC_VERSION names it in the report.
use_restic() {
  command -v restic >/dev/null || die "restic not installed"
  RESTIC_VERSION="$(restic version | awk '{print $2; exit}')"
}

# free_kib DIR: KiB available on DIR's filesystem.
free_kib() { df -Pk -- "$1" | awk 'NR == 2 {print $4}'; }

# check_bench_dir GIB [WHAT]: make BENCH_DIR, refuse it on tmpfs or ramfs (the
# tools' I/O would be RAM, not disk) or with less than about GIB GiB free (WHAT
# says what needs it). Sets fstype, which the scripts print with the run's directory.
check_bench_dir() {
  local gib="$1" what="${2:+ $2}" avail_kib
  mkdir -p -- "$BENCH_DIR"
  fstype="$(stat -f -c %T -- "$BENCH_DIR")"
  case "$fstype" in
    tmpfs | ramfs) die "BENCH_DIR=$BENCH_DIR is on $fstype: its I/O would be RAM, not disk; set BENCH_DIR to a directory on a disk" ;;
  esac
  avail_kib="$(free_kib "$BENCH_DIR")"
  [ "$avail_kib" -ge $((gib * 1024 * 1024)) ] ||
    die "BENCH_DIR=$BENCH_DIR has $((avail_kib / 1024)) MiB free; the benchmark needs about $gib GiB$what"
}

# make_run_dir PREFIX: W, this run's own directory in BENCH_DIR (PREFIX.XXXXXX),
# and LOGS in it, where the output of every command the run logs goes.
make_run_dir() {
  W="$(mktemp -d -p "$BENCH_DIR" "$1.XXXXXX")"
  LOGS="$W/logs"
  mkdir -p "$LOGS"
}

# trap_cleanup: run the caller's `cleanup` once when the script exits, also on
# Ctrl-C or SIGTERM (exit status 130 or 143), so nothing it set up is left
# behind; the script's exit status stays what it was.
trap_cleanup() {
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
# on_exit: trap_cleanup's EXIT trap: cleanup, then exit with the status it came with.
on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  cleanup
  exit "$rc"
}

# finish_run_dir [WHAT]: the end of a cleanup: KEEP=1 keeps W and says so (WHAT:
# anything to add), otherwise W is removed, and BENCH_DIR too if that empties it.
# shellcheck disable=SC2120  # WHAT is optional
finish_run_dir() {
  if [ "$KEEP" = 1 ]; then
    note "kept $W${1:+ $1}"
  else
    rm -rf -- "$W"
    rmdir -- "$BENCH_DIR" 2>/dev/null || true
  fi
}

# setup_drop_caches: CAN_DROP=1 when this machine lets drop_caches empty the
# page cache (some containers do not), and CACHE_NOTE, the report's line on it;
# a warning when it cannot, as the timings then include cache effects.
setup_drop_caches() {
  if (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
    CAN_DROP=1
    CACHE_NOTE="page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before each timed step"
  else
    CAN_DROP=0
    CACHE_NOTE="page cache NOT dropped (/proc/sys/vm/drop_caches not writable): steps may read from cache"
    note "warning: $CACHE_NOTE"
  fi
}
# drop_caches: write out dirty pages, then empty the page cache when CAN_DROP=1,
# so the next step reads from disk whatever ran before it.
drop_caches() {
  sync
  if [ "$CAN_DROP" = 1 ]; then
    echo 3 >/proc/sys/vm/drop_caches
  fi
}

# --- logged and timed commands ------------------------------------------------------
# show_failure NAME CMD...: a command failed; print it and the end of its output
# ($LOGS/NAME.out, then .err).
show_failure() {
  local name="$1"
  shift
  echo "bench: '$*' failed; its output (stdout, then stderr):" >&2
  tail -n 20 "$LOGS/$name.out" >&2
  tail -n 40 "$LOGS/$name.err" >&2
}
# show_brief_failure NAME CMD...: the same, shorter: the last 20 lines of each
# file under tail's headers.
show_brief_failure() {
  local name="$1"
  shift
  echo "bench: '$*' failed:" >&2
  tail -n 20 "$LOGS/$name.out" "$LOGS/$name.err" >&2
}
# How a failed command is shown before the run exits 1: a function taking
# NAME CMD..., for measure and timed, and for quiet. A script may name its own.
TIMED_FAILURE_REPORT=show_failure
QUIET_FAILURE_REPORT=show_brief_failure

# quiet NAME CMD...: run an untimed setup command, logging its output to
# $LOGS/NAME.out and .err. Sets Q_MS (its wall time, page cache as it was).
quiet() {
  local name="$1" t0
  shift
  t0="$(date +%s%N)"
  if ! "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err"; then
    "$QUIET_FAILURE_REPORT" "$name" "$@"
    exit 1
  fi
  Q_MS=$((($(date +%s%N) - t0) / 1000000))
}
# measure NAME CMD...: run CMD under /usr/bin/time -v, then sync, so data it
# left in the page cache is written out inside its time. Sets T_MS (wall time,
# ms), T_RSS_KIB (peak RSS), T0_NS and T1_NS (start and end); stdout and
# stderr go to $LOGS/NAME.out and .err.
measure() {
  local name="$1"
  shift
  T0_NS="$(date +%s%N)"
  if ! /usr/bin/time -v -o "$LOGS/$name.time" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err"; then
    "$TIMED_FAILURE_REPORT" "$name" "$@"
    exit 1
  fi
  sync
  T1_NS="$(date +%s%N)"
  T_MS=$(((T1_NS - T0_NS) / 1000000))
  T_RSS_KIB="$(rss_of "$name")"
}
# timed NAME CMD...: drop the page cache, then measure, so CMD reads from disk.
timed() {
  drop_caches
  measure "$@"
}
# rss_of NAME: peak RSS (KiB) from $LOGS/NAME.time.
rss_of() {
  local kib
  kib="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$LOGS/$1.time")"
  [ -n "$kib" ] || die "no peak RSS in $LOGS/$1.time"
  echo "$kib"
}
# summary_of NAME: the last stdout line of a vmstash --json run, checked to be
# the summary object.
summary_of() {
  local last
  last="$(tail -n 1 "$LOGS/$1.out")"
  jq -e '.message_type == "summary"' <<<"$last" >/dev/null 2>&1 ||
    die "vmstash --json ($1): last line of stdout is not a summary object: $last"
  printf '%s\n' "$last"
}

# --- the report -----------------------------------------------------------------------
# repo_bytes DIR: the apparent size of a repository (du -sb), directories included.
repo_bytes() { du -sb -- "$1" | cut -f1; }
# calc DECIMALS EXPR: the awk expression's value with that many decimals.
calc() { awk "BEGIN {printf \"%.${1}f\", $2}"; }
# secs MS: milliseconds as seconds, two decimals.
secs() { awk -v ms="$1" 'BEGIN {printf "%.2f", ms / 1000}'; }
# mib BYTES: bytes as MiB, one decimal.
mib() { calc 1 "$1 / 1048576"; }
# median NUMBER...: the middle value (the mean of the two middle ones for an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
# maxof NUMBER...: the largest.
maxof() { printf '%s\n' "$@" | sort -g | tail -n 1; }
# verdict EXPR: PASS if the awk expression is true, else FAIL.
verdict() {
  if awk "BEGIN {exit !($1)}"; then echo PASS; else echo FAIL; fi
}
