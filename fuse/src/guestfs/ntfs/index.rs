//! Listing a directory: its `$I30` index walked here, not by the crate's iterator (which loops
//! forever on an index whose nodes point back to each other). The walk is in order (each
//! entry's subnode before the entry), visits each index record once, checks every record
//! ([`record`](super::record)) before the crate parses it, and is capped in entries, nodes
//! and depth.

use std::collections::HashSet;
use std::io::SeekFrom;

use ntfs::attribute_value::NtfsAttributeValue;
use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{
    NtfsFileName, NtfsFileNamespace, NtfsIndexAllocation, NtfsIndexRoot,
};
use ntfs::types::Vcn;
use ntfs::{Ntfs, NtfsAttributeType, NtfsFile, NtfsIndexEntry, NtfsIndexEntryFlags, NtfsReadSeek};

use super::mft::Loaded;
use super::record;
use super::{corrupt, crate_error, NtfsFs, FIRST_USER_RECORD, FS};
use crate::guestfs::{DeviceCursor, DirEntry, FsError, MAX_LOCAL_INO};

/// The name of a directory's file name index.
const DIRECTORY_INDEX: &str = "$I30";
/// Entries of one directory.
const MAX_DIR_ENTRIES: usize = 1_000_000;
/// Index nodes read for one directory (a million names fill some 40,000 of 4 KiB).
const MAX_INDEX_NODES: usize = 100_000;
/// B-tree depth (a real one is 3 or 4 deep).
const MAX_INDEX_DEPTH: u32 = 64;

/// The state of one directory walk.
struct Walk<'a, 'n, 'f> {
    cursor: &'a mut DeviceCursor,
    allocation: Option<(
        &'a NtfsIndexAllocation<'n, 'f>,
        &'a NtfsAttributeValue<'n, 'f>,
    )>,
    record_size: u32,
    visited: HashSet<i64>,
    entries: Vec<(u64, NtfsFileName)>,
}

impl NtfsFs {
    /// The entries of directory `dir`: metafiles, DOS names, names that cannot be POSIX file
    /// names and second entries of a name left out; an entry whose record cannot be read
    /// listed without attributes.
    pub(super) fn list(
        &self,
        cursor: &mut DeviceCursor,
        dir: &Loaded<'_>,
    ) -> Result<Vec<DirEntry>, FsError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (number, name) in self.index_entries(cursor, &dir.file)? {
            if name.namespace() == NtfsFileNamespace::Dos
                || !(FIRST_USER_RECORD..=MAX_LOCAL_INO).contains(&number)
            {
                continue;
            }
            let bytes = name.name().to_string_lossy().into_bytes();
            if bytes.is_empty()
                || bytes == b"."
                || bytes == b".."
                || bytes.iter().any(|b| *b == b'/' || *b == 0)
                || !seen.insert(bytes.clone())
            {
                continue;
            }
            // A file whose record cannot be read still lists; using it fails.
            let attr = self
                .load(cursor, number)
                .and_then(|f| self.inspect(cursor, &f))
                .ok()
                .map(|node| self.attr_of(&node));
            out.push(DirEntry {
                name: bytes,
                ino: number,
                attr,
            });
        }
        Ok(out)
    }

    /// The entries of directory `file`'s `$I30` index, in index order.
    fn index_entries(
        &self,
        cursor: &mut DeviceCursor,
        file: &NtfsFile<'_>,
    ) -> Result<Vec<(u64, NtfsFileName)>, FsError> {
        let root_item = self
            .find_attribute(cursor, file, NtfsAttributeType::IndexRoot, DIRECTORY_INDEX)?
            .ok_or_else(|| corrupt("a directory has no $I30 index"))?;
        let root_attribute = root_item.to_attribute().map_err(crate_error)?;
        let NtfsAttributeValue::Resident(value) =
            root_attribute.value(cursor).map_err(crate_error)?
        else {
            return Err(corrupt("a directory's index root is not resident"));
        };
        let record_size = record::check_index_root(value.data()).map_err(corrupt)?;
        let root = root_attribute
            .resident_structured_value::<NtfsIndexRoot>()
            .map_err(crate_error)?;
        let allocation_item = if root.is_large_index() {
            if !record::INDEX_RECORD_SIZES.contains(&record_size) || !record_size.is_power_of_two()
            {
                return Err(corrupt(format!("index records of {record_size} bytes")));
            }
            Some(
                self.find_attribute(
                    cursor,
                    file,
                    NtfsAttributeType::IndexAllocation,
                    DIRECTORY_INDEX,
                )?
                .ok_or_else(|| corrupt("a large directory has no $INDEX_ALLOCATION"))?,
            )
        } else {
            None
        };
        let allocation_attribute = allocation_item
            .as_ref()
            .map(|item| item.to_attribute())
            .transpose()
            .map_err(crate_error)?;
        let allocation_value = allocation_attribute
            .as_ref()
            .map(|a| a.value(cursor))
            .transpose()
            .map_err(crate_error)?;
        let allocation = allocation_attribute
            .as_ref()
            .map(|a| a.structured_value::<_, NtfsIndexAllocation>(cursor))
            .transpose()
            .map_err(crate_error)?;
        let mut walk = Walk {
            cursor,
            allocation: allocation.as_ref().zip(allocation_value.as_ref()),
            record_size,
            visited: HashSet::new(),
            entries: Vec::new(),
        };
        let entries = root.entries::<NtfsFileNameIndex>().map_err(crate_error)?;
        walk_node(&self.ntfs, &mut walk, entries, 0)?;
        Ok(walk.entries)
    }
}

