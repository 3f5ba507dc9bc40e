//! The XFS superblock (sector 0 of allocation group 0) and the geometry it gives: where an
//! inode number or a filesystem block number is on the partition.
//!
//! Field offsets are those of `struct xfs_dsb` (xfs_format.h). Version 4 and version 5
//! (metadata checksums, `crc=1`) are read; version 5's superblock CRC is checked.

use super::{corrupt, unsupported, XfsResult, FS};
use crate::be::{u16_at, u32_at, u64_at};
use crate::guestfs::{Device, FsError};

/// `XFSB`.
const MAGIC: u32 = 0x5846_5342;
/// Bytes of the superblock read (its sector; the largest sector size XFS allows).
pub(super) const SUPERBLOCK_LEN: usize = 512;
/// Offset of `sb_crc` (little endian, CRC32C of the sector with this field zeroed).
const CRC_AT: usize = 224;
/// `sb_features2` bit: directory entries carry the file type (version 4).
const VERSION2_FTYPE: u32 = 0x200;
/// Version 5 incompatible features vmstash reads: file types in directory entries (1),
/// sparse inode chunks (2), a metadata UUID apart from the user-visible one (4), 64-bit
/// timestamps (8), "needs repair" (16, read anyway, with a log line), 64-bit extent counters
/// (32), atomic file exchange in the log (64), parent pointers (128, extended attributes only).
const INCOMPAT_KNOWN: u32 = 0xff;
/// Version 5 incompatible feature: directory entries carry the file type.
const INCOMPAT_FTYPE: u32 = 1;
/// Version 5 incompatible feature: the filesystem was marked as needing `xfs_repair`.
pub(super) const INCOMPAT_NEEDSREPAIR: u32 = 16;
/// Smallest and largest block sizes XFS allows.
const BLOCK_SIZES: std::ops::RangeInclusive<u32> = 512..=65536;
/// Smallest and largest inode sizes XFS allows.
const INODE_SIZES: std::ops::RangeInclusive<u16> = 256..=2048;
/// Largest directory block XFS allows.
const MAX_DIR_BLOCK: u32 = 65536;

/// What the reader needs of the superblock, validated.
#[derive(Debug, Clone)]
pub(super) struct Superblock {
    /// Version 5: checksummed metadata with the self-describing headers.
    pub(super) v5: bool,
    /// Bytes per filesystem block.
    pub(super) block_size: u32,
    /// log2 of `block_size`.
    pub(super) block_log: u8,
    /// Blocks per allocation group.
    pub(super) ag_blocks: u32,
    /// Bits an allocation group's block number takes in a filesystem block number.
    pub(super) ag_block_log: u8,
    /// Number of allocation groups.
    pub(super) ag_count: u32,
    /// Bytes per inode.
    pub(super) inode_size: u16,
    /// log2 of inodes per block.
    pub(super) inodes_per_block_log: u8,
    /// The root directory's inode number.
    pub(super) root_ino: u64,
    /// Bytes per directory block.
    pub(super) dir_block_size: u32,
    /// Whether directory entries carry a file type byte.
    pub(super) ftype: bool,
    /// Version 5 incompatible features.
    pub(super) incompat: u32,
    /// The UUID metadata blocks carry (`sb_meta_uuid` when set apart, else `sb_uuid`).
    pub(super) meta_uuid: [u8; 16],
    /// First block of the internal log (0: on another device).
    pub(super) log_start: u64,
    /// Blocks of the log.
    pub(super) log_blocks: u32,
}

/// Whether the partition's first bytes are an XFS superblock.
pub(super) fn recognises(head: &[u8]) -> bool {
    u32_at(head, 0) == Some(MAGIC)
}

impl Superblock {
    /// Reads and checks the superblock of `dev`.
    pub(super) fn read(dev: &dyn Device) -> XfsResult<Superblock> {
        let mut b = [0u8; SUPERBLOCK_LEN];
        dev.read_at(0, &mut b).map_err(|e| FsError::device(FS, e))?;
        Superblock::parse(&b)
    }

