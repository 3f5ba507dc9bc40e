#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ briefly: FUZZ_SECONDS each (default 10),
# starting from fuzz/seeds/<target> and the corpus fuzz/corpus/<target> that
# earlier runs left. The random seed is fixed (FUZZ_SEED, default 1) so that
# a clean clone explores the same inputs on every run and a verdict can be
# repeated; FUZZ_SEED=0 lets libFuzzer pick one. Finding new bugs is the job
# of long runs by hand (fuzz/README.md). Fails on the first crash, failed assertion, leak,
# timeout or allocation past 1 GiB; libFuzzer then saves the input under
# fuzz/artifacts/<target>/ and the log's tail says how to replay it.
#
# Needs the nightly toolchain and cargo-fuzz, which scripts/install-deps.sh
# installs (.ci/run runs it first).
# Long runs by hand: see fuzz/README.md.
set -euo pipefail

seconds=${FUZZ_SECONDS:-10}
seed=${FUZZ_SEED:-1}
# Release build with overflow checks and debug assertions on: an overflow
# in a decoder is a crash, as in the tests.
build_flags=(--debug-assertions)

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

if ! rustup toolchain list | grep -q '^nightly' || ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: the nightly toolchain or cargo-fuzz is missing: run scripts/install-deps.sh" >&2
  exit 1
fi

start=$(date +%s)
cargo +nightly fuzz build "${build_flags[@]}"
echo "fuzz-smoke: built every target in $(($(date +%s) - start)) s"

logs="$root/fuzz/target/fuzz-smoke"
mkdir -p "$logs"
mapfile -t targets < <(cargo +nightly fuzz list)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  dirs=("corpus/$t")
  [ -d "seeds/$t" ] && dirs+=("seeds/$t")
  # libFuzzer cuts inputs at 1 MiB unless told otherwise; a larger seed (the
  # 2 MiB NTFS image of guest_ntfs) would be cut and refused.
  largest=$(find "${dirs[@]}" -type f -printf '%s\n' | sort -n | tail -n 1)
  len_flags=()
  [ "${largest:-0}" -gt 1048576 ] && len_flags=(-max_len="$largest")
  if ! cargo +nightly fuzz run "${build_flags[@]}" "$t" "${dirs[@]}" -- \
      -max_total_time="$seconds" -seed="$seed" -rss_limit_mb=1024 "${len_flags[@]}" >"$logs/$t.log" 2>&1; then
    grep -A 4 "panicked at" "$logs/$t.log" >&2 || true
    tail -n 25 "$logs/$t.log" >&2
    echo "fuzz-smoke: target $t FAILED (log: $logs/$t.log)" >&2
    exit 1
  fi
  echo "fuzz-smoke: $t ok: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$logs/$t.log" | tail -n 1)"
done
echo "fuzz-smoke: ${#targets[@]} targets passed, ${seconds} s each (seed $seed), $(($(date +%s) - start)) s after install"
