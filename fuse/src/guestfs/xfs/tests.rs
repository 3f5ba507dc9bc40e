//! The XFS reader against `testdata/xfs.img.zst`, compared entry by entry with the kernel's
//! view of the same filesystem (`testdata/xfs.expected`, both from `testdata/make-xfs.sh`),
//! and against damaged copies of it.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use super::superblock::Superblock;
use super::{log, XfsFs};
use crate::guestfs::{Attr, FsError, GuestFs, Kind};

/// The fixture's bytes.
pub(super) fn image() -> Vec<u8> {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let z = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/xfs.img.zst"))
                .expect("the fixture is in the repository");
            zstd::decode_all(z.as_slice()).expect("it decompresses")
        })
        .clone()
}

/// The fixture's superblock.
pub(super) fn v5_superblock() -> Superblock {
    Superblock::parse(&image()[..512]).expect("the fixture's superblock parses")
}

fn open(bytes: Vec<u8>) -> XfsFs {
    XfsFs::open(Arc::new(bytes)).expect("opens")
}

/// One line of `xfs.expected`: what the kernel showed of a path.
#[derive(Debug)]
struct Expected {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: u64,
    mtime_ns: i128,
    extra: String,
}

fn expected() -> BTreeMap<String, Expected> {
    let text = include_str!("../../../testdata/xfs.expected");
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let n = |i: usize| f[i].parse::<u64>().expect("a number");
            (
                f[0].to_owned(),
                Expected {
                    ino: n(1),
                    mode: u32::from_str_radix(f[2], 8).expect("octal"),
                    uid: u32::try_from(n(3)).expect("fits"),
                    gid: u32::try_from(n(4)).expect("fits"),
                    nlink: u32::try_from(n(5)).expect("fits"),
                    size: n(6),
                    mtime_ns: f[7].parse().expect("a number"),
                    extra: f[8].to_owned(),
                },
            )
        })
        .collect()
}

/// Every path of `fs` with its inode number and attributes, walked from the root.
fn walk(fs: &XfsFs) -> BTreeMap<String, (u64, Attr)> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![(String::new(), fs.root())];
    while let Some((path, ino)) = dirs.pop() {
        for e in fs.read_dir(ino).expect("lists") {
            let name = String::from_utf8(e.name).expect("UTF-8 names in the fixture");
            let p = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            let attr = e.attr.expect("every entry's inode reads");
            if attr.kind == Kind::Dir {
                dirs.push((p.clone(), e.ino));
            }
            out.insert(p, (e.ino, attr));
        }
    }
    out
}

fn mode_of(attr: &Attr) -> u32 {
    let kind = match attr.kind {
        Kind::File => libc::S_IFREG,
        Kind::Dir => libc::S_IFDIR,
        Kind::Symlink => libc::S_IFLNK,
        Kind::BlockDevice => libc::S_IFBLK,
        Kind::CharDevice => libc::S_IFCHR,
        Kind::Fifo => libc::S_IFIFO,
        Kind::Socket => libc::S_IFSOCK,
    };
    kind | u32::from(attr.perm)
}

fn contents(fs: &XfsFs, ino: u64, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    // Odd-sized pieces, so reads start and end inside blocks and extents.
    while u64::try_from(out.len()).expect("fits") < size {
        let got = fs
            .read(ino, u64::try_from(out.len()).expect("fits"), 77_777)
            .expect("reads");
        assert!(!got.is_empty(), "inode {ino} ends early at {}", out.len());
        out.extend(got);
    }
    out
}