/// Walks an index node in order: each entry's subnode before the entry.
fn walk_node<'s>(
    ntfs: &Ntfs,
    walk: &mut Walk<'_, '_, '_>,
    entries: impl Iterator<Item = ntfs::Result<NtfsIndexEntry<'s, NtfsFileNameIndex>>>,
    depth: u32,
) -> Result<(), FsError> {
    for entry in entries {
        let entry = entry.map_err(crate_error)?;
        if let Some(vcn) = entry.subnode_vcn() {
            walk_subnode(ntfs, walk, vcn.map_err(crate_error)?, depth + 1)?;
        }
        if entry.flags().contains(NtfsIndexEntryFlags::LAST_ENTRY) {
            break;
        }
        if let Some(key) = entry.key() {
            if walk.entries.len() >= MAX_DIR_ENTRIES {
                // Valid NTFS, but more than the mount lists of one directory.
                return Err(FsError::unsupported(
                    FS,
                    format!("a directory of more than {MAX_DIR_ENTRIES} entries"),
                ));
            }
            let number = entry.file_reference().file_record_number();
            walk.entries.push((number, key.map_err(crate_error)?));
        }
    }
    Ok(())
}

/// Walks the index record at `vcn` of the directory's `$INDEX_ALLOCATION`, once.
fn walk_subnode(
    ntfs: &Ntfs,
    walk: &mut Walk<'_, '_, '_>,
    vcn: Vcn,
    depth: u32,
) -> Result<(), FsError> {
    let (allocation, value) = walk
        .allocation
        .ok_or_else(|| corrupt("an index entry points into a missing allocation"))?;
    if depth > MAX_INDEX_DEPTH {
        return Err(corrupt("a directory index is too deep"));
    }
    if walk.visited.len() >= MAX_INDEX_NODES {
        return Err(FsError::unsupported(
            FS,
            format!("a directory index of more than {MAX_INDEX_NODES} nodes"),
        ));
    }
    if !walk.visited.insert(vcn.value()) {
        return Err(corrupt("a directory index node is reached twice"));
    }
    // Read the record as the crate will (from the same offset of the same value) and check it.
    let offset = vcn
        .offset(ntfs)
        .ok()
        .and_then(|o| u64::try_from(o).ok())
        .ok_or_else(|| corrupt(format!("index record VCN {vcn} is out of range")))?;
    let mut raw_value = value.clone();
    if offset >= raw_value.len() {
        return Err(corrupt(format!(
            "index record VCN {vcn} is past the index's end"
        )));
    }
    raw_value
        .seek(walk.cursor, SeekFrom::Start(offset))
        .map_err(crate_error)?;
    let mut raw = vec![0u8; usize::try_from(walk.record_size).unwrap_or(0)];
    raw_value
        .read_exact(walk.cursor, &mut raw)
        .map_err(crate_error)?;
    record::check_index_record(raw).map_err(corrupt)?;
    let node = allocation
        .record_from_vcn(walk.cursor, walk.record_size, vcn)
        .map_err(crate_error)?;
    let entries = node.entries::<NtfsFileNameIndex>().map_err(crate_error)?;
    walk_node(ntfs, walk, entries, depth)
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{entry, fixture, image, open, record_offset, u16_at, u32_at};
    use crate::guestfs::{FsError, GuestFs};

    #[test]
    fn a_large_directory_lists_in_order() {
        let fs = fixture();
        let dir = entry(&fs, "bigdir");
        let names: Vec<Vec<u8>> = fs
            .read_dir(dir.ino)
            .expect("read_dir")
            .into_iter()
            .map(|e| e.name)
            .collect();
        let expected: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("file-{i:03}").into_bytes())
            .collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn an_index_node_reached_twice_is_refused() {
        let good = image();
        // bigdir's index: the root points to one node, which points to the leaves. Point
        // that node's first subnode at itself: refused, not walked forever.
        let fs = open(good.clone()).expect("opens");
        let dir = entry(&fs, "bigdir").ino;
        let at = record_offset(&good, usize::try_from(dir).expect("ino"));
        let record = &good[at..at + 1024];
        let root_value = index_root_value(record);
        let [root_vcn] = subnode_vcn_offsets(record, root_value)[..] else {
            panic!("one subnode expected (the fixture changed?)");
        };
        let vcn = &record[root_vcn..root_vcn + 8];
        let file_dash: Vec<u8> = "file-".encode_utf16().flat_map(u16::to_le_bytes).collect();
        let node = (0..good.len() / 4096)
            .map(|i| i * 4096)
            .find(|&o| {
                good[o..o + 4] == *b"INDX"
                    && good[o + 16..o + 24] == *vcn
                    && good[o..o + 4096].windows(10).any(|w| w == file_dash)
            })
            .expect("bigdir's node");
        let children = subnode_vcn_offsets(&good[node..node + 4096], 24);
        assert!(children.len() > 2, "{children:?}");
        let mut bytes = good.clone();
        let first = node + children[0];
        bytes[first..first + 8].copy_from_slice(vcn);
        let fs = open(bytes).expect("still opens");
        let err = fs.read_dir(dir).expect_err("refused");
        assert!(err.to_string().contains("reached twice"), "{err}");
        assert!(
            matches!(err, FsError::Corrupt { fs: "ntfs", .. }),
            "{err:?}"
        );
        assert!(fs.read_dir(fs.root()).is_ok());
    }

    /// The offset of a file record's `$INDEX_ROOT` value.
    fn index_root_value(record: &[u8]) -> usize {
        let mut pos = u16_at(record, 0x14);
        while u32_at(record, pos) != 0x90 {
            pos += u32_at(record, pos + 4);
        }
        pos + u16_at(record, pos + 20) + 16
    }

    /// The offsets of the subnode VCNs of the index node whose header is at `header`, in a
    /// record whose update sequence is not applied: those that do not cross a sector's end.
    fn subnode_vcn_offsets(record: &[u8], header: usize) -> Vec<usize> {
        let mut entry = header + u32_at(record, header);
        let end = header + u32_at(record, header + 4);
        let mut out = Vec::new();
        while entry < end {
            let len = u16_at(record, entry + 8);
            if record[entry + 12] & 1 != 0 {
                let vcn = entry + len - 8;
                if vcn % 512 + 8 <= 510 {
                    out.push(vcn);
                }
            }
            if record[entry + 12] & 2 != 0 {
                break;
            }
            entry += len;
        }
        out
    }
}
