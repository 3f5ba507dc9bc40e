//! `repair index`: rebuilds the index from the packs' own headers (spec/FORMAT.md §8.1), for a
//! repository whose index files are damaged or list packs that are gone.
//!
//! Order keeps the §15 invariants at every instant: the new index files are written first
//! (listing only packs whose header reads, so no index ever lists a missing pack), then the old
//! index files that existed at the start are deleted. Packs a prune marked stay out of the new
//! index (§20). The caller holds an exclusive lock: no backup adds, and no prune removes, index
//! files meanwhile.

use std::collections::HashSet;

use crate::backend::FileKind;
use crate::id::Id;
use crate::index;
use crate::progress::Progress;
use crate::repository::Repository;
use crate::sealed::FileType;
use crate::{CancelToken, Result};

/// What [`rebuild_index`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexRebuild {
    /// Packs the new index lists.
    pub packs: usize,
    /// Blobs in them.
    pub blobs: usize,
    /// Index files written.
    pub index_files_written: usize,
    /// Old index files removed.
    pub index_files_removed: usize,
    /// Packs whose header does not read (left in place, listed by no index).
    pub unreadable_packs: Vec<String>,
    /// Packs a prune marked for deletion, left out of the index.
    pub marked_packs: usize,
    /// Packs an old index listed that are gone or unreadable: their blobs are lost.
    pub lost_packs: Vec<String>,
}

/// Rebuilds the index from every pack's header; `progress` is told the bytes of each pack
/// examined (only its header is read).
pub fn rebuild_index(
    repo: &Repository,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<IndexRebuild> {
    let old_files: Vec<String> = repo
        .backend()
        .list(FileKind::Index)?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let previously_listed = listed_packs(repo, &old_files);
    let mut report = IndexRebuild::default();
    let mut packs = Vec::new();
    // A marked pack stays out of the index: a prune may be about to delete it (§20).
    let marked = repo.marked_packs()?;
    for (name, size) in repo.backend().list(FileKind::Pack)? {
        if Id::from_hex(&name).is_some_and(|id| marked.contains(&id)) {
            report.marked_packs += 1;
            continue;
        }
        cancel.check()?;
        let header = match Id::from_hex(&name) {
            Some(id) => repo.read_pack_header(id, size),
            None => Err(crate::Error::corrupt(
                crate::backend::relative_path(FileKind::Pack, &name),
                "bad name",
            )),
        };
        match header {
            Ok(p) => {
                report.blobs += p.blobs.len();
                packs.push(p);
            }
            Err(_) => report.unreadable_packs.push(name),
        }
        progress.advance(size);
    }
    report.index_files_written = repo.save_index(&packs.iter().collect::<Vec<_>>())?;
    report.packs = packs.len();
    let now_listed: HashSet<Id> = packs.iter().map(|p| p.id).collect();
    report.lost_packs = previously_listed
        .into_iter()
        .filter(|id| !now_listed.contains(id))
        .map(|id| id.to_hex())
        .collect();
    report.lost_packs.sort();
    // New index files are sealed with fresh salts, so none has an old file's name.
    for name in &old_files {
        repo.backend().remove(FileKind::Index, name)?;
        report.index_files_removed += 1;
    }
    Ok(report)
}

/// The packs the readable old index files list (an unreadable one lists nothing we know of).
fn listed_packs(repo: &Repository, files: &[String]) -> HashSet<Id> {
    files
        .iter()
        .filter_map(|name| {
            let plain = repo
                .read_file(FileKind::Index, FileType::Index, name)
                .ok()?;
            index::decode(
                &plain,
                &crate::backend::relative_path(FileKind::Index, name),
            )
            .ok()
        })
        .flatten()
        .map(|p| p.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::testing::{back_up_bytes, memory_repository, noise};
    use crate::NoProgress;

    #[test]
    fn a_damaged_index_and_a_deleted_pack_leave_an_index_of_what_is_there() {
        let (mem, repo) = memory_repository();
        back_up_bytes(&repo, noise(3, 3 << 20)).expect("backup");
        let packs = mem.list(FileKind::Pack).expect("packs");
        assert!(packs.len() >= 2, "{packs:?}");
        let gone = packs[0].0.clone();
        mem.remove(FileKind::Pack, &gone).expect("rm pack");
        let junk = Id::of(b"junk").to_hex();
        mem.write(FileKind::Index, &junk, b"not an index")
            .expect("junk index");

        let report = rebuild_index(&repo, &NoProgress, &CancelToken::new()).expect("rebuild");
        assert_eq!(report.packs, packs.len() - 1);
        assert_eq!(report.lost_packs, vec![gone.clone()]);
        assert!(report.unreadable_packs.is_empty());
        let names: Vec<_> = mem
            .list(FileKind::Index)
            .expect("list")
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(names.len(), report.index_files_written);
        assert!(!names.contains(&junk), "the damaged index file is gone");
        let check =
            crate::check::check(&repo, crate::check::ReadData::All, &|_| {}).expect("check");
        assert!(
            check
                .errors
                .iter()
                .all(|e| !e.contains("listed in the index but missing")),
            "{:?}",
            check.errors
        );
        assert!(
            !check.errors.is_empty(),
            "the snapshot's lost chunks are reported"
        );
        let index = repo.load_index().expect("index");
        assert_eq!(index.packs().count(), packs.len() - 1);
    }
}
