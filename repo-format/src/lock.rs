//! Repository locks (spec/FORMAT.md §14 "Locks").
//!
//! A lock is a sealed file (§6, type 4) in `locks/` with JSON plaintext.
//! Backups, restores, mounts, checks, forget and prune take shared locks;
//! `prune --instant-delete` and repairs take an exclusive one. A process writes its lock, then lists the
//! others: if any live lock conflicts, it removes its own and fails. A
//! lock is stale when its time is more than [`STALE_AFTER`] old (holders
//! refresh every [`REFRESH_EVERY`]), or when it was made on this host by a
//! process that no longer exists.

use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::backend::FileKind;
use crate::id::Id;
use crate::repository::Repository;
use crate::sealed::{self, FileType};
use crate::{Error, Result};

/// A lock not refreshed for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a holder rewrites its lock.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// The plaintext of a lock file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    /// Seconds since the Unix epoch when written.
    pub time: u64,
    /// Exclusive or shared.
    pub exclusive: bool,
    /// Host of the holder.
    pub hostname: String,
    /// User of the holder.
    pub username: String,
    /// Process id of the holder.
    pub pid: u32,
    /// When the holder took its first lock; refreshes keep it, so it names the holder (§20.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    /// What the holder does (`backup`, `mount`, `prune`, …), for people reading the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}

/// Who holds a lock, across the lock files its refreshes write (spec §20.1 "Holder").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Holder {
    /// Host of the holder.
    pub hostname: String,
    /// User of the holder.
    pub username: String,
    /// Process id.
    pub pid: u32,
    /// When it took its first lock (`None` for a lock without that member).
    pub started: Option<u64>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} (pid {})", self.username, self.hostname, self.pid)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl LockInfo {
    /// True when this lock no longer protects anything.
    pub fn is_stale(&self, hostname: &str) -> bool {
        if now().saturating_sub(self.time) > STALE_AFTER.as_secs() {
            return true;
        }
        self.hostname == hostname && !process_exists(self.pid)
    }

    /// Who holds it.
    pub fn holder(&self) -> Holder {
        Holder {
            hostname: self.hostname.clone(),
            username: self.username.clone(),
            pid: self.pid,
            started: self.started,
        }
    }

    /// The holder for messages: who, what for, and how fresh.
    pub fn describe(&self) -> String {
        format!(
            "{}{} (lock written {} s ago)",
            self.holder(),
            self.purpose
                .as_deref()
                .map(|p| format!(", {p}"))
                .unwrap_or_default(),
            now().saturating_sub(self.time)
        )
    }
}

/// A `started` value no other lock of this process has: microseconds since the epoch, made
/// unique, so that two locks one process holds (a daemon's backup and prune) name two holders.
fn unique_start() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let prev = LAST
        .fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |last| Some(now.max(last + 1)),
        )
        .unwrap_or(0);
    now.max(prev + 1)
}

fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e != rustix::io::Errno::SRCH,
    }
}

/// A held lock: refreshed in the background, removed on drop.
pub struct LockGuard {
    stop: Option<Sender<()>>,
    refresher: Option<JoinHandle<()>>,
    current: Arc<Mutex<String>>,
    holder: Holder,
    repo: Repository,
}

impl Repository {
    /// Takes a shared or exclusive lock for `purpose` (`backup`, `mount`, …: shown to others).
    pub fn lock(&self, purpose: &str, exclusive: bool) -> Result<LockGuard> {
        let me = LockInfo {
            time: now(),
            exclusive,
            hostname: self.identity().hostname.clone(),
            username: self.identity().username.clone(),
            pid: std::process::id(),
            started: Some(unique_start()),
            purpose: Some(purpose.to_string()),
        };
        let name = self.write_lock(&me)?;
        if let Err(e) = self.check_conflicts(&name, exclusive) {
            let _ = self.backend().remove(FileKind::Lock, &name);
            return Err(e);
        }
        let current = Arc::new(Mutex::new(name));
        let (stop, rx) = channel::<()>();
        let repo = self.clone();
        let cur = Arc::clone(&current);
        let holder = me.holder();
        let refresher = std::thread::spawn(move || loop {
            match rx.recv_timeout(REFRESH_EVERY) {
                Err(RecvTimeoutError::Timeout) => {
                    let fresh = LockInfo {
                        time: now(),
                        ..me.clone()
                    };
                    if let Ok(new) = repo.write_lock(&fresh) {
                        let mut c = cur
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let old = std::mem::replace(&mut *c, new);
                        let _ = repo.backend().remove(FileKind::Lock, &old);
                    }
                }
                _ => return,
            }
        });
        Ok(LockGuard {
            stop: Some(stop),
            refresher: Some(refresher),
            current,
            holder,
            repo: self.clone(),
        })
    }

