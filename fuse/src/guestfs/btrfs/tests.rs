//! The Btrfs reader against the kernel's own view of a real image (`testdata/btrfs.img.zst`
//! and `testdata/btrfs.expected.zst`, made by `testdata/make-btrfs.sh` with mkfs.btrfs and a
//! loop mount), damaged and truncated copies of it, and an unreadable backup.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::*;
use crate::guestfs::test_support::{is_pack_error, Unreadable};

/// The fixture image, decompressed once.
fn image() -> Vec<u8> {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            zstd::decode_all(&include_bytes!("../../../testdata/btrfs.img.zst")[..]).expect("zstd")
        })
        .clone()
}

/// What the kernel showed: path → the line's fields after the path.
fn expected() -> BTreeMap<String, Vec<String>> {
    let text = zstd::decode_all(&include_bytes!("../../../testdata/btrfs.expected.zst")[..])
        .expect("zstd");
    String::from_utf8(text)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let mut f: Vec<String> = l.split('|').map(str::to_owned).collect();
            let path = f.remove(0);
            (path, f)
        })
        .collect()
}

/// Every file of `fs` by path (relative to the root, `/`-separated).
fn walk(fs: &BtrfsFs) -> BTreeMap<String, DirEntry> {
    let mut out = BTreeMap::new();
    let mut queue = VecDeque::from([(String::new(), fs.root())]);
    while let Some((path, ino)) = queue.pop_front() {
        for e in fs.read_dir(ino).unwrap_or_else(|e| panic!("{path}: {e}")) {
            let name = String::from_utf8(e.name.clone()).expect("utf-8 names");
            let child = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            if e.attr.as_ref().is_some_and(|a| a.kind == Kind::Dir) {
                queue.push_back((child.clone(), e.ino));
            }
            out.insert(child, e);
        }
    }
    out
}

/// The path's entry.
fn at<'a>(files: &'a BTreeMap<String, DirEntry>, path: &str) -> &'a DirEntry {
    files.get(path).unwrap_or_else(|| panic!("no {path}"))
}

/// The inode of `path`, found by listing each directory on the way.
fn lookup(fs: &BtrfsFs, path: &str) -> u64 {
    path.split('/').fold(fs.root(), |dir, name| {
        fs.read_dir(dir)
            .expect("list")
            .into_iter()
            .find(|e| e.name == name.as_bytes())
            .unwrap_or_else(|| panic!("no {name}"))
            .ino
    })
}

/// `b`'s length as a `u64`.
fn len64(b: &[u8]) -> u64 {
    u64::try_from(b.len()).expect("length")
}

/// A file's whole contents, read in 128 KiB requests as the kernel asks.
fn contents(fs: &BtrfsFs, ino: u64, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while len64(&out) < size {
        let got = fs.read(ino, len64(&out), 128 * 1024).expect("read");
        assert!(!got.is_empty(), "short read at {}", out.len());
        out.extend_from_slice(&got);
    }
    out
}

fn open(img: Vec<u8>) -> BtrfsFs {
    BtrfsFs::open(Arc::new(img)).expect("open")
}

#[test]
fn every_file_is_as_the_kernel_shows_it() {
    let fs = open(image());
    let files = walk(&fs);
    let want = expected();
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the same paths"
    );
    for (path, f) in &want {
        let e = at(&files, path);
        let a = e
            .attr
            .clone()
            .unwrap_or_else(|| panic!("{path}: no attributes"));
        assert_eq!(fs.attr(e.ino).expect("attr"), a, "{path}");
        let kind = match f[0].as_str() {
            "directory" => Kind::Dir,
            "regular file" | "regular empty file" => Kind::File,
            "symbolic link" => Kind::Symlink,
            "fifo" => Kind::Fifo,
            "character special file" => Kind::CharDevice,
            "block special file" => Kind::BlockDevice,
            other => panic!("{other}"),
        };
        assert_eq!(a.kind, kind, "{path}");
        assert_eq!(format!("{:o}", a.perm), f[1], "{path}: mode");
        assert_eq!(a.uid.to_string(), f[2], "{path}: uid");
        assert_eq!(a.gid.to_string(), f[3], "{path}: gid");
        assert_eq!(a.size.to_string(), f[4], "{path}: size");
        assert_eq!(a.nlink.to_string(), f[5], "{path}: links");
        let (sec, nsec) = f[7].split_once('.').expect("sec.nsec");
        let mtime =
            UNIX_EPOCH + Duration::new(sec.parse().expect("sec"), nsec.parse().expect("nsec"));
        assert_eq!(a.mtime, mtime, "{path}: mtime");
        let (major, minor) = f[8].split_once(':').expect("major:minor");
        let rdev = encode_dev(
            u32::from_str_radix(major, 16).expect("hex"),
            u32::from_str_radix(minor, 16).expect("hex"),
        );
        assert_eq!(a.rdev, rdev, "{path}: device number");
        if kind == Kind::Symlink {
            assert_eq!(
                fs.read_link(e.ino).expect("readlink"),
                f[9].as_bytes(),
                "{path}"
            );
        } else {
            assert!(matches!(fs.read_link(e.ino), Err(FsError::NotSymlink)));
        }
        if kind == Kind::File && a.size > 0 {
            let sum = hex(&Sha256::digest(contents(&fs, e.ino, a.size)));
            assert_eq!(sum, f[10], "{path}: contents");
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn hard_links_share_a_number_and_snapshots_do_not() {
    let fs = open(image());
    let files = walk(&fs);
    let inline = at(&files, "root/data/inline.txt");
    assert_eq!(inline.ino, at(&files, "root/data/hard-link.txt").ino);
    let snap = at(&files, "snapshots/root-1/data/inline.txt");
    assert_ne!(inline.ino, snap.ino);
    let mut numbers: Vec<u64> = files
        .iter()
        .filter(|(p, _)| !p.ends_with("hard-link.txt"))
        .map(|(_, e)| e.ino)
        .collect();
    let n = numbers.len();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), n, "unique but for hard links");
    assert!(numbers
        .iter()
        .all(|&i| i != 0 && i <= crate::guestfs::MAX_LOCAL_INO));
    assert_eq!(fs.root(), ROOT_DIR);
    assert!(matches!(fs.attr(999 << 30), Err(FsError::NotFound)));
    assert!(matches!(fs.attr(999_999), Err(FsError::NotFound)));
}

