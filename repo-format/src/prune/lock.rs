//! The prune lock (spec/FORMAT.md §20.2): `locks/prune`, created exclusively, so that two prunes
//! never run at once, while backups, restores and mounts (shared locks) go on.

use std::time::SystemTime;

use crate::backend::{FileKind, PRUNE_LOCK};
use crate::lock::{seal_lock, Holder, LockGuard, LockInfo, STALE_AFTER};
use crate::repository::Repository;
use crate::{Error, Result};

/// The `purpose` of a prune's locks.
pub const PRUNE_PURPOSE: &str = "prune";

/// `locks/prune`, held; removed on drop (before the lock it was taken under).
pub struct PruneLock {
    repo: Repository,
    /// False once the file turned out to be another prune's: dropping must not remove it.
    ours: bool,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl PruneLock {
    /// Takes the prune lock for the holder of `lock` (a lock taken with purpose
    /// [`PRUNE_PURPOSE`]); fails naming the holder when another prune runs.
    pub fn take(repo: &Repository, lock: &LockGuard) -> Result<PruneLock> {
        let me = lock.holder().clone();
        let info = LockInfo {
            time: now(),
            exclusive: false,
            hostname: me.hostname.clone(),
            username: me.username.clone(),
            pid: me.pid,
            started: me.started,
            purpose: Some(PRUNE_PURPOSE.to_string()),
        };
        let bytes = seal_lock(repo, &info);
        let mut created = false;
        for _ in 0..2 {
            if repo
                .backend()
                .create_new(FileKind::Lock, PRUNE_LOCK, &bytes)?
            {
                created = true;
                break;
            }
            remove_if_stale(repo)?;
        }
        if !created {
            return Err(held_by(
                "another prune that started at the same time".into(),
            ));
        }
        let mut held = PruneLock {
            repo: repo.clone(),
            ours: true,
        };
        // Another prune's live lock: a loser of the creation still backing off, or a second
        // creator (both removed the same stale prune lock, or the store ignores conditional
        // writes). Once both writes have settled, the one whose bytes `locks/prune` holds
        // goes on; the other stops (§20.2 step 3).
        let racer = repo.live_holders()?.into_iter().find(|(holder, other)| {
            *holder != me && other.purpose.as_deref() == Some(PRUNE_PURPOSE)
        });
        if let Some((_, other)) = racer {
            std::thread::sleep(SETTLE);
            if !holds_own(repo, &bytes)? {
                held.ours = false;
                return Err(held_by(other.describe()));
            }
        }
        Ok(held)
    }
}

/// How long a prune that sees another prune's lock waits before it reads `locks/prune` again:
/// longer than two racing creators take between their creations.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// True when `locks/prune` holds exactly `bytes` (our lock object).
fn holds_own(repo: &Repository, bytes: &[u8]) -> Result<bool> {
    match repo.backend().read(FileKind::Lock, PRUNE_LOCK) {
        Ok(found) => Ok(found == bytes),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn held_by(holder: String) -> Error {
    Error::Locked {
        kind: "for pruning",
        holder,
        file: PRUNE_LOCK.to_string(),
    }
}

/// Removes `locks/prune` when its holder has no live lock any more (or, unreadable, when the
/// file is older than the stale age); otherwise fails naming the holder.
fn remove_if_stale(repo: &Repository) -> Result<()> {
    let file = format!("locks/{PRUNE_LOCK}");
    let bytes = match repo.backend().read(FileKind::Lock, PRUNE_LOCK) {
        Ok(b) => b,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    match repo.open_lock(&bytes, &file) {
        Ok(info) => {
            let holder: Holder = info.holder();
            let live = repo.live_holders()?.into_iter().any(|(h, _)| h == holder);
            if live {
                return Err(held_by(info.describe()));
            }
        }
        Err(e) => {
            let old = repo
                .backend()
                .modified(FileKind::Lock, PRUNE_LOCK)?
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age > STALE_AFTER);
            if !old {
                return Err(Error::LockUnreadable {
                    file: PRUNE_LOCK.to_string(),
                    reason: e.to_string(),
                    stale_minutes: STALE_AFTER.as_secs() / 60,
                });
            }
        }
    }
    match repo.backend().remove(FileKind::Lock, PRUNE_LOCK) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes a stale `locks/prune` (for `unlock`); returns whether it did.
pub fn remove_stale_prune_lock(repo: &Repository) -> Result<bool> {
    let present = || repo.backend().read(FileKind::Lock, PRUNE_LOCK).is_ok();
    if !present() {
        return Ok(false);
    }
    match remove_if_stale(repo) {
        Ok(()) => Ok(!present()),
        Err(Error::Locked { .. } | Error::LockUnreadable { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Drop for PruneLock {
    fn drop(&mut self) {
        if self.ours {
            let _ = self.repo.backend().remove(FileKind::Lock, PRUNE_LOCK);
        }
    }
}
