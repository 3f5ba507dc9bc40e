//! The repository config (spec/FORMAT.md §11 "Config").
//!
//! A sealed file (§6, type 1) named `config` whose plaintext is JSON. Its
//! parameters are fixed at `init`: changing the chunk size would break
//! deduplication against every existing snapshot.

use serde::{Deserialize, Serialize};

use crate::version::check_json_version;
use crate::version::FORMAT_VERSION;
use crate::{Error, Result};

/// Default chunk size: 512 KiB (the reasoning is in spec/FORMAT.md §12).
pub const DEFAULT_CHUNK_SIZE: u32 = 512 * 1024;
/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest chunk size accepted.
pub const MAX_CHUNK_SIZE: u32 = 8 * 1024 * 1024;
/// Default zstd level.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
/// Default pack target size: 16 MiB.
pub const DEFAULT_PACK_SIZE: u32 = 16 * 1024 * 1024;

/// A chunk size that is a power of two between 64 KiB and 8 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSize(u32);

impl ChunkSize {
    /// Validates `bytes`.
    pub fn new(bytes: u32) -> Result<ChunkSize> {
        if bytes.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&bytes) {
            Ok(ChunkSize(bytes))
        } else {
            Err(Error::InvalidParameter(format!(
                "chunk size {bytes} must be a power of two from 64 KiB to 8 MiB"
            )))
        }
    }

    /// The size in bytes.
    pub const fn get(self) -> u32 {
        self.0
    }
}

/// The decoded config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    /// Format version: 1.
    pub version: u32,
    /// Random repository id, 64 hex characters (names the local cache).
    pub id: String,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// zstd level for new blobs and files.
    pub compression_level: i32,
    /// Target size of a pack in bytes.
    pub pack_size: u32,
    /// When the repository was made (RFC 3339).
    pub created: String,
}

impl Config {
    /// A config for a new repository.
    pub fn new(chunk_size: ChunkSize, compression_level: i32, created: &str) -> Result<Config> {
        let cfg = Config {
            version: FORMAT_VERSION,
            id: crate::id::Id::from_bytes(crate::crypto::random_salt()).to_hex(),
            chunk_size: chunk_size.get(),
            compression_level,
            pack_size: DEFAULT_PACK_SIZE,
            created: created.to_string(),
        };
        cfg.validate("config")?;
        Ok(cfg)
    }

    /// The same config with packs of about `bytes` bytes (1 MiB to 1 GiB): small packs make
    /// tests that need several packs cheap.
    pub fn with_pack_size(mut self, bytes: u32) -> Result<Config> {
        self.pack_size = bytes;
        self.validate("config")?;
        Ok(self)
    }

    /// Parses the plaintext of `config`.
    pub fn decode(plain: &[u8]) -> Result<Config> {
        let v: serde_json::Value = serde_json::from_slice(plain)
            .map_err(|e| Error::corrupt("config", format!("not JSON: {e}")))?;
        check_json_version(v.get("version"), "config")?;
        let cfg: Config = serde_json::from_value(v)
            .map_err(|e| Error::corrupt("config", format!("bad config: {e}")))?;
        cfg.validate("config")?;
        Ok(cfg)
    }

    /// The JSON plaintext.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_else(|_| unreachable!("plain struct"))
    }

    fn validate(&self, file: &str) -> Result<()> {
        ChunkSize::new(self.chunk_size).map_err(|e| Error::corrupt(file, e.to_string()))?;
        if !(-7..=22).contains(&self.compression_level) {
            return Err(Error::corrupt(
                file,
                format!(
                    "compression level {} out of range -7..=22",
                    self.compression_level
                ),
            ));
        }
        if !(1024 * 1024..=1024 * 1024 * 1024).contains(&self.pack_size) {
            return Err(Error::corrupt(file, "pack size out of range 1 MiB..=1 GiB"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_rules() {
        assert!(ChunkSize::new(256 * 1024).is_ok());
        assert!(ChunkSize::new(3 * 65536).is_err());
        assert!(ChunkSize::new(32 * 1024).is_err());
        assert!(ChunkSize::new(16 * 1024 * 1024).is_err());
    }

    #[test]
    fn round_trip_and_rejects() {
        let c = Config::new(ChunkSize::new(DEFAULT_CHUNK_SIZE).expect("ok"), 3, "t").expect("new");
        assert_eq!(Config::decode(&c.encode()).expect("decode"), c);
        let mut v3 = c.clone();
        v3.version = 3;
        assert!(matches!(
            Config::decode(&v3.encode()),
            Err(Error::Incompatible { .. })
        ));
        let mut bad = c;
        bad.chunk_size = 1000;
        assert!(Config::decode(&bad.encode()).is_err());
        assert!(Config::decode(b"[]").is_err());
    }
}
