//! Exclusive creation of an object (the prune lock, spec §20.2) on stores that enforce
//! conditional writes and on stores that do not.
//!
//! AWS S3 (since 2024), MinIO, Ceph RGW, R2 and moto answer a PUT with `If-None-Match: *` on an
//! existing key with 412 Precondition Failed; some S3-compatible servers ignore the header and
//! overwrite. Which kind the store is, is probed once per process before the first exclusive
//! creation: a conditional PUT of a fresh key must succeed and a second one of the same key must
//! get 412. Where the store does not enforce it, restic's protocol is used instead (the user
//! hears so with `-v`): look, write, wait, read back — the writer whose bytes are there after
//! the wait has the object; the prune lock's own recheck (§20.2 step 3) covers writers further
//! apart than the wait.

use std::time::Duration;

use opendal::ErrorKind;
use rand::RngCore;
use vmstash_repo::Result;

use crate::backend::S3Backend;

/// How long write-then-recheck waits before reading its write back: longer than the time
/// between two racing writers' look and write.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

impl S3Backend {
    /// Stores `bytes` under `key` unless an object has that key: `Ok(false)` then.
    pub(crate) fn create_exclusively(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        if self.conditional_writes()? {
            self.put_if_absent(key, bytes)
        } else {
            self.write_then_recheck(key, bytes)
        }
    }

    /// A conditional PUT. A 412 after a retry may answer our own first attempt, which the
    /// server stored before the connection failed: the object is ours if it holds our bytes
    /// (the bytes of a lock are unique: a fresh salt).
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let put = self.op.write_with(key, bytes.to_vec()).if_not_exists(true);
        match self.run_raw(put)? {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::ConditionNotMatch => self.holds(key, bytes),
            Err(e) => Err(crate::error::repo_error(&e, &self.url, key)),
        }
    }

    /// restic's protocol for stores without conditional writes.
    fn write_then_recheck(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        if self.exists(key)? {
            return Ok(false);
        }
        self.run(key, self.op.write(key, bytes.to_vec()))?;
        std::thread::sleep(RECHECK_AFTER);
        self.holds(key, bytes)
    }

    /// True when the object `key` holds exactly `bytes`; false when it differs or is gone.
    fn holds(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        match self.run_raw(self.op.read(key))? {
            Ok(found) => Ok(found.to_vec() == bytes),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(crate::error::repo_error(&e, &self.url, key)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool> {
        match self.run_raw(self.op.stat(key))? {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(crate::error::repo_error(&e, &self.url, key)),
        }
    }

    /// Whether the store enforces `If-None-Match: *`, probed on first use.
    pub(crate) fn conditional_writes(&self) -> Result<bool> {
        if let Some(known) = self.conditional.get() {
            return Ok(*known);
        }
        let enforced = self.probe()?;
        if !enforced {
            if let Some(notice) = &self.notice {
                notice(&format!(
                    "{} does not enforce conditional writes (If-None-Match: *); the prune lock is taken by write-then-recheck instead (restic's protocol)",
                    self.url
                ));
            }
        }
        Ok(*self.conditional.get_or_init(|| enforced))
    }

    /// Two conditional PUTs of a fresh key in `locks/` (a `.tmp-` name: readers ignore it, and
    /// `unlock` removes one an interrupted probe left).
    fn probe(&self) -> Result<bool> {
        let mut salt = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut salt);
        let key = format!(
            "locks/.tmp-probe-{}",
            salt.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let put =
            |body: &'static [u8]| self.run_raw(self.op.write_with(&key, body).if_not_exists(true));
        let first = put(b"probe 1")?;
        let enforced = match first {
            // A store that refuses the header (400, 501) does not enforce it.
            Err(e) if e.kind() == ErrorKind::Unexpected || e.kind() == ErrorKind::Unsupported => {
                Ok(false)
            }
            Err(e) => Err(crate::error::repo_error(&e, &self.url, &key)),
            Ok(_) => match put(b"probe 2")? {
                Err(e) if e.kind() == ErrorKind::ConditionNotMatch => Ok(true),
                Ok(_) => Ok(false),
                Err(e) => Err(crate::error::repo_error(&e, &self.url, &key)),
            },
        };
        let _ = self.run(&key, self.op.delete(&key));
        enforced
    }
}
