//! An XFS inode (`struct xfs_dinode`, xfs_format.h): its core (mode, owners, times, size)
//! and its data fork, the bytes after the core that hold a short directory, a symlink target,
//! an extent list, the root of a block-map btree or a device number.
//!
//! Version 1 and 2 inodes (version 4 filesystems) have a 100-byte core; version 3 (version 5
//! filesystems) a 176-byte core with a CRC32C over the whole inode, checked here.

use super::superblock::{check_crc, Superblock};
use super::{corrupt, unsupported, XfsResult};
use crate::be::{u16_at, u32_at, u64_at};
use crate::guestfs::{encode_dev, time_from_unix, Attr, Kind};

/// `IN`.
const MAGIC: u16 = 0x494e;
/// Bytes of a version 1 or 2 inode's core.
const CORE_V2: usize = 100;
/// Bytes of a version 3 inode's core.
const CORE_V3: usize = 176;
/// Offset of a version 3 inode's CRC.
const CRC_AT: usize = 100;
/// `di_flags`: the file's data is on the realtime device.
const FLAG_REALTIME: u16 = 0x1;
/// `di_flags2`: timestamps are 64-bit nanosecond counters.
const FLAG2_BIGTIME: u64 = 1 << 3;
/// `di_flags2`: the data fork's extent count is the 64-bit `di_big_nextents`.
const FLAG2_NREXT64: u64 = 1 << 4;
/// Seconds between 1901-12-13T20:45:52Z (a big timestamp's zero) and the Unix epoch.
const BIGTIME_EPOCH_OFFSET: i64 = 1 << 31;

/// How a fork's bytes are laid out (`di_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// A device number (`XFS_DINODE_FMT_DEV`).
    Device,
    /// The data itself, in the inode (`XFS_DINODE_FMT_LOCAL`).
    Local,
    /// An array of extent records (`XFS_DINODE_FMT_EXTENTS`).
    Extents,
    /// The root of a block-map btree (`XFS_DINODE_FMT_BTREE`).
    Btree,
}

/// One inode, checked.
#[derive(Debug, Clone)]
pub(super) struct Inode {
    /// Its number.
    pub(super) ino: u64,
    /// Type and permission bits.
    pub(super) mode: u16,
    /// The data fork's format.
    pub(super) format: Format,
    /// Owner, group and link count.
    uid: u32,
    gid: u32,
    nlink: u32,
    /// Length of the file in bytes.
    pub(super) size: u64,
    /// Records in the data fork (extents format) as the inode counts them.
    pub(super) extents: u64,
    /// Access, modification, change and creation times (seconds, nanoseconds).
    times: [(i64, u32); 4],
    /// The data fork's bytes.
    pub(super) fork: Vec<u8>,
}

