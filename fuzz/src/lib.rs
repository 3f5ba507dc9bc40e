//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Each target asserts a property of one decoder of `vmstash-repo`
//! (decode ∘ encode = id, errors of the right kind, bounded output), not
//! only that it returns.

use vmstash_repo::crypto::MasterKey;
use vmstash_repo::Error;

/// The master key every target uses: fixed, so that a crash reproduces.
pub fn master() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

/// Asserts that a decoder refused bad bytes the way it should: as a
/// damaged (`Corrupt`) or unsupported (`Incompatible`) file, never as an
/// I/O error, a wrong password or an invalid parameter.
pub fn assert_rejected(err: &Error) {
    assert!(
        matches!(err, Error::Corrupt { .. } | Error::Incompatible { .. }),
        "bad input must be Corrupt or Incompatible, got {err:?}"
    );
}

/// A cursor that reads the fuzzer's bytes as choices, yielding zeros once
/// they run out, so that every input is a valid sequence of choices.
pub struct Choices<'a> {
    bytes: &'a [u8],
}

impl<'a> Choices<'a> {
    /// Reads choices from `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Choices { bytes }
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next byte, 0 past the end.
    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// The next two bytes as a little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` next bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = tail;
        head
    }

    /// Every byte not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.bytes.len())
    }
}

/// Asserts that a guest filesystem refused bytes in memory as damaged (`Corrupt`) or as
/// something its reader does not support (`Unsupported`): never as an unreadable backup
/// (`Read`: nothing in memory is unreadable), and never as an answer such as "not found".
pub fn assert_refused(err: &vmstash_fuse::guestfs::FsError) {
    use vmstash_fuse::guestfs::FsError;
    assert!(
        matches!(err, FsError::Corrupt { .. } | FsError::Unsupported { .. }),
        "bad bytes in memory must be Corrupt or Unsupported, got {err:?}"
    );
}

/// Walks a guest filesystem the way the mount would (breadth first, at most 200 files, the
/// first 64 KiB of each) and asserts its answers are consistent: inode numbers in range, a
/// listed file's attributes those `attr` gives, a symlink's size its target's length, reads
/// no longer than asked or than the file, and every error of the right kind: an answer
/// (not found, not a directory, …) or damage or something unsupported, never a read error
/// (the bytes are all in memory). `owner` is who every file must belong to, for filesystems
/// without owners.
pub fn walk_guest(
    fs: &dyn vmstash_fuse::guestfs::GuestFs,
    owner: Option<vmstash_fuse::guestfs::Owner>,
) {
    use std::collections::{HashSet, VecDeque};
    use vmstash_fuse::guestfs::{FsError, Kind, MAX_LOCAL_INO};

    const MAX_FILES: usize = 200;
    const READ_LEN: u32 = 64 * 1024;
    fn not_a_read_error(e: &FsError) {
        assert!(
            !matches!(e, FsError::Read(_)),
            "a read error from memory: {e:?}"
        );
    }
    fn no_read_error<T>(r: &Result<T, FsError>) {
        if let Err(e) = r {
            not_a_read_error(e);
        }
    }

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
            if let Some(owner) = owner {
                assert_eq!((attr.uid, attr.gid), (owner.uid, owner.gid));
            }
            match (&read, attr.kind) {
                (Err(FsError::IsDir), Kind::Dir) => {}
                (Ok(bytes), kind) if kind != Kind::Dir => {
                    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
                    assert!(len <= u64::from(READ_LEN));
                    if kind == Kind::File {
                        assert!(len <= attr.size);
                    }
                }
                (Err(FsError::Corrupt { .. } | FsError::Unsupported { .. }), kind)
                    if kind != Kind::Dir => {}
                (other, kind) => panic!("read gave {other:?} for a {kind:?}"),
            }
            match (&link, attr.kind) {
                (Ok(target), Kind::Symlink) => {
                    assert_eq!(u64::try_from(target.len()).ok(), Some(attr.size));
                }
                (Err(FsError::NotSymlink), kind) => assert_ne!(kind, Kind::Symlink),
                (Err(FsError::Corrupt { .. } | FsError::Unsupported { .. }), Kind::Symlink) => {}
                (other, kind) => panic!("read_link gave {other:?} for a {kind:?}"),
            }
        }
        let entries = match fs.read_dir(ino) {
            Ok(entries) => entries,
            Err(e) => {
                not_a_read_error(&e);
                continue;
            }
        };
        for e in entries {
            assert!(e.ino != 0 && e.ino <= MAX_LOCAL_INO);
            assert!(!e.name.is_empty() && !e.name.contains(&b'/') && !e.name.contains(&0));
            if let Some(listed) = e.attr {
                match fs.attr(e.ino) {
                    Ok(attr) => assert_eq!(listed, attr),
                    Err(err) => not_a_read_error(&err),
                }
            }
            queue.push_back(e.ino);
        }
    }
}

/// A partition given as the few 512-byte sectors that are not zero, for filesystems whose
/// smallest image is megabytes (XFS: 300 MB by mkfs's rules, 16 MiB at the least): the input is
/// records of a sector number (`u32`, little endian) and the sector's 512 bytes; every other
/// sector of a `len`-byte partition reads as zeros. A record cut short is dropped.
pub struct SparseSectors {
    len: u64,
    sectors: std::collections::BTreeMap<u64, [u8; 512]>,
}

impl SparseSectors {
    /// The partition `data` describes.
    pub fn new(data: &[u8], len: u64) -> SparseSectors {
        let sectors = data
            .chunks_exact(4 + 512)
            .filter_map(|record| {
                let (n, bytes) = record.split_at(4);
                let n = u64::from(u32::from_le_bytes(n.try_into().ok()?));
                Some((n, bytes.try_into().ok()?))
            })
            .collect();
        SparseSectors { len, sectors }
    }
}

impl vmstash_fuse::guestfs::Device for SparseSectors {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(
        &self,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), vmstash_fuse::guestfs::DeviceError> {
        let want = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if offset.checked_add(want).is_none_or(|end| end > self.len) {
            return Err(vmstash_fuse::guestfs::device::PastEnd {
                offset,
                len: buf.len(),
                size: self.len,
            }
            .into());
        }
        buf.fill(0);
        let end = offset + want;
        for (&n, sector) in self.sectors.range(offset / 512..end.div_ceil(512)) {
            let start = n * 512;
            let from = offset.max(start);
            let to = end.min(start + 512);
            let src = &sector[usize::try_from(from - start).unwrap_or(0)
                ..usize::try_from(to - start).unwrap_or(0)];
            let at = usize::try_from(from - offset).unwrap_or(0);
            buf[at..at + src.len()].copy_from_slice(src);
        }
        Ok(())
    }
}

/// CRC32C (Castagnoli), as Btrfs checksums its metadata: for targets that make a mutated
/// block's checksum right again, so that the checks behind it are reached.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}
