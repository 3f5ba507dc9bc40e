//! `repair snapshots`: for each snapshot some of whose bytes can no longer be read (chunks or
//! map segments missing from the index), a new snapshot that records exactly those byte ranges
//! (`lost`, spec §13) and names the snapshot it replaces (`original`). Readers then refuse the
//! lost bytes, or give zeros there only when asked (`--zero-lost`); the rest restores. With
//! `forget`, the original snapshots go, and so do snapshot files that cannot be read at all.
//!
//! Chunks whose bytes are damaged inside a pack that the index still lists are not seen here:
//! `check --read-data` finds those packs and `repair packs` takes them out of the index first.

use std::collections::HashSet;

use serde::Serialize;

use crate::backend::FileKind;
use crate::lost::{all_recorded, total, unreadable_ranges};
use crate::repository::Repository;
use crate::{CancelToken, Result};

/// One snapshot rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepairedSnapshot {
    /// The snapshot's series name.
    pub name: String,
    /// The snapshot it replaces.
    pub original: String,
    /// The new snapshot (empty in a dry run).
    pub id: String,
    /// Lost bytes, over all its disks.
    pub lost_bytes: u64,
}

/// What [`repair_snapshots`] did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRepair {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Snapshots rewritten.
    pub repaired: Vec<RepairedSnapshot>,
    /// Snapshots with nothing lost (or whose losses are recorded already).
    pub intact: usize,
    /// Snapshot files that cannot be read: removed with `forget`, else only named.
    pub unreadable: Vec<String>,
    /// Whether the originals and the unreadable files were removed.
    pub forgot: bool,
}

/// Rewrites every snapshot with unreadable bytes; see the module docs.
pub fn repair_snapshots(
    repo: &Repository,
    forget: bool,
    dry_run: bool,
    cancel: &CancelToken,
) -> Result<SnapshotRepair> {
    let listing = repo.snapshot_listing()?;
    let index = repo.load_index()?;
    let none = HashSet::new();
    let mut report = SnapshotRepair {
        dry_run,
        forgot: forget && !dry_run,
        ..SnapshotRepair::default()
    };
    for (id, manifest) in &listing.snapshots {
        cancel.check()?;
        let mut repaired = manifest.clone();
        let mut lost_bytes = 0;
        let mut changed = false;
        for disk in &mut repaired.disks {
            let found = unreadable_ranges(repo, &index, &none, disk)?;
            lost_bytes += total(&found);
            if !all_recorded(&found, &disk.lost) || found.len() != disk.lost.len() {
                changed = true;
            }
            disk.lost = found;
        }
        if !changed {
            report.intact += 1;
            continue;
        }
        repaired.original = Some(*id);
        let new_id = if dry_run {
            String::new()
        } else {
            let (new_id, _) = repo.save_snapshot(&repaired)?;
            if forget {
                repo.remove_snapshot(id)?;
            }
            new_id.to_hex()
        };
        report.repaired.push(RepairedSnapshot {
            name: manifest.name.clone(),
            original: id.to_hex(),
            id: new_id,
            lost_bytes,
        });
    }
    for (name, _) in &listing.damaged {
        if report.forgot {
            repo.backend().remove(FileKind::Snapshot, name)?;
        }
        report.unreadable.push(name.clone());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::Backend;
    use crate::check::{check, ReadData};
    use crate::testing::{back_up_bytes, memory_repository, noise};
    use crate::{DiskReader, Error, NoProgress};

    #[test]
    fn lost_chunks_are_recorded_and_read_only_when_asked() {
        let (mem, repo) = memory_repository();
        let data = noise(8, 3 << 20);
        let saved = back_up_bytes(&repo, data.clone()).expect("backup");
        // Lose one data pack (and rebuild the index without it).
        let index = repo.load_index().expect("index");
        let first_chunk =
            crate::disk_reader::map_segment(&repo, &index, &saved.manifest.disks[0], 0)
                .expect("segment")[0];
        let pack = *index.find(&first_chunk).expect("located").pack;
        mem.remove(FileKind::Pack, &pack.to_hex()).expect("rm");
        crate::repair::rebuild_index(&repo, &NoProgress, &CancelToken::new()).expect("rebuild");

        let report = repair_snapshots(&repo, true, false, &CancelToken::new()).expect("repair");
        assert_eq!(report.repaired.len(), 1);
        let lost = report.repaired[0].lost_bytes;
        assert!(
            lost > 0 && lost < u64::try_from(data.len()).expect("len"),
            "{report:?}"
        );
        let (_, m) = repo
            .find_snapshot("latest", &Default::default())
            .expect("latest");
        assert_eq!(m.original, Some(saved.id));
        assert_eq!(
            repo.snapshots().expect("list").len(),
            1,
            "the original is forgotten"
        );
        let disk = Arc::new(m.disks[0].clone());
        let index = Arc::new(repo.load_index().expect("index"));
        let reader = DiskReader::new(repo.clone(), Arc::clone(&index), Arc::clone(&disk));
        let mut buf = vec![0; data.len()];
        assert!(matches!(
            reader.read_at(&mut buf, 0),
            Err(Error::Lost { .. })
        ));
        let zeroing = reader.zero_lost(true);
        zeroing.read_at(&mut buf, 0).expect("zeros where lost");
        let mut expected = data.clone();
        for r in &disk.lost {
            let a = usize::try_from(r.offset).expect("offset");
            let b = usize::try_from(r.offset + r.length).expect("end");
            expected[a..b].fill(0);
        }
        assert!(
            buf == expected,
            "zeros exactly where lost, the rest as backed up"
        );
        let c = check(&repo, ReadData::All, &|_| {}).expect("check");
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert!(
            c.warnings.iter().any(|w| w.contains("lost")),
            "{:?}",
            c.warnings
        );
        // Nothing more to do.
        let again = repair_snapshots(&repo, true, false, &CancelToken::new()).expect("again");
        assert!(again.repaired.is_empty());
        assert_eq!(again.intact, 1);
    }
}
