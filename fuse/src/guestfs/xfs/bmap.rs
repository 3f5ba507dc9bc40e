//! Where a file's blocks are: its data fork's extent records (`xfs_bmbt_rec`), either listed in
//! the inode (extents format) or in the leaves of a block-map btree whose root is in the inode
//! (btree format, `xfs_bmdr_block` then `xfs_btree_block` long-format nodes and leaves).
//!
//! The whole list is read at once and kept sorted by file offset; a lookup is a binary
//! search. The list is bounded by the inode's own extent count, and the btree by its depth.

use std::cell::Cell;

use super::inode::{Format, Inode};
use super::superblock::{check_crc, Superblock};
use super::{corrupt, XfsResult};
use crate::be::{u16_at, u32_at, u64_at};
use crate::guestfs::{Device, FsError};

/// Bytes of one extent record.
const RECORD_LEN: usize = 16;
/// Bytes of a key or a pointer in a block-map btree.
const KEY_LEN: usize = 8;
/// `BMAP`: a version 4 block-map btree block.
const MAGIC_V4: u32 = 0x424d_4150;
/// `BMA3`: a version 5 block-map btree block.
const MAGIC_V5: u32 = 0x424d_4133;
/// Header bytes of a long-format btree block (version 4, version 5).
const HEADER_V4: usize = 24;
const HEADER_V5: usize = 72;
/// Offset of a version 5 btree block's CRC.
const BTREE_CRC_AT: usize = 64;
/// Deepest block-map btree accepted (XFS's own limit is 9 levels for 2^48 extents).
const MAX_LEVELS: u16 = 10;
/// Most extents one file may have here (64-bit counters allow far more; 2^24 extents is
/// 384 MiB of list).
const MAX_EXTENTS: u64 = 1 << 24;

/// One run of a file's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Extent {
    /// First file block it maps.
    pub(super) offset: u64,
    /// First filesystem block it maps to.
    pub(super) block: u64,
    /// Number of blocks.
    pub(super) count: u64,
    /// Allocated but never written: reads as zeros.
    pub(super) unwritten: bool,
}

/// The record at `b` (128 bits, big endian: flag, 54-bit offset, 52-bit block, 21-bit count).
fn record(b: &[u8]) -> Option<Extent> {
    let l0 = u64_at(b, 0)?;
    let l1 = u64_at(b, 8)?;
    Some(Extent {
        offset: (l0 & ((1 << 63) - 1)) >> 9,
        block: ((l0 & 0x1ff) << 43) | (l1 >> 21),
        count: l1 & ((1 << 21) - 1),
        unwritten: l0 >> 63 != 0,
    })
}

/// The extents of `inode`'s data fork, sorted by file offset and checked not to overlap.
pub(super) fn extents(dev: &dyn Device, sb: &Superblock, inode: &Inode) -> XfsResult<Vec<Extent>> {
    let ino = inode.ino;
    if inode.extents > MAX_EXTENTS {
        return Err(corrupt(format!("inode {ino}: {} extents", inode.extents)));
    }
    let mut list = Vec::new();
    match inode.format {
        Format::Extents => {
            let n = usize::try_from(inode.extents).unwrap_or(usize::MAX);
            let bytes = n
                .checked_mul(RECORD_LEN)
                .and_then(|len| inode.fork.get(..len))
                .ok_or_else(|| corrupt(format!("inode {ino}: {n} extents do not fit in it")))?;
            list.extend(bytes.chunks_exact(RECORD_LEN).filter_map(record));
        }
        Format::Btree => {
            let walk = Walk {
                dev,
                sb,
                ino,
                limit: inode.extents,
                visits: Cell::new(0),
            };
            walk.root(&inode.fork, &mut list)?;
        }
        Format::Local | Format::Device => {}
    }
    list.retain(|e| e.count > 0);
    list.sort_by_key(|e| e.offset);
    for pair in list.windows(2) {
        if let [a, b] = pair {
            if a.offset
                .checked_add(a.count)
                .is_none_or(|end| end > b.offset)
            {
                return Err(corrupt(format!(
                    "inode {ino}: extents overlap at file block {}",
                    b.offset
                )));
            }
        }
    }
    Ok(list)
}

/// A walk of one inode's block-map btree.
struct Walk<'a> {
    dev: &'a dyn Device,
    sb: &'a Superblock,
    ino: u64,
    /// The inode's extent count: more records than this is damage.
    limit: u64,
    /// Blocks read so far: a valid tree has at most about one per extent, so a damaged one
    /// whose nodes point at each other or at empty leaves is cut short.
    visits: Cell<u64>,
}

