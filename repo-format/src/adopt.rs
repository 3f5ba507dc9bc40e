//! Adopting packs that no index lists (spec/FORMAT.md §15): a backup killed before its next
//! index flush leaves durable packs behind. Their own headers list their blobs, so a new backup
//! reads those headers (three small range reads per pack), writes index files for them, and
//! deduplicates against their blobs instead of storing everything again.
//!
//! A pack of a backup still running is adopted too; that is harmless, since a pack is written
//! whole under its final name before any index may list it, and a pack listed by several index
//! files is allowed (§10).

use std::collections::HashSet;

use crate::backend::FileKind;
use crate::commit::INDEX_FLUSH_PACKS;
use crate::id::Id;
use crate::index::{self, MasterIndex};
use crate::repository::Repository;
use crate::sealed::FileType;
use crate::Result;

/// What adoption did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// Packs now indexed.
    pub packs: usize,
    /// Blobs in them.
    pub blobs: usize,
    /// Unindexed packs whose header could not be read (left alone: only a repair or prune
    /// decides about them).
    pub unreadable: usize,
}

/// Indexes every pack file that `index` does not list, that is not `marked` for deletion by a
/// prune (§20: read the marks before loading the index), and whose header reads; returns what it
/// did. Writes nothing when every pack is indexed.
pub fn adopt_unindexed_packs(
    repo: &Repository,
    index: &MasterIndex,
    marked: &HashSet<Id>,
) -> Result<Adopted> {
    let indexed: HashSet<&Id> = index.packs().collect();
    let mut found = Vec::new();
    let mut adopted = Adopted::default();
    for (name, size) in repo.backend().list(FileKind::Pack)? {
        let Some(id) = Id::from_hex(&name) else {
            continue;
        };
        if indexed.contains(&id) || marked.contains(&id) {
            continue;
        }
        match repo.read_pack_header(id, size) {
            Ok(p) => {
                adopted.blobs += p.blobs.len();
                found.push(p);
            }
            Err(_) => adopted.unreadable += 1,
        }
    }
    for batch in found.chunks(INDEX_FLUSH_PACKS) {
        repo.save_file(FileKind::Index, FileType::Index, &index::encode(batch))?;
        adopted.packs += batch.len();
    }
    Ok(adopted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backup::{back_up, BackupDisk, BackupPlan};
    use crate::source::MemorySource;
    use crate::testing::{memory_repository, noise};
    use crate::{CancelToken, NoProgress};

    #[test]
    fn packs_no_index_lists_are_indexed_from_their_headers() {
        let (mem, repo) = memory_repository();
        let data = noise(7, 3 << 20);
        let plan = BackupPlan::new(
            "d",
            vec![BackupDisk::new(
                "d",
                "mem",
                Box::new(MemorySource::new(data)),
            )],
        );
        back_up(&repo, plan, &NoProgress, &CancelToken::new()).expect("backup");
        // Forget every index file: the packs are orphans now.
        for (name, _) in mem.list(FileKind::Index).expect("list") {
            mem.remove(FileKind::Index, &name).expect("rm");
        }
        let empty = repo.load_index().expect("index");
        assert!(empty.is_empty());
        let adopted = adopt_unindexed_packs(&repo, &empty, &HashSet::new()).expect("adopt");
        let packs = mem.list(FileKind::Pack).expect("list").len();
        assert_eq!(adopted.packs, packs);
        assert_eq!(adopted.unreadable, 0);
        let index = repo.load_index().expect("index");
        assert_eq!(index.len(), adopted.blobs);
        assert!(
            crate::check::check(&repo, crate::check::ReadData::All, &|_| {})
                .expect("check")
                .errors
                .is_empty()
        );
        // Nothing left to adopt.
        assert_eq!(
            adopt_unindexed_packs(&repo, &index, &HashSet::new()).expect("again"),
            Adopted::default()
        );
    }

    #[test]
    fn a_damaged_orphan_is_counted_and_left_alone() {
        let (mem, repo) = memory_repository();
        mem.write(FileKind::Pack, &Id::of(b"x").to_hex(), b"\x01\x05short")
            .expect("write");
        let adopted =
            adopt_unindexed_packs(&repo, &repo.load_index().expect("index"), &HashSet::new())
                .expect("adopt");
        assert_eq!(
            adopted,
            Adopted {
                packs: 0,
                blobs: 0,
                unreadable: 1
            }
        );
        assert!(mem.list(FileKind::Index).expect("list").is_empty());
    }
}
