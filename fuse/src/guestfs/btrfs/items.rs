//! The encodings of the Btrfs items vmstash reads (the kernel's `fs/btrfs/accessors.h` and
//! `include/uapi/linux/btrfs_tree.h` name every field used here): keys, `INODE_ITEM`,
//! `DIR_INDEX` / `DIR_ITEM`, `EXTENT_DATA`, `ROOT_ITEM`, `ROOT_REF` and `CHUNK_ITEM`. Each
//! parser takes an item's bytes as the leaf holds them and checks their length first;
//! every integer is little-endian.

use crate::le::{u16_at, u32_at, u64_at};

use super::FS;
use crate::guestfs::FsError;

/// Item type of an inode's attributes.
pub(super) const INODE_ITEM: u8 = 1;
/// Item type of a name → inode entry, keyed by the order of creation (what `ls` lists).
pub(super) const DIR_INDEX: u8 = 96;
/// Item type of a file extent.
pub(super) const EXTENT_DATA: u8 = 108;
/// Item type of a tree's root, in the root tree.
pub(super) const ROOT_ITEM: u8 = 132;
/// Item type of "subvolume `offset` has its entry in subvolume `objectid`", in the root tree.
pub(super) const ROOT_REF: u8 = 156;
/// Item type of a chunk (logical → physical mapping), in the chunk tree and sys_chunk_array.
pub(super) const CHUNK_ITEM: u8 = 228;

/// A key: items in a tree are sorted by (objectid, type, offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Key {
    /// Object: an inode number, a tree id, …
    pub objectid: u64,
    /// The item type.
    pub kind: u8,
    /// Type-specific: a file offset, a directory index, a logical address, …
    pub offset: u64,
}

/// Size of an on-disk key (`btrfs_disk_key`).
pub(super) const KEY_SIZE: usize = 17;

impl Key {
    /// A key from its parts.
    pub(super) const fn new(objectid: u64, kind: u8, offset: u64) -> Key {
        Key {
            objectid,
            kind,
            offset,
        }
    }

    /// The key at `at` of `b`.
    pub(super) fn parse(b: &[u8], at: usize) -> Option<Key> {
        Some(Key {
            objectid: u64_at(b, at)?,
            kind: *b.get(at.checked_add(8)?)?,
            offset: u64_at(b, at.checked_add(9)?)?,
        })
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({} {} {})", self.objectid, self.kind, self.offset)
    }
}

/// "item `key` is shorter than its type's encoding".
fn short(key: Key) -> FsError {
    FsError::corrupt(FS, format!("item {key}: too short for its type"))
}

/// A time: seconds since the epoch and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timespec {
    /// Seconds (negative before 1970).
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: u32,
}

/// `btrfs_inode_item`: 160 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InodeItem {
    /// Size in bytes.
    pub size: u64,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Type and permission bits, as `st_mode`.
    pub mode: u32,
    /// A device node's number, as the kernel's internal `dev_t` (major << 20 | minor).
    pub rdev: u64,
    /// Last access.
    pub atime: Timespec,
    /// Last attribute change.
    pub ctime: Timespec,
    /// Last modification.
    pub mtime: Timespec,
    /// Creation ("otime").
    pub otime: Timespec,
}

/// Size of `btrfs_inode_item`.
pub(super) const INODE_ITEM_SIZE: usize = 160;

impl InodeItem {
    /// The inode item `b` of key `key`.
    pub(super) fn parse(key: Key, b: &[u8]) -> Result<InodeItem, FsError> {
        let time = |at: usize| -> Option<Timespec> {
            Some(Timespec {
                sec: i64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?),
                nsec: u32_at(b, at + 8)?,
            })
        };
        let parsed = || -> Option<InodeItem> {
            if b.len() < INODE_ITEM_SIZE {
                return None;
            }
            Some(InodeItem {
                size: u64_at(b, 16)?,
                nlink: u32_at(b, 40)?,
                uid: u32_at(b, 44)?,
                gid: u32_at(b, 48)?,
                mode: u32_at(b, 52)?,
                rdev: u64_at(b, 56)?,
                atime: time(112)?,
                ctime: time(124)?,
                mtime: time(136)?,
                otime: time(148)?,
            })
        };
        parsed().ok_or_else(|| short(key))
    }
}