#[test]
fn every_entry_matches_the_kernels_view() {
    let fs = open(image());
    let seen = walk(&fs);
    let want = expected();
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the same names"
    );
    for (path, (ino, attr)) in &seen {
        let w = &want[path];
        assert_eq!(*ino, w.ino, "{path}: inode number");
        assert_eq!(mode_of(attr), w.mode, "{path}: mode");
        assert_eq!((attr.uid, attr.gid), (w.uid, w.gid), "{path}: owner");
        assert_eq!(attr.nlink, w.nlink, "{path}: links");
        let mtime_ns = match attr.mtime.duration_since(UNIX_EPOCH) {
            Ok(d) => i128::try_from(d.as_nanos()).expect("fits"),
            Err(before) => -i128::try_from(before.duration().as_nanos()).expect("fits"),
        };
        assert_eq!(mtime_ns, w.mtime_ns, "{path}: mtime");
        match attr.kind {
            Kind::File => {
                assert_eq!(attr.size, w.size, "{path}: size");
                let hash = hex::encode(Sha256::digest(contents(&fs, *ino, attr.size)));
                assert_eq!(hash, w.extra, "{path}: contents");
            }
            Kind::Symlink => {
                let target = fs.read_link(*ino).expect("reads");
                assert_eq!(String::from_utf8(target).expect("UTF-8"), w.extra, "{path}");
                assert_eq!(attr.size, w.size, "{path}: size");
            }
            Kind::BlockDevice | Kind::CharDevice => {
                let (major, minor) = w.extra.split_once(':').expect("major:minor");
                let dev = crate::guestfs::encode_dev(
                    major.parse().expect("a number"),
                    minor.parse().expect("a number"),
                );
                assert_eq!(attr.rdev, dev, "{path}: device number");
            }
            Kind::Dir => assert_eq!(attr.size, w.size, "{path}: size"),
            Kind::Fifo | Kind::Socket => {}
        }
    }
}

#[test]
fn reads_stop_at_the_end_and_holes_read_as_zeros() {
    let fs = open(image());
    let (ino, attr) = walk(&fs)["sparse"].clone();
    assert_eq!(fs.read(ino, attr.size, 10).expect("reads"), b"");
    assert_eq!(fs.read(ino, attr.size - 2, 10).expect("reads").len(), 2);
    assert_eq!(fs.read(ino, 0, 4096).expect("reads"), vec![0u8; 4096]);
    assert_eq!(fs.read(ino, 5_000_000, 6).expect("reads"), b"middle");
    let dir = fs.root();
    assert!(matches!(fs.read(dir, 0, 1), Err(FsError::IsDir)));
    assert!(matches!(fs.read_link(ino), Err(FsError::NotSymlink)));
    assert!(matches!(fs.read_dir(ino), Err(FsError::NotDir)));
}

#[test]
fn the_fixtures_log_is_clean_and_a_log_without_its_unmount_record_is_dirty() {
    let bytes = image();
    let sb = v5_superblock();
    assert_eq!(log::state(&bytes, &sb), log::LogState::Clean);
    let start = usize::try_from(sb.block_offset(sb.log_start).expect("inside")).expect("fits");
    let len = usize::try_from(sb.log_blocks * sb.block_size).expect("fits");
    let mut dirty = bytes.clone();
    let mut cleared = 0;
    for sector in (start..start + len).step_by(512) {
        if dirty[sector..sector + 4] == [0xfe, 0xed, 0xba, 0xbe]
            && dirty[sector + 512 + 9] & 0x20 != 0
        {
            dirty[sector + 512 + 9] &= !0x20;
            cleared += 1;
        }
    }
    assert!(cleared > 0, "the fixture's log has an unmount record");
    assert_eq!(log::state(&dirty, &sb), log::LogState::Dirty);
    let fs = open(dirty);
    assert_eq!(fs.notes().len(), 1, "{:?}", fs.notes());
    assert!(fs.notes()[0].contains("not clean"), "{:?}", fs.notes());
}

/// The byte offset of inode `ino` in the fixture.
fn inode_at(ino: u64) -> usize {
    usize::try_from(v5_superblock().inode_offset(ino).expect("inside")).expect("fits")
}

