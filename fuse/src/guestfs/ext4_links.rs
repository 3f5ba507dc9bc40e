//! Inode numbers and link counts of ext2/3/4 files, which `ext4-view` does not expose: hard
//! links are only visible as two names with one inode number and a link count above one.
//!
//! A deliberately small reader of the on-disk format (superblock, group descriptors, inodes,
//! extent trees and block maps of directories, directory entries), used only to put numbers on
//! the names `ext4-view` lists; contents and all other metadata come from `ext4-view`. It does
//! not replay the journal: a name it cannot find gets a number of its own and a link count of
//! one. Filesystems with `meta_bg` or inline data are left to that fallback entirely. Every
//! field is range-checked, the directory size and extent depth are capped.

use std::collections::HashMap;
use std::sync::Arc;

use super::Device;
use crate::le::{u16_at, u32_at};

/// Superblock offset and the fields used.
const SB_AT: u64 = 1024;
/// Incompatible features that change where things are.
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
/// Inode flags.
const EXTENTS_FL: u32 = 0x8_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
/// Largest directory read (bytes).
const MAX_DIR_BYTES: u64 = 256 << 20;
/// Deepest extent tree followed (ext4 allows 5).
const MAX_EXTENT_DEPTH: u16 = 5;
/// Most extent tree nodes read for one directory.
const MAX_EXTENT_NODES: u32 = 4096;

fn usize_of(n: u64) -> Option<usize> {
    usize::try_from(n).ok()
}

/// What is needed to find inodes and directory blocks.
pub struct Links {
    dev: Arc<dyn Device>,
    block_size: u64,
    inodes_per_group: u32,
    inode_count: u32,
    inode_size: u64,
    /// Where each group's inode table starts, in blocks.
    inode_tables: Vec<u64>,
}

/// A raw inode's fields of interest.
struct RawInode {
    links: u16,
    flags: u32,
    size: u64,
    block: [u8; 60],
}

impl Links {
    /// Reads the superblock and group descriptors; `None` when the layout is one this reader
    /// leaves alone (or is damaged: `ext4-view` will say so).
    pub fn open(dev: Arc<dyn Device>) -> Option<Links> {
        let mut sb = [0u8; 1024];
        dev.read_at(SB_AT, &mut sb).ok()?;
        let inode_count = u32_at(&sb, 0x00)?;
        let first_data_block = u64::from(u32_at(&sb, 0x14)?);
        let log_block = u32_at(&sb, 0x18)?;
        let inodes_per_group = u32_at(&sb, 0x28)?;
        let rev = u32_at(&sb, 0x4C)?;
        let incompat = u32_at(&sb, 0x60)?;
        if log_block > 6 || inodes_per_group == 0 || incompat & INCOMPAT_META_BG != 0 {
            return None;
        }
        let block_size = 1024u64 << log_block;
        let inode_size = if rev == 0 {
            128
        } else {
            u64::from(u16_at(&sb, 0x58)?)
        };
        if !(128..=block_size).contains(&inode_size) {
            return None;
        }
        let desc_size = if incompat & INCOMPAT_64BIT != 0 {
            u64::from(u16_at(&sb, 0xFE)?)
        } else {
            32
        };
        if !(32..=1024).contains(&desc_size) {
            return None;
        }
        let groups = inode_count.div_ceil(inodes_per_group);
        let table_len = u64::from(groups).checked_mul(desc_size)?;
        if table_len > 64 << 20 {
            return None;
        }
        let mut table = vec![0u8; usize_of(table_len)?];
        dev.read_at((first_data_block + 1).checked_mul(block_size)?, &mut table)
            .ok()?;
        let inode_tables = table
            .chunks_exact(usize_of(desc_size)?)
            .map(|d| {
                let lo = u64::from(u32_at(d, 0x08)?);
                let hi = if desc_size >= 64 {
                    u64::from(u32_at(d, 0x28)?)
                } else {
                    0
                };
                Some(hi << 32 | lo)
            })
            .collect::<Option<Vec<u64>>>()?;
        Some(Links {
            dev,
            block_size,
            inodes_per_group,
            inode_count,
            inode_size,
            inode_tables,
        })
    }

    fn inode(&self, ino: u32) -> Option<RawInode> {
        if ino == 0 || ino > self.inode_count {
            return None;
        }
        let index = ino - 1;
        let group = usize::try_from(index / self.inodes_per_group).ok()?;
        let within = u64::from(index % self.inodes_per_group);
        let at = self
            .inode_tables
            .get(group)?
            .checked_mul(self.block_size)?
            .checked_add(within.checked_mul(self.inode_size)?)?;
        let mut raw = [0u8; 128];
        self.dev.read_at(at, &mut raw).ok()?;
        let size_hi = u64::from(u32_at(&raw, 0x6C)?);
        Some(RawInode {
            links: u16_at(&raw, 0x1A)?,
            flags: u32_at(&raw, 0x20)?,
            size: size_hi << 32 | u64::from(u32_at(&raw, 0x04)?),
            block: raw.get(0x28..0x64)?.try_into().ok()?,
        })
    }

