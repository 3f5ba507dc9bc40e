//! Mark files (spec/FORMAT.md §20.1): the packs a prune run took out of the index, waiting for a
//! later run to delete them once every lock holder that could still use them has ended.
//!
//! A mark is a sealed file (type 6) in `marks/` with JSON plaintext. A pack that a mark lists and
//! no index lists is *marked*: backups neither reuse nor adopt it. A pack that is both marked and
//! indexed is *recovered* and is an ordinary pack again.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::backend::{relative_path, FileKind};
use crate::id::Id;
use crate::lock::Holder;
use crate::repository::Repository;
use crate::sealed::FileType;
use crate::{Error, Result};

/// The plaintext of a mark file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// When the packs were marked: seconds since the Unix epoch (the prune's clock).
    pub time: u64,
    /// Host of the prune that marked them.
    pub hostname: String,
    /// The lock holders live once the old index files were gone; `None` while the marking run
    /// is still under way (or was stopped before it finished).
    pub holders: Option<Vec<Holder>>,
    /// The marked packs.
    pub packs: Vec<Id>,
}

impl Mark {
    /// Parses a mark's plaintext; `file` names it in errors.
    pub fn decode(plain: &[u8], file: &str) -> Result<Mark> {
        serde_json::from_slice::<Mark>(plain)
            .map_err(|e| Error::corrupt(file, format!("bad mark: {e}")))
    }

    /// The JSON plaintext.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| unreachable!("plain struct"))
    }
}

/// One file in `marks/`.
#[derive(Debug)]
pub struct MarkFile {
    /// Its name.
    pub name: String,
    /// What it says, or why it cannot be read.
    pub mark: Result<Mark>,
}

impl Repository {
    /// Every mark file, decoded or not.
    pub fn mark_files(&self) -> Result<Vec<MarkFile>> {
        let mut out = Vec::new();
        for (name, _) in self.backend().list(FileKind::Mark)? {
            let mark = self
                .read_file(FileKind::Mark, FileType::Mark, &name)
                .and_then(|plain| Mark::decode(&plain, &relative_path(FileKind::Mark, &name)));
            out.push(MarkFile { name, mark });
        }
        Ok(out)
    }

    /// Stores a mark file; returns its name.
    pub fn save_mark(&self, mark: &Mark) -> Result<String> {
        let (id, _) = self.save_file(FileKind::Mark, FileType::Mark, &mark.encode())?;
        Ok(id.to_hex())
    }

    /// Every pack some mark lists. A mark that cannot be read is an error: its packs are
    /// unknown, so whoever asks (adoption) could take a marked pack for an orphan.
    pub fn marked_packs(&self) -> Result<HashSet<Id>> {
        let mut packs = HashSet::new();
        for file in self.mark_files()? {
            packs.extend(file.mark?.packs);
        }
        Ok(packs)
    }
}

/// Makes sure every pack in `needed` (what a new snapshot's blobs are in) is indexed before the
/// snapshot is written (§20.4): a pack a prune marked while this backup ran gets an index file
/// again, read from its own header. Returns the number of packs recovered.
///
/// When a mark cannot be read, every index file is read instead to find the needed packs no
/// index lists. A needed pack that no longer exists is [`Error::PackPruned`].
pub fn recover_needed_packs(repo: &Repository, needed: &[Id]) -> Result<usize> {
    if needed.is_empty() {
        return Ok(0);
    }
    let lost: Vec<Id> = match repo.marked_packs() {
        Ok(marked) => needed
            .iter()
            .filter(|p| marked.contains(p))
            .copied()
            .collect(),
        Err(_) => {
            let indexed: HashSet<Id> = repo
                .index_files()?
                .into_iter()
                .flat_map(|(_, packs)| packs.into_iter().map(|p| p.id))
                .collect();
            needed
                .iter()
                .filter(|p| !indexed.contains(p))
                .copied()
                .collect()
        }
    };
    if lost.is_empty() {
        return Ok(0);
    }
    let sizes: std::collections::HashMap<String, u64> =
        repo.backend().list(FileKind::Pack)?.into_iter().collect();
    let mut records = Vec::new();
    for id in lost {
        let size = *sizes
            .get(&id.to_hex())
            .ok_or_else(|| Error::PackPruned(id.to_hex()))?;
        records.push(repo.read_pack_header(id, size)?);
    }
    for batch in records.chunks(crate::commit::INDEX_FLUSH_PACKS) {
        repo.save_file(
            FileKind::Index,
            FileType::Index,
            &crate::index::encode(batch),
        )?;
    }
    Ok(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::memory_repository;

    #[test]
    fn marks_round_trip_and_damage_is_reported() {
        let (mem, repo) = memory_repository();
        let mark = Mark {
            time: 7,
            hostname: "h".into(),
            holders: None,
            packs: vec![Id::of(b"a"), Id::of(b"b")],
        };
        let name = repo.save_mark(&mark).expect("save");
        let files = repo.mark_files().expect("list");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].mark.as_ref().expect("decoded"), &mark);
        assert_eq!(repo.marked_packs().expect("packs").len(), 2);
        mem.tamper(FileKind::Mark, &name, |b| {
            let last = b.len() - 1;
            b[last] ^= 1;
        });
        assert!(repo.mark_files().expect("list")[0].mark.is_err());
        assert!(repo.marked_packs().is_err());
    }
}