    fn write_lock(&self, info: &LockInfo) -> Result<String> {
        let bytes = seal_lock(self, info);
        let name = Id::of(&bytes).to_hex();
        self.backend().write(FileKind::Lock, &name, &bytes)?;
        Ok(name)
    }

    /// Decodes a lock file's bytes; `file` names it in errors.
    pub(crate) fn open_lock(&self, bytes: &[u8], file: &str) -> Result<LockInfo> {
        let plain = sealed::open(self.master(), FileType::Lock, bytes, file)?;
        serde_json::from_slice::<LockInfo>(&plain)
            .map_err(|e| Error::corrupt(file, format!("bad lock: {e}")))
    }

    /// The holders of every live lock (stale ones left out; an unreadable live lock makes this
    /// an error, since its holder is unknown).
    pub fn live_holders(&self) -> Result<Vec<(Holder, LockInfo)>> {
        let host = &self.identity().hostname;
        let mut out = Vec::new();
        for lock in self.lock_files()? {
            if lock.is_stale(host) {
                continue;
            }
            match lock.info {
                Ok(info) => out.push((info.holder(), info)),
                Err(e) => {
                    return Err(Error::LockUnreadable {
                        file: lock.name,
                        reason: e.to_string(),
                        stale_minutes: STALE_AFTER.as_secs() / 60,
                    })
                }
            }
        }
        Ok(out)
    }

    /// Every lock file, decoded or not, with its name.
    pub fn lock_files(&self) -> Result<Vec<LockFile>> {
        let mut out = Vec::new();
        for (name, _) in self.backend().list(FileKind::Lock)? {
            // A lock removed between list and read is simply gone.
            let Ok(bytes) = self.backend().read(FileKind::Lock, &name) else {
                continue;
            };
            let file = format!("locks/{name}");
            let info = self.open_lock(&bytes, &file);
            let modified = match &info {
                Ok(_) => None,
                Err(_) => self
                    .backend()
                    .modified(FileKind::Lock, &name)
                    .ok()
                    .flatten(),
            };
            out.push(LockFile {
                name,
                info,
                modified,
            });
        }
        Ok(out)
    }

    fn check_conflicts(&self, mine: &str, exclusive: bool) -> Result<()> {
        let host = &self.identity().hostname;
        for lock in self.lock_files()? {
            if lock.name == mine || lock.is_stale(host) {
                continue;
            }
            match &lock.info {
                // Its kind is unknown: it may be exclusive, so it conflicts with any lock.
                Err(e) => {
                    return Err(Error::LockUnreadable {
                        file: lock.name,
                        reason: e.to_string(),
                        stale_minutes: STALE_AFTER.as_secs() / 60,
                    })
                }
                Ok(info) if exclusive || info.exclusive => {
                    return Err(Error::Locked {
                        kind: if info.exclusive {
                            "exclusively"
                        } else {
                            "shared"
                        },
                        holder: info.describe(),
                        file: lock.name,
                    });
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Removes every stale lock file (see [`LockFile::is_stale`]); returns their names.
    pub fn remove_stale_locks(&self) -> Result<Vec<String>> {
        let host = self.identity().hostname.clone();
        let mut removed = Vec::new();
        for lock in self.lock_files()? {
            if lock.is_stale(&host) {
                match self.backend().remove(FileKind::Lock, &lock.name) {
                    Ok(()) => removed.push(lock.name),
                    // Its holder removed it meanwhile (it was ending as its lock was read).
                    Err(Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }
}

/// One file in `locks/`.
#[derive(Debug)]
pub struct LockFile {
    /// Its name.
    pub name: String,
    /// What it says, or why it cannot be read.
    pub info: Result<LockInfo>,
    /// For one that cannot be read: when the file was last written, if the store says.
    pub modified: Option<SystemTime>,
}

impl LockFile {
    /// True when the lock protects nothing: a readable one by [`LockInfo::is_stale`]; one that
    /// cannot be read once its file is older than [`STALE_AFTER`] (never, when its age is
    /// unknown).
    pub fn is_stale(&self, hostname: &str) -> bool {
        match &self.info {
            Ok(info) => info.is_stale(hostname),
            Err(_) => self
                .modified
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age > STALE_AFTER),
        }
    }
}

/// Seals a lock object as a lock file (§14).
pub(crate) fn seal_lock(repo: &Repository, info: &LockInfo) -> Vec<u8> {
    let plain = serde_json::to_vec(info).unwrap_or_else(|_| unreachable!("plain struct"));
    sealed::seal(repo.master(), FileType::Lock, &plain, 0)
}

impl LockGuard {
    /// Who holds this lock.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        let name = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let _ = self.repo.backend().remove(FileKind::Lock, &name);
    }
}
