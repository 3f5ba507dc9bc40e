//! The backup engine against an in-memory repository and in-memory disks.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::pipeline::{back_up_disks, buffer_count};
use super::*;
use crate::backend::{Backend, FileKind};
use crate::blob::BlobType;
use crate::chunkmap::{decode_segment, is_zero};
use crate::source::{whole_disk, ImageFormat, SourceError};
use crate::testing::{memory_repository, noise, CHUNK_SIZE};
use crate::{DiskReader, NoProgress};

const CHUNK: u64 = 64 * 1024;
const CHUNK_USIZE: usize = 64 * 1024;
const _: () = assert!(CHUNK_SIZE == 64 * 1024);

/// An in-memory disk; reads at `fail_at` fail with `fail_with`.
struct FakeDisk {
    bytes: Vec<u8>,
    readers: usize,
    fail_at: Option<u64>,
    damaged: bool,
    reads: AtomicU64,
}

impl FakeDisk {
    fn new(bytes: Vec<u8>, readers: usize) -> Self {
        FakeDisk {
            bytes,
            readers,
            fail_at: None,
            damaged: false,
            reads: AtomicU64::new(0),
        }
    }
}

impl DiskSource for FakeDisk {
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
    fn size(&self) -> u64 {
        u64::try_from(self.bytes.len()).expect("size")
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if self.fail_at == Some(offset) {
            let path = PathBuf::from("fake");
            return Err(if self.damaged {
                SourceError::Corrupt {
                    path,
                    what: "L2 table past the end of the file".into(),
                }
            } else {
                SourceError::Io {
                    path,
                    action: "read".to_owned(),
                    source: std::io::Error::other("injected"),
                }
            });
        }
        let start = usize::try_from(offset).expect("offset");
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        Ok(())
    }
    fn data_ranges(&self) -> Result<Vec<Range<u64>>, SourceError> {
        Ok(whole_disk(self.size()))
    }
    fn concurrent_reads(&self) -> usize {
        self.readers
    }
}

/// Pseudo-random chunks, every third one zero, the last one a copy of the first.
fn disk_bytes(seed: u64, chunks: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks * CHUNK_USIZE);
    for c in 0..chunks {
        if c % 3 == 2 {
            out.resize(out.len() + CHUNK_USIZE, 0);
        } else {
            out.extend(noise(
                seed * 1000 + u64::try_from(c).expect("c"),
                CHUNK_USIZE,
            ));
        }
    }
    let first = out[..CHUNK_USIZE].to_vec();
    out[(chunks - 1) * CHUNK_USIZE..].copy_from_slice(&first);
    out
}

fn ids_of(bytes: &[u8]) -> Vec<Id> {
    bytes
        .chunks(CHUNK_USIZE)
        .map(|c| if is_zero(c) { Id::ZERO } else { Id::of(c) })
        .collect()
}

fn plan_of(disks: Vec<(&str, FakeDisk)>) -> BackupPlan {
    BackupPlan::new(
        "web1",
        disks
            .into_iter()
            .map(|(name, d)| BackupDisk::new(name, "fake", Box::new(d)))
            .collect(),
    )
}

#[test]
fn several_disks_at_once_map_every_chunk_in_order() {
    let (_, repo) = memory_repository();
    let index = repo.load_index().expect("index");
    let committer = Committer::new(&repo, &index, 2);
    let one = FakeDisk::new(disk_bytes(1, 40), 1);
    let mut two_bytes = disk_bytes(2, 25);
    two_bytes.truncate(two_bytes.len() - 1000);
    let two = FakeDisk::new(two_bytes, 4);
    let done = AtomicU64::new(0);
    let progress = |n| {
        done.fetch_add(n, Ordering::Relaxed);
    };
    let jobs = [
        DiskJob {
            name: "one",
            src: &one,
            ids: None,
        },
        DiskJob {
            name: "two",
            src: &two,
            ids: None,
        },
    ];
    let results =
        back_up_disks(&committer, &jobs, CHUNK, 3, &progress, &CancelToken::new()).expect("backup");
    committer.finish().expect("finish");
    assert_eq!(done.into_inner(), one.size() + two.size());
    let index = repo.load_index().expect("index");
    for (disk, result) in [&one, &two].iter().zip(&results) {
        let mut ids = Vec::new();
        for segment in &result.map {
            let plain = repo.read_blob(&index, segment).expect("segment");
            ids.extend(decode_segment(&plain, "test").expect("decode"));
        }
        let expected = ids_of(&disk.bytes);
        assert_eq!(ids, expected);
        assert_eq!(result.counts.read, disk.size());
        assert_eq!(
            result.counts.chunks,
            u64::try_from(expected.len()).expect("n")
        );
        let zeros = expected.iter().filter(|id| id.is_zero()).count();
        assert_eq!(result.counts.zero, u64::try_from(zeros).expect("n"));
    }
    assert_eq!(
        results[0].counts.new + results[0].counts.zero + 1,
        40,
        "the last chunk repeats the first"
    );
}