impl Inode {
    /// The inode `ino` whose bytes are `b` (one inode's worth).
    pub(super) fn parse(sb: &Superblock, ino: u64, b: &[u8]) -> XfsResult<Inode> {
        let bad = |what: &str| corrupt(format!("inode {ino}: {what}"));
        if u16_at(b, 0) != Some(MAGIC) {
            return Err(bad("no IN magic (not an inode, or unused)"));
        }
        let version = *b.get(4).ok_or_else(|| bad("too short"))?;
        let core = match version {
            1 | 2 if !sb.v5 => CORE_V2,
            3 if sb.v5 => CORE_V3,
            v => {
                return Err(bad(&format!(
                    "version {v} on a version {} filesystem",
                    if sb.v5 { 5 } else { 4 }
                )))
            }
        };
        if sb.v5 {
            check_crc(b, CRC_AT).map_err(|e| bad(&e))?;
            if u64_at(b, 152) != Some(ino) {
                return Err(bad("its own number says it is another inode"));
            }
        }
        let mode = u16_at(b, 2).ok_or_else(|| bad("too short"))?;
        let flags = u16_at(b, 90).unwrap_or(0);
        let flags2 = if sb.v5 {
            u64_at(b, 120).unwrap_or(0)
        } else {
            0
        };
        if flags & FLAG_REALTIME != 0 {
            return Err(unsupported(format!(
                "inode {ino}: data on the realtime device"
            )));
        }
        let format = match b.get(5) {
            Some(0) => Format::Device,
            Some(1) => Format::Local,
            Some(2) => Format::Extents,
            Some(3) => Format::Btree,
            other => return Err(bad(&format!("data fork format {other:?}"))),
        };
        let fork_offset = usize::from(*b.get(82).ok_or_else(|| bad("too short"))?) * 8;
        let fork_end = if fork_offset == 0 {
            b.len()
        } else {
            core.checked_add(fork_offset)
                .filter(|&e| e <= b.len())
                .ok_or_else(|| bad("attribute fork offset past its end"))?
        };
        let fork = b
            .get(core..fork_end)
            .ok_or_else(|| bad("too short"))?
            .to_vec();
        let nlink = if version == 1 {
            u16_at(b, 6).map(u32::from)
        } else {
            u32_at(b, 16)
        };
        let extents = if flags2 & FLAG2_NREXT64 != 0 {
            u64_at(b, 24)
        } else {
            u32_at(b, 76).map(u64::from)
        };
        let time = |at: usize| timestamp(b, at, flags2 & FLAG2_BIGTIME != 0);
        let created = if sb.v5 { time(144) } else { (0, 0) };
        Ok(Inode {
            ino,
            mode,
            format,
            uid: u32_at(b, 8).unwrap_or(0),
            gid: u32_at(b, 12).unwrap_or(0),
            nlink: nlink.unwrap_or(0),
            size: u64_at(b, 56).ok_or_else(|| bad("too short"))?,
            extents: extents.unwrap_or(0),
            times: [time(32), time(40), time(48), created],
            fork,
        })
    }

    /// What the inode is, from its mode's type bits.
    pub(super) fn kind(&self) -> XfsResult<Kind> {
        Ok(match u32::from(self.mode) & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFBLK => Kind::BlockDevice,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            t => return Err(corrupt(format!("inode {}: file type {t:#o}", self.ino))),
        })
    }

    /// The attributes the mount shows.
    pub(super) fn attr(&self) -> XfsResult<Attr> {
        let kind = self.kind()?;
        let rdev = match (kind, self.format) {
            (Kind::BlockDevice | Kind::CharDevice, Format::Device) => {
                // XFS keeps `sysv_encode_dev`: major in the top 14 bits, minor in the low 18.
                let dev = u32_at(&self.fork, 0).unwrap_or(0);
                encode_dev(dev >> 18, dev & 0x3ffff)
            }
            _ => 0,
        };
        let at = |i: usize| {
            let (s, ns) = self.times.get(i).copied().unwrap_or((0, 0));
            time_from_unix(s, ns)
        };
        Ok(Attr {
            kind,
            size: match kind {
                Kind::File | Kind::Dir | Kind::Symlink => self.size,
                _ => 0,
            },
            perm: self.mode & 0o7777,
            uid: self.uid,
            gid: self.gid,
            nlink: self.nlink,
            atime: at(0),
            mtime: at(1),
            ctime: at(2),
            crtime: at(3),
            rdev,
        })
    }
}

/// The timestamp at `at`: seconds and nanoseconds (classic), or nanoseconds since 1901
/// (`bigtime`).
fn timestamp(b: &[u8], at: usize, big: bool) -> (i64, u32) {
    if big {
        let ns = u64_at(b, at).unwrap_or(0);
        let secs = i64::try_from(ns / 1_000_000_000).unwrap_or(0) - BIGTIME_EPOCH_OFFSET;
        (secs, u32::try_from(ns % 1_000_000_000).unwrap_or(0))
    } else {
        let secs = u32_at(b, at).map_or(0, |s| i64::from(s.cast_signed()));
        (secs, u32_at(b, at + 4).unwrap_or(0))
    }
}
