use std::collections::HashSet;
use std::time::Duration;

use super::*;
use crate::backend::{Backend, MemoryBackend};
use crate::check::{check, ReadData};
use crate::lock::LockInfo;
use crate::testing::{back_up_bytes, memory_repository, noise};
use crate::{DiskReader, NoProgress};

fn now_opts() -> PruneOptions {
    PruneOptions {
        keep_delete: Duration::ZERO,
        ..PruneOptions::default()
    }
}

/// Backs up `data` as snapshot "d"; returns the snapshot id.
fn backup(repo: &Repository, data: &[u8]) -> Id {
    back_up_bytes(repo, data.to_vec()).expect("backup").id
}

fn read_back(repo: &Repository, id: &Id) -> Vec<u8> {
    let (_, m) = repo
        .find_snapshot(&id.to_hex(), &Default::default())
        .expect("snapshot");
    let disk = m.disks[0].clone();
    let reader = DiskReader::new(
        repo.clone(),
        std::sync::Arc::new(repo.load_index().expect("index")),
        std::sync::Arc::new(disk.clone()),
    );
    let mut out = vec![0; usize::try_from(disk.size).expect("size")];
    reader.read_at(&mut out, 0).expect("read");
    out
}

fn pack_bytes(mem: &MemoryBackend) -> u64 {
    mem.list(FileKind::Pack)
        .expect("list")
        .iter()
        .map(|(_, s)| s)
        .sum()
}

/// Ten versions, each changing a part of the disk.
fn versions(repo: &Repository) -> Vec<(Id, Vec<u8>)> {
    let mut data = noise(1, 4 << 20);
    let mut out = Vec::new();
    for v in 0..6u64 {
        let start = usize::try_from(v * 600_000).expect("small");
        let fresh = noise(100 + v, 700_000);
        data[start..start + fresh.len()].copy_from_slice(&fresh);
        out.push((backup(repo, &data), data.clone()));
    }
    out
}

