//! The logical → physical map: every tree block and extent address in Btrfs is logical, and
//! chunks map ranges of it onto stripes of devices. The superblock's `sys_chunk_array` maps
//! the chunk tree itself; the chunk tree maps the rest.
//!
//! vmstash reads one device (a partition or disk image), so only chunks with a copy on it are
//! readable: SINGLE and DUP (the first stripe: DUP's two stripes hold the same bytes) and
//! RAID1/RAID1C3/RAID1C4 (the first stripe on this device). RAID0, RAID10, RAID5 and RAID6
//! spread one copy over several stripes, and chunks with no stripe on this device live on
//! another disk: reading them is unsupported (an error on the files that need them, not
//! when the filesystem opens).

use std::collections::BTreeMap;

use crate::guestfs::FsError;

use super::items::{ChunkItem, Key, CHUNK_ITEM, KEY_SIZE};
use super::FS;

/// Most chunks kept: a 16 TiB filesystem of 1 GiB data chunks has ~16,000; the map's
/// memory is bounded by this whatever the chunk tree claims.
pub(super) const MAX_CHUNKS: usize = 1 << 20;

/// Profile bits of a block group (`BTRFS_BLOCK_GROUP_*`).
const RAID0: u64 = 1 << 3;
const RAID1: u64 = 1 << 4;
const DUP: u64 = 1 << 5;
const RAID10: u64 = 1 << 6;
const RAID5: u64 = 1 << 7;
const RAID6: u64 = 1 << 8;
const RAID1C3: u64 = 1 << 9;
const RAID1C4: u64 = 1 << 10;

/// Where one chunk's bytes are on this device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    /// Bytes of logical address space.
    length: u64,
    /// Physical offset on this device, or why it cannot be read here.
    physical: Result<u64, String>,
}

/// The chunks known so far, by logical start.
#[derive(Debug, Default)]
pub(super) struct ChunkMap {
    chunks: BTreeMap<u64, Mapping>,
}

impl ChunkMap {
    /// The map of the bootstrap chunks in `sys_chunk_array` (a sequence of key + chunk).
    pub(super) fn from_sys_array(array: &[u8], devid: u64) -> Result<ChunkMap, FsError> {
        let mut map = ChunkMap::default();
        let mut at = 0usize;
        while at < array.len() {
            let key = Key::parse(array, at).ok_or_else(|| {
                FsError::corrupt(FS, format!("sys_chunk_array: key cut short at {at}"))
            })?;
            if key.kind != CHUNK_ITEM {
                return Err(FsError::corrupt(
                    FS,
                    format!("sys_chunk_array: item {key} is not a chunk"),
                ));
            }
            let rest = array.get(at + KEY_SIZE..).unwrap_or_default();
            let (chunk, used) = ChunkItem::parse(key, rest)?;
            map.insert(key.offset, &chunk, devid)?;
            at = at + KEY_SIZE + used;
        }
        if map.chunks.is_empty() {
            return Err(FsError::corrupt(FS, "sys_chunk_array: no chunks"));
        }
        Ok(map)
    }

    /// Adds the chunk at logical `start`, as found on device `devid`. Overlapping chunks
    /// are damage; the same chunk twice (sys_chunk_array and the chunk tree) is fine.
    pub(super) fn insert(
        &mut self,
        start: u64,
        chunk: &ChunkItem,
        devid: u64,
    ) -> Result<(), FsError> {
        let end = start
            .checked_add(chunk.length)
            .ok_or_else(|| FsError::corrupt(FS, format!("chunk at {start}: length past 2^64")))?;
        let mapping = Mapping {
            length: chunk.length,
            physical: physical(chunk, devid),
        };
        if let Some(known) = self.chunks.get(&start) {
            if *known == mapping {
                return Ok(());
            }
        }
        let before = self.chunks.range(..end).next_back();
        if let Some((&s, m)) = before {
            if s.saturating_add(m.length) > start {
                return Err(FsError::corrupt(
                    FS,
                    format!("chunk at {start} overlaps the chunk at {s}"),
                ));
            }
        }
        if self.chunks.len() >= MAX_CHUNKS {
            return Err(FsError::unsupported(
                FS,
                format!("more than {MAX_CHUNKS} chunks"),
            ));
        }
        self.chunks.insert(start, mapping);
        Ok(())
    }

    /// The physical offset of `logical` and how many bytes from there on are contiguous
    /// (to the chunk's end). No chunk there is damage; a chunk not on this device is
    /// unsupported.
    pub(super) fn map(&self, logical: u64) -> Result<(u64, u64), FsError> {
        let (start, m) = self
            .chunks
            .range(..=logical)
            .next_back()
            .filter(|(s, m)| logical - **s < m.length)
            .ok_or_else(|| {
                FsError::corrupt(FS, format!("logical address {logical} is in no chunk"))
            })?;
        let into = logical - start;
        let physical = m
            .physical
            .as_ref()
            .map_err(|why| FsError::unsupported(FS, format!("chunk at {start}: {why}")))?;
        let at = physical.checked_add(into).ok_or_else(|| {
            FsError::corrupt(FS, format!("chunk at {start}: physical offset past 2^64"))
        })?;
        Ok((at, m.length - into))
    }
}

/// Where `chunk`'s bytes are on device `devid`, or why they cannot be read there.
fn physical(chunk: &ChunkItem, devid: u64) -> Result<u64, String> {
    let striped = chunk.flags & (RAID0 | RAID10 | RAID5 | RAID6);
    if striped != 0 {
        return Err(format!(
            "striped profile {striped:#x} (RAID0/10/5/6) spans several devices"
        ));
    }
    let mirrored = chunk.flags & (RAID1 | RAID1C3 | RAID1C4 | DUP) != 0;
    let candidates = if mirrored {
        &chunk.stripes[..]
    } else {
        chunk.stripes.get(..1).unwrap_or_default()
    };
    candidates
        .iter()
        .find(|s| s.devid == devid)
        .map(|s| s.offset)
        .ok_or_else(|| format!("its data is on another device (not devid {devid})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guestfs::btrfs::items::Stripe;

    fn chunk(length: u64, flags: u64, stripes: &[(u64, u64)]) -> ChunkItem {
        ChunkItem {
            length,
            flags,
            stripes: stripes
                .iter()
                .map(|&(devid, offset)| Stripe { devid, offset })
                .collect(),
        }
    }

    #[test]
    fn profiles_and_overlaps() {
        let mut map = ChunkMap::default();
        map.insert(1000, &chunk(100, 2 | DUP, &[(1, 5000), (1, 9000)]), 1)
            .expect("dup");
        assert_eq!(map.map(1010).expect("mapped"), (5010, 90));
        map.insert(2000, &chunk(100, 1 | RAID1, &[(2, 0), (1, 7000)]), 1)
            .expect("raid1");
        assert_eq!(map.map(2000).expect("mapped"), (7000, 100));
        map.insert(3000, &chunk(100, 1 | RAID0, &[(1, 0), (2, 0)]), 1)
            .expect("raid0 is known, not readable");
        assert!(matches!(map.map(3050), Err(FsError::Unsupported { .. })));
        map.insert(4000, &chunk(100, 1, &[(2, 0)]), 1)
            .expect("another device");
        assert!(matches!(map.map(4000), Err(FsError::Unsupported { .. })));
        assert!(matches!(map.map(1100), Err(FsError::Corrupt { .. })));
        assert!(map.insert(1050, &chunk(100, 1, &[(1, 0)]), 1).is_err());
        assert!(map
            .insert(u64::MAX - 5, &chunk(100, 1, &[(1, 0)]), 1)
            .is_err());
    }
}