    /// The link count of inode `ino`.
    pub fn link_count(&self, ino: u32) -> Option<u16> {
        self.inode(ino).map(|i| i.links)
    }

    /// The (major, minor) number of device node `ino`, from its `i_block` as Linux stores it
    /// (`ext4_inode`: the old 8+8-bit encoding in the first word, or, when that is zero, the new
    /// 12+20-bit one in the second).
    pub fn device_number(&self, ino: u32) -> Option<(u32, u32)> {
        decode_device(&self.inode(ino)?.block)
    }

    /// The names in directory inode `dir` and the inode number of each.
    pub fn names(&self, dir: u32) -> Option<HashMap<Vec<u8>, u32>> {
        let inode = self.inode(dir)?;
        if inode.flags & INLINE_DATA_FL != 0 || inode.size > MAX_DIR_BYTES {
            return None;
        }
        let blocks = inode.size.div_ceil(self.block_size);
        let mut physical = Vec::new();
        if inode.flags & EXTENTS_FL != 0 {
            let mut nodes_left = MAX_EXTENT_NODES;
            self.extents(
                &inode.block,
                MAX_EXTENT_DEPTH,
                blocks,
                &mut nodes_left,
                &mut physical,
            )?;
        } else {
            self.block_map(&inode.block, blocks, &mut physical)?;
        }
        let mut names = HashMap::new();
        let mut buf = vec![0u8; usize_of(self.block_size)?];
        for block in physical.into_iter().flatten() {
            self.dev
                .read_at(block.checked_mul(self.block_size)?, &mut buf)
                .ok()?;
            entries(&buf, &mut names)?;
        }
        Some(names)
    }

    /// Appends the physical blocks of logical blocks `0..blocks` (`None` for a hole) mapped by
    /// the extent tree node `node`.
    fn extents(
        &self,
        node: &[u8],
        depth_left: u16,
        blocks: u64,
        nodes_left: &mut u32,
        out: &mut Vec<Option<u64>>,
    ) -> Option<()> {
        *nodes_left = nodes_left.checked_sub(1)?;
        if u16_at(node, 0)? != 0xF30A {
            return None;
        }
        let count = usize::from(u16_at(node, 2)?);
        let depth = u16_at(node, 6)?;
        if depth > depth_left {
            return None;
        }
        for i in 0..count {
            let e = node.get(12 + i * 12..24 + i * 12)?;
            if depth == 0 {
                let logical = u64::from(u32_at(e, 0)?);
                let len = u16_at(e, 4)?;
                let start = u64::from(u16_at(e, 6)?) << 32 | u64::from(u32_at(e, 8)?);
                let (len, initialised) = if len > 32768 {
                    (len - 32768, false)
                } else {
                    (len, true)
                };
                for k in 0..u64::from(len) {
                    let at = usize_of(logical.checked_add(k)?)?;
                    if u64::try_from(at).ok()? >= blocks {
                        break;
                    }
                    if out.len() <= at {
                        out.resize(at + 1, None);
                    }
                    if let Some(slot) = out.get_mut(at) {
                        *slot = initialised.then_some(start.checked_add(k)?);
                    }
                }
            } else {
                let child = u64::from(u16_at(e, 8)?) << 32 | u64::from(u32_at(e, 4)?);
                let mut buf = vec![0u8; usize_of(self.block_size)?];
                self.dev
                    .read_at(child.checked_mul(self.block_size)?, &mut buf)
                    .ok()?;
                self.extents(&buf, depth - 1, blocks, nodes_left, out)?;
            }
        }
        Some(())
    }

    /// Appends the physical blocks of logical blocks `0..blocks` mapped by an ext2/3 block
    /// map (12 direct pointers, then single, double and triple indirect blocks).
    fn block_map(&self, i_block: &[u8], blocks: u64, out: &mut Vec<Option<u64>>) -> Option<()> {
        for k in 0..15usize {
            if u64::try_from(out.len()).ok()? >= blocks {
                break;
            }
            let ptr = u64::from(u32_at(i_block, k * 4)?);
            let level = k.saturating_sub(11);
            self.indirect(ptr, u32::try_from(level).ok()?, blocks, out)?;
        }
        Some(())
    }

