//! Repository locks (spec/FORMAT.md §14 "Locks").
//!
//! A lock is a sealed file (§6, type 4) in `locks/` with JSON plaintext.
//! Backups, restores, mounts and checks take shared locks; prune (later)
//! takes an exclusive one. A process writes its lock, then lists the
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

    fn holder(&self) -> String {
        format!(
            "{}@{} (pid {}, {} s ago)",
            self.username,
            self.hostname,
            self.pid,
            now().saturating_sub(self.time)
        )
    }
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
    repo: Repository,
}

impl Repository {
    /// Takes a shared or exclusive lock.
    pub fn lock(&self, exclusive: bool) -> Result<LockGuard> {
        let name = self.write_lock(exclusive)?;
        if let Err(e) = self.check_conflicts(&name, exclusive) {
            let _ = self.backend().remove(FileKind::Lock, &name);
            return Err(e);
        }
        let current = Arc::new(Mutex::new(name));
        let (stop, rx) = channel::<()>();
        let repo = self.clone();
        let cur = Arc::clone(&current);
        let refresher = std::thread::spawn(move || loop {
            match rx.recv_timeout(REFRESH_EVERY) {
                Err(RecvTimeoutError::Timeout) => {
                    if let Ok(new) = repo.write_lock(exclusive) {
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
            repo: self.clone(),
        })
    }

    fn write_lock(&self, exclusive: bool) -> Result<String> {
        let info = LockInfo {
            time: now(),
            exclusive,
            hostname: self.identity().hostname.clone(),
            username: self.identity().username.clone(),
            pid: std::process::id(),
        };
        let plain = serde_json::to_vec(&info).unwrap_or_else(|_| unreachable!("plain struct"));
        let bytes = sealed::seal(self.master(), FileType::Lock, &plain, 0);
        let name = Id::of(&bytes).to_hex();
        self.backend().write(FileKind::Lock, &name, &bytes)?;
        Ok(name)
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
            let info = sealed::open(self.master(), FileType::Lock, &bytes, &file).and_then(|p| {
                serde_json::from_slice::<LockInfo>(&p)
                    .map_err(|e| Error::corrupt(&file, format!("bad lock: {e}")))
            });
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
                        holder: info.holder(),
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
                self.backend().remove(FileKind::Lock, &lock.name)?;
                removed.push(lock.name);
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
