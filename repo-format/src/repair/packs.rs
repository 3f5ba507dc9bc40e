//! `repair packs ID…`: the blobs of damaged packs that still read (GCM tag and SHA-256 check)
//! and that no other pack holds are copied into new packs; then the index is rewritten without
//! the damaged packs, and they are deleted. Blobs that do not read are lost: `check` names the
//! snapshots that needed them, and `repair snapshots` records the lost bytes.
//!
//! Order keeps §15's invariants: new packs and their index files first, then the new index of
//! every other pack, then the old index files, then the damaged packs.

use std::collections::HashSet;

use serde::Serialize;

use crate::backend::{relative_path, FileKind};
use crate::commit::Committer;
use crate::id::Id;
use crate::index::{distinct_packs, IndexedPack, MasterIndex};
use crate::repository::Repository;
use crate::{pack, threads, CancelToken, Error, Result};

/// What [`salvage_packs`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PackSalvage {
    /// The packs dropped.
    pub packs: Vec<String>,
    /// Blobs copied into new packs.
    pub salvaged: usize,
    /// Blobs another pack also holds (nothing to copy).
    pub elsewhere: usize,
    /// Blobs that do not read and are in no other pack: lost.
    pub lost: usize,
    /// Index files written for the other packs (the new packs have their own).
    pub index_files_written: usize,
}

/// Salvages the packs `ids` (see the module docs). A pack no index lists is read through its
/// own header; one whose header does not read either has nothing to salvage and is dropped.
pub fn salvage_packs(repo: &Repository, ids: &[Id], cancel: &CancelToken) -> Result<PackSalvage> {
    let damaged: HashSet<Id> = ids.iter().copied().collect();
    let present: std::collections::HashMap<Id, u64> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .filter_map(|(n, s)| Id::from_hex(&n).map(|id| (id, s)))
        .collect();
    if let Some(missing) = ids.iter().find(|id| !present.contains_key(id)) {
        return Err(Error::InvalidParameter(format!(
            "there is no pack {}; `vmstash repair index` handles packs that are gone",
            missing.to_hex()
        )));
    }
    let old_files = repo.index_files()?;
    let old_names: Vec<String> = old_files.iter().map(|(n, _)| n.clone()).collect();
    let (bad, good): (Vec<IndexedPack>, Vec<IndexedPack>) = distinct_packs(old_files)
        .into_iter()
        .partition(|p| damaged.contains(&p.id));
    let mut records = bad;
    for id in ids {
        if !records.iter().any(|p| p.id == *id) {
            if let Ok(p) = repo.read_pack_header(*id, present.get(id).copied().unwrap_or(0)) {
                records.push(p);
            }
        }
    }
    let elsewhere = MasterIndex::build([good.clone()]);
    let mut report = PackSalvage {
        packs: ids.iter().map(Id::to_hex).collect(),
        ..PackSalvage::default()
    };
    let committer = Committer::new(repo, &elsewhere, threads::workers());
    for p in &records {
        cancel.check()?;
        salvage_one(repo, p, &elsewhere, &committer, &mut report)?;
    }
    committer.finish()?;
    report.index_files_written = repo.save_index(&good.iter().collect::<Vec<_>>())?;
    for name in &old_names {
        repo.backend().remove(FileKind::Index, name)?;
    }
    for id in ids {
        repo.backend().remove(FileKind::Pack, &id.to_hex())?;
    }
    Ok(report)
}

/// Copies the readable blobs of `pack` that `elsewhere` lacks.
fn salvage_one(
    repo: &Repository,
    pack: &IndexedPack,
    elsewhere: &MasterIndex,
    committer: &Committer<'_>,
    report: &mut PackSalvage,
) -> Result<()> {
    let name = pack.id.to_hex();
    let file = relative_path(FileKind::Pack, &name);
    for entry in &pack.blobs {
        if elsewhere.contains(&entry.id) {
            report.elsewhere += 1;
            continue;
        }
        let plain = repo
            .backend()
            .read_range(FileKind::Pack, &name, u64::from(entry.offset), entry.length)
            .and_then(|sealed| {
                pack::open_blob_owned(repo.master(), &pack.salt, entry, sealed, &file)
            });
        match plain {
            Ok(plain) => {
                committer.save(entry.ty, entry.id, &plain)?;
                report.salvaged += 1;
            }
            Err(Error::Corrupt { .. }) => report.lost += 1,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                report.lost += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::check::{check, ReadData};
    use crate::testing::{back_up_bytes, memory_repository, noise};

    #[test]
    fn readable_blobs_move_to_new_packs_and_the_damaged_pack_goes() {
        let (mem, repo) = memory_repository();
        back_up_bytes(&repo, noise(4, 3 << 20)).expect("backup");
        let index = repo.load_index().expect("index");
        let victim = *index.packs().next().expect("a pack");
        let name = victim.to_hex();
        let blobs = distinct_packs(repo.index_files().expect("files"))
            .into_iter()
            .find(|p| p.id == victim)
            .expect("record")
            .blobs;
        // Damage the first blob only.
        let at = usize::try_from(blobs[0].offset).expect("offset") + 20;
        mem.tamper(FileKind::Pack, &name, |b| b[at] ^= 1);
        let before = check(&repo, ReadData::All, &|_| {}).expect("check");
        assert!(before.damaged_packs.contains(&name), "{before:?}");

        let report = salvage_packs(&repo, &[victim], &CancelToken::new()).expect("salvage");
        assert_eq!(report.lost, 1);
        assert_eq!(report.salvaged, blobs.len() - 1);
        assert!(
            mem.read(FileKind::Pack, &name).is_err(),
            "the damaged pack is gone"
        );
        let after = check(&repo, ReadData::All, &|_| {}).expect("check");
        assert!(after.damaged_packs.is_empty(), "{after:?}");
        assert_eq!(
            after.damaged_snapshots.len(),
            1,
            "one chunk is lost: {after:?}"
        );
        assert!(
            after.errors.iter().all(|e| !e.contains("data/")),
            "{:?}",
            after.errors
        );
    }
}
