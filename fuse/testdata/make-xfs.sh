#!/usr/bin/env bash
# Rebuilds xfs.img.zst and xfs.expected: a 32 MiB XFS v5 filesystem (1 KiB blocks, 4 KiB
# directory blocks) filled through the kernel, and the kernel's own view of every file in it
# (see the unit tests in src/guestfs/xfs/tests.rs). Holds: directories in short-form, block
# and leaf format and one in btree format (its blocks in node format); a file whose data fork
# is a btree (every other block written), a sparse file, an unwritten (fallocated) range,
# inline and remote symlinks, a hard link, device nodes (one with a minor above 255), a fifo, setuid
# and odd owners, unicode and 255-byte names, timestamps before 1970 and after 2038.
# Needs root, xfsprogs and a kernel that loop-mounts XFS.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
mnt="$work/mnt"
trap 'umount "$mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
truncate -s 32M "$work/xfs.img"
# mkfs.xfs refuses filesystems under 300 MB unless told it is making a test filesystem.
TEST_DEV=1 TEST_DIR=1 QA_CHECK_FS=1 mkfs.xfs -q -b size=1024 -m crc=1,bigtime=1 -L fixture "$work/xfs.img"
mkdir "$mnt"
mount -o loop "$work/xfs.img" "$mnt"
cd "$mnt"
mkdir small block leaf btree
echo one > small/a; echo two > small/b; ln -s a small/link
for i in $(seq 1 25); do echo "$i" > "block/file-$i"; done
for i in $(seq 1 200); do echo "$i" > "leaf/entry-number-$i"; done
python3 - <<'PY'
import os
with open("fragmented", "wb") as f:
    for i in range(0, 400, 2):
        f.seek(i * 1024)
        f.write(b"%07d|" % i * 128)
        f.flush(); os.fsync(f.fileno())
PY
truncate -s 10M sparse; printf 'middle' | dd of=sparse bs=1 seek=5000000 conv=notrunc status=none
seq 1 1000 | head -c 3000 > prealloc; fallocate -o 8192 -l 65536 prealloc; truncate -s 100000 prealloc
ln -s "$(printf 'x%.0s' $(seq 1 300))/target" long-link
ln -s small/a short-link
echo hard > hard1; ln hard1 hard2
mknod null c 1 3; mknod big-minor b 259 70000; mkfifo fifo
echo s > setuid; chmod 4755 setuid; chown 1234:5678 setuid
echo u > "ünïcödé-名前"; touch "$(printf 'n%.0s' $(seq 1 255))"
echo old > old; touch -d '1960-01-01 00:00:01.5' old
echo future > future; touch -d '2100-06-01 12:00:00.25' future
# A btree directory: each new directory block is allocated right after a file written
# (and synced) in between, so its blocks are in more extents than its inode holds.
for i in $(seq 1 1000); do
  : > "btree/a-name-long-enough-to-fill-directory-blocks-$i"
  printf "%01024d" "$i" > "btree/filler-$i"
  xfs_io -c fsync "btree/filler-$i"
done
rm -f btree/filler-*
cd /
python3 - "$mnt" > "$here/xfs.expected" <<'PY'
import hashlib, os, stat, sys
root = sys.argv[1]
for dirpath, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(dirs + files):
        p = os.path.join(dirpath, name)
        s = os.lstat(p)
        rel = os.path.relpath(p, root)
        kind = stat.S_IFMT(s.st_mode)
        extra = ""
        if stat.S_ISREG(s.st_mode):
            extra = hashlib.sha256(open(p, "rb").read()).hexdigest()
        elif stat.S_ISLNK(s.st_mode):
            extra = os.readlink(p)
        elif stat.S_ISCHR(s.st_mode) or stat.S_ISBLK(s.st_mode):
            extra = f"{os.major(s.st_rdev)}:{os.minor(s.st_rdev)}"
        print(f"{rel}\t{s.st_ino}\t{s.st_mode:o}\t{s.st_uid}\t{s.st_gid}\t{s.st_nlink}\t{s.st_size}\t{s.st_mtime_ns}\t{extra}")
PY
umount "$mnt"
for d in small block leaf btree; do
  ino=$(grep -P "^$d\t" "$here/xfs.expected" | cut -f2)
  echo "$d: $(xfs_db -r -c "inode $ino" -c "print core.format" "$work/xfs.img")"
done
ino=$(grep -P "^fragmented\t" "$here/xfs.expected" | cut -f2)
echo "fragmented: $(xfs_db -r -c "inode $ino" -c "print core.format" "$work/xfs.img")"
zstd -q -19 -f "$work/xfs.img" -o "$here/xfs.img.zst"

# The fuzz seed: a small filesystem of the same kind (a short-form and a block directory, a
# file with a btree data fork, symlinks, a device node) as its non-zero 512-byte sectors
# (records of a little-endian u32 sector number and the sector), which is how the guest_xfs
# fuzz target reads its input; the log's empty records are left out, so the seed is tens of
# KiB.
seed="$here/../../fuzz/seeds/guest_xfs"
mkdir -p "$seed"
truncate -s 0 "$work/seed.img"; truncate -s 32M "$work/seed.img"
TEST_DEV=1 TEST_DIR=1 QA_CHECK_FS=1 mkfs.xfs -q -b size=1024 -m crc=1,bigtime=1 "$work/seed.img"
mount -o loop "$work/seed.img" "$mnt"
mkdir "$mnt/d" "$mnt/e"
for i in $(seq 1 40); do echo "$i" > "$mnt/e/name-$i"; done
echo hi > "$mnt/d/f"; ln -s f "$mnt/d/l"; ln -s "$(printf 'y%.0s' $(seq 1 200))" "$mnt/d/long"
mknod "$mnt/d/null" c 1 3
python3 - "$mnt/d/frag" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    for i in range(0, 60, 2):
        f.seek(i * 1024); f.write(b"z" * 1024); f.flush(); os.fsync(f.fileno())
PY
umount "$mnt"
python3 - "$work/seed.img" "$seed/small" <<'PY'
import struct, sys
out = bytearray()
with open(sys.argv[1], "rb") as f:
    n = 0
    while sector := f.read(512):
        # Log sectors of cycle 0 (mkfs's empty record headers, most of the log) are left out.
        if any(sector) and sector[:8] != bytes.fromhex("feedbabe00000000"):
            out += struct.pack("<I", n) + sector
        n += 1
open(sys.argv[2], "wb").write(out)
PY
