//! The primary superblock (4 KiB at 64 KiB): where the chunk and root trees are, the sizes
//! of nodes and sectors, the checksum type and the feature flags. The copies at 64 MiB and
//! 256 GiB are not read: a damaged primary superblock is reported, not worked around.

use crate::guestfs::{Device, FsError};
use crate::le::{u16_at, u32_at, u64_at};

use super::checksum::CsumType;
use super::FS;

/// Byte offset of the primary superblock.
pub(super) const SUPER_OFFSET: u64 = 64 * 1024;
/// Its size.
pub(super) const SUPER_SIZE: usize = 4096;
/// The magic number at byte 64 of the superblock.
pub(super) const MAGIC: &[u8; 8] = b"_BHRfS_M";
/// Where the magic is in the superblock.
pub(super) const MAGIC_AT: usize = 0x40;
/// Where `sys_chunk_array` starts in the superblock, and its largest size.
const SYS_CHUNK_ARRAY_AT: usize = 0x32b;
const SYS_CHUNK_ARRAY_MAX: usize = 2048;

/// Incompatible features whose metadata this reader understands (or that do not change
/// what it reads): mixed backrefs, a default subvolume, mixed block groups, LZO and zstd,
/// big metadata, extended inode refs, RAID5/6 (refused per chunk), skinny metadata, no
/// holes, a metadata UUID, RAID1C3/4 (read per chunk), simple quotas.
const KNOWN_INCOMPAT: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11)
    | (1 << 16);
/// The incompatible feature "the tree blocks carry `metadata_uuid`, not `fsid`".
const INCOMPAT_METADATA_UUID: u64 = 1 << 10;

/// Levels a tree may have (the kernel's `BTRFS_MAX_LEVEL`): leaves are level 0, so a root's
/// level is below this.
pub(super) const MAX_LEVELS: u8 = 8;

/// Whether the superblock bytes `sb` (the 4 KiB at 64 KiB) carry Btrfs's magic.
pub(super) fn has_magic(sb: &[u8]) -> bool {
    sb.get(MAGIC_AT..MAGIC_AT + MAGIC.len()) == Some(&MAGIC[..])
}

/// What vmstash reads of the superblock; every value here was checked.
#[derive(Debug, Clone)]
pub(super) struct Superblock {
    /// The UUID every tree block carries (`metadata_uuid` when that feature is on).
    pub tree_fsid: [u8; 16],
    /// Logical address of the root tree's root node, and its level.
    pub root: u64,
    pub root_level: u8,
    /// Logical address of the chunk tree's root node, and its level.
    pub chunk_root: u64,
    pub chunk_root_level: u8,
    /// Size of a tree node (4 KiB to 64 KiB, a power of two).
    pub nodesize: u32,
    /// Size of a sector (4 KiB to 64 KiB, a power of two).
    pub sectorsize: u32,
    /// How metadata blocks are checksummed.
    pub csum: CsumType,
    /// This device's id (the chunk stripes that are on it name it).
    pub devid: u64,
    /// The bootstrap chunks (`sys_chunk_array`), as stored.
    pub sys_chunk_array: Vec<u8>,
}

/// "the superblock …".
fn bad(detail: impl std::fmt::Display) -> FsError {
    FsError::corrupt(FS, format!("superblock: {detail}"))
}

impl Superblock {
    /// Reads and checks the primary superblock of `dev`.
    pub(super) fn read(dev: &dyn Device) -> Result<Superblock, FsError> {
        let mut b = vec![0u8; SUPER_SIZE];
        dev.read_at(SUPER_OFFSET, &mut b)
            .map_err(|e| FsError::device(FS, e))?;
        Superblock::parse(&b)
    }

    /// Checks and parses the superblock bytes `b`.
    pub(super) fn parse(b: &[u8]) -> Result<Superblock, FsError> {
        if !has_magic(b) {
            return Err(bad("no Btrfs magic"));
        }
        let raw_csum = u16_at(b, 0xc4).ok_or_else(|| bad("too short"))?;
        let csum = CsumType::from_raw(raw_csum)
            .ok_or_else(|| FsError::unsupported(FS, format!("checksum type {raw_csum}")))?;
        if !csum.matches(b) {
            return Err(bad("checksum mismatch"));
        }
        let field = |at| u64_at(b, at).ok_or_else(|| bad("too short"));
        let bytenr = field(0x30)?;
        if bytenr != SUPER_OFFSET {
            return Err(bad(format!("says it is at {bytenr}")));
        }
        let incompat = field(0xbc)?;
        let unknown = incompat & !KNOWN_INCOMPAT;
        if unknown != 0 {
            return Err(FsError::unsupported(
                FS,
                format!("incompatible features {unknown:#x} (extent tree v2, RAID stripe tree, …)"),
            ));
        }
        let uuid_at = if incompat & INCOMPAT_METADATA_UUID != 0 {
            0x23b
        } else {
            0x20
        };
        let tree_fsid: [u8; 16] = b
            .get(uuid_at..uuid_at + 16)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad("too short"))?;
        let size = |at, what| -> Result<u32, FsError> {
            let v = u32_at(b, at).ok_or_else(|| bad("too short"))?;
            if !v.is_power_of_two() || !(4096..=65536).contains(&v) {
                return Err(bad(format!("{what} {v}")));
            }
            Ok(v)
        };
        let sectorsize = size(0x90, "sector size")?;
        let nodesize = size(0x94, "node size")?;
        if nodesize < sectorsize {
            return Err(bad(format!(
                "node size {nodesize} below sector size {sectorsize}"
            )));
        }
        let array_len = u32_at(b, 0xa0)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad("too short"))?;
        if array_len > SYS_CHUNK_ARRAY_MAX {
            return Err(bad(format!("sys_chunk_array of {array_len} bytes")));
        }
        let sys_chunk_array = b
            .get(SYS_CHUNK_ARRAY_AT..SYS_CHUNK_ARRAY_AT + array_len)
            .ok_or_else(|| bad("too short"))?
            .to_vec();
        let level = |at: usize| -> Result<u8, FsError> {
            let l = *b.get(at).ok_or_else(|| bad("too short"))?;
            if l >= MAX_LEVELS {
                return Err(bad(format!("tree level {l}")));
            }
            Ok(l)
        };
        Ok(Superblock {
            tree_fsid,
            root: field(0x50)?,
            root_level: level(0xc6)?,
            chunk_root: field(0x58)?,
            chunk_root_level: level(0xc7)?,
            nodesize,
            sectorsize,
            csum,
            devid: field(0xc9)?,
            sys_chunk_array,
        })
    }
}
