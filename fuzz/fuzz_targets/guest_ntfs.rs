//! The NTFS adapter on arbitrary partition contents: it opens the filesystem or refuses it,
//! and a walk of what it opened (breadth first, at most 200 files, 64 KiB read from each)
//! never panics, neither in the adapter nor in the `ntfs` crate it feeds only checked
//! records to; the answers are consistent: inode numbers in range, a listed file's
//! attributes those `attr` gives, a symlink's size its target's length, reads no longer than
//! asked or than the file, and no read errors (the bytes are all in memory).
#![no_main]

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmstash_fuse::guestfs::ntfs::NtfsFs;
use vmstash_fuse::guestfs::{FsError, GuestFs, Kind, Owner, MAX_LOCAL_INO};

const MAX_FILES: usize = 200;
const READ_LEN: u32 = 64 * 1024;

fn no_read_error<T>(r: &Result<T, FsError>) {
    assert!(
        !matches!(r, Err(FsError::Read(_))),
        "a read error from memory"
    );
}

fuzz_target!(|data: &[u8]| {
    let owner = Owner { uid: 1, gid: 2 };
    let fs = match NtfsFs::open(Arc::new(data.to_vec()), owner) {
        Ok(fs) => fs,
        Err(e) => {
            assert!(!matches!(e, FsError::Read(_)), "{e}");
            return;
        }
    };
    let mut queue = VecDeque::from([fs.root()]);
    let mut seen = HashSet::new();
    while let Some(ino) = queue.pop_front() {
        if seen.len() >= MAX_FILES || !seen.insert(ino) {
            continue;
        }
        assert!(ino != 0 && ino <= MAX_LOCAL_INO);
        let attr = fs.attr(ino);
        no_read_error(&attr);
        let read = fs.read(ino, 0, READ_LEN);
        no_read_error(&read);
        let link = fs.read_link(ino);
        no_read_error(&link);
        if let Ok(attr) = &attr {
            assert_eq!((attr.uid, attr.gid), (1, 2));
            match (&read, attr.kind) {
                (Err(FsError::IsDir), Kind::Dir) => {}
                (Ok(bytes), kind) if kind != Kind::Dir => {
                    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
                    assert!(len <= u64::from(READ_LEN));
                    if kind != Kind::Symlink {
                        assert!(len <= attr.size);
                    }
                }
                (Err(FsError::Damaged { .. }), kind) if kind != Kind::Dir => {}
                (other, kind) => panic!("read gave {other:?} for a {kind:?}"),
            }
            match (&link, attr.kind) {
                (Ok(target), Kind::Symlink) => {
                    assert_eq!(u64::try_from(target.len()).ok(), Some(attr.size));
                }
                (Err(FsError::NotSymlink), kind) => assert_ne!(kind, Kind::Symlink),
                (other, kind) => panic!("read_link gave {other:?} for a {kind:?}"),
            }
        }
        let Ok(entries) = fs.read_dir(ino) else {
            continue;
        };
        for e in entries {
            assert!(e.ino != 0 && e.ino <= MAX_LOCAL_INO);
            assert!(!e.name.is_empty() && !e.name.contains(&b'/') && !e.name.contains(&0));
            if let Some(listed) = e.attr {
                if let Ok(attr) = fs.attr(e.ino) {
                    assert_eq!(listed, attr);
                }
            }
            queue.push_back(e.ino);
        }
    }
});