#[test]
fn a_damaged_inode_fails_its_own_paths_only() {
    let clean = open(image());
    let files = walk(&clean);
    let (victim, _) = files["small/a"];
    let mut bytes = image();
    bytes[inode_at(victim) + 60] ^= 1;
    let fs = open(bytes);
    let err = fs.attr(victim).expect_err("its CRC fails");
    assert!(
        matches!(&err, FsError::Corrupt { fs: "xfs", .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("inode {victim}")),
        "{err}"
    );
    let small = fs.read_dir(files["small"].0).expect("its directory lists");
    let a = small
        .iter()
        .find(|e| e.name == b"a")
        .expect("the name lists");
    assert!(a.attr.is_none(), "without attributes");
    assert_eq!(
        fs.read(files["small/b"].0, 0, 100).expect("reads"),
        b"two\n"
    );
}

#[test]
fn a_damaged_directory_block_fails_that_directory_only() {
    let clean = open(image());
    let files = walk(&clean);
    let dir = clean.inode(files["block"].0).expect("reads");
    let list = clean.extent_list(&dir).expect("maps");
    let sb = v5_superblock();
    let at = usize::try_from(sb.block_offset(list[0].block).expect("inside")).expect("fits");
    let mut bytes = image();
    bytes[at + 100] ^= 0x40;
    let fs = open(bytes);
    let err = fs.read_dir(files["block"].0).expect_err("its CRC fails");
    assert!(matches!(err, FsError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(fs.read_dir(files["leaf"].0).expect("lists").len(), 200);
}

#[test]
fn a_damaged_btree_block_fails_that_file_only() {
    let clean = open(image());
    let files = walk(&clean);
    let frag = clean.inode(files["fragmented"].0).expect("reads");
    // The first pointer of the root in the inode's fork: level, count, keys, then pointers.
    let max = (frag.fork.len() - 4) / 16;
    let child = crate::be::u64_at(&frag.fork, 4 + max * 8).expect("a pointer");
    let at = usize::try_from(v5_superblock().block_offset(child).expect("inside")).expect("fits");
    let mut bytes = image();
    bytes[at + 200] ^= 1;
    let fs = open(bytes);
    let err = fs
        .read(files["fragmented"].0, 0, 10)
        .expect_err("its CRC fails");
    assert!(err.to_string().contains("btree block"), "{err}");
    assert_eq!(
        fs.read(files["small/b"].0, 0, 100).expect("reads"),
        b"two\n"
    );
}

#[test]
fn damaged_or_cut_superblocks_are_refused_as_damage() {
    let mut bytes = image();
    bytes[8] ^= 1;
    let err = XfsFs::open(Arc::new(bytes)).err().expect("refused");
    assert!(err.to_string().contains("superblock: checksum"), "{err}");
    let cut = image()[..1 << 20].to_vec();
    let fs = open(cut);
    let any_failure = walk_fallibly(&fs);
    assert!(any_failure, "some inode or block is past the cut");
    let mut v9 = image();
    v9[101] = 9;
    let err = Superblock::parse(&v9[..512]).expect_err("refused");
    assert!(matches!(err, FsError::Unsupported { .. }), "{err:?}");
}

/// Walks everything reachable, reading every file; whether anything failed (it must fail
/// as damage, never panic).
fn walk_fallibly(fs: &XfsFs) -> bool {
    let mut failed = false;
    let mut dirs = vec![fs.root()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs.read_dir(dir) else {
            failed = true;
            continue;
        };
        for e in entries {
            match fs.attr(e.ino) {
                Ok(a) if a.kind == Kind::Dir => dirs.push(e.ino),
                Ok(a) if a.kind == Kind::File => {
                    if let Err(err) = fs.read(e.ino, 0, 1 << 16) {
                        assert!(matches!(err, FsError::Corrupt { .. }), "{err:?}");
                        failed = true;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    assert!(matches!(err, FsError::Corrupt { .. }), "{err:?}");
                    failed = true;
                }
            }
        }
    }
    failed
}