#[test]
fn prune_marks_then_deletes_and_kept_snapshots_read_back() {
    let (mem, repo) = memory_repository();
    let all = versions(&repo);
    let before = pack_bytes(&mem);
    for (id, _) in &all[..4] {
        repo.remove_snapshot(id).expect("forget");
    }
    let first = prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect("prune 1");
    assert!(first.removed.count + first.repacked.count > 0, "{first:?}");
    assert_eq!(first.deleted.count, 0, "the first run only marks");
    assert!(
        pack_bytes(&mem) >= before,
        "nothing is deleted by the run that marks"
    );
    assert_eq!(repo.mark_files().expect("marks").len(), 1);
    let second = prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect("prune 2");
    assert_eq!(
        second.deleted.count,
        first.removed.count + first.repacked.count
    );
    assert!(repo.mark_files().expect("marks").is_empty());
    assert!(pack_bytes(&mem) < before);
    for (id, data) in &all[4..] {
        assert_eq!(&read_back(&repo, id), data);
    }
    let report = check(&repo, ReadData::All, &|_| {}).expect("check");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[test]
fn instant_delete_frees_space_in_one_run_and_dry_run_changes_nothing() {
    let (mem, repo) = memory_repository();
    let all = versions(&repo);
    for (id, _) in &all[..5] {
        repo.remove_snapshot(id).expect("forget");
    }
    let listing = |m: &MemoryBackend| {
        let mut v = Vec::new();
        for k in FileKind::DIRS {
            v.extend(m.list(k).expect("list"));
        }
        v
    };
    let files = listing(&mem);
    let dry = prune(
        &repo,
        &PruneOptions {
            dry_run: true,
            instant_delete: true,
            ..now_opts()
        },
        &NoProgress,
        &CancelToken::new(),
    )
    .expect("dry");
    assert!(dry.removed.count > 0);
    assert_eq!(listing(&mem), files, "a dry run writes and deletes nothing");
    let before = pack_bytes(&mem);
    let done = prune(
        &repo,
        &PruneOptions {
            instant_delete: true,
            max_unused: MaxUnused::Hundredths(0),
            ..now_opts()
        },
        &NoProgress,
        &CancelToken::new(),
    )
    .expect("instant");
    assert_eq!(done.deleted.count, done.removed.count + done.repacked.count);
    assert!(pack_bytes(&mem) < before);
    assert!(repo.mark_files().expect("marks").is_empty());
    assert_eq!(read_back(&repo, &all[5].0), all[5].1);
    let again = prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect("again");
    assert_eq!(again.removed.count + again.repacked.count, 0, "{again:?}");
    assert_eq!(again.unused_bytes, 0);
}

/// Writes a live lock of a process elsewhere: a backup that may have loaded the old index.
fn foreign_lock(repo: &Repository, pid: u32) -> String {
    let info = LockInfo {
        time: super::now_secs(),
        exclusive: false,
        hostname: "elsewhere".into(),
        username: "backup".into(),
        pid,
        started: Some(42),
        purpose: Some("backup".into()),
    };
    let bytes = crate::lock::seal_lock(repo, &info);
    let name = Id::of(&bytes).to_hex();
    repo.backend()
        .write(FileKind::Lock, &name, &bytes)
        .expect("lock");
    name
}

#[test]
fn marked_packs_wait_for_every_lock_live_when_they_were_marked() {
    let (mem, repo) = memory_repository();
    let all = versions(&repo);
    let lock = foreign_lock(&repo, 7);
    for (id, _) in &all[..5] {
        repo.remove_snapshot(id).expect("forget");
    }
    let first = prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect("1");
    let marked = first.removed.count + first.repacked.count;
    assert!(marked > 0);
    let second = prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect("2");
    assert_eq!(second.deleted.count, 0, "the holder still runs");
    assert_eq!(second.waiting.count, marked);
    assert_eq!(
        second.waiting_for,
        vec!["backup@elsewhere (pid 7)".to_string()]
    );
    // A new lock of the same process (a refresh) still holds; another process does not.
    mem.remove(FileKind::Lock, &lock).expect("rm");
    foreign_lock(&repo, 7);
    let third = prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect("3");
    assert_eq!(third.deleted.count, 0);
    for (name, _) in mem.list(FileKind::Lock).expect("list") {
        mem.remove(FileKind::Lock, &name).expect("rm");
    }
    foreign_lock(&repo, 8);
    let fourth = prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect("4");
    assert_eq!(fourth.deleted.count, marked);
    assert_eq!(read_back(&repo, &all[5].0), all[5].1);
}

#[test]
fn keep_delete_delays_deletion() {
    let (_mem, repo) = memory_repository();
    let all = versions(&repo);
    for (id, _) in &all[..5] {
        repo.remove_snapshot(id).expect("forget");
    }
    let opts = PruneOptions {
        keep_delete: Duration::from_secs(3600),
        ..PruneOptions::default()
    };
    prune(&repo, &opts, &NoProgress, &CancelToken::new()).expect("1");
    let second = prune(&repo, &opts, &NoProgress, &CancelToken::new()).expect("2");
    assert_eq!(second.deleted.count, 0);
    assert!(second.waiting.count > 0);
}

#[test]
fn a_backup_that_reused_a_marked_pack_recovers_it_before_committing() {
    let (_mem, repo) = memory_repository();
    let data = noise(5, 3 << 20);
    let first = backup(&repo, &data);
    // The backup's view: the index before the prune.
    let marked_before = repo.marked_packs().expect("marks");
    assert!(marked_before.is_empty());
    let index = repo.load_index().expect("index");
    let (_, manifest) = repo
        .find_snapshot(&first.to_hex(), &Default::default())
        .expect("manifest");
    repo.remove_snapshot(&first).expect("forget");
    let report = prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect("prune");
    assert!(report.removed.count > 0);
    // Everything the old index listed is marked now; a backup that deduplicated against it
    // recovers the packs before writing its manifest.
    let needed: Vec<Id> = index.packs().copied().collect();
    let recovered = crate::marks::recover_needed_packs(&repo, &needed).expect("recover");
    assert_eq!(recovered, needed.len());
    // ... and commits: its snapshot needs what the forgotten one needed.
    let mut again = manifest;
    again.time = crate::repository::now_rfc3339();
    repo.save_snapshot(&again).expect("commit");
    let second = prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect("prune 2");
    assert_eq!(
        second.deleted.count, 0,
        "recovered packs are indexed: never deleted"
    );
    let again = repo.load_index().expect("index");
    let back: HashSet<Id> = again.packs().copied().collect();
    assert!(needed.iter().all(|p| back.contains(p)), "{second:?}");
}

#[test]
fn a_second_prune_names_the_first_and_a_stale_prune_lock_is_taken_over() {
    let (mem, repo) = memory_repository();
    let guard = repo.lock(PRUNE_PURPOSE, false).expect("lock");
    let held = PruneLock::take(&repo, &guard).expect("prune lock");
    let err = prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect_err("second");
    assert!(
        matches!(
            &err,
            Error::Locked {
                kind: "for pruning",
                ..
            }
        ),
        "{err}"
    );
    // The holder ends without removing locks/prune: its file is stale then.
    std::mem::forget(held);
    drop(guard);
    assert!(mem.read(FileKind::Lock, crate::backend::PRUNE_LOCK).is_ok());
    prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect("takes over");
    assert!(mem
        .read(FileKind::Lock, crate::backend::PRUNE_LOCK)
        .is_err());
}

#[test]
fn a_damaged_snapshot_stops_prune_before_anything_changes() {
    let (mem, repo) = memory_repository();
    let all = versions(&repo);
    repo.remove_snapshot(&all[0].0).expect("forget");
    let victim = all[1].0.to_hex();
    mem.tamper(FileKind::Snapshot, &victim, |b| b[40] ^= 1);
    let err = prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect_err("damaged");
    assert!(
        err.to_string().contains("prune cannot know what it needs"),
        "{err}"
    );
    assert!(repo.mark_files().expect("marks").is_empty());
}

#[test]
fn orphan_packs_are_adopted_and_only_marked_in_the_run_that_finds_them() {
    let (mem, repo) = memory_repository();
    backup(&repo, &noise(9, 2 << 20));
    for (name, _) in mem.list(FileKind::Index).expect("list") {
        mem.remove(FileKind::Index, &name).expect("rm");
    }
    for (name, _) in mem.list(FileKind::Snapshot).expect("list") {
        mem.remove(FileKind::Snapshot, &name).expect("rm");
    }
    let packs = mem.list(FileKind::Pack).expect("list").len();
    let first = prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect("1");
    assert_eq!(first.adopted, packs);
    assert_eq!(first.deleted.count, 0);
    assert_eq!(mem.list(FileKind::Pack).expect("list").len(), packs);
    let second = prune(&repo, &now_opts(), &NoProgress, &CancelToken::new()).expect("2");
    assert_eq!(second.deleted.count, packs);
    assert!(mem.list(FileKind::Pack).expect("list").is_empty());
}
