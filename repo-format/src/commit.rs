//! Storing new blobs in the order spec/FORMAT.md §15 ("Commit order") requires: packs first,
//! then the index files that list them; the snapshot manifest, the commit point, is the
//! caller's to write once [`Committer::finish`] has returned.
//!
//! A [`Committer`] is shared by a backup's worker threads:
//!
//! - **Sealing on the worker's core.** Each worker compresses its blob and seals it into an
//!   open pack that no other thread holds (one per worker and blob type, up to
//!   [`MAX_OPEN_PACKS`], found by `try_lock`), so workers do not wait for each other's AES or
//!   zstd.
//! - **Uploads off the critical path.** A full pack goes to [`UPLOADERS`] upload threads through
//!   a queue of [`UPLOAD_QUEUE`] packs: they seal its header, name it (SHA-256 of the file), write
//!   it durably and, every [`INDEX_FLUSH_PACKS`] packs, write an index file listing packs that
//!   are already durable. Workers keep hashing and compressing while a pack is fsynced. Memory
//!   is bounded: at most `UPLOAD_QUEUE + UPLOADERS` full packs wait or are being written, and
//!   `2 × MAX_OPEN_PACKS` are being filled; a written pack's buffer is reused for a new one, so
//!   the allocator is not asked for (and does not fragment) fresh megabytes per pack.
//! - **Failure.** The first failed upload stops the backup: later saves fail with
//!   [`Error::Aborted`] and [`Committer::finish`] returns the upload's own error. A committer
//!   dropped without `finish` (a failed or cancelled backup) writes no further packs and no
//!   index for the packs not yet indexed: a crash-equivalent state that `check` passes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::backend::FileKind;
use crate::blob::{BlobType, MAX_BLOB_LEN};
use crate::chunkmap::MapBlobStore;
use crate::id::Id;
use crate::index::{self, IndexedPack, MasterIndex};
use crate::pack::{FinishedPack, PackWriter};
use crate::repository::Repository;
use crate::sealed::FileType;
use crate::{payload, Error, Result};

/// Packs per index file while a backup runs.
pub const INDEX_FLUSH_PACKS: usize = 64;
/// An index file is also written once this long has passed since the last one (or since the
/// first pack), so that a backup killed with SIGKILL leaves little unindexed work behind.
pub const INDEX_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
pub use crate::index::INDEX_FLUSH_BLOBS;
/// Blobs per pack at most, for the same reason.
pub const PACK_MAX_BLOBS: usize = 100_000;
/// Threads writing full packs: storage is the limit, not the CPU; two overlap one pack's fsync
/// with the next one's write.
pub const UPLOADERS: usize = 2;
/// Full packs waiting for an upload thread.
pub const UPLOAD_QUEUE: usize = 2;
/// Written packs' buffers kept for new packs: enough that a pack being filled never waits for
/// the allocator, few enough to stay within the memory bound.
const SPARE_BUFFERS: usize = UPLOADERS + UPLOAD_QUEUE;
/// Open packs per blob type at most, whatever the number of writers: each holds up to a pack's
/// size in memory, and sealing into one takes a fraction of a millisecond, so a few are enough
/// for many threads.
pub const MAX_OPEN_PACKS: usize = 4;

/// Counters of a committer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// New blobs stored.
    pub blobs: u64,
    /// Their plaintext bytes.
    pub raw_bytes: u64,
    /// Bytes of pack and index files written.
    pub stored_bytes: u64,
    /// Pack files written.
    pub packs: u64,
}

/// What a finished committer stored, and which packs the blobs it was given are in.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    /// Counters.
    pub stats: CommitStats,
    /// Every pack holding a blob saved or found known: the packs it wrote, and the indexed
    /// packs it deduplicated against. A snapshot of those blobs needs exactly these packs
    /// (§20.4: the ones a prune marked meanwhile are recovered before the manifest is written).
    pub packs: Vec<Id>,
}

