//! How many threads the engine's CPU-bound stages use: one per core, so the figures grow with
//! the machine, within bounds that keep memory bounded (each worker holds a few chunk buffers
//! and an open pack).

/// Most worker threads, whatever the machine: beyond this, storage and the network are the
/// limit, and each thread costs buffers.
pub const MAX_WORKERS: usize = 32;

/// Worker threads for hashing, compressing, decrypting and verifying: the number of cores the
/// process may use (`available_parallelism`), at least 1, at most [`MAX_WORKERS`].
pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, MAX_WORKERS)
}

/// Threads for work that waits on storage as much as it computes (a restore fetches a blob,
/// then verifies it, then writes it): twice [`workers`], so that one thread's wait overlaps
/// another's computing, at most [`MAX_WORKERS`].
pub fn io_workers() -> usize {
    workers().saturating_mul(2).clamp(2, MAX_WORKERS)
}
