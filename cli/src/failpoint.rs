//! Test hooks on the repository's backend. With `VMSTASH_TEST_KILL_AFTER_WRITES=N` in the
//! environment, the process kills itself with SIGKILL right after its N-th completed change to
//! the repository (a file written or deleted), so that tests can stop a command at every step
//! it takes and check what it leaves (spec §15, §20.3: every step must leave a state the next
//! run handles). With `VMSTASH_TEST_WRITE_DELAY_MS=N`, every change takes N ms longer, so that
//! tests can kill a command between its writes. With `VMSTASH_TEST_PROGRESS_DELAY_MS=N`, a
//! daemon job's backup waits N ms at each progress report (after each chunk read), so that
//! tests can cancel it, or kill the daemon, while it reads. Without the variables nothing
//! changes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vmstash_repo::backend::{Backend, FileKind, TemporaryFile};
use vmstash_repo::Result;

/// The environment variable that arms the kill.
pub const KILL_AFTER_WRITES: &str = "VMSTASH_TEST_KILL_AFTER_WRITES";
/// The environment variable that slows every change.
pub const WRITE_DELAY_MS: &str = "VMSTASH_TEST_WRITE_DELAY_MS";

/// The environment variable that slows a daemon job's backup.
pub const PROGRESS_DELAY_MS: &str = "VMSTASH_TEST_PROGRESS_DELAY_MS";

/// How long a daemon job's backup waits at each progress report (a test hook).
pub fn progress_delay() -> Option<std::time::Duration> {
    env_number(PROGRESS_DELAY_MS).map(std::time::Duration::from_millis)
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok())
}

/// `backend`, wrapped when a hook is armed.
pub fn wrap(backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
    let kill_after = env_number(KILL_AFTER_WRITES);
    let delay = env_number(WRITE_DELAY_MS).map(std::time::Duration::from_millis);
    if kill_after.is_none() && delay.is_none() {
        return backend;
    }
    Arc::new(KillAfter {
        inner: backend,
        left: kill_after.map(AtomicU64::new),
        delay,
    })
}

struct KillAfter {
    inner: Arc<dyn Backend>,
    /// Changes left before the kill; `None`: no kill.
    left: Option<AtomicU64>,
    /// How much longer each change takes.
    delay: Option<std::time::Duration>,
}

impl KillAfter {
    /// Counts one change (after its delay); SIGKILLs this process when it was the last one
    /// allowed.
    fn changed<T>(&self, result: Result<T>) -> Result<T> {
        if let Some(delay) = self.delay {
            std::thread::sleep(delay);
        }
        let last = || {
            self.left
                .as_ref()
                .is_some_and(|left| left.fetch_sub(1, Ordering::SeqCst) <= 1)
        };
        if result.is_ok() && last() {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::Kill,
            );
        }
        result
    }
}

impl Backend for KillAfter {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> Result<()> {
        self.inner.create()
    }
    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        self.inner.list(kind)
    }
    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        self.inner.read(kind, name)
    }
    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.inner.read_range(kind, name, offset, len)
    }
    fn write(&self, kind: FileKind, name: &str, bytes: &[u8]) -> Result<()> {
        self.changed(self.inner.write(kind, name, bytes))
    }
    fn remove(&self, kind: FileKind, name: &str) -> Result<()> {
        self.changed(self.inner.remove(kind, name))
    }
    fn create_new(&self, kind: FileKind, name: &str, bytes: &[u8]) -> Result<bool> {
        self.changed(self.inner.create_new(kind, name, bytes))
    }
    fn requests_in_flight(&self) -> usize {
        self.inner.requests_in_flight()
    }
    fn list_temporary(&self) -> Result<Vec<TemporaryFile>> {
        self.inner.list_temporary()
    }
    fn remove_temporary(&self, path: &str) -> Result<()> {
        self.changed(self.inner.remove_temporary(path))
    }
    fn modified(&self, kind: FileKind, name: &str) -> Result<Option<std::time::SystemTime>> {
        self.inner.modified(kind, name)
    }
}