#[test]
fn a_backup_reads_back_bit_identical_through_the_disk_reader() {
    let (_, repo) = memory_repository();
    let mut bytes = disk_bytes(7, 30);
    bytes.truncate(bytes.len() - 12_345);
    let plan = plan_of(vec![("vda", FakeDisk::new(bytes.clone(), 2))]);
    let report = back_up(&repo, plan, &NoProgress, &CancelToken::new()).expect("backup");
    assert_eq!(
        report.manifest.disks[0].size,
        u64::try_from(bytes.len()).expect("n")
    );
    assert_eq!(repo.snapshots().expect("list").len(), 1);
    let reader = DiskReader::new(
        repo.clone(),
        Arc::new(repo.load_index().expect("index")),
        Arc::new(report.manifest.disks[0].clone()),
    );
    let mut back = vec![0u8; bytes.len()];
    reader.read_at(&mut back, 0).expect("read");
    assert!(back == bytes, "the disk reads back as it was");
    let mut tail = vec![0u8; 100];
    reader
        .read_at(&mut tail, u64::try_from(bytes.len() - 100).expect("n"))
        .expect("tail");
    assert_eq!(tail, bytes[bytes.len() - 100..]);
    let second = back_up(
        &repo,
        plan_of(vec![("vda", FakeDisk::new(bytes, 2))]),
        &NoProgress,
        &CancelToken::new(),
    )
    .expect("second backup");
    assert_eq!(second.parent, Some(report.id));
    assert_eq!(
        second.manifest.summary.new_chunks, 0,
        "nothing new the second time"
    );
}

#[test]
fn a_failing_read_stops_the_backup_with_the_disks_error_and_no_snapshot() {
    let (_, repo) = memory_repository();
    let good = FakeDisk::new(disk_bytes(3, 64), 2);
    let mut bad = FakeDisk::new(disk_bytes(4, 64), 4);
    bad.fail_at = Some(10 * CHUNK);
    let err = back_up(
        &repo,
        plan_of(vec![("good", good), ("bad", bad)]),
        &NoProgress,
        &CancelToken::new(),
    )
    .expect_err("the read error");
    assert!(
        matches!(&err, Error::Source { disk, source: SourceError::Io { .. } } if disk == "bad"),
        "{err}"
    );
    assert!(repo.snapshots().expect("list").is_empty());
    assert!(
        crate::check::check(&repo, crate::check::ReadData::All, &|_| {})
            .expect("check")
            .is_ok()
    );
}