impl Walk<'_> {
    /// The root in the inode's fork: level, record count, then keys and pointers, each array
    /// sized for as many as the fork could hold.
    fn root(&self, fork: &[u8], out: &mut Vec<Extent>) -> XfsResult<()> {
        let level = u16_at(fork, 0).ok_or_else(|| self.bad("btree root too short"))?;
        let n = usize::from(u16_at(fork, 2).unwrap_or(0));
        let max = fork.len().saturating_sub(4) / (2 * KEY_LEN);
        if level == 0 || level > MAX_LEVELS || n > max {
            return Err(self.bad(&format!("btree root: level {level}, {n} records")));
        }
        let ptrs = 4 + max * KEY_LEN;
        for i in 0..n {
            let child =
                u64_at(fork, ptrs + i * KEY_LEN).ok_or_else(|| self.bad("btree root too short"))?;
            self.node(child, level - 1, out)?;
        }
        Ok(())
    }

    /// The btree block `fsb`, expected at `level`.
    fn node(&self, fsb: u64, level: u16, out: &mut Vec<Extent>) -> XfsResult<()> {
        self.visits.set(self.visits.get() + 1);
        if self.visits.get() > self.limit.saturating_mul(2).saturating_add(64) {
            return Err(self.bad("its block-map btree has more blocks than extents"));
        }
        let at = self
            .sb
            .block_offset(fsb)
            .map_err(|_| self.bad(&format!("btree block {fsb} outside the filesystem")))?;
        let mut b = vec![0u8; usize::try_from(self.sb.block_size).unwrap_or(0)];
        self.dev
            .read_at(at, &mut b)
            .map_err(|e| FsError::device(super::FS, e))?;
        let header = if self.sb.v5 { HEADER_V5 } else { HEADER_V4 };
        let magic = if self.sb.v5 { MAGIC_V5 } else { MAGIC_V4 };
        let here = |what: &str| self.bad(&format!("btree block {fsb}: {what}"));
        if u32_at(&b, 0) != Some(magic) {
            return Err(here("wrong magic"));
        }
        if self.sb.v5 {
            check_crc(&b, BTREE_CRC_AT).map_err(|e| here(&e))?;
            if u64_at(&b, 56) != Some(self.ino) || b.get(40..56) != Some(&self.sb.meta_uuid[..]) {
                return Err(here("belongs to another inode or filesystem"));
            }
        }
        let got_level = u16_at(&b, 4).unwrap_or(u16::MAX);
        let n = usize::from(u16_at(&b, 6).unwrap_or(0));
        let body = b.len().saturating_sub(header);
        if got_level != level {
            return Err(here(&format!("level {got_level}, expected {level}")));
        }
        if level == 0 {
            let recs = b
                .get(
                    header
                        ..header
                            + n.checked_mul(RECORD_LEN)
                                .filter(|&l| l <= body)
                                .ok_or_else(|| here("too many records"))?,
                )
                .ok_or_else(|| here("too many records"))?;
            let total = u64::try_from(out.len() + n).unwrap_or(u64::MAX);
            if total > self.limit {
                return Err(self.bad(&format!(
                    "more extents in its btree than its count {}",
                    self.limit
                )));
            }
            out.extend(recs.chunks_exact(RECORD_LEN).filter_map(record));
            return Ok(());
        }
        let max = body / (2 * KEY_LEN);
        if n > max {
            return Err(here("too many records"));
        }
        let ptrs = header + max * KEY_LEN;
        for i in 0..n {
            let child = u64_at(&b, ptrs + i * KEY_LEN).ok_or_else(|| here("too short"))?;
            self.node(child, level - 1, out)?;
        }
        Ok(())
    }

    fn bad(&self, what: &str) -> FsError {
        corrupt(format!("inode {}: {what}", self.ino))
    }
}

/// The extent holding file block `block`, or the first one after it (a hole up to there);
/// `None` past the last one.
pub(super) fn find(list: &[Extent], block: u64) -> Option<&Extent> {
    let i = list.partition_point(|e| e.offset + e.count <= block);
    list.get(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_splits_into_its_four_fields() {
        // Unwritten, offset 5, block 0x8_0000_1234_5678 (bits on both sides of the split), 100 blocks.
        let l0: u64 = (1 << 63) | (5 << 9) | (0x8_0000_1234_5678u64 >> 43);
        let l1: u64 = ((0x8_0000_1234_5678u64 & ((1 << 43) - 1)) << 21) | 100;
        let mut b = l0.to_be_bytes().to_vec();
        b.extend(l1.to_be_bytes());
        assert_eq!(
            record(&b),
            Some(Extent {
                offset: 5,
                block: 0x8_0000_1234_5678,
                count: 100,
                unwritten: true
            })
        );
        assert_eq!(record(&b[..15]), None);
    }

    #[test]
    fn find_gives_the_extent_or_the_next_one() {
        let e = |offset, count| Extent {
            offset,
            block: 100,
            count,
            unwritten: false,
        };
        let list = [e(0, 4), e(10, 2)];
        assert_eq!(find(&list, 3), Some(&list[0]));
        assert_eq!(find(&list, 4), Some(&list[1]));
        assert_eq!(find(&list, 11), Some(&list[1]));
        assert_eq!(find(&list, 12), None);
    }
}