    /// The superblock in `b` (its first sector).
    pub(super) fn parse(b: &[u8]) -> XfsResult<Superblock> {
        let field = |what: &str| corrupt(format!("superblock: {what} missing"));
        if u32_at(b, 0) != Some(MAGIC) {
            return Err(corrupt("superblock: no XFSB magic"));
        }
        let version = u16_at(b, 100).ok_or_else(|| field("version"))?;
        let v5 = match version & 0xf {
            4 => false,
            5 => true,
            v => return Err(unsupported(format!("superblock version {v}"))),
        };
        if v5 {
            check_crc(b, CRC_AT).map_err(|e| corrupt(format!("superblock: {e}")))?;
        }
        let incompat = if v5 { u32_at(b, 216).unwrap_or(0) } else { 0 };
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(unsupported(format!(
                "incompatible features {:#x}",
                incompat & !INCOMPAT_KNOWN
            )));
        }
        let block_size = u32_at(b, 4).ok_or_else(|| field("block size"))?;
        let block_log = *b.get(120).ok_or_else(|| field("block log"))?;
        if !BLOCK_SIZES.contains(&block_size)
            || 1u32.checked_shl(block_log.into()) != Some(block_size)
        {
            return Err(corrupt(format!("superblock: block size {block_size}")));
        }
        let inode_size = u16_at(b, 104).ok_or_else(|| field("inode size"))?;
        let inodes_per_block_log = *b.get(123).ok_or_else(|| field("inodes per block"))?;
        if !INODE_SIZES.contains(&inode_size)
            || u32::from(inode_size).checked_shl(inodes_per_block_log.into()) != Some(block_size)
        {
            return Err(corrupt(format!(
                "superblock: inode size {inode_size} in {block_size}-byte blocks"
            )));
        }
        let ag_blocks = u32_at(b, 84).ok_or_else(|| field("AG size"))?;
        let ag_block_log = *b.get(124).ok_or_else(|| field("AG block log"))?;
        let ag_count = u32_at(b, 88).ok_or_else(|| field("AG count"))?;
        let fits = 1u64.checked_shl(ag_block_log.into()).unwrap_or(0);
        if ag_blocks == 0 || ag_count == 0 || ag_block_log > 31 || u64::from(ag_blocks) > fits {
            return Err(corrupt(format!(
                "superblock: {ag_count} allocation groups of {ag_blocks} blocks (log {ag_block_log})"
            )));
        }
        let dir_block_log = *b.get(192).ok_or_else(|| field("directory block log"))?;
        let dir_block_size = block_size
            .checked_shl(dir_block_log.into())
            .filter(|&s| s <= MAX_DIR_BLOCK)
            .ok_or_else(|| corrupt(format!("superblock: directory block log {dir_block_log}")))?;
        let features2 = u32_at(b, 200).unwrap_or(0);
        let ftype = if v5 {
            incompat & INCOMPAT_FTYPE != 0
        } else {
            features2 & VERSION2_FTYPE != 0
        };
        let uuid = uuid_at(b, 32).ok_or_else(|| field("UUID"))?;
        let meta_uuid = match uuid_at(b, 248) {
            Some(m) if v5 && incompat & 4 != 0 => m,
            _ => uuid,
        };
        Ok(Superblock {
            v5,
            block_size,
            block_log,
            ag_blocks,
            ag_block_log,
            ag_count,
            inode_size,
            inodes_per_block_log,
            root_ino: u64_at(b, 56).ok_or_else(|| field("root inode"))?,
            dir_block_size,
            ftype,
            incompat,
            meta_uuid,
            log_start: u64_at(b, 48).unwrap_or(0),
            log_blocks: u32_at(b, 96).unwrap_or(0),
        })
    }

    /// The byte offset of filesystem block `fsb` (allocation group in the high bits), or an
    /// error when it is outside every allocation group.
    pub(super) fn block_offset(&self, fsb: u64) -> XfsResult<u64> {
        let ag = fsb >> self.ag_block_log;
        let ag_block = fsb & ((1u64 << self.ag_block_log) - 1);
        if ag >= u64::from(self.ag_count) || ag_block >= u64::from(self.ag_blocks) {
            return Err(corrupt(format!("block {fsb} is outside the filesystem")));
        }
        ag.checked_mul(self.ag_blocks.into())
            .and_then(|b| b.checked_add(ag_block))
            .and_then(|b| b.checked_mul(self.block_size.into()))
            .ok_or_else(|| corrupt(format!("block {fsb} is outside the filesystem")))
    }

    /// The byte offset of inode `ino`, or an error when no inode can have that number.
    pub(super) fn inode_offset(&self, ino: u64) -> XfsResult<u64> {
        let per_block_log = u32::from(self.inodes_per_block_log);
        let in_block = ino & ((1u64 << per_block_log) - 1);
        let block = self
            .block_offset(ino >> per_block_log)
            .map_err(|_| corrupt(format!("inode number {ino} is outside the filesystem")))?;
        block
            .checked_add(in_block * u64::from(self.inode_size))
            .ok_or_else(|| corrupt(format!("inode number {ino} is outside the filesystem")))
    }
}

/// The 16-byte UUID at `at`.
fn uuid_at(b: &[u8], at: usize) -> Option<[u8; 16]> {
    b.get(at..at.checked_add(16)?)?.try_into().ok()
}

/// Checks the CRC32C that XFS stores little endian at `crc_at` of a metadata block, computed
/// over the whole block with that field taken as zero.
pub(super) fn check_crc(block: &[u8], crc_at: usize) -> Result<(), String> {
    let stored = block
        .get(crc_at..crc_at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_le_bytes)
        .ok_or("too short for its checksum")?;
    let before = block.get(..crc_at).ok_or("too short for its checksum")?;
    let after = block
        .get(crc_at + 4..)
        .ok_or("too short for its checksum")?;
    let crc = crc32c::crc32c_append(
        crc32c::crc32c_append(crc32c::crc32c(before), &[0; 4]),
        after,
    );
    if crc == stored {
        Ok(())
    } else {
        Err(format!(
            "checksum {stored:#010x} does not match its bytes ({crc:#010x})"
        ))
    }
}
