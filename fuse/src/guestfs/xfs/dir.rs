//! XFS directory entries, in the two places they live (xfs_da_format.h):
//!
//! - short form: a directory small enough lives in its inode's data fork
//!   (`xfs_dir2_sf_hdr`, then `xfs_dir2_sf_entry`s);
//! - data blocks: every larger format (block, leaf, node, and btree-mapped directories) keeps
//!   its entries in directory blocks mapped below file offset 32 GiB; the leaf and free-index
//!   blocks above that only index them, so listing a directory of any format is reading its
//!   data blocks. A single-block directory (`XD2B`/`XDB3`) ends with its leaf and a tail;
//!   a data block (`XD2D`/`XDD3`) has entries up to its end.
//!
//! Entries are `xfs_dir2_data_entry` (inode number, name length, name, file type when the
//! filesystem has them, padding to 8 bytes, tag) and free spaces
//! (`xfs_dir2_data_unused`, tagged 0xffff).

use super::superblock::{check_crc, Superblock};
use super::{corrupt, XfsResult};
use crate::be::{u16_at, u32_at, u64_at};

/// File offset where a directory's leaf blocks start; data blocks are below it.
pub(super) const LEAF_OFFSET: u64 = 32 << 30;
/// Magic of a single-block directory (version 4, version 5).
const BLOCK_MAGIC: [u32; 2] = [0x5844_3242, 0x5844_4233];
/// Magic of a data block (version 4, version 5).
const DATA_MAGIC: [u32; 2] = [0x5844_3244, 0x5844_4433];
/// Header bytes of a data or block directory block (version 4, version 5).
const HEADER: [usize; 2] = [16, 64];
/// Offset of a version 5 directory block's CRC.
const CRC_AT: usize = 4;
/// Offsets of a version 5 directory block's filesystem UUID and owning inode.
const UUID_AT: usize = 24;
const OWNER_AT: usize = 40;
/// Tag of a free space in a data block.
const FREE_TAG: u16 = 0xffff;
/// Bytes of a single-block directory's tail (leaf count, stale count), and of one leaf entry.
const TAIL_LEN: usize = 8;
const LEAF_ENTRY_LEN: usize = 8;

/// One name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// The name's bytes.
    pub(super) name: Vec<u8>,
    /// The inode it names.
    pub(super) ino: u64,
}

/// The entries of a short-form directory whose fork is `fork`, without `.` and `..`.
pub(super) fn short_form(sb: &Superblock, dir: u64, fork: &[u8]) -> XfsResult<Vec<Entry>> {
    let bad = || {
        corrupt(format!(
            "directory {dir}: short-form entries run past the inode"
        ))
    };
    let count = *fork.first().ok_or_else(bad)?;
    let wide = *fork.get(1).ok_or_else(bad)? != 0;
    let ino_len = if wide { 8 } else { 4 };
    let mut at = 2 + ino_len;
    let mut out = Vec::with_capacity(count.into());
    for _ in 0..count {
        let len = usize::from(*fork.get(at).ok_or_else(bad)?);
        let name_at = at + 3;
        let name = fork.get(name_at..name_at + len).ok_or_else(bad)?;
        let ino_at = name_at + len + usize::from(sb.ftype);
        let ino = if wide {
            u64_at(fork, ino_at)
        } else {
            u32_at(fork, ino_at).map(u64::from)
        }
        .ok_or_else(bad)?;
        out.push(Entry {
            name: name.to_vec(),
            ino,
        });
        at = ino_at + ino_len;
    }
    Ok(out)
}

/// The entries of directory block `block` (`dir_block_size` bytes, found at directory block
/// number `number`) of directory `dir`, appended to `out`; `.` and `..` are left to the
/// caller.
pub(super) fn data_block(
    sb: &Superblock,
    dir: u64,
    number: u64,
    block: &[u8],
    out: &mut Vec<Entry>,
) -> XfsResult<()> {
    let v = usize::from(sb.v5);
    let here = |what: &str| corrupt(format!("directory {dir}, block {number}: {what}"));
    let magic = u32_at(block, 0).ok_or_else(|| here("too short"))?;
    let single = BLOCK_MAGIC.get(v) == Some(&magic);
    if !single && DATA_MAGIC.get(v) != Some(&magic) {
        return Err(here(&format!(
            "magic {magic:#010x} is not a directory data block's"
        )));
    }
    if sb.v5 {
        check_crc(block, CRC_AT).map_err(|e| here(&e))?;
        if u64_at(block, OWNER_AT) != Some(dir)
            || block.get(UUID_AT..UUID_AT + 16) != Some(&sb.meta_uuid[..])
        {
            return Err(here("belongs to another directory or filesystem"));
        }
    }
    let end = if single {
        let tail = block
            .len()
            .checked_sub(TAIL_LEN)
            .ok_or_else(|| here("too short"))?;
        let leaves = usize::try_from(u32_at(block, tail).unwrap_or(u32::MAX)).unwrap_or(usize::MAX);
        leaves
            .checked_mul(LEAF_ENTRY_LEN)
            .and_then(|l| tail.checked_sub(l))
            .ok_or_else(|| here("its leaf is larger than the block"))?
    } else {
        block.len()
    };
    let mut at = HEADER.get(v).copied().unwrap_or(usize::MAX);
    while at < end {
        if u16_at(block, at) == Some(FREE_TAG) {
            let len = usize::from(u16_at(block, at + 2).unwrap_or(0));
            if len < 8 || len % 8 != 0 {
                return Err(here(&format!("a free space of {len} bytes at {at}")));
            }
            at += len;
            continue;
        }
        let ino = u64_at(block, at).ok_or_else(|| here("an entry runs past its end"))?;
        let len = usize::from(
            *block
                .get(at + 8)
                .ok_or_else(|| here("an entry runs past its end"))?,
        );
        let name = block
            .get(at + 9..at + 9 + len)
            .filter(|_| len > 0)
            .ok_or_else(|| here(&format!("a {len}-byte name at {at}")))?;
        let size = (8 + 1 + len + usize::from(sb.ftype) + 2).next_multiple_of(8);
        if at + size > end {
            return Err(here("an entry runs past its end"));
        }
        out.push(Entry {
            name: name.to_vec(),
            ino,
        });
        at += size;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guestfs::xfs::tests::v5_superblock;

    #[test]
    fn short_form_entries_with_four_and_eight_byte_inode_numbers() {
        let sb = v5_superblock();
        // count 2, i8count 0, parent 128; "a" -> 131, "bc" -> 132 (with ftype bytes).
        let mut fork = vec![2, 0, 0, 0, 0, 128];
        fork.extend([1, 0, 0x60, b'a', 1, 0, 0, 0, 131]);
        fork.extend([2, 0, 0x70, b'b', b'c', 2, 0, 0, 0, 132]);
        let got = short_form(&sb, 128, &fork).expect("parses");
        assert_eq!(
            got[0],
            Entry {
                name: b"a".to_vec(),
                ino: 131
            }
        );
        assert_eq!(
            got[1],
            Entry {
                name: b"bc".to_vec(),
                ino: 132
            }
        );
        assert!(
            short_form(&sb, 128, &fork[..fork.len() - 1]).is_err(),
            "cut short"
        );
        let mut wide = vec![1, 1, 0, 0, 0, 0, 0, 0, 0, 128, 1, 0, 0x60, b'x', 1];
        wide.extend(0x1_0000_0080u64.to_be_bytes());
        let got = short_form(&sb, 128, &wide).expect("parses");
        assert_eq!(
            got,
            [Entry {
                name: b"x".to_vec(),
                ino: 0x1_0000_0080
            }]
        );
    }
}
