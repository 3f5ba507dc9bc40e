//! Temporary files that killed runs leave behind (spec/FORMAT.md §1, §15): a write goes to
//! `.tmp-*` and is renamed when durable, so a process killed mid-write leaves its temporary
//! file. A writer keeps writing to its file, so one not written to for [`STALE_AFTER`] belongs
//! to no live process and may go.

use std::time::SystemTime;

use crate::lock::STALE_AFTER;
use crate::repository::Repository;
use crate::Result;

/// What [`remove_leftovers`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Leftovers {
    /// Temporary files removed (paths relative to the repository root).
    pub removed: Vec<String>,
    /// Temporary files kept because they were written to recently (a live write, maybe).
    pub kept_recent: usize,
}

/// Removes every temporary file not written to for [`STALE_AFTER`] (every one, with `all`);
/// one whose age the store cannot tell is kept unless `all`.
pub fn remove_leftovers(repo: &Repository, all: bool) -> Result<Leftovers> {
    let mut out = Leftovers::default();
    for tmp in repo.backend().list_temporary()? {
        let old = tmp
            .modified
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if all || old {
            repo.backend().remove_temporary(&tmp.path)?;
            out.removed.push(tmp.path);
        } else {
            out.kept_recent += 1;
        }
    }
    out.removed.sort();
    Ok(out)
}
