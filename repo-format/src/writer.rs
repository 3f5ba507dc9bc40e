//! Storing new blobs during a backup (spec/FORMAT.md §15 "Commit order").
//!
//! A [`WriteSession`] is shared by the backup's worker threads. Each worker
//! compresses and seals on its own core; full packs are written outside
//! every lock, so one worker's upload never stalls the other's hashing.
//! Index files are written once [`INDEX_FLUSH_PACKS`] packs are durable and
//! at [`WriteSession::finish`], always after the packs they list: a crash
//! leaves packs without an index (unreferenced, harmless) but never an
//! index naming a missing pack.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::backend::FileKind;
use crate::blob::{BlobType, MAX_BLOB_LEN};
use crate::id::Id;
use crate::index::{self, IndexedPack, MasterIndex};
use crate::pack::{FinishedPack, PackWriter};
use crate::repository::Repository;
use crate::sealed::FileType;
use crate::{payload, Error, Result};

/// Packs per index file while a backup runs.
pub const INDEX_FLUSH_PACKS: usize = 64;
/// Blobs per index file at most (about 9 MiB of entries), so that packs of
/// tiny, well-compressed blobs cannot make an index too large to read.
pub const INDEX_FLUSH_BLOBS: usize = 200_000;
/// Blobs per pack at most, for the same reason.
pub const PACK_MAX_BLOBS: usize = 100_000;

/// Counters of a write session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// New blobs stored.
    pub blobs: u64,
    /// Their plaintext bytes.
    pub raw_bytes: u64,
    /// Bytes of pack and index files written.
    pub stored_bytes: u64,
    /// Pack files written.
    pub packs: u64,
}

