//! Index files and the in-memory index (spec/FORMAT.md §10 "Index files").
//!
//! An index file is a sealed file (§6, type 2) whose plaintext lists packs:
//!
//! ```text
//! u32 pack count
//! per pack: id[32] ‖ salt[32] ‖ u32 blob count ‖ blob count × entry (§8.2)
//! ```
//!
//! In memory every blob costs one 48-byte [`IndexEntry`] in a sorted
//! vector (binary search, no hash-table slack): 1 TiB of unique data at the
//! default 512 KiB chunks is 2 Mi blobs, 96 MiB; at 1 MiB chunks, 48 MiB.

use std::collections::HashMap;

use crate::blob::BlobType;
use crate::crypto::SALT_LEN;
use crate::entry::{BlobEntry, Reader, ENTRY_LEN};
use crate::id::{Id, ID_LEN};
use crate::{Error, Result};

/// Blobs per index file at most (about 9 MiB of entries), so that packs of tiny, well-compressed
/// blobs cannot make an index too large to read.
pub const INDEX_FLUSH_BLOBS: usize = 200_000;

/// One pack as an index file lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedPack {
    /// The pack's file name.
    pub id: Id,
    /// The pack's salt (so a blob can be opened without the pack header).
    pub salt: [u8; SALT_LEN],
    /// The blobs in the pack.
    pub blobs: Vec<BlobEntry>,
}

/// Encodes the plaintext of an index file.
pub fn encode(packs: &[IndexedPack]) -> Vec<u8> {
    let blobs: usize = packs.iter().map(|p| p.blobs.len()).sum();
    let mut out = Vec::with_capacity(4 + packs.len() * (2 * ID_LEN + 4) + blobs * ENTRY_LEN);
    out.extend_from_slice(&u32::try_from(packs.len()).unwrap_or(u32::MAX).to_le_bytes());
    for p in packs {
        out.extend_from_slice(p.id.as_bytes());
        out.extend_from_slice(&p.salt);
        out.extend_from_slice(
            &u32::try_from(p.blobs.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        for b in &p.blobs {
            b.encode_into(&mut out);
        }
    }
    out
}

/// Decodes the plaintext of an index file; `file` names it in errors.
pub fn decode(plain: &[u8], file: &str) -> Result<Vec<IndexedPack>> {
    let mut r = Reader::new(plain, file);
    let n = r.count(2 * ID_LEN + 4)?;
    let mut packs = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.id()?;
        let salt: [u8; SALT_LEN] = r
            .take(SALT_LEN)?
            .try_into()
            .map_err(|_| Error::corrupt(file, "short salt"))?;
        let count = r.count(ENTRY_LEN)?;
        let mut blobs = Vec::with_capacity(count);
        for _ in 0..count {
            blobs.push(BlobEntry::decode(r.take(ENTRY_LEN)?, file)?);
        }
        packs.push(IndexedPack { id, salt, blobs });
    }
    r.finish()?;
    Ok(packs)
}

/// The packs of decoded index files, each once (a pack several files list is one pack).
pub fn distinct_packs(files: Vec<(String, Vec<IndexedPack>)>) -> Vec<IndexedPack> {
    let mut seen = std::collections::HashSet::new();
    files
        .into_iter()
        .flat_map(|(_, packs)| packs)
        .filter(|p| seen.insert(p.id))
        .collect()
}

/// Where one blob is: 48 bytes (checked by a test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    id: Id,
    pack: u32,
    offset: u32,
    length: u32,
    /// Plaintext length in the low 31 bits; the top bit set for map blobs.
    raw_and_type: u32,
}

const MAP_BIT: u32 = 1 << 31;

/// A blob located: its pack and its entry.
#[derive(Debug, Clone, Copy)]
pub struct Location<'a> {
    /// The pack's name.
    pub pack: &'a Id,
    /// The pack's salt.
    pub salt: &'a [u8; SALT_LEN],
    /// The blob's entry.
    pub entry: BlobEntry,
}

/// Every blob of every index file, for lookups by id.
#[derive(Debug, Default)]
pub struct MasterIndex {
    packs: Vec<(Id, [u8; SALT_LEN])>,
    entries: Vec<IndexEntry>,
}

