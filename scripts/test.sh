#!/usr/bin/env bash
# Runs every check the project has: formatting, lints, unit and end-to-end
# tests (against the release build), and a short smoke run of each fuzz
# target. The README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --release --workspace --all-targets --locked -- -D warnings

echo "== build (release)"
cargo build --release --locked -p vmstash

echo "== tests (release profile, one target directory with the build above)"
cargo test --release --workspace --locked

echo "== fuzz smoke run"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" bash scripts/fuzz-smoke.sh