/// Adds blobs to a repository; see the module docs.
pub struct WriteSession<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    claimed: Mutex<HashSet<Id>>,
    open_packs: [Mutex<Option<PackWriter>>; 2],
    unindexed: Mutex<Vec<IndexedPack>>,
    blobs: AtomicU64,
    raw_bytes: AtomicU64,
    stored_bytes: AtomicU64,
    packs: AtomicU64,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<'a> WriteSession<'a> {
    /// A session that deduplicates against `index`.
    pub fn new(repo: &'a Repository, index: &'a MasterIndex) -> Self {
        WriteSession {
            repo,
            index,
            claimed: Mutex::new(HashSet::new()),
            open_packs: [Mutex::new(None), Mutex::new(None)],
            unindexed: Mutex::new(Vec::new()),
            blobs: AtomicU64::new(0),
            raw_bytes: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            packs: AtomicU64::new(0),
        }
    }

    /// True when the repository or this session already has `id`.
    pub fn is_known(&self, id: &Id) -> bool {
        self.index.contains(id) || locked(&self.claimed).contains(id)
    }

    /// Stores `plain` as a blob with the given id unless it is already
    /// known; returns whether it was new. The caller computed `id`.
    pub fn save(&self, ty: BlobType, id: Id, plain: &[u8]) -> Result<bool> {
        if self.index.contains(&id) || !locked(&self.claimed).insert(id) {
            return Ok(false);
        }
        let raw_length = u32::try_from(plain.len())
            .ok()
            .filter(|&l| l <= MAX_BLOB_LEN)
            .ok_or_else(|| Error::InvalidParameter("blob larger than 8 MiB".into()))?;
        let framed = payload::encode(plain, self.repo.config().compression_level);
        let full = self.append(ty, id, raw_length, &framed)?;
        self.blobs.fetch_add(1, Ordering::Relaxed);
        self.raw_bytes
            .fetch_add(u64::from(raw_length), Ordering::Relaxed);
        if let Some(pack) = full {
            self.store_pack(pack)?;
        }
        Ok(true)
    }

    /// Appends to the open pack of `ty`; hands back the pack once full.
    fn append(&self, ty: BlobType, id: Id, raw: u32, framed: &[u8]) -> Result<Option<PackWriter>> {
        let target = usize::try_from(self.repo.config().pack_size).unwrap_or(usize::MAX);
        let slot = &self.open_packs[usize::from(ty.byte())];
        let mut open = locked(slot);
        let w =
            open.get_or_insert_with(|| PackWriter::new(self.repo.master(), target + target / 8));
        w.add(ty, id, raw, framed)?;
        let full = w.len() >= target || w.blob_count() >= PACK_MAX_BLOBS;
        Ok(if full { open.take() } else { None })
    }

    fn store_pack(&self, w: PackWriter) -> Result<()> {
        let FinishedPack {
            id,
            salt,
            bytes,
            entries,
        } = w.finish();
        self.repo
            .backend()
            .write(FileKind::Pack, &id.to_hex(), &bytes)?;
        self.stored_bytes
            .fetch_add(u64::try_from(bytes.len()).unwrap_or(0), Ordering::Relaxed);
        self.packs.fetch_add(1, Ordering::Relaxed);
        let batch = {
            let mut pending = locked(&self.unindexed);
            pending.push(IndexedPack {
                id,
                salt,
                blobs: entries,
            });
            let blobs: usize = pending.iter().map(|p| p.blobs.len()).sum();
            if pending.len() >= INDEX_FLUSH_PACKS || blobs >= INDEX_FLUSH_BLOBS {
                std::mem::take(&mut *pending)
            } else {
                Vec::new()
            }
        };
        self.write_index(&batch)
    }

    fn write_index(&self, packs: &[IndexedPack]) -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        let (_, size) =
            self.repo
                .save_file(FileKind::Index, FileType::Index, &index::encode(packs))?;
        self.stored_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the open packs and the last index file. After this returns,
    /// every blob saved is durable and indexed.
    pub fn finish(self) -> Result<WriteStats> {
        for slot in &self.open_packs {
            let open = locked(slot).take();
            if let Some(w) = open.filter(|w| !w.is_empty()) {
                self.store_pack(w)?;
            }
        }
        let rest = std::mem::take(&mut *locked(&self.unindexed));
        self.write_index(&rest)?;
        Ok(self.stats())
    }

    /// Counters so far.
    pub fn stats(&self) -> WriteStats {
        WriteStats {
            blobs: self.blobs.load(Ordering::Relaxed),
            raw_bytes: self.raw_bytes.load(Ordering::Relaxed),
            stored_bytes: self.stored_bytes.load(Ordering::Relaxed),
            packs: self.packs.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::{Backend, MemoryBackend};
    use crate::check::check;
    use crate::config::ChunkSize;
    use crate::keyfile::KdfParams;

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn repo() -> (Arc<MemoryBackend>, Repository) {
        let mem = Arc::new(MemoryBackend::default());
        let chunk = ChunkSize::new(64 * 1024).expect("chunk");
        let r = Repository::init(mem.clone(), b"pw", chunk, 3, FAST).expect("init");
        (mem, r)
    }

    #[test]
    fn saved_blobs_read_back_after_reopen_and_dedup() {
        let (mem, r) = repo();
        let index = r.load_index().expect("index");
        let s = WriteSession::new(&r, &index);
        let blobs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        for b in &blobs {
            assert!(s.save(BlobType::Data, Id::of(b), b).expect("save"));
        }
        assert!(!s
            .save(BlobType::Data, Id::of(&blobs[0]), &blobs[0])
            .expect("dup"));
        let stats = s.finish().expect("finish");
        assert_eq!(stats.blobs, 50);

        let again = Repository::open(mem.clone(), b"pw").expect("open");
        let index = again.load_index().expect("index");
        assert_eq!(index.len(), 50);
        for b in &blobs {
            assert_eq!(&again.read_blob(&index, &Id::of(b)).expect("read"), b);
        }
        assert!(matches!(
            Repository::open(mem, b"nope"),
            Err(Error::WrongPassword)
        ));
    }

    #[test]
    fn check_finds_a_flipped_byte_only_with_read_data() {
        let (mem, r) = repo();
        let index = r.load_index().expect("index");
        let s = WriteSession::new(&r, &index);
        let b = vec![42u8; 5000];
        s.save(BlobType::Data, Id::of(&b), &b).expect("save");
        s.finish().expect("finish");
        assert!(check(&r, true, &|_| {}).expect("check").is_ok());
        let (pack, _) = mem.list(FileKind::Pack).expect("list").remove(0);
        mem.tamper(FileKind::Pack, &pack, |v| v[40] ^= 1);
        assert!(check(&r, false, &|_| {}).expect("check").is_ok());
        let report = check(&r, true, &|_| {}).expect("check");
        assert!(!report.is_ok());
        assert!(report.errors[0].contains(&pack), "{:?}", report.errors);
        let index = r.load_index().expect("index");
        assert!(matches!(
            r.read_blob(&index, &Id::of(&b)),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn index_never_names_an_unwritten_pack() {
        let (mem, r) = repo();
        let index = r.load_index().expect("index");
        let s = WriteSession::new(&r, &index);
        let b = vec![1u8; 100];
        s.save(BlobType::Data, Id::of(&b), &b).expect("save");
        // Dropped without finish: a crash before the commit point.
        drop(s);
        assert!(mem.list(FileKind::Index).expect("list").is_empty());
        assert!(r.load_index().expect("index").is_empty());
    }
}