#[test]
fn reads_at_any_offset_match_the_whole_file() {
    let fs = open(image());
    let files = walk(&fs);
    for path in [
        "root/data/zstd.txt",
        "root/data/zlib.txt",
        "root/data/lzo.txt",
        "root/data/zstd-reflink.txt",
        "root/data/reflink.bin",
        "root/data/sparse.bin",
        "root/data/prealloc-part.bin",
        "root/data/inline-zstd.txt",
    ] {
        let e = at(&files, path);
        let size = e.attr.as_ref().expect("attr").size;
        let whole = contents(&fs, e.ino, size);
        for (offset, len) in [
            (0u64, 1u32),
            (1000, 5000),
            (131_000, 2000),
            (size - 3, 100),
            (size, 10),
            (size + 5, 10),
        ] {
            let got = fs.read(e.ino, offset, len).expect("read");
            let start = usize::try_from(offset).expect("offset").min(whole.len());
            let end = (start + usize::try_from(len).expect("len")).min(whole.len());
            assert_eq!(got, &whole[start..end], "{path} at {offset}");
        }
    }
    let sparse = at(&files, "root/data/sparse.bin");
    let got = fs.read(sparse.ino, 599_990, 28).expect("read");
    assert_eq!(&got[..10], &[0u8; 10]);
    assert_eq!(&got[10..], b"data after a hole\n");
    let dir = at(&files, "root/data");
    assert!(matches!(fs.read(dir.ino, 0, 10), Err(FsError::IsDir)));
    let fifo = at(&files, "root/dev/fifo");
    assert!(matches!(
        fs.read(fifo.ino, 0, 10),
        Err(FsError::Unsupported { .. })
    ));
    assert!(matches!(fs.read_dir(fifo.ino), Err(FsError::NotDir)));
}

#[test]
fn the_dispatcher_finds_btrfs() {
    let dev: Arc<dyn Device> = Arc::new(image());
    let owner = crate::guestfs::Owner { uid: 1, gid: 1 };
    let fs = crate::guestfs::open(dev, owner)
        .expect("open")
        .expect("recognised");
    assert_eq!(fs.type_name(), "btrfs");
    let small: Arc<dyn Device> = Arc::new(vec![0u8; 70_000]);
    assert!(crate::guestfs::open(small, owner)
        .expect("no error")
        .is_none());
}

#[test]
fn a_big_directory_lists_fast_and_compressed_files_read_fast() {
    let fresh = open(image());
    let many = lookup(&fresh, "root/many");
    let start = Instant::now();
    let listed = fresh.read_dir(many).expect("list");
    let took = start.elapsed();
    assert_eq!(listed.len(), 5000);
    assert!(listed.iter().all(|e| e.attr.is_some()));
    eprintln!("listing 5,000 entries with attributes: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let mut bytes = 0u64;
    let start = Instant::now();
    for path in [
        "root/data/zstd.txt",
        "root/data/zlib.txt",
        "root/data/lzo.txt",
    ] {
        let ino = lookup(&fresh, path);
        let size = fresh.attr(ino).expect("attr").size;
        // 4 KiB requests: each extent is decompressed once, not once per request.
        let mut off = 0;
        while off < size {
            bytes += len64(&fresh.read(ino, off, 4096).expect("read"));
            off += 4096;
        }
    }
    let micros = start.elapsed().as_micros().max(1);
    eprintln!(
        "compressed files in 4 KiB reads: {bytes} bytes in {micros} µs, {} MB/s",
        u128::from(bytes) / micros
    );
}

/// Where every copy of `needle` is in `img`, at node (4 KiB) starts.
fn nodes_holding(img: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut out: Vec<usize> = img
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i / 4096 * 4096)
        .collect();
    out.dedup();
    out
}

