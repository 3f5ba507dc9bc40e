#!/usr/bin/env bash
# Builds the hashblocks helper as a static x86-64 Linux binary and installs it
# beside the vmstash binary (target/release/vmstash-hashblocks), where vmstash
# looks for it before uploading it to a hypervisor.
#
# Static through glibc's crt-static. The flag goes to the target only
# (--target), so build scripts and proc-macros of the host build are not
# affected, and the helper's objects live in target/x86_64-unknown-linux-gnu/,
# apart from the release and test builds that share target/release.
set -euo pipefail
ROOT="$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET=x86_64-unknown-linux-gnu
cd "$ROOT"
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
  cargo build --release --locked -p vmstash-hashblocks --features helper-bin \
  --bin vmstash-hashblocks --target "$TARGET"
# The target directory cargo used: CARGO_TARGET_DIR when set (relative to the root), else target.
OUT="${CARGO_TARGET_DIR:-target}"
built="$OUT/$TARGET/release/vmstash-hashblocks"
if ldd "$built" 2>&1 | grep -q "=>"; then
  echo "build-helper: $built is dynamically linked; refusing to install it" >&2
  exit 1
fi
mkdir -p "$OUT/release"
install -m 0755 "$built" "$OUT/release/vmstash-hashblocks.tmp"
mv -f "$OUT/release/vmstash-hashblocks.tmp" "$OUT/release/vmstash-hashblocks"
echo "build-helper: installed $OUT/release/vmstash-hashblocks ($(stat -c %s "$OUT/release/vmstash-hashblocks") bytes, static)"
