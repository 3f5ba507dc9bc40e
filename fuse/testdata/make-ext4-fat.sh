#!/usr/bin/env bash
# Makes fuse/testdata/ext4.img.zst and fat.img.zst, the small filesystems that
# guestfs/ext4.rs, guestfs/ext4_links.rs and guestfs/fat.rs test against:
#   ext4 (1 KiB blocks, 256 KiB, made by mkfs.ext4 -d): /hello (text, mode 0640,
#     owner 1001:42, mtime 2021-03-04 05:06:07 UTC), /hard (a hard link to it),
#     /link -> hello, /dir/big (40 KiB of a repeating pattern), /dir/empty,
#     /many/f000..f099;
#   ext4-twin: the same ext4 without metadata checksums and with the root's
#     entry "link" renamed "hard", so that "hard" names two inodes (damaged;
#     e2fsck says "Duplicate entry 'hard' found");
#   FAT16 (mkfs.vfat, 8 MiB, filled by mcopy -m): /README.TXT (short name),
#     /A Long Name.text, /dir/big.bin (40 KiB pattern), /ro.txt (read-only
#     attribute), mtimes 2021-03-04 05:06:08 (FAT keeps even seconds).
# Needs mkfs.ext4 (e2fsprogs), mkfs.vfat (dosfstools), mtools, zstd.
# The committed images are the reference; running this again gives other
# UUIDs and creation times but the same files.
set -euo pipefail

out=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export TZ=UTC

pattern() { python3 -c "import sys; sys.stdout.buffer.write(bytes(i * 7 % 251 for i in range($1)))"; }

t="$work/ext4"
mkdir -p "$t/dir" "$t/many"
printf 'hello, guest\n' >"$t/hello"
chmod 0640 "$t/hello"
chown 1001:42 "$t/hello"
touch -d '2021-03-04 05:06:07' "$t/hello"
ln "$t/hello" "$t/hard"
ln -s hello "$t/link"
pattern 40960 >"$t/dir/big"
: >"$t/dir/empty"
for i in $(seq -f '%03g' 0 99); do printf '%s\n' "$i" >"$t/many/f$i"; done
truncate -s 256K "$work/ext4.img"
mkfs.ext4 -q -F -b 1024 -N 128 -O ^has_journal -d "$t" "$work/ext4.img"
zstd -q -19 -f "$work/ext4.img" -o "$out/ext4.img.zst"
cp "$work/ext4.img" "$work/twin.img"
tune2fs -O ^metadata_csum "$work/twin.img" >/dev/null
python3 - "$work/twin.img" <<'PY'
import struct, sys
path = sys.argv[1]
img = bytearray(open(path, "rb").read())
# The root's entry: inode 16, rec_len 12, name_len 4, type symlink, "link".
at = img.find(struct.pack("<IHBB", 16, 12, 4, 7) + b"link")
assert at > 0, "no entry 'link' -> 16"
img[at + 8 : at + 12] = b"hard"
open(path, "wb").write(img)
PY
zstd -q -19 -f "$work/twin.img" -o "$out/ext4-twin.img.zst"

f="$work/fat"
mkdir -p "$f/dir"
printf 'fat readme\n' >"$f/README.TXT"
printf 'long name\n' >"$f/A Long Name.text"
pattern 40960 >"$f/dir/big.bin"
printf 'read only\n' >"$f/ro.txt"
find "$f" -exec touch -d '2021-03-04 05:06:08' {} +
truncate -s 8M "$work/fat.img"
mkfs.vfat -F 16 -s 1 -n TESTFAT "$work/fat.img" >/dev/null
for e in "$f"/*; do mcopy -s -m -i "$work/fat.img" "$e" ::/; done
mattrib -i "$work/fat.img" +r ::/ro.txt
zstd -q -19 -f "$work/fat.img" -o "$out/fat.img.zst"
echo "wrote $out/ext4.img.zst $out/ext4-twin.img.zst $out/fat.img.zst"
