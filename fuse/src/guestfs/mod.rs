//! Filesystems inside partitions, browsable read-only as `<disk>/p<N>/…` (DESIGN.md, "The
//! mount"): ext2/3/4 through `ext4-view`, FAT12/16/32 through `fatfs`, NTFS through `ntfs`,
//! XFS and Btrfs through vmstash's own readers ([`xfs`], [`btrfs`]).
//!
//! Each filesystem is a [`GuestFs`]: a small inode-numbered view (its own numbers, below
//! [`MAX_LOCAL_INO`]) that the FUSE layer maps into the mount's inode space. A partition whose
//! filesystem is not recognised, or whose superblock cannot be read, has no `p<N>/` directory;
//! damaged metadata found later gives an error on the paths that need it (EIO in the mount).
//! Every failure says whose fault it is ([`FsError`]): damaged metadata, a feature vmstash
//! does not support, or the backup's bytes unreadable.
//!
//! Every adapter reads the partition through a [`Device`], so unit tests and the fuzz targets
//! feed them bytes in memory.

pub mod btrfs;
pub mod device;
mod error;
pub mod ext4;
pub mod ext4_links;
pub mod fat;
pub mod inodes;
pub mod ntfs;
pub mod xfs;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use device::{Device, DeviceCursor, DeviceError};
pub use error::FsError;

/// The largest inode number an adapter may hand out (the mount keeps the bits above for the
/// filesystem's slot).
pub const MAX_LOCAL_INO: u64 = (1 << 40) - 1;

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A block device node.
    BlockDevice,
    /// A character device node.
    CharDevice,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

/// A file's attributes as the guest has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// What it is.
    pub kind: Kind,
    /// Length in bytes (for a symlink, of its target).
    pub size: u64,
    /// Permission bits (`0o7777`).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Number of names the file has (hard links).
    pub nlink: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification of the contents.
    pub mtime: SystemTime,
    /// Last change of the attributes.
    pub ctime: SystemTime,
    /// Creation.
    pub crtime: SystemTime,
    /// A block or character device node's number, as Linux encodes it for FUSE
    /// ([`encode_dev`]); 0 for everything else.
    pub rdev: u32,
}

/// A device number as Linux's `new_encode_dev` packs it into 32 bits (what FUSE carries): the
/// minor's low 8 bits, the major's 12 bits above them, the minor's next 12 bits above those.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// The major and minor numbers packed by [`encode_dev`].
pub fn decode_dev(rdev: u32) -> (u32, u32) {
    (
        (rdev & 0xf_ff00) >> 8,
        (rdev & 0xff) | ((rdev >> 12) & 0xf_ff00),
    )
}

/// One name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name, as the guest stores it (not necessarily UTF-8 on ext4).
    pub name: Vec<u8>,
    /// The file's inode number in this filesystem.
    pub ino: u64,
    /// Its attributes; `None` when its own metadata (its inode) cannot be read, so the name
    /// still lists and only using it fails (with [`GuestFs::attr`]'s error).
    pub attr: Option<Attr>,
}

/// A read-only filesystem inside a partition.
pub trait GuestFs: Send + Sync {
    /// The filesystem type, for messages ("ext4", "vfat", "ntfs").
    fn type_name(&self) -> &'static str;
    /// The root directory's inode number.
    fn root(&self) -> u64;
    /// The attributes of `ino`.
    fn attr(&self, ino: u64) -> Result<Attr, FsError>;
    /// The entries of directory `ino`, without `.` and `..`.
    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError>;
    /// Up to `len` bytes of file `ino` at `offset`; fewer at its end, none past it.
    fn read(&self, ino: u64, offset: u64, len: u32) -> Result<Vec<u8>, FsError>;
    /// The target of symbolic link `ino`.
    fn read_link(&self, ino: u64) -> Result<Vec<u8>, FsError>;
    /// What the mount's log should say about the filesystem once it is open (a journal not
    /// replayed, a repair flag); nothing by default.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether a directory's change time moves whenever an entry is added to it, removed from
    /// it or renamed in it (true of ext4, XFS and Btrfs, whose kernels set it; not of FAT),
    /// so that a search may reuse what it found in an earlier snapshot's directory with the
    /// same size, modification and change time. False by default.
    fn directory_ctime_tracks_entries(&self) -> bool {
        false
    }
}

