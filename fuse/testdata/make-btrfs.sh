#!/usr/bin/env bash
# Makes fuse/testdata/btrfs.img.zst, the Btrfs image that guestfs/btrfs's tests read, and
# btrfs.expected.zst (zstd: 10,000 lines), what the kernel shows of it mounted with `-o subvolid=5` (the view the
# reader gives): one line per file, `path|type|mode|uid|gid|size|links|inode|mtime|target|
# major:minor|sha256` (stat, readlink, sha256sum; no sum for empty files), sorted by path; and the fuzz seed
# fuzz/seeds/guest_btrfs/head (see fuzz_targets/guest_btrfs.rs).
#
# Needs root (loop mount), btrfs-progs, util-linux, coreutils and zstd. The bytes differ on
# every run (UUIDs, times), so the image and btrfs.expected must be regenerated together.
#
# The filesystem: 4 KiB nodes (so the 5,000-entry directory makes a tree of height 3),
# metadata DUP, data single; subvolumes `root` (the default subvolume) and `home`, a
# read-only snapshot of `root` in the ordinary directory `snapshots/`; in `root`: files
# compressed with zstd, zlib and lzo (mount option, changed by remount), a compressed inline
# file, a reflinked copy partly overwritten (extents referenced with an offset), a sparse
# file, a preallocated file and one partly written, an inline file, symlinks, a hard link,
# device nodes and a FIFO, a 255-byte and a non-ASCII name, setuid and odd owners, and
# `many/` with 5,000 names.
set -euo pipefail

out=$(cd "$(dirname "$0")" && pwd)
seeds="$out/../../fuzz/seeds/guest_btrfs"
work=$(mktemp -d)
mnt="$work/mnt"
img="$work/btrfs.img"
mkdir "$mnt"
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT

truncate -s 128M "$img"
mkfs.btrfs -q -f -n 4096 -s 4096 -m dup -d single -L vmstash-test "$img"
mount -o loop,compress=zstd "$img" "$mnt"
btrfs -q subvolume create "$mnt/root"
btrfs -q subvolume create "$mnt/home"
r="$mnt/root"
mkdir -p "$r/etc" "$r/data" "$r/dev" "$r/many" "$mnt/home/user" "$mnt/snapshots"
printf 'UUID=0 / btrfs subvol=root 0 0\n' >"$r/etc/fstab"
# Compressible text: 165 KiB (two compressed extents: at most 128 KiB each), per algorithm.
text() { seq -f "line %08g of the $1 file, some words to compress" 1 "$2"; }
text zstd 3000 >"$r/data/zstd.txt"
# A compressed inline file (below max_inline, compressible).
text inline 30 >"$r/data/inline-zstd.txt"
mount -o remount,compress=zlib "$mnt"
text zlib 3000 >"$r/data/zlib.txt"
mount -o remount,compress=lzo "$mnt"
text lzo 3000 >"$r/data/lzo.txt"
mount -o remount,compress=no "$mnt"
# Incompressible bytes: 16 KiB of AES-CTR keystream.
head -c 16384 /dev/zero | openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f \
  -iv 00000000000000000000000000000000 -nosalt 2>/dev/null >"$r/data/plain.bin"
cp --reflink=always "$r/data/plain.bin" "$r/data/reflink.bin"
printf 'overwritten in the middle of the reflinked copy\n' |
  dd of="$r/data/reflink.bin" bs=1 seek=5000 conv=notrunc status=none
cp --reflink=always "$r/data/zstd.txt" "$r/data/zstd-reflink.txt"
printf 'patched' | dd of="$r/data/zstd-reflink.txt" bs=1 seek=100000 conv=notrunc status=none
truncate -s 1M "$r/data/sparse.bin"
printf 'data after a hole\n' | dd of="$r/data/sparse.bin" bs=1 seek=600000 conv=notrunc status=none
fallocate -l 65536 "$r/data/prealloc.bin"
fallocate -l 65536 "$r/data/prealloc-part.bin"
printf 'written into preallocated space\n' |
  dd of="$r/data/prealloc-part.bin" bs=1 seek=20000 conv=notrunc status=none
printf 'small inline file\n' >"$r/data/inline.txt"
: >"$r/data/empty"
ln -s ../etc/fstab "$r/data/to-fstab"
ln -s /etc/hostname "$r/data/abs-link"
ln "$r/data/inline.txt" "$r/data/hard-link.txt"
mknod "$r/dev/null" c 1 3
mknod "$r/dev/nvme" b 259 1048000
mkfifo "$r/dev/fifo"
printf 'long\n' >"$r/data/$(printf 'L%.0s' $(seq 1 255))"
printf 'unicode\n' >"$r/data/Grüße-日本.txt"
printf 'setuid\n' >"$r/data/setuid"
chmod 4755 "$r/data/setuid"
chown 12345:54321 "$r/data/setuid"
touch -d '2021-03-04 05:06:07.123456789 UTC' "$r/etc/fstab"
for i in $(seq -w 0 4999); do : >"$r/many/f-$i"; done
printf 'home file\n' >"$mnt/home/user/notes.txt"
sync
btrfs -q subvolume snapshot -r "$r" "$mnt/snapshots/root-1"
# Changed after the snapshot: the snapshot keeps the old bytes.
printf 'UUID=1 / btrfs subvol=root 0 0\n' >"$r/etc/fstab"
btrfs subvolume set-default "$r" >/dev/null
sync

(
  cd "$mnt"
  find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort | while IFS= read -r p; do
    line=$(stat -c '%F|%a|%u|%g|%s|%h|%i|%.9Y|%t:%T' -- "$p")
    target=""
    [ -L "$p" ] && target=$(readlink -- "$p")
    sum=""
    [ -f "$p" ] && [ ! -L "$p" ] && [ -s "$p" ] && sum=$(sha256sum -- "$p" | cut -d' ' -f1)
    printf '%s|%s|%s|%s\n' "$p" "$line" "$target" "$sum"
  done
) | zstd -q -19 >"$out/btrfs.expected.zst"
umount "$mnt"
zstd -q --ultra -22 --long=27 -f "$img" -o "$out/btrfs.img.zst"
ls -l "$out/btrfs.img.zst"
