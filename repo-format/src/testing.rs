//! Test fixtures shared by the engine's tests and by the crates above it: an in-memory
//! repository that opens in microseconds, and reproducible noise.
//!
//! Always compiled (it is small and needs nothing extra): a cargo feature for it would give the
//! test build a different feature set from the release build, and make it recompile every
//! crate above this one.

use std::sync::Arc;

use crate::backend::MemoryBackend;
use crate::config::{ChunkSize, Config};
use crate::keyfile::KdfParams;
use crate::repository::{now_rfc3339, Repository};

/// Argon2id at its cheapest: tests must not spend a second per key file.
pub const FAST_KDF: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

/// The password of [`memory_repository`].
pub const PASSWORD: &[u8] = b"pw";

/// Chunk size of [`memory_repository`]: the smallest allowed, so tests need little data.
pub const CHUNK_SIZE: u32 = 64 * 1024;

/// A new in-memory repository (password [`PASSWORD`], 64 KiB chunks, 1 MiB packs, fast KDF)
/// and its backend, for tampering with files.
pub fn memory_repository() -> (Arc<MemoryBackend>, Repository) {
    let backend = Arc::new(MemoryBackend::default());
    let chunk = ChunkSize::new(CHUNK_SIZE).unwrap_or_else(|_| unreachable!("valid chunk size"));
    let config = Config::new(chunk, 3, &now_rfc3339())
        .and_then(|c| c.with_pack_size(1 << 20))
        .unwrap_or_else(|e| unreachable!("valid config: {e}"));
    match Repository::init_with(backend.clone(), PASSWORD, config, FAST_KDF) {
        Ok(repo) => (backend, repo),
        Err(e) => unreachable!("an in-memory repository always initialises: {e}"),
    }
}

/// Backs up `data` as the one disk `d` of a snapshot named `d`.
pub fn back_up_bytes(
    repo: &Repository,
    data: Vec<u8>,
) -> crate::Result<crate::backup::BackupReport> {
    use crate::backup::{back_up, BackupDisk, BackupPlan};
    let disk = BackupDisk::new("d", "mem", Box::new(crate::source::MemorySource::new(data)));
    back_up(
        repo,
        BackupPlan::new("d", vec![disk]),
        &crate::NoProgress,
        &crate::CancelToken::new(),
    )
}

/// `len` pseudo-random (incompressible) bytes from `seed` (xorshift64).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len.saturating_add(8));
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