    /// Appends the blocks under pointer `ptr` at indirection `level` (0: a data block).
    fn indirect(
        &self,
        ptr: u64,
        level: u32,
        blocks: u64,
        out: &mut Vec<Option<u64>>,
    ) -> Option<()> {
        let per_block = self.block_size / 4;
        if u64::try_from(out.len()).ok()? >= blocks {
            return Some(());
        }
        if level == 0 {
            out.push((ptr != 0).then_some(ptr));
            return Some(());
        }
        if ptr == 0 {
            let span = per_block.checked_pow(level)?;
            let holes = span.min(blocks - u64::try_from(out.len()).ok()?);
            out.resize(out.len() + usize_of(holes)?, None);
            return Some(());
        }
        let mut buf = vec![0u8; usize_of(self.block_size)?];
        self.dev
            .read_at(ptr.checked_mul(self.block_size)?, &mut buf)
            .ok()?;
        for k in 0..usize_of(per_block)? {
            let child = u64::from(u32_at(&buf, k * 4)?);
            self.indirect(child, level - 1, blocks, out)?;
        }
        Some(())
    }
}

/// Adds the entries of one directory block; `None` when the block is malformed.
/// See [`Links::device_number`].
fn decode_device(block: &[u8]) -> Option<(u32, u32)> {
    let old = u32_at(block, 0)?;
    if old != 0 {
        return Some(((old >> 8) & 0xff, old & 0xff));
    }
    let new = u32_at(block, 4)?;
    Some((
        (new & 0xf_ff00) >> 8,
        (new & 0xff) | ((new >> 12) & 0xf_ff00),
    ))
}

fn entries(block: &[u8], names: &mut HashMap<Vec<u8>, u32>) -> Option<()> {
    let mut at = 0usize;
    while at + 8 <= block.len() {
        let ino = u32_at(block, at)?;
        let rec_len = usize::from(u16_at(block, at + 4)?);
        let name_len = usize::from(*block.get(at + 6)?);
        if rec_len < 8 || at + rec_len > block.len() {
            return None;
        }
        if ino != 0 && name_len > 0 && 8 + name_len <= rec_len {
            let name = block.get(at + 8..at + 8 + name_len)?;
            names.entry(name.to_vec()).or_insert(ino);
        }
        at += rec_len;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Vec<u8> {
        zstd::decode_all(&include_bytes!("../../testdata/ext4.img.zst")[..]).expect("zstd")
    }

    #[test]
    fn device_numbers_in_both_encodings() {
        let mut block = [0u8; 60];
        block[..4].copy_from_slice(&0x0103u32.to_le_bytes());
        assert_eq!(decode_device(&block), Some((1, 3)), "old: /dev/null");
        block[..4].fill(0);
        // Linux's new_encode_dev(MKDEV(259, 70000)).
        let (major, minor) = (259u32, 70_000u32);
        let new = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        block[4..8].copy_from_slice(&new.to_le_bytes());
        assert_eq!(decode_device(&block), Some((major, minor)));
        assert_eq!(super::super::encode_dev(major, minor), new);
    }

    #[test]
    fn names_and_link_counts_of_the_root() {
        let links = Links::open(Arc::new(image())).expect("layout");
        let names = links.names(2).expect("root");
        let hello = names[b"hello".as_slice()];
        assert_eq!(names[b"hard".as_slice()], hello);
        assert_ne!(names[b"link".as_slice()], hello);
        assert_eq!(links.link_count(hello), Some(2));
        assert_eq!(names[b".".as_slice()], 2);
        assert_eq!(links.link_count(0), None);
        assert_eq!(links.link_count(u32::MAX), None);
    }

    #[test]
    fn malformed_directory_blocks_are_refused() {
        let mut names = HashMap::new();
        let mut block = vec![0u8; 1024];
        block[0..4].copy_from_slice(&11u32.to_le_bytes());
        block[4..6].copy_from_slice(&4u16.to_le_bytes());
        assert!(entries(&block, &mut names).is_none(), "rec_len below 8");
        block[4..6].copy_from_slice(&2000u16.to_le_bytes());
        assert!(
            entries(&block, &mut names).is_none(),
            "rec_len past the block"
        );
        block[4..6].copy_from_slice(&1024u16.to_le_bytes());
        block[6] = 200;
        assert!(entries(&block, &mut names).is_some());
        assert!(names.values().all(|&ino| ino == 11));
    }

    #[test]
    fn a_damaged_superblock_or_wrong_layout_gives_none() {
        let mut img = image();
        img[1024 + 0x18] = 9;
        assert!(Links::open(Arc::new(img)).is_none());
        assert!(Links::open(Arc::new(vec![0u8; 100])).is_none());
    }
}