/// One entry of a `DIR_INDEX` or `DIR_ITEM` item (`btrfs_dir_item` and its name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DirEntryItem {
    /// What the name points to: an inode (`INODE_ITEM`) or a subvolume (`ROOT_ITEM`).
    pub location: Key,
    /// The name.
    pub name: Vec<u8>,
}

/// Size of `btrfs_dir_item` before its name.
const DIR_ITEM_HEADER: usize = 30;

impl DirEntryItem {
    /// Every entry packed in item `b` of key `key` (one for a `DIR_INDEX`; a `DIR_ITEM` holds
    /// the names whose hashes collide).
    pub(super) fn parse_all(key: Key, b: &[u8]) -> Result<Vec<DirEntryItem>, FsError> {
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < b.len() {
            let location = Key::parse(b, at).ok_or_else(|| short(key))?;
            let data_len = u16_at(b, at + 25).ok_or_else(|| short(key))?;
            let name_len = u16_at(b, at + 27).ok_or_else(|| short(key))?;
            let name_at = at + DIR_ITEM_HEADER;
            let name_end = name_at + usize::from(name_len);
            let name = b.get(name_at..name_end).ok_or_else(|| short(key))?;
            out.push(DirEntryItem {
                location,
                name: name.to_vec(),
            });
            at = name_end + usize::from(data_len);
        }
        Ok(out)
    }
}

/// How an extent's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Compression {
    /// Stored as is.
    None,
    /// One zlib stream.
    Zlib,
    /// Btrfs's LZO framing: per-sector segments of LZO1X.
    Lzo,
    /// One or more zstd frames.
    Zstd,
}

/// Where a file extent's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ExtentBody {
    /// In the item itself (possibly compressed).
    Inline(Vec<u8>),
    /// In a disk extent: `disk_bytenr` 0 is a hole.
    Regular {
        /// Logical address of the (whole, possibly shared) disk extent; 0 for a hole.
        disk_bytenr: u64,
        /// Its length on disk.
        disk_num_bytes: u64,
        /// Where this file's part starts, in the decompressed extent.
        extent_offset: u64,
        /// Whether it is preallocated (reads as zeros).
        prealloc: bool,
    },
}

/// `btrfs_file_extent_item`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileExtent {
    /// Decompressed size of the whole extent.
    pub ram_bytes: u64,
    /// Compression.
    pub compression: Compression,
    /// Bytes of the file this item covers (`num_bytes`; for an inline extent, `ram_bytes`).
    pub len: u64,
    /// Where the bytes are.
    pub body: ExtentBody,
}

impl FileExtent {
    /// The file extent `b` of key `key`: encrypted or otherwise encoded extents, and unknown
    /// compression or extent types, are unsupported.
    pub(super) fn parse(key: Key, b: &[u8]) -> Result<FileExtent, FsError> {
        let ram_bytes = u64_at(b, 8).ok_or_else(|| short(key))?;
        let (compression, encryption, other) = (
            *b.get(16).ok_or_else(|| short(key))?,
            *b.get(17).ok_or_else(|| short(key))?,
            u16_at(b, 18).ok_or_else(|| short(key))?,
        );
        let kind = *b.get(20).ok_or_else(|| short(key))?;
        if encryption != 0 || other != 0 {
            return Err(FsError::unsupported(
                FS,
                format!("extent {key}: encrypted or encoded data"),
            ));
        }
        let compression = match compression {
            0 => Compression::None,
            1 => Compression::Zlib,
            2 => Compression::Lzo,
            3 => Compression::Zstd,
            n => {
                return Err(FsError::unsupported(
                    FS,
                    format!("extent {key}: compression type {n}"),
                ))
            }
        };
        let (len, body) = match kind {
            0 => (
                ram_bytes,
                ExtentBody::Inline(b.get(21..).unwrap_or_default().to_vec()),
            ),
            1 | 2 => {
                let field = |at| u64_at(b, at).ok_or_else(|| short(key));
                (
                    field(45)?,
                    ExtentBody::Regular {
                        disk_bytenr: field(21)?,
                        disk_num_bytes: field(29)?,
                        extent_offset: field(37)?,
                        prealloc: kind == 2,
                    },
                )
            }
            n => {
                return Err(FsError::unsupported(
                    FS,
                    format!("extent {key}: extent type {n}"),
                ))
            }
        };
        Ok(FileExtent {
            ram_bytes,
            compression,
            len,
            body,
        })
    }
}

