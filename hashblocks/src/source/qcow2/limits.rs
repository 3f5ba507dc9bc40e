//! The limits that keep a crafted backing chain from looping or exhausting memory and file
//! descriptors.
//!
//! A chain is a list of files, each naming the next; nothing in the format stops a header from
//! naming an image already visited, or a chain of thousands of images, each with the largest L1
//! table and cluster size qemu allows. [`ChainLimits`] accounts for the chain as
//! `super::chain::open_chain` walks it and refuses it as soon as it loops or grows past
//! [`MAX_CHAIN_LENGTH`] images or [`MAX_CHAIN_METADATA_BYTES`] of metadata.

use super::header::{HeaderSummary, TABLE_ENTRY_LEN};
use crate::source::SourceError;
use std::path::{Path, PathBuf};

/// Most images a backing chain may have, the top image included.
///
/// qemu has no fixed limit; real chains (one image per external snapshot) stay far below this,
/// and the limit keeps a crafted chain from exhausting file descriptors.
const MAX_CHAIN_LENGTH: usize = 256;

/// Most bytes of qcow2 metadata (L1 tables and full L2 caches) imago may hold for one chain.
///
/// An ordinary image with 64 KiB clusters costs about 8 MiB (its L2 cache, filled only as
/// reads reach it), so this allows chains of some 250 such images; crafted headers with huge
/// L1 tables or 2 MiB clusters reach it after a few images instead of exhausting memory.
const MAX_CHAIN_METADATA_BYTES: u64 = 2 << 30;

/// L2 tables imago caches per qcow2 image (`MetadataCaches::new(.., 128, ..)` in imago 0.2.6).
const IMAGO_L2_CACHE_TABLES: u64 = 128;

/// What a backing chain has used of its limits.
pub(super) struct ChainLimits<I> {
    /// The top image, named in errors about the chain as a whole.
    top: PathBuf,
    /// The identity of every image visited so far.
    seen: Vec<I>,
    /// Metadata imago may keep in memory for the images opened so far, at most.
    metadata_bytes: u64,
}

impl<I: PartialEq> ChainLimits<I> {
    /// Limits for the chain below the image at `top`.
    pub(super) fn new(top: &Path) -> Self {
        Self {
            top: top.to_owned(),
            seen: Vec::new(),
            metadata_bytes: 0,
        }
    }

    /// Records that the chain reaches the file at `path`, with `identity`; refuses loops and
    /// overlong chains.
    pub(super) fn visit(&mut self, path: &Path, identity: I) -> Result<(), SourceError> {
        if self.seen.contains(&identity) {
            return Err(SourceError::Corrupt {
                path: path.to_owned(),
                what: format!(
                    "the backing chain of {} loops back to this file; \
                     point the image at the right backing file with `qemu-img rebase -u`",
                    self.top.display()
                ),
            });
        }
        self.seen.push(identity);
        if self.seen.len() > MAX_CHAIN_LENGTH {
            return Err(self.too_big(format!("is longer than {MAX_CHAIN_LENGTH} images")));
        }
        Ok(())
    }

    /// Accounts for the metadata imago will keep in memory for an image with `header`.
    pub(super) fn charge(&mut self, header: &HeaderSummary) -> Result<(), SourceError> {
        self.metadata_bytes = self.metadata_bytes.saturating_add(metadata_bytes(header));
        if self.metadata_bytes > MAX_CHAIN_METADATA_BYTES {
            return Err(self.too_big(format!(
                "needs more than {} MiB of qcow2 metadata in memory",
                MAX_CHAIN_METADATA_BYTES >> 20
            )));
        }
        Ok(())
    }

    /// The error for a chain that `what` ("is longer than 256 images").
    fn too_big(&self, what: String) -> SourceError {
        SourceError::Unsupported {
            path: self.top.clone(),
            what: format!(
                "its backing chain {what}; shorten it with `qemu-img commit` \
                 or flatten it with `qemu-img convert`"
            ),
        }
    }
}

/// Most bytes of metadata imago keeps in memory for an image with `header`: the L1 table and a
/// full L2 cache (refcount blocks are only cached for writing). Call after
/// [`HeaderSummary::check`].
fn metadata_bytes(header: &HeaderSummary) -> u64 {
    let l1_table = u64::from(header.l1_size).saturating_mul(TABLE_ENTRY_LEN);
    let l2_cache = IMAGO_L2_CACHE_TABLES
        .checked_shl(header.cluster_bits)
        .unwrap_or(u64::MAX);
    l1_table.saturating_add(l2_cache)
}

#[cfg(test)]
mod tests {
    use super::super::header::MAX_L1_ENTRIES;
    use super::*;

    #[test]
    fn chain_metadata_memory_is_bounded() {
        let huge = HeaderSummary {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 21,
            size: 1 << 40,
            crypt_method: 0,
            l1_size: MAX_L1_ENTRIES,
            l1_table_offset: 3 << 21,
            refcount_table_offset: 1 << 21,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
        };
        assert_eq!(huge.check(1 << 30), Ok(()));
        let mut limits = ChainLimits::<(u64, u64)>::new(Path::new("top.qcow2"));
        let accepted = (0..20).take_while(|_| limits.charge(&huge).is_ok()).count();
        assert_eq!(accepted, 7, "288 MiB per image, 2 GiB in all");
        let err = limits.charge(&huge).err().map(|err| err.to_string());
        assert!(err.is_some_and(|err| err.contains("top.qcow2")));
    }
}
