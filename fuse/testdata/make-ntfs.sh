#!/usr/bin/env bash
# Makes fuse/testdata/ntfs.img.zst, the NTFS image that guestfs/ntfs.rs's
# tests read, and ntfs.expected, what ntfs-3g shows of it: one line per file,
# `find -printf '%P|%y|%s|%n|%i|%T@|%l'` (path, type, size, links, inode,
# mtime, symlink target), with the mount point written as @MNT@; and the fuzz
# seed fuzz/seeds/guest_ntfs/fixture (the image, uncompressed).
#
# Needs root (FUSE mounts), ntfs-3g, attr (setfattr), perl and zstd:
#   apt-get install -y --no-install-recommends ntfs-3g attr zstd
# The committed image is the reference: running this again gives different
# bytes (times, serial number), so the tests' expected times change too.
set -euo pipefail

out=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
mnt="$work/mnt"
img="$work/ntfs.img"
mkdir "$mnt"
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT

# 2 MiB (not more): the decompressed image is also the fuzz seed.
truncate -s 2M "$img"
mkntfs -F -Q -L vmstash-test "$img" >/dev/null

# Reparse data for system.ntfs_reparse_data, as hex: tag, then the body.
# Microsoft tags have an 8-byte header: tag (u32), body length (u16), 0 (u16).
reparse() { # tag-as-hex body-as-hex
  perl -e 'my ($t, $b) = @ARGV; my $body = pack("H*", $b);
           print "0x", unpack("H*", pack("VvvA*", hex($t), length($body), 0, $body))' "$1" "$2"
}
utf16() { perl -e 'print unpack("H*", join("", map { pack("v", ord) } split //, $ARGV[0]))' "$1"; }
# A symbolic link's body: substitute name then print name, flags (1 = relative).
symlink_body() { # substitute print flags
  local s p
  s=$(utf16 "$1")
  p=$(utf16 "$2")
  perl -e 'my ($s, $p, $f) = @ARGV; my ($sl, $pl) = (length($s) / 2, length($p) / 2);
           print unpack("H*", pack("vvvvV", 0, $sl, $sl, $pl, $f)), $s, $p' "$s" "$p" "$3"
}
# A junction's body: the same without flags.
junction_body() { # substitute print
  local s p
  s=$(utf16 "$1")
  p=$(utf16 "$2")
  perl -e 'my ($s, $p) = @ARGV; my ($sl, $pl) = (length($s) / 2, length($p) / 2);
           print unpack("H*", pack("vvvv", 0, $sl, $sl, $pl)), $s, $p' "$s" "$p"
}

ntfs-3g "$img" "$mnt"
cd "$mnt"
printf 'Hello, NTFS!\n' >hello.txt
# Byte i is i mod 251 (5000 bytes: non-resident), and i mod 253 (300 KiB).
perl -e 'print map { chr($_ % 251) } 0 .. 4999' >small.bin
perl -e 'print map { chr($_ % 253) } 0 .. 307199' >big.bin
: >empty
mkdir -p docs/sub bigdir
printf 'deep\n' >docs/sub/deep.txt
ln hello.txt docs/link-to-hello.txt
ln -s ../../hello.txt docs/sub/to-hello
ln -s /etc/hostname abs-link
printf 'unicode\n' >'Grüße-日本.txt'
printf 'read only\n' >readonly.txt
setfattr -n system.ntfs_attrib_be -v 0x00000021 readonly.txt # READONLY | ARCHIVE
printf 'timed\n' >times.txt
touch -d '2021-03-04 05:06:07.1234567 UTC' times.txt
# A sparse file: a hole of 50 clusters, then 6 bytes.
truncate -s 204800 sparse.bin
printf 'tail!\n' | dd of=sparse.bin bs=1 seek=204800 conv=notrunc status=none
# A named data stream, larger than the unnamed one.
printf 'main\n' >streams.txt
setfattr -n user.extra -v "$(perl -e 'print "x" x 3000')" streams.txt
# A Win32 long name with a DOS 8.3 name.
printf 'long\n' >'Long file name.txt'
setfattr -n system.ntfs_dos_name -v 'LONGFI~1.TXT' 'Long file name.txt'
# 200 names: the index no longer fits in the file record ($INDEX_ALLOCATION).
for i in $(seq -w 0 199); do printf '%s\n' "$i" >"bigdir/file-$i"; done
mkfifo fifo
mknod blockdev b 8 1
# Windows reparse points, written as ntfs-3g's raw reparse data.
: >win-rel-link
setfattr -n system.ntfs_reparse_data \
  -v "$(reparse a000000c "$(symlink_body 'docs\sub\deep.txt' 'docs\sub\deep.txt' 1)")" win-rel-link
: >win-abs-link
setfattr -n system.ntfs_reparse_data \
  -v "$(reparse a000000c "$(symlink_body '\??\C:\hello.txt' 'C:\hello.txt' 0)")" win-abs-link
mkdir junction
setfattr -n system.ntfs_reparse_data \
  -v "$(reparse a0000003 "$(junction_body '\??\C:\docs\sub' 'C:\docs\sub')")" junction
: >mystery
setfattr -n system.ntfs_reparse_data -v "$(reparse 80000017 0102030405060708)" mystery
cd /
umount "$mnt"

# WSL-style special files (reparse points) need another mount option.
ntfs-3g -o special_files=wsl "$img" "$mnt"
ln -s docs/sub/deep.txt "$mnt/wsl-link"
mkfifo "$mnt/wsl-fifo"
umount "$mnt"

ntfs-3g -o ro "$img" "$mnt"
(cd "$mnt" && find . -mindepth 1 -printf '%P|%y|%s|%n|%i|%T@|%l\n' | LC_ALL=C sort) |
  sed "s|$mnt|@MNT@|g" >"$out/ntfs.expected"
umount "$mnt"

zstd -q -19 -f "$img" -o "$out/ntfs.img.zst"
ls -l "$out/ntfs.img.zst"
# The fuzz target's seed is the same image.
seeds="$out/../../fuzz/seeds/guest_ntfs"
mkdir -p "$seeds"
cp "$img" "$seeds/fixture"