/// What vmstash needs of a `btrfs_root_item`: where the tree's root node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RootItem {
    /// Logical address of the root node.
    pub bytenr: u64,
    /// Its level.
    pub level: u8,
}

impl RootItem {
    /// The root item `b` of key `key`.
    pub(super) fn parse(key: Key, b: &[u8]) -> Result<RootItem, FsError> {
        Ok(RootItem {
            bytenr: u64_at(b, 176).ok_or_else(|| short(key))?,
            level: *b.get(238).ok_or_else(|| short(key))?,
        })
    }
}

/// One stripe of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stripe {
    /// The device it is on.
    pub devid: u64,
    /// Its byte offset on that device.
    pub offset: u64,
}

/// `btrfs_chunk` with its stripes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChunkItem {
    /// Bytes of logical address space it maps.
    pub length: u64,
    /// Block group type and profile bits.
    pub flags: u64,
    /// Its stripes (at least one).
    pub stripes: Vec<Stripe>,
}

/// Size of `btrfs_chunk` before its stripes.
pub(super) const CHUNK_HEADER: usize = 48;
/// Size of one `btrfs_stripe`.
pub(super) const STRIPE_SIZE: usize = 32;

impl ChunkItem {
    /// The chunk at the start of `b` (which may go on past it: sys_chunk_array) of key
    /// `key`, and how many bytes it took.
    pub(super) fn parse(key: Key, b: &[u8]) -> Result<(ChunkItem, usize), FsError> {
        let length = u64_at(b, 0).ok_or_else(|| short(key))?;
        let flags = u64_at(b, 24).ok_or_else(|| short(key))?;
        let num_stripes = u16_at(b, 44).ok_or_else(|| short(key))?;
        if num_stripes == 0 || length == 0 {
            return Err(FsError::corrupt(
                FS,
                format!("chunk {key}: no stripes or no length"),
            ));
        }
        let mut stripes = Vec::with_capacity(usize::from(num_stripes));
        for i in 0..usize::from(num_stripes) {
            let at = CHUNK_HEADER + i * STRIPE_SIZE;
            stripes.push(Stripe {
                devid: u64_at(b, at).ok_or_else(|| short(key))?,
                offset: u64_at(b, at + 8).ok_or_else(|| short(key))?,
            });
        }
        let used = CHUNK_HEADER + usize::from(num_stripes) * STRIPE_SIZE;
        Ok((
            ChunkItem {
                length,
                flags,
                stripes,
            },
            used,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_items_are_damage() {
        let key = Key::new(256, INODE_ITEM, 0);
        assert!(matches!(
            InodeItem::parse(key, &[0u8; 159]),
            Err(FsError::Corrupt { .. })
        ));
        let mut dir = vec![0u8; 30];
        dir[27] = 5; // a 5-byte name that is not there
        assert!(DirEntryItem::parse_all(key, &dir).is_err());
        let mut extent = vec![0u8; 53];
        extent[17] = 1;
        assert!(matches!(
            FileExtent::parse(key, &extent),
            Err(FsError::Unsupported { .. })
        ));
        extent[17] = 0;
        extent[20] = 7;
        assert!(matches!(
            FileExtent::parse(key, &extent),
            Err(FsError::Unsupported { .. })
        ));
        extent[20] = 1;
        assert!(FileExtent::parse(key, &extent[..50]).is_err());
        assert!(ChunkItem::parse(key, &[0u8; 48]).is_err());
    }
}
