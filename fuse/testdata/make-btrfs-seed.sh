#!/usr/bin/env bash
# Makes fuzz/seeds/guest_btrfs/small: a small Btrfs filesystem in the compact form the fuzz
# target guest_btrfs reads (see fuzz/fuzz_targets/guest_btrfs.rs): every 4 KiB block of the
# image that is not all zeros, as a 4-byte little-endian block number and the block's bytes.
# The filesystem: 4 KiB nodes, metadata and data SINGLE (one copy: fewer blocks), a subvolume,
# an inline, a zstd, a zlib and an LZO file, a symlink, a hard link and a device node.
# Needs root (loop mount), btrfs-progs and python3.
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)/../../fuzz/seeds/guest_btrfs"
work=$(mktemp -d)
mnt="$work/mnt"
mkdir -p "$mnt" "$out"
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT
truncate -s 128M "$work/img"
mkfs.btrfs -q -f -n 4096 -s 4096 -m single -d single -O ^free-space-tree -R ^free-space-tree "$work/img" 2>/dev/null ||
  mkfs.btrfs -q -f -n 4096 -s 4096 -m single -d single "$work/img"
mount -o loop,compress=zstd "$work/img" "$mnt"
btrfs -q subvolume create "$mnt/sub"
printf 'inline\n' >"$mnt/sub/inline"
seq 1 2000 >"$mnt/sub/zstd"
mount -o remount,compress=zlib "$mnt"
seq 1 2000 >"$mnt/zlib"
mount -o remount,compress=lzo "$mnt"
seq 1 2000 >"$mnt/lzo"
ln -s sub/inline "$mnt/link"
ln "$mnt/sub/inline" "$mnt/sub/hard"
mknod "$mnt/sub/null" c 1 3
umount "$mnt"
python3 - "$work/img" "$out/small" <<'PY'
import struct, sys
img = open(sys.argv[1], 'rb').read()
with open(sys.argv[2], 'wb') as f:
    for b in range(len(img) // 4096):
        block = img[b * 4096:(b + 1) * 4096]
        if any(block):
            f.write(struct.pack('<I', b) + block)
PY
ls -l "$out/small"