/// What the committer and its upload threads share.
#[derive(Default)]
struct Shared {
    /// Packs written but not yet in an index file.
    unindexed: Mutex<Vec<IndexedPack>>,
    /// Every pack written.
    written: Mutex<Vec<Id>>,
    /// When an index file was last written (or the first pack stored).
    last_index: Mutex<Option<std::time::Instant>>,
    /// The first upload error.
    error: Mutex<Option<Error>>,
    /// Set with `error`, read without locking.
    failed: AtomicBool,
    /// Set when the committer is dropped without `finish`: queued packs are discarded.
    abandoned: AtomicBool,
    /// Buffers of packs already written, for new packs to fill.
    spare: Mutex<Vec<Vec<u8>>>,
    blobs: AtomicU64,
    raw_bytes: AtomicU64,
    stored_bytes: AtomicU64,
    packs: AtomicU64,
}

/// Adds blobs to a repository; see the module docs.
pub struct Committer<'a> {
    repo: &'a Repository,
    known: &'a MasterIndex,
    /// One bit per pack of `known`: set once a blob of it was found known.
    reused: Vec<AtomicU64>,
    claimed: Mutex<HashSet<Id>>,
    /// Open packs: `open[type byte]` holds one slot per worker thread.
    open: [Vec<Mutex<Option<PackWriter>>>; 2],
    uploads: Option<Sender<PackWriter>>,
    uploaders: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

