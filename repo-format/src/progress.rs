//! How the engine tells its caller how far it got: a [`Progress`] sink.
//!
//! The engine calls [`Progress::advance`] from its worker threads as guest bytes are done
//! (read and stored, found unchanged, or known to be zeros), so the sum of the steps is the
//! total of the disks' sizes. A terminal progress bar, a daemon's job record or a test counter
//! implements it; a closure `Fn(u64) + Sync` is one.

/// Receives progress from the engine's threads.
pub trait Progress: Sync {
    /// `bytes` more guest bytes are done.
    fn advance(&self, bytes: u64);
}

impl<F: Fn(u64) + Sync> Progress for F {
    fn advance(&self, bytes: u64) {
        self(bytes);
    }
}

/// A sink that ignores progress.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&self, _bytes: u64) {}
}