impl MasterIndex {
    /// Builds the index from decoded index files. A blob listed in several
    /// packs (two concurrent backups stored it) is kept once.
    pub fn build(files: impl IntoIterator<Item = Vec<IndexedPack>>) -> MasterIndex {
        let mut packs = Vec::new();
        let mut pack_no: HashMap<Id, u32> = HashMap::new();
        let mut entries = Vec::new();
        for pack in files.into_iter().flatten() {
            let next = u32::try_from(packs.len()).unwrap_or(u32::MAX);
            let no = *pack_no.entry(pack.id).or_insert_with(|| {
                packs.push((pack.id, pack.salt));
                next
            });
            entries.extend(pack.blobs.iter().map(|b| IndexEntry {
                id: b.id,
                pack: no,
                offset: b.offset,
                length: b.length,
                raw_and_type: (b.raw_length & !MAP_BIT)
                    | if b.ty == BlobType::Map { MAP_BIT } else { 0 },
            }));
        }
        entries.sort_unstable_by_key(|e| e.id);
        entries.dedup_by(|a, b| a.id == b.id);
        entries.shrink_to_fit();
        MasterIndex { packs, entries }
    }

    /// Where `id` is stored, if anywhere.
    pub fn find(&self, id: &Id) -> Option<Location<'_>> {
        let i = self.entries.binary_search_by(|e| e.id.cmp(id)).ok()?;
        let e = self.entries.get(i)?;
        let (pack, salt) = self.packs.get(usize::try_from(e.pack).ok()?)?;
        Some(Location {
            pack,
            salt,
            entry: BlobEntry {
                ty: if e.raw_and_type & MAP_BIT != 0 {
                    BlobType::Map
                } else {
                    BlobType::Data
                },
                id: e.id,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_and_type & !MAP_BIT,
            },
        })
    }

    /// The number of the pack that holds `id` (see [`MasterIndex::pack_id`]), if any.
    pub fn pack_number(&self, id: &Id) -> Option<usize> {
        let i = self.entries.binary_search_by(|e| e.id.cmp(id)).ok()?;
        usize::try_from(self.entries.get(i)?.pack).ok()
    }

    /// The pack numbered `number`.
    pub fn pack_id(&self, number: usize) -> Option<&Id> {
        self.packs.get(number).map(|(id, _)| id)
    }

    /// Number of packs.
    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    /// True when `id` is stored.
    pub fn contains(&self, id: &Id) -> bool {
        self.entries.binary_search_by(|e| e.id.cmp(id)).is_ok()
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no blob is indexed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every indexed pack.
    pub fn packs(&self) -> impl Iterator<Item = &Id> {
        self.packs.iter().map(|(id, _)| id)
    }

    /// Every blob, located, in id order.
    pub fn iter(&self) -> impl Iterator<Item = Location<'_>> {
        self.entries.iter().filter_map(|e| self.find(&e.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(tag: &[u8], blobs: &[(&[u8], BlobType)]) -> IndexedPack {
        IndexedPack {
            id: Id::of(tag),
            salt: [3; SALT_LEN],
            blobs: blobs
                .iter()
                .enumerate()
                .map(|(i, (b, ty))| BlobEntry {
                    ty: *ty,
                    id: Id::of(b),
                    offset: 34 + 100 * u32::try_from(i).expect("small"),
                    length: 100,
                    raw_length: 50,
                })
                .collect(),
        }
    }

    #[test]
    fn entry_is_48_bytes() {
        assert_eq!(std::mem::size_of::<IndexEntry>(), 48);
    }

    #[test]
    fn encode_decode_lookup() {
        let packs = vec![
            pack(b"p1", &[(b"a", BlobType::Data), (b"m", BlobType::Map)]),
            pack(b"p2", &[(b"b", BlobType::Data), (b"a", BlobType::Data)]),
        ];
        let bytes = encode(&packs);
        let back = decode(&bytes, "i").expect("decode");
        assert_eq!(back, packs);
        let mi = MasterIndex::build([back]);
        assert_eq!(mi.len(), 3);
        let m = mi.find(&Id::of(b"m")).expect("m");
        assert_eq!(m.entry.ty, BlobType::Map);
        assert_eq!(m.pack, &Id::of(b"p1"));
        assert!(mi.find(&Id::of(b"zz")).is_none());
        assert_eq!(mi.iter().count(), 3);
    }

    #[test]
    fn hostile_counts_and_truncation() {
        let bytes = encode(&[pack(b"p", &[(b"a", BlobType::Data)])]);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], "i").is_err(), "cut {cut}");
        }
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge, "i").is_err());
        let mut extra = bytes;
        extra.push(0);
        assert!(decode(&extra, "i").is_err());
    }
}
