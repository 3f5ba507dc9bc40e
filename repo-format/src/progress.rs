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

    /// A backup's chunk is done, and how: what a daemon's live counters show. The default
    /// tells [`Progress::advance`] its bytes.
    fn chunk_done(&self, done: &ChunkDone) {
        self.advance(done.bytes);
    }
}

/// How one chunk of a backup was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkDone {
    /// Its guest bytes.
    pub bytes: u64,
    /// The bytes read from the source for it (0 when its id was known beforehand, or the
    /// source said it holds no data).
    pub read: u64,
    /// The bytes it added to the repository as stored (compressed and encrypted); 0 unless
    /// it was new.
    pub stored: u64,
    /// Whether it was new to the repository.
    pub new: bool,
    /// Whether it is all zeros.
    pub zero: bool,
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