/// Who owns files of filesystems that have no owners (FAT, NTFS): the user who mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The filesystem in `dev`, recognised by its signature; `Ok(None)` when it is none of the
/// supported ones, an error when it is one but cannot be opened.
pub fn open(dev: Arc<dyn Device>, owner: Owner) -> Result<Option<Box<dyn GuestFs>>, FsError> {
    let mut head = vec![0u8; 2048];
    let got = dev.len().min(2048);
    head.truncate(usize::try_from(got).unwrap_or(0));
    dev.read_at(0, &mut head)
        .map_err(|e| FsError::device("guest", e))?;
    if ext4::recognises(&head) {
        return Ok(Some(Box::new(ext4::Ext4Fs::open(dev)?)));
    }
    if ntfs::recognises(&head) {
        return Ok(Some(Box::new(ntfs::NtfsFs::open(dev, owner)?)));
    }
    if xfs::recognises(&head) {
        return Ok(Some(Box::new(xfs::XfsFs::open(dev)?)));
    }
    if fat::recognises(&head) {
        return Ok(Some(Box::new(fat::FatFs::open(dev, owner)?)));
    }
    // Btrfs's superblock is at 64 KiB, past the head.
    let (at, len) = btrfs::SUPERBLOCK_RANGE;
    let fits = u64::try_from(len).ok().and_then(|l| at.checked_add(l));
    if fits.is_some_and(|end| end <= dev.len()) {
        let mut sb = vec![0u8; len];
        dev.read_at(at, &mut sb)
            .map_err(|e| FsError::device("guest", e))?;
        if btrfs::recognises(&sb) {
            return Ok(Some(Box::new(btrfs::BtrfsFs::open(dev)?)));
        }
    }
    Ok(None)
}

/// Whether `name` can be a file name in the mount: not empty, not `.` or `..`, no `/` or NUL.
/// Damaged directories can hold anything; entries with other names are left out.
pub fn usable_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// `seconds` and `nanos` since the epoch (negative: before it) as a `SystemTime`; the epoch
/// when out of range.
pub fn time_from_unix(seconds: i64, nanos: u32) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(nanos.min(999_999_999)));
    let whole = Duration::from_secs(seconds.unsigned_abs());
    let t = if seconds >= 0 {
        UNIX_EPOCH.checked_add(whole)
    } else {
        UNIX_EPOCH.checked_sub(whole)
    };
    t.and_then(|t| t.checked_add(nanos)).unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::{decode_dev, encode_dev};

    #[test]
    fn device_numbers_pack_and_unpack() {
        assert_eq!(encode_dev(1, 3), 0x0103);
        assert_eq!(decode_dev(0x0103), (1, 3));
        let packed = encode_dev(259, 70_000);
        assert_eq!(
            packed,
            (70_000 & 0xff) | (259 << 8) | ((70_000 & !0xff) << 12)
        );
        assert_eq!(decode_dev(packed), (259, 70_000));
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! What the adapters' tests share.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::device::{Device, DeviceError};
    use super::{DirEntry, GuestFs};

    /// What a damaged pack under a partition's bytes gives.
    fn pack_error() -> vmstash_repo::Error {
        vmstash_repo::Error::corrupt("data/5e/5eed", "a blob fails its MAC")
    }

    /// Whether `e` is [`pack_error`]'s error, passed up unchanged.
    pub(crate) fn is_pack_error(e: &vmstash_repo::Error) -> bool {
        matches!(e, vmstash_repo::Error::Corrupt { file, .. } if file == "data/5e/5eed")
    }

    /// A partition in memory whose reads start failing, as a damaged pack's would, once
    /// [`Unreadable::fail`] is called: so a filesystem opens, then meets the damage.
    pub(crate) struct Unreadable {
        bytes: Vec<u8>,
        failing: AtomicBool,
    }

    impl Unreadable {
        /// `bytes`, readable for now.
        pub(crate) fn new(bytes: Vec<u8>) -> Self {
            Unreadable {
                bytes,
                failing: AtomicBool::new(false),
            }
        }

        /// Makes every read from now on fail with [`pack_error`].
        pub(crate) fn fail(&self) {
            self.failing.store(true, Ordering::Relaxed);
        }
    }

    impl Device for Unreadable {
        fn len(&self) -> u64 {
            Device::len(&self.bytes)
        }

        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
            if self.failing.load(Ordering::Relaxed) {
                return Err(DeviceError::Read(Arc::new(pack_error())));
            }
            self.bytes.read_at(offset, buf)
        }
    }

    /// The entry `name` of directory `dir`.
    pub(crate) fn entry(fs: &dyn GuestFs, dir: u64, name: &str) -> DirEntry {
        fs.read_dir(dir)
            .expect("list")
            .into_iter()
            .find(|e| e.name == name.as_bytes())
            .unwrap_or_else(|| panic!("no {name}"))
    }

    /// The bytes `testdata/make-ext4-fat.sh` writes into its 40 KiB files.
    pub(crate) fn pattern(len: u32) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from(i * 7 % 251).expect("byte"))
            .collect()
    }

    /// Reads `ino` forward, backward, across blocks and past its end, reusing and reopening
    /// the adapter's open file, and compares every read with `want`.
    pub(crate) fn assert_reads_match(fs: &dyn GuestFs, ino: u64, want: &[u8]) {
        for (offset, len) in [
            (0u64, 4096u32),
            (4096, 8192),
            (1000, 3000),
            (40000, 4096),
            (50000, 10),
        ] {
            let got = fs.read(ino, offset, len).expect("read");
            let start = usize::try_from(offset).expect("offset").min(want.len());
            let end = (start + usize::try_from(len).expect("len")).min(want.len());
            assert_eq!(got, &want[start..end], "at {offset}");
        }
    }
}
