//! The vmstash repository, format version 1, and the engine that reads and writes it: an
//! encrypted, deduplicating store of disk-image chunks and the snapshots that reference them.
//!
//! This crate's one job is the repository: its format (spec/FORMAT.md is the normative
//! description of every byte; each module's doc names the section it implements) and the
//! operations on it — backing disks up ([`backup`]), reading them back ([`DiskReader`],
//! [`restore`]), checking ([`check`]) — callable as a library, with a [`Progress`] sink and a
//! [`CancelToken`]. It knows nothing of SSH, libvirt or FUSE: a disk comes in as a
//! [`DiskSource`], storage is a [`backend::Backend`].
//!
//! Backing up a disk and reading it back:
//!
//! ```
//! use std::sync::Arc;
//! use vmstash_repo::backend::MemoryBackend;
//! use vmstash_repo::backup::{back_up, BackupDisk, BackupPlan};
//! use vmstash_repo::config::ChunkSize;
//! use vmstash_repo::keyfile::KdfParams;
//! use vmstash_repo::source::MemorySource;
//! use vmstash_repo::{CancelToken, DiskReader, NoProgress, Repository};
//!
//! # fn main() -> Result<(), vmstash_repo::Error> {
//! let cheap_kdf = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }; // examples only
//! let repo = Repository::init(Arc::new(MemoryBackend::default()), b"secret",
//!                             ChunkSize::new(64 * 1024)?, 3, cheap_kdf)?;
//! let guest: Vec<u8> = (0..75_000u32).flat_map(u32::to_le_bytes).collect();
//! let disk = BackupDisk::new("vda", "memory", Box::new(MemorySource::new(guest.clone())));
//! let saved = back_up(&repo, BackupPlan::new("web1", vec![disk]), &NoProgress, &CancelToken::new())?;
//!
//! let reader = DiskReader::new(repo.clone(), Arc::new(repo.load_index()?),
//!                              Arc::new(saved.manifest.disks[0].clone()));
//! let mut back = vec![0; guest.len()];
//! reader.read_at(&mut back, 0)?;
//! assert_eq!(back, guest);
//! # Ok(())
//! # }
//! ```

pub mod adopt;
pub mod backend;
pub mod backup;
pub mod blob;
pub mod cancel;
pub mod check;
pub mod chunkmap;
pub mod commit;
pub mod config;
pub mod copy;
pub mod crypto;
pub mod diff;
pub mod direct;
pub mod disk_reader;
pub mod entry;
mod error;
pub mod id;
pub mod image_file;
pub mod index;
pub mod keyfile;
pub mod leftovers;
pub mod lock;
pub mod lost;
pub mod marks;
pub mod pack;
pub mod payload;
pub mod policy;
pub mod priority;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod repository;
pub mod restore;
pub mod runs;
pub mod sealed;
pub mod selection;
pub mod snapshot;
pub mod source;
pub mod testing;
pub mod threads;
pub mod units;
pub mod version;

pub use cancel::CancelToken;
pub use disk_reader::DiskReader;
pub use error::{Error, Result};
pub use id::Id;
pub use progress::{ChunkDone, NoProgress, Progress};
pub use repository::Repository;
pub use source::DiskSource;
pub use version::FORMAT_VERSION;
