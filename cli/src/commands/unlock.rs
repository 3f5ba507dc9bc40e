//! `vmstash unlock`: removes stale locks (§14: not refreshed for 30 minutes, or of a process of
//! this host that is gone, or unreadable files older than that) and the temporary files of
//! writes that stopped 30 minutes ago or more; with `--remove-all` every lock and temporary
//! file, for when the user knows no other vmstash is running.

use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;
use vmstash_repo::backend::{FileKind, PRUNE_LOCK};
use vmstash_repo::leftovers::remove_leftovers;
use vmstash_repo::prune::remove_stale_prune_lock;

use crate::args::{Global, UnlockArgs};
use crate::exit::{self, usage};
use crate::output::{line, print_json};
use crate::repo;

/// Runs `vmstash unlock`.
pub fn run(g: &Global, a: &UnlockArgs) -> Result<ExitCode> {
    if g.no_lock {
        return Err(usage("--no-lock makes no sense for unlock"));
    }
    let repo = repo::open(g)?;
    let removed = if a.remove_all {
        let mut removed = Vec::new();
        for lock in repo.lock_files().context("listing locks")? {
            if !lock.is_stale(&repo.identity().hostname) {
                eprintln!(
                    "vmstash: warning: removing lock {} though it may belong to a running process",
                    short(&lock.name)
                );
            }
            repo.backend()
                .remove(FileKind::Lock, &lock.name)
                .with_context(|| format!("removing locks/{}", lock.name))?;
            removed.push(lock.name);
        }
        if repo.backend().read(FileKind::Lock, PRUNE_LOCK).is_ok() {
            eprintln!("vmstash: warning: removing the prune lock though a prune may be running");
            repo.backend()
                .remove(FileKind::Lock, PRUNE_LOCK)
                .context("removing locks/prune")?;
            removed.push(PRUNE_LOCK.to_string());
        }
        removed
    } else {
        let mut removed = repo.remove_stale_locks().context("removing stale locks")?;
        if remove_stale_prune_lock(&repo).context("removing a stale prune lock")? {
            removed.push(PRUNE_LOCK.to_string());
        }
        removed
    };
    let leftovers = remove_leftovers(&repo, a.remove_all).context("removing temporary files")?;
    if g.json {
        print_json(&json!({ "removed": removed, "temporary_files_removed": leftovers.removed }));
    } else {
        for name in &removed {
            line(format_args!("removed lock {}", short(name)));
        }
        for path in &leftovers.removed {
            line(format_args!("removed temporary file {path}"));
        }
        line(format_args!(
            "{} locks and {} temporary files of interrupted writes removed{}",
            removed.len(),
            leftovers.removed.len(),
            if leftovers.kept_recent > 0 {
                format!(
                    "; {} temporary files written to in the last 30 minutes kept",
                    leftovers.kept_recent
                )
            } else {
                String::new()
            }
        ));
    }
    Ok(exit::ok())
}

fn short(name: &str) -> &str {
    name.get(..8).unwrap_or(name)
}
