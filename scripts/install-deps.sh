#!/usr/bin/env bash
# Installs every system package the tests, the demo and the benchmarks need.
# Idempotent: packages already present are skipped by apt-get.
set -euo pipefail

PACKAGES=(
  gdisk        # sgdisk: partition tables for test and bench images
  e2fsprogs    # mkfs.ext4
  util-linux   # losetup, mount
  qemu-utils   # qemu-img: qcow2 images, restore --format qcow2
  restic       # the benchmark's point of comparison
  time         # /usr/bin/time -v for peak RSS in bench/
  jq           # reads vmstash --json output in scripts/demo.sh and bench/
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