thread_local! {
    /// Each saving thread's buffer for the framed (compressed) blob: reused, so a blob costs no
    /// allocation (a fresh one faults in new pages every time, a large part of a backup's system
    /// time), and sealed into its pack from here under the pack's lock.
    static FRAMED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<'a> Committer<'a> {
    /// A committer that deduplicates against `known`, for `writers` threads saving at once
    /// (each finds an open pack of its own, up to [`MAX_OPEN_PACKS`]).
    pub fn new(repo: &'a Repository, known: &'a MasterIndex, writers: usize) -> Self {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = bounded::<PackWriter>(UPLOAD_QUEUE);
        let uploaders = (0..UPLOADERS)
            .filter_map(|n| {
                let (repo, rx, shared) = (repo.clone(), rx.clone(), Arc::clone(&shared));
                std::thread::Builder::new()
                    .name(format!("vmstash-upload-{n}"))
                    .spawn(move || upload_packs(&repo, &rx, &shared))
                    .ok()
            })
            .collect::<Vec<_>>();
        let slots = |n: usize| {
            (0..n.clamp(1, MAX_OPEN_PACKS))
                .map(|_| Mutex::new(None))
                .collect()
        };
        Committer {
            repo,
            known,
            reused: (0..known.pack_count().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            claimed: Mutex::new(HashSet::new()),
            open: [slots(writers), slots(1)],
            // Without a single upload thread, packs are written by the thread that fills them.
            uploads: (!uploaders.is_empty()).then_some(tx),
            uploaders,
            shared,
        }
    }

    /// True when the repository or this committer already has `id`.
    pub fn is_known(&self, id: &Id) -> bool {
        self.reuse(id) || locked(&self.claimed).contains(id)
    }

    /// True when the loaded index has `id`; notes its pack as one the new snapshot needs.
    fn reuse(&self, id: &Id) -> bool {
        let Some(pack) = self.known.pack_number(id) else {
            return false;
        };
        if let Some(word) = self.reused.get(pack / 64) {
            word.fetch_or(1 << (pack % 64), Ordering::Relaxed);
        }
        true
    }

    /// Stores `plain` as a blob with the given id unless it is already known; returns whether
    /// it was new. The caller computed `id`.
    pub fn save(&self, ty: BlobType, id: Id, plain: &[u8]) -> Result<bool> {
        self.save_counted(ty, id, plain)
            .map(|stored| stored.is_some())
    }

    /// [`Committer::save`], returning the bytes the blob takes in its pack when it was new.
    pub fn save_counted(&self, ty: BlobType, id: Id, plain: &[u8]) -> Result<Option<u64>> {
        if self.shared.failed.load(Ordering::Relaxed) {
            return Err(Error::Aborted);
        }
        if self.reuse(&id) || !locked(&self.claimed).insert(id) {
            return Ok(None);
        }
        let raw_length = u32::try_from(plain.len())
            .ok()
            .filter(|&l| l <= MAX_BLOB_LEN)
            .ok_or_else(|| Error::InvalidParameter("blob larger than 8 MiB".into()))?;
        let level = self.repo.config().compression_level;
        let (full, stored) = FRAMED.with(|framed| {
            let mut framed = framed.borrow_mut();
            framed.clear();
            payload::encode_into(plain, level, &mut framed);
            let stored = u64::try_from(framed.len()).unwrap_or(u64::MAX);
            self.append(ty, id, raw_length, &framed)
                .map(|full| (full, stored))
        })?;
        self.shared.blobs.fetch_add(1, Ordering::Relaxed);
        self.shared
            .raw_bytes
            .fetch_add(u64::from(raw_length), Ordering::Relaxed);
        if let Some(pack) = full {
            self.upload(pack)?;
        }
        Ok(Some(stored))
    }

    /// A free open-pack slot of `ty` (the first one no other thread holds).
    fn slot(&self, ty: BlobType) -> MutexGuard<'_, Option<PackWriter>> {
        let slots = match ty {
            BlobType::Data => &self.open[0],
            BlobType::Map => &self.open[1],
        };
        for slot in slots {
            match slot.try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let first = slots
            .first()
            .unwrap_or_else(|| unreachable!("one slot at least"));
        locked(first)
    }

    /// Seals a framed payload into an open pack of `ty`; hands back the pack once full.
    fn append(&self, ty: BlobType, id: Id, raw: u32, framed: &[u8]) -> Result<Option<PackWriter>> {
        let target = usize::try_from(self.repo.config().pack_size).unwrap_or(usize::MAX);
        let mut open = self.slot(ty);
        let w = open.get_or_insert_with(|| {
            let buf = locked(&self.shared.spare).pop().unwrap_or_default();
            PackWriter::in_buffer(self.repo.master(), buf, target.saturating_add(target / 8))
        });
        w.add(ty, id, raw, framed)?;
        let full = w.len() >= target || w.blob_count() >= PACK_MAX_BLOBS;
        Ok(if full { open.take() } else { None })
    }

    /// Hands a full pack to the upload threads (or writes it here without any).
    fn upload(&self, pack: PackWriter) -> Result<()> {
        match &self.uploads {
            Some(tx) => tx.send(pack).map_err(|_| Error::Aborted),
            None => store_pack(self.repo, &self.shared, pack),
        }
    }

    /// Writes the open packs and the last index file. After this returns, every blob saved is
    /// durable and indexed; the caller may write a snapshot that refers to them.
    pub fn finish(mut self) -> Result<Committed> {
        let open: Vec<PackWriter> = self
            .open
            .iter()
            .flatten()
            .filter_map(|slot| locked(slot).take())
            .filter(|w| !w.is_empty())
            .collect();
        for pack in open {
            self.upload(pack)?;
        }
        self.join_uploaders();
        if let Some(e) = locked(&self.shared.error).take() {
            return Err(e);
        }
        let rest = std::mem::take(&mut *locked(&self.shared.unindexed));
        write_index(self.repo, &self.shared, &rest)?;
        let mut packs = std::mem::take(&mut *locked(&self.shared.written));
        for (w, word) in self.reused.iter().enumerate() {
            let bits = word.load(Ordering::Relaxed);
            packs.extend(
                (0..64)
                    .filter(|b| bits & (1 << b) != 0)
                    .filter_map(|b| self.known.pack_id(w * 64 + b).copied()),
            );
        }
        Ok(Committed {
            stats: self.stats(),
            packs,
        })
    }

    /// Stops after a failure or a cancel: packs not yet written are dropped, and the packs
    /// already durable get an index file, so that the next backup finds and reuses their blobs
    /// instead of storing them again (spec §15: an index file lists only durable packs; no
    /// snapshot refers to them yet). Returns the upload error, if an upload failed.
    pub fn stop(mut self) -> Option<Error> {
        self.shared.abandoned.store(true, Ordering::Relaxed);
        self.join_uploaders();
        let error = locked(&self.shared.error).take();
        let written = std::mem::take(&mut *locked(&self.shared.unindexed));
        // An index that cannot be written now (a full disk) only costs the next backup the
        // work of storing these blobs again.
        let _ = write_index(self.repo, &self.shared, &written);
        error
    }

    fn join_uploaders(&mut self) {
        self.uploads = None;
        for t in self.uploaders.drain(..) {
            // An upload thread does not panic (its errors are values); if it did, its packs
            // are simply not indexed, which is a crash-equivalent state.
            let _ = t.join();
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> CommitStats {
        let s = &self.shared;
        CommitStats {
            blobs: s.blobs.load(Ordering::Relaxed),
            raw_bytes: s.raw_bytes.load(Ordering::Relaxed),
            stored_bytes: s.stored_bytes.load(Ordering::Relaxed),
            packs: s.packs.load(Ordering::Relaxed),
        }
    }
}

impl MapBlobStore for Committer<'_> {
    fn save_map_blob(&self, id: Id, plain: &[u8]) -> Result<()> {
        self.save(BlobType::Map, id, plain).map(|_| ())
    }
}

impl Drop for Committer<'_> {
    fn drop(&mut self) {
        if !self.uploaders.is_empty() {
            self.shared.abandoned.store(true, Ordering::Relaxed);
            self.join_uploaders();
        }
    }
}

/// An upload thread: writes the packs it is given until the committer closes the queue.
fn upload_packs(repo: &Repository, queue: &Receiver<PackWriter>, shared: &Shared) {
    for pack in queue {
        if shared.failed.load(Ordering::Relaxed) || shared.abandoned.load(Ordering::Relaxed) {
            continue;
        }
        if let Err(e) = store_pack(repo, shared, pack) {
            locked(&shared.error).get_or_insert(e);
            shared.failed.store(true, Ordering::Relaxed);
        }
    }
}

/// Seals, names and writes one pack durably, then writes an index file when enough packs wait
/// for one.
fn store_pack(repo: &Repository, shared: &Shared, w: PackWriter) -> Result<()> {
    let FinishedPack {
        id,
        salt,
        bytes,
        entries,
    } = w.finish();
    repo.backend().write(FileKind::Pack, &id.to_hex(), &bytes)?;
    shared
        .stored_bytes
        .fetch_add(u64::try_from(bytes.len()).unwrap_or(0), Ordering::Relaxed);
    {
        let mut spare = locked(&shared.spare);
        if spare.len() < SPARE_BUFFERS {
            spare.push(bytes);
        }
    }
    shared.packs.fetch_add(1, Ordering::Relaxed);
    locked(&shared.written).push(id);
    let batch = {
        let mut pending = locked(&shared.unindexed);
        pending.push(IndexedPack {
            id,
            salt,
            blobs: entries,
        });
        let blobs: usize = pending.iter().map(|p| p.blobs.len()).sum();
        let now = std::time::Instant::now();
        let mut last = locked(&shared.last_index);
        let due = last.get_or_insert(now).elapsed() >= INDEX_FLUSH_INTERVAL;
        if due || pending.len() >= INDEX_FLUSH_PACKS || blobs >= INDEX_FLUSH_BLOBS {
            *last = Some(now);
            std::mem::take(&mut *pending)
        } else {
            Vec::new()
        }
    };
    write_index(repo, shared, &batch)
}

/// Writes one index file listing `packs`, all of them durable already.
fn write_index(repo: &Repository, shared: &Shared, packs: &[IndexedPack]) -> Result<()> {
    if packs.is_empty() {
        return Ok(());
    }
    let (_, size) = repo.save_file(FileKind::Index, FileType::Index, &index::encode(packs))?;
    shared.stored_bytes.fetch_add(size, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::check::check;
    use crate::testing::memory_repository;

    const CHUNK: usize = 64 * 1024;

    #[test]
    fn saved_blobs_read_back_after_reopen_and_dedup() {
        let (mem, r) = memory_repository();
        let index = r.load_index().expect("index");
        let s = Committer::new(&r, &index, 2);
        let blobs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        for b in &blobs {
            assert!(s.save(BlobType::Data, Id::of(b), b).expect("save"));
        }
        assert!(!s
            .save(BlobType::Data, Id::of(&blobs[0]), &blobs[0])
            .expect("dup"));
        let stats = s.finish().expect("finish").stats;
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
        let (mem, r) = memory_repository();
        let index = r.load_index().expect("index");
        let s = Committer::new(&r, &index, 1);
        let b = vec![42u8; 5000];
        s.save(BlobType::Data, Id::of(&b), &b).expect("save");
        s.finish().expect("finish");
        assert!(check(&r, crate::check::ReadData::All, &|_| {})
            .expect("check")
            .is_ok());
        let (pack, _) = mem.list(FileKind::Pack).expect("list").remove(0);
        mem.tamper(FileKind::Pack, &pack, |v| v[40] ^= 1);
        assert!(check(&r, crate::check::ReadData::None, &|_| {})
            .expect("check")
            .is_ok());
        let report = check(&r, crate::check::ReadData::All, &|_| {}).expect("check");
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
        let (mem, r) = memory_repository();
        let index = r.load_index().expect("index");
        let s = Committer::new(&r, &index, 1);
        let b = vec![1u8; 100];
        s.save(BlobType::Data, Id::of(&b), &b).expect("save");
        // Dropped without finish: a crash before the commit point.
        drop(s);
        assert!(mem.list(FileKind::Index).expect("list").is_empty());
        assert!(r.load_index().expect("index").is_empty());
    }

    #[test]
    fn full_packs_are_written_while_saving_and_every_one_is_indexed() {
        let (mem, r) = memory_repository();
        let index = r.load_index().expect("index");
        let s = Committer::new(&r, &index, 2);
        let pack_size = usize::try_from(r.config().pack_size).expect("pack size");
        // Incompressible blobs of one chunk: several packs' worth.
        let blobs: Vec<Vec<u8>> = (0..(3 * pack_size / CHUNK) + 2)
            .map(|i| crate::testing::noise(u64::try_from(i).expect("i"), CHUNK))
            .collect();
        std::thread::scope(|scope| {
            for half in blobs.chunks(blobs.len() / 2 + 1) {
                let s = &s;
                scope.spawn(move || {
                    for b in half {
                        assert!(s.save(BlobType::Data, Id::of(b), b).expect("save"));
                    }
                });
            }
        });
        let stats = s.finish().expect("finish").stats;
        assert!(stats.packs >= 3, "{stats:?}");
        assert_eq!(
            u64::try_from(mem.list(FileKind::Pack).expect("list").len()).expect("n"),
            stats.packs
        );
        let index = r.load_index().expect("index");
        assert_eq!(
            index.packs().count(),
            mem.list(FileKind::Pack).expect("list").len()
        );
        for b in &blobs {
            assert_eq!(&r.read_blob(&index, &Id::of(b)).expect("read"), b);
        }
    }

    #[test]
    fn a_failed_upload_stops_later_saves_and_finish_returns_its_error() {
        let (mem, r) = memory_repository();
        let index = r.load_index().expect("index");
        mem.fail_writes_of(FileKind::Pack);
        let s = Committer::new(&r, &index, 1);
        let pack_size = usize::try_from(r.config().pack_size).expect("pack size");
        let mut aborted = false;
        for i in 0..(4 * pack_size / CHUNK) {
            let b = crate::testing::noise(u64::try_from(i).expect("i"), CHUNK);
            match s.save(BlobType::Data, Id::of(&b), &b) {
                Ok(_) => {}
                Err(Error::Aborted) => {
                    aborted = true;
                    break;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(aborted, "saves went on after the upload failed");
        let err = s.finish().expect_err("finish after a failed upload");
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(mem.list(FileKind::Index).expect("list").is_empty());
    }
}
