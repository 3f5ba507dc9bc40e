//! A test hook for crash tests: with `VMSTASH_TEST_KILL_AFTER_WRITES=N` in the environment, the
//! process kills itself with SIGKILL right after its N-th completed change to the repository (a
//! file written or deleted), so that tests can stop a command at every step it takes and check
//! what it leaves (spec §15, §20.3: every step must leave a state the next run handles).
//! Without the variable the backend is used as it is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vmstash_repo::backend::{Backend, FileKind, TemporaryFile};
use vmstash_repo::Result;

/// The environment variable that arms the hook.
pub const KILL_AFTER_WRITES: &str = "VMSTASH_TEST_KILL_AFTER_WRITES";

/// `backend`, wrapped when the hook is armed.
pub fn wrap(backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
    match std::env::var(KILL_AFTER_WRITES)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(n) => Arc::new(KillAfter {
            inner: backend,
            left: AtomicU64::new(n),
        }),
        None => backend,
    }
}

struct KillAfter {
    inner: Arc<dyn Backend>,
    left: AtomicU64,
}

impl KillAfter {
    /// Counts one change; SIGKILLs this process when it was the last one allowed.
    fn changed<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_ok() && self.left.fetch_sub(1, Ordering::SeqCst) <= 1 {
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
