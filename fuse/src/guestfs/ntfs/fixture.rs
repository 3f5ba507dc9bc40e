//! The NTFS fixture and what the adapter's tests share: opening it, walking it, finding
//! records in its bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::NtfsFs;
use crate::guestfs::{DirEntry, FsError, GuestFs, Kind, Owner};

/// The fixture: `testdata/make-ntfs.sh` made it, `testdata/ntfs.expected` is what ntfs-3g
/// showed of it (`super::tests` compares).
pub(super) const IMAGE: &[u8] = include_bytes!("../../../testdata/ntfs.img.zst");
pub(super) const OWNER: Owner = Owner {
    uid: 1000,
    gid: 100,
};

/// The fixture's bytes.
pub(super) fn image() -> Vec<u8> {
    zstd::decode_all(IMAGE).expect("fixture decompresses")
}

/// `bytes` opened, files belonging to [`OWNER`].
pub(super) fn open(bytes: Vec<u8>) -> Result<NtfsFs, FsError> {
    NtfsFs::open(Arc::new(bytes), OWNER)
}

/// The fixture, opened.
pub(super) fn fixture() -> NtfsFs {
    open(image()).expect("fixture opens")
}

/// Every file below the root, by path.
pub(super) fn tree(fs: &NtfsFs) -> BTreeMap<String, DirEntry> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![(String::new(), fs.root())];
    while let Some((path, ino)) = dirs.pop() {
        for e in fs.read_dir(ino).expect("read_dir") {
            let name = String::from_utf8(e.name.clone()).expect("UTF-8 name");
            let full = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            if e.attr.as_ref().expect("attr").kind == Kind::Dir {
                dirs.push((full.clone(), e.ino));
            }
            out.insert(full, e);
        }
    }
    out
}

/// The entry at `path` (`dir/name`).
pub(super) fn entry(fs: &NtfsFs, path: &str) -> DirEntry {
    tree(fs).remove(path).expect(path)
}

/// The whole contents of file `ino`, read 64 KiB at a time.
pub(super) fn read_all(fs: &NtfsFs, ino: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let offset = u64::try_from(out.len()).expect("len");
        let chunk = fs.read(ino, offset, 65536).expect("read");
        if chunk.is_empty() {
            return out;
        }
        out.extend(chunk);
    }
}

/// The MFT's offset and record `n`'s.
pub(super) fn record_offset(bytes: &[u8], n: usize) -> usize {
    let sector = usize::from(u16::from_le_bytes([bytes[0x0B], bytes[0x0C]]));
    let cluster = sector * usize::from(bytes[0x0D]);
    let lcn = u64::from_le_bytes(bytes[0x30..0x38].try_into().expect("8 bytes"));
    let at = usize::try_from(lcn).expect("lcn") * cluster + n * 1024;
    // NTFS 3.1 keeps the record's own number at 0x2C: the MFT is contiguous here.
    assert_eq!(
        &bytes[at + 0x2C..at + 0x30],
        &u32::try_from(n).expect("n").to_le_bytes()
    );
    at
}

/// The u16 at `at`.
pub(super) fn u16_at(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// The u32 at `at`.
pub(super) fn u32_at(bytes: &[u8], at: usize) -> usize {
    usize::try_from(u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"))).expect("usize")
}
