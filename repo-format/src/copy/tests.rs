use std::sync::Arc;

use super::*;
use crate::backend::MemoryBackend;
use crate::config::{ChunkSize, Config};
use crate::repository::now_rfc3339;
use crate::testing::{back_up_bytes, memory_repository, noise, FAST_KDF};
use crate::NoProgress;

/// A disk of `chunks` 64 KiB chunks: noise, with every fourth chunk zero.
fn disk(seed: u64, chunks: usize) -> Vec<u8> {
    let mut data = noise(seed, chunks * 65536);
    for c in (0..chunks).step_by(4) {
        data[c * 65536..(c + 1) * 65536].fill(0);
    }
    data
}

fn restore(repo: &Repository, id: Id) -> Vec<u8> {
    let (_, m) = repo
        .snapshots()
        .expect("snapshots")
        .into_iter()
        .find(|(i, _)| *i == id)
        .expect("snapshot there");
    let disk = Arc::new(m.disks[0].clone());
    let reader = DiskReader::new(
        repo.clone(),
        Arc::new(repo.load_index().expect("index")),
        disk.clone(),
    );
    let mut out = vec![0; usize::try_from(disk.size).expect("size")];
    reader.read_at(&mut out, 0).expect("read");
    out
}

fn copy_all(src: &Repository, dst: &Repository) -> (CopyPlan, Vec<Copied>) {
    let plan = plan_copy(dst, src.snapshots().expect("snapshots")).expect("plan");
    let copied = copy_snapshots(src, dst, &plan, &NoProgress, &CancelToken::new()).expect("copy");
    (plan, copied)
}

#[test]
fn copies_restore_bit_exact_and_a_second_copy_copies_nothing() {
    let (_, src) = memory_repository();
    let (_, dst) = memory_repository();
    let first = disk(1, 40);
    let mut second = first.clone();
    second[5 * 65536..6 * 65536].copy_from_slice(&noise(9, 65536));
    let a = back_up_bytes(&src, first.clone()).expect("backup").id;
    let b = back_up_bytes(&src, second.clone()).expect("backup").id;

    let (plan, copied) = copy_all(&src, &dst);
    assert_eq!((plan.missing.len(), plan.present.len()), (2, 0));
    assert_eq!(plan.bytes(), 2 * 40 * 65536);
    // The first copy reads the 30 non-zero chunks; the second only the one that changed.
    assert_eq!(copied[0].report.disks[0].read, 30 * 65536);
    assert_eq!(copied[1].report.disks[0].read, 65536);
    assert_eq!(restore(&dst, copied[0].report.id), first);
    assert_eq!(restore(&dst, copied[1].report.id), second);

    // The copies keep what identifies the snapshot, and name their source.
    let src_snaps = src.snapshots().expect("snapshots");
    for (c, (sid, sm)) in copied.iter().zip(&src_snaps) {
        let m = &c.report.manifest;
        assert_eq!(
            (&m.name, &m.time, &m.hostname),
            (&sm.name, &sm.time, &sm.hostname)
        );
        assert_eq!(m.original, Some(*sid));
    }
    assert_eq!(copied[1].report.manifest.parent, Some(copied[0].report.id));

    let (again, none) = copy_all(&src, &dst);
    assert!(again.missing.is_empty() && none.is_empty());
    assert_eq!(
        again.present,
        vec![(a, copied[0].report.id), (b, copied[1].report.id)]
    );
    assert_eq!(dst.snapshots().expect("snapshots").len(), 2);
}

#[test]
fn a_destination_with_another_chunk_size_gets_the_same_bytes() {
    let (_, src) = memory_repository();
    let chunk = ChunkSize::new(128 * 1024).expect("chunk size");
    let config = Config::new(chunk, 3, &now_rfc3339())
        .and_then(|c| c.with_pack_size(1 << 20))
        .expect("config");
    let dst = Repository::init_with(
        Arc::new(MemoryBackend::default()),
        b"other",
        config,
        FAST_KDF,
    )
    .expect("init");
    // An odd size: the last chunk of each repository is short.
    let mut data = disk(3, 21);
    data.truncate(data.len() - 1000);
    back_up_bytes(&src, data.clone()).expect("backup");
    let (_, copied) = copy_all(&src, &dst);
    assert_eq!(copied.len(), 1);
    assert_eq!(copied[0].report.manifest.disks[0].chunk_size, 128 * 1024);
    assert_eq!(restore(&dst, copied[0].report.id), data);
}

#[test]
fn a_snapshot_with_lost_bytes_is_not_copied_as_zeros() {
    let (_, src) = memory_repository();
    let (_, dst) = memory_repository();
    back_up_bytes(&src, disk(4, 8)).expect("backup");
    let (id, mut m) = src.snapshots().expect("snapshots").remove(0);
    m.disks[0].lost.push(crate::snapshot::LostRange {
        offset: 0,
        length: 65536,
    });
    let plan = CopyPlan {
        missing: vec![(id, m)],
        present: Vec::new(),
    };
    let err =
        copy_snapshots(&src, &dst, &plan, &NoProgress, &CancelToken::new()).expect_err("refused");
    assert!(err.to_string().contains("lost bytes"), "{err}");
    assert!(dst.snapshots().expect("snapshots").is_empty());
}