#[test]
fn a_damaged_image_is_never_backed_up_as_zeros() {
    let (_, repo) = memory_repository();
    let mut bad = FakeDisk::new(disk_bytes(5, 8), 1);
    bad.fail_at = Some(3 * CHUNK);
    bad.damaged = true;
    let err = back_up(
        &repo,
        plan_of(vec![("vda", bad)]),
        &NoProgress,
        &CancelToken::new(),
    )
    .expect_err("damage");
    assert!(
        matches!(
            &err,
            Error::Source {
                source: SourceError::Corrupt { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(repo.snapshots().expect("list").is_empty());
}

#[test]
fn a_cancelled_backup_writes_no_snapshot_and_the_next_reuses_its_packs() {
    let (_, repo) = memory_repository();
    let cancel = CancelToken::new();
    let bytes = disk_bytes(6, 200);
    let done = AtomicU64::new(0);
    let stop_after_a_third = |n: u64| {
        if done.fetch_add(n, Ordering::Relaxed) > 66 * CHUNK {
            cancel.cancel();
        }
    };
    let disk = FakeDisk::new(bytes.clone(), 1);
    let err = back_up(
        &repo,
        plan_of(vec![("vda", disk)]),
        &stop_after_a_third,
        &cancel,
    )
    .expect_err("cancelled");
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(repo.snapshots().expect("list").is_empty());
    assert!(
        crate::check::check(&repo, crate::check::ReadData::All, &|_| {})
            .expect("check")
            .is_ok()
    );
    let kept = repo.load_index().expect("index").len();
    assert!(kept > 0, "the packs written before the cancel are indexed");
    let again = back_up(
        &repo,
        plan_of(vec![("vda", FakeDisk::new(bytes, 1))]),
        &NoProgress,
        &CancelToken::new(),
    )
    .expect("the next backup");
    let s = &again.manifest.summary;
    // Every distinct non-zero chunk (the last repeats the first) is either one the cancelled
    // backup left indexed or a new one.
    let distinct = s.chunks - s.zero_chunks - 1;
    assert_eq!(
        s.new_chunks + u64::try_from(kept).expect("n"),
        distinct,
        "{s:?}"
    );
}

#[test]
fn a_full_disk_fails_the_backup_with_the_write_error_and_no_snapshot() {
    let (mem, repo) = memory_repository();
    mem.fail_writes_of(FileKind::Pack);
    let disk = FakeDisk::new(disk_bytes(8, 100), 2);
    let err = back_up(
        &repo,
        plan_of(vec![("vda", disk)]),
        &NoProgress,
        &CancelToken::new(),
    )
    .expect_err("disk full");
    assert!(err.is_disk_full(), "{err}");
    assert!(mem.list(FileKind::Snapshot).expect("list").is_empty());
}

#[test]
fn chunks_the_helper_hashed_are_read_only_when_the_repository_lacks_them() {
    let (_, repo) = memory_repository();
    let index = repo.load_index().expect("index");
    let committer = Committer::new(&repo, &index, 2);
    let bytes = disk_bytes(5, 12);
    let ids = ids_of(&bytes);
    assert!(committer
        .save(BlobType::Data, ids[0], &bytes[..CHUNK_USIZE])
        .expect("store chunk 0 beforehand"));
    // Chunk 0 is known, chunk 2 is zero: reading either would fail.
    for fail_at in [0, 2 * CHUNK] {
        let mut disk = FakeDisk::new(bytes.clone(), 2);
        disk.fail_at = Some(fail_at);
        let jobs = [DiskJob {
            name: "vda",
            src: &disk,
            ids: Some(&ids),
        }];
        let result = back_up_disks(
            &committer,
            &jobs,
            CHUNK,
            2,
            &NoProgress,
            &CancelToken::new(),
        )
        .expect("backup without reading known or zero chunks");
        assert_eq!(result[0].counts.chunks, 12);
        let read_chunks = ids.iter().skip(1).filter(|id| !id.is_zero()).count();
        assert!(result[0].counts.read <= u64::try_from(read_chunks).expect("n") * CHUNK);
    }
    let disk = FakeDisk::new(bytes, 1);
    let wrong = [DiskJob {
        name: "vda",
        src: &disk,
        ids: Some(&ids[..3]),
    }];
    assert!(matches!(
        back_up_disks(
            &committer,
            &wrong,
            CHUNK,
            2,
            &NoProgress,
            &CancelToken::new()
        ),
        Err(Error::InvalidParameter(_))
    ));
}

#[test]
fn names_that_cannot_be_file_names_and_repeated_disks_are_refused() {
    let (_, repo) = memory_repository();
    for (snapshot, disks) in [
        ("../x", vec!["vda"]),
        ("web1", vec!["a/b"]),
        ("web1", vec!["vda", "vda"]),
        ("web1", vec![]),
    ] {
        let plan = BackupPlan::new(
            snapshot,
            disks
                .into_iter()
                .map(|d| BackupDisk::new(d, "fake", Box::new(FakeDisk::new(vec![1; 10], 1))))
                .collect(),
        );
        assert!(matches!(
            back_up(&repo, plan, &NoProgress, &CancelToken::new()),
            Err(Error::InvalidParameter(_))
        ));
    }
}

#[test]
fn buffers_stay_within_the_budget_but_never_below_one_per_thread() {
    assert_eq!(buffer_count(2, 1, 512 << 10), 9);
    assert_eq!(
        buffer_count(32, 8, 8 << 20),
        40,
        "one per thread even past the budget"
    );
    assert_eq!(buffer_count(16, 0, 8 << 20), 16);
    assert!(buffer_count(16, 4, 1 << 20) <= 64);
}

#[test]
fn unchanged_chunks_take_the_parents_ids_without_being_read() {
    let (_, repo) = memory_repository();
    // More than one map segment (1024 chunks), so that ids come from two of them.
    let before = disk_bytes(3, 1030);
    let first = back_up(
        &repo,
        plan_of(vec![("vda", FakeDisk::new(before.clone(), 2))]),
        &NoProgress,
        &CancelToken::new(),
    )
    .expect("first backup");
    let mut after = before;
    for chunk in [5usize, 1027] {
        let at = chunk * CHUNK_USIZE;
        after[at..at + CHUNK_USIZE]
            .copy_from_slice(&noise(99 + u64::try_from(chunk).expect("n"), CHUNK_USIZE));
    }
    let plan_with = |parent: Option<Id>| {
        // What the helper reports: the written chunks' ids; the others are placeholders
        // (zero ids) that the parent's ids must replace.
        let mut ids = vec![Id::ZERO; 1030];
        for chunk in [5usize, 1027] {
            ids[chunk] = Id::of(&after[chunk * CHUNK_USIZE..(chunk + 1) * CHUNK_USIZE]);
        }
        let mut plan = plan_of(vec![("vda", FakeDisk::new(after.clone(), 2))]);
        plan.disks[0].known_ids = Some(ids);
        plan.disks[0].unchanged = vec![0..5, 6..1027, 1028..1030];
        plan.cbt_parent = parent;
        plan
    };
    let wrong = back_up(&repo, plan_with(None), &NoProgress, &CancelToken::new());
    assert!(
        matches!(&wrong, Err(Error::InvalidParameter(m)) if m.contains("not the latest")),
        "{wrong:?}"
    );
    let second = back_up(
        &repo,
        plan_with(Some(first.id)),
        &NoProgress,
        &CancelToken::new(),
    )
    .expect("incremental backup");
    assert_eq!(second.disks[0].read, 2 * CHUNK, "only the written chunks");
    assert_eq!(second.disks[0].new, 2);
    let reader = DiskReader::new(
        repo.clone(),
        Arc::new(repo.load_index().expect("index")),
        Arc::new(second.manifest.disks[0].clone()),
    );
    let mut back = vec![0u8; after.len()];
    reader.read_at(&mut back, 0).expect("read");
    assert!(back == after, "the incremental reads back as the disk was");
    // A verifying backup: every id from a full hash, one of them (chunk 7) different from the
    // parent's although tracking called it unchanged: counted, and the full hash is stored.
    let mut lied = after.clone();
    lied[7 * CHUNK_USIZE] ^= 1;
    let mut plan = plan_of(vec![("vda", FakeDisk::new(lied.clone(), 2))]);
    plan.disks[0].known_ids = Some(ids_of(&lied));
    plan.disks[0].unchanged = vec![0..5, 6..1027, 1028..1030];
    plan.disks[0].verify_unchanged = true;
    plan.cbt_parent = Some(second.id);
    let verified = back_up(&repo, plan, &NoProgress, &CancelToken::new()).expect("verify");
    assert_eq!(verified.disks[0].cbt_mismatches, 1);
    assert_eq!(verified.disks[0].new, 1, "chunk 7 as it really is");
}

/// Sums what [`Progress::chunk_done`] reports.
#[derive(Default)]
struct Counted {
    bytes: AtomicU64,
    read: AtomicU64,
    stored: AtomicU64,
    new: AtomicU64,
    zero: AtomicU64,
}

impl crate::Progress for Counted {
    fn advance(&self, _bytes: u64) {
        unreachable!("a backup reports chunks through chunk_done");
    }

    fn chunk_done(&self, done: &crate::ChunkDone) {
        self.bytes.fetch_add(done.bytes, Ordering::Relaxed);
        self.read.fetch_add(done.read, Ordering::Relaxed);
        self.stored.fetch_add(done.stored, Ordering::Relaxed);
        self.new.fetch_add(u64::from(done.new), Ordering::Relaxed);
        self.zero.fetch_add(u64::from(done.zero), Ordering::Relaxed);
    }
}

#[test]
fn each_chunk_reports_what_was_read_and_stored() {
    let (_, repo) = memory_repository();
    let bytes = disk_bytes(11, 20);
    let plan = plan_of(vec![("vda", FakeDisk::new(bytes.clone(), 2))]);
    let counted = Counted::default();
    let report = back_up(&repo, plan, &counted, &CancelToken::new()).expect("backup");
    let c = &report.disks[0];
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    assert_eq!(n(&counted.bytes), u64::try_from(bytes.len()).expect("n"));
    assert_eq!(n(&counted.new), c.new);
    assert_eq!(n(&counted.zero), c.zero);
    assert_eq!(n(&counted.read), c.read);
    assert!(n(&counted.stored) > 0, "new chunks take room");
    // Again: every chunk is known, nothing is stored.
    let again = Counted::default();
    let plan = plan_of(vec![("vda", FakeDisk::new(bytes, 2))]);
    back_up(&repo, plan, &again, &CancelToken::new()).expect("backup");
    assert_eq!((n(&again.new), n(&again.stored)), (0, 0));
}

#[test]
fn a_cancelled_check_stops_with_cancelled() {
    let (_, repo) = memory_repository();
    let plan = plan_of(vec![("vda", FakeDisk::new(disk_bytes(5, 10), 1))]);
    back_up(&repo, plan, &NoProgress, &CancelToken::new()).expect("backup");
    let cancel = CancelToken::new();
    cancel.cancel();
    let err = crate::check::check_until(&repo, crate::check::ReadData::All, &|_| {}, &cancel)
        .expect_err("cancelled");
    assert!(matches!(err, Error::Cancelled), "{err}");
}