#[test]
fn a_damaged_leaf_is_a_checksum_error_on_its_paths_only() {
    let clean = image();
    let fs = open(clean.clone());
    let files = walk(&fs);
    let many = at(&files, "root/many").ino;
    let fstab = at(&files, "root/etc/fstab").ino;
    let mut img = clean;
    let nodes = nodes_holding(&img, b"f-2500");
    assert!(!nodes.is_empty());
    for node in nodes {
        img[node + 200] ^= 0x40;
    }
    let fs = open(img);
    // Numbers are given in the order trees are met: walk to the same ones again.
    let _ = walk_partial(&fs);
    let err = fs.read_dir(many).expect_err("damaged");
    assert!(
        matches!(&err, FsError::Corrupt { detail, .. } if detail.contains("checksum mismatch") && detail.contains("node at logical")),
        "{err:?}"
    );
    assert_eq!(fs.read(fstab, 0, 100).expect("the rest reads").len(), 31);
}

/// Lists every directory it can, ignoring errors (numbers subvolumes as `walk` does).
fn walk_partial(fs: &BtrfsFs) -> usize {
    let mut queue = VecDeque::from([fs.root()]);
    let mut seen = 0;
    while let Some(ino) = queue.pop_front() {
        seen += 1;
        if let Ok(entries) = fs.read_dir(ino) {
            for e in entries {
                let _ = fs.read(e.ino, 0, 4096);
                let _ = fs.read_link(e.ino);
                if e.attr.is_some_and(|a| a.kind == Kind::Dir) {
                    queue.push_back(e.ino);
                }
            }
        }
    }
    seen
}

#[test]
fn truncated_and_damaged_images_are_errors_not_panics() {
    let clean = image();
    for len in [
        0usize,
        65_536,
        70_000,
        1 << 20,
        5 << 20,
        22 << 20,
        40 << 20,
        clean.len() / 2,
    ] {
        let mut img = clean.clone();
        img.truncate(len);
        match BtrfsFs::open(Arc::new(img)) {
            Ok(fs) => {
                walk_partial(&fs);
            }
            Err(e) => assert!(matches!(e, FsError::Corrupt { .. }), "{len}: {e:?}"),
        }
    }
    let mut bad_magic = clean.clone();
    bad_magic[65_536 + 64] = b'x';
    assert!(matches!(
        BtrfsFs::open(Arc::new(bad_magic)),
        Err(FsError::Corrupt { .. })
    ));
    let mut bad_sb = clean.clone();
    bad_sb[65_536 + 0x94] = 3; // node size, and so the checksum
    let err = BtrfsFs::open(Arc::new(bad_sb)).err();
    assert!(
        matches!(&err, Some(FsError::Corrupt { detail, .. }) if detail.contains("checksum")),
        "{err:?}"
    );
    let mut csum_type = clean;
    csum_type[65_536 + 0xc4] = 9;
    assert!(matches!(
        BtrfsFs::open(Arc::new(csum_type)),
        Err(FsError::Unsupported { .. })
    ));
}

#[test]
fn every_metadata_block_damaged_in_turn_is_an_error_not_a_panic() {
    let clean = image();
    let fsid = clean[65_536 + 0x20..65_536 + 0x30].to_vec();
    let blocks: Vec<usize> = (0..clean.len() / 4096)
        .map(|b| b * 4096)
        .filter(|&b| b != 65_536 && clean[b + 0x20..b + 0x30] == fsid[..])
        .collect();
    assert!(blocks.len() > 100, "{}", blocks.len());
    // Every node, its first copy only (the reader reads DUP's first stripe), with a field
    // of its header or an item changed and the checksum made right again, so that the
    // structural checks are what must catch it.
    for (n, &b) in blocks.iter().enumerate().step_by(7) {
        let mut img = clean.clone();
        let at = b + [0x30, 0x60, 0x64, 101 + 17, 101 + 21, 200, 1000][n % 7];
        img[at] ^= 0xff;
        let c = checksum::crc32c(&img[b + 32..b + 4096]);
        img[b..b + 4].copy_from_slice(&c.to_le_bytes());
        match BtrfsFs::open(Arc::new(img)) {
            Ok(fs) => {
                walk_partial(&fs);
            }
            Err(e) => assert!(
                matches!(e, FsError::Corrupt { .. } | FsError::Unsupported { .. }),
                "block {b}: {e:?}"
            ),
        }
    }
}

#[test]
fn unreadable_backup_bytes_are_read_errors_not_damage() {
    let dev = Arc::new(Unreadable::new(image()));
    let fs = BtrfsFs::open(dev.clone()).expect("open");
    let files = walk(&fs);
    dev.fail();
    let zstd = at(&files, "root/data/zstd.txt").ino;
    let err = fs
        .read(zstd, 0, 4096)
        .expect_err("its extent is not cached");
    assert!(
        matches!(&err, FsError::Read(e) if is_pack_error(e)),
        "{err:?}"
    );
    let err = BtrfsFs::open(dev).err();
    assert!(
        matches!(&err, Some(FsError::Read(e)) if is_pack_error(e)),
        "{err:?}"
    );
}
