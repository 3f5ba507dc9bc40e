//! The defensive check of a qcow2 header, before imago sees the image.
//!
//! imago parses headers itself, but it reads what it is given: it does not refuse encrypted
//! images (it would hand out the ciphertext as guest data), it has no limit on the L1 table a
//! header declares, and a table the header places past the end of a truncated file reads as
//! zeros, that is as "nothing allocated". So vmstash reads the fixed part of the header (the
//! first 104 bytes, qemu's `docs/interop/qcow2.txt`, "Header") itself and refuses:
//!
//! - as `Corrupt`: a file too short for a header, a missing magic, a cluster size qemu would not
//!   accept, an image qemu marked corrupt, an L1 table larger than qemu's limit or too small for
//!   the virtual size, and tables or names the header places past the end of the file
//!   ([`super::eof`]'s rule);
//! - as `Unsupported`: versions other than 2 and 3, encryption, a dirty image, and incompatible
//!   features imago cannot read (zstd compression, extended L2 entries, unknown bits), each with
//!   the `qemu-img` command that gives an image vmstash can read.
//!
//! The check is pure (bytes and a file length in, a verdict out), allocates nothing but its error
//! message, and is fuzzed (`fuzz/fuzz_targets/qcow2_header.rs`).

use super::presence::{lies_in_file, Presence};
use super::MAGIC;
use crate::source::SourceError;
use std::fmt;
use std::num::NonZeroU64;
use std::ops::RangeInclusive;
use std::path::Path;

/// Most L1 entries qemu accepts (`QCOW_MAX_L1_SIZE`, 32 MiB of 8-byte entries).
pub const MAX_L1_ENTRIES: u32 = 4 * 1024 * 1024;

/// Smallest and largest `cluster_bits` qemu accepts (512 bytes to 2 MiB clusters).
pub const CLUSTER_BITS_RANGE: RangeInclusive<u32> = 9..=21;

/// Bytes of an L1 table entry, and of an L2 table entry without extended L2.
pub const TABLE_ENTRY_LEN: u64 = 8;

/// Smallest entry of the snapshot table: its fixed part (qcow2.txt, "Snapshots").
const MIN_SNAPSHOT_ENTRY_LEN: u64 = 40;

/// Byte offsets and lengths of the qcow2 header fields vmstash reads (all big-endian).
pub mod field {
    /// Header version, 2 or 3 (`u32`).
    pub const VERSION: usize = 4;
    /// Where the backing file name starts, 0 for none (`u64`).
    pub const BACKING_FILE_OFFSET: usize = 8;
    /// Length of the backing file name in bytes (`u32`).
    pub const BACKING_FILE_SIZE: usize = 16;
    /// log2 of the cluster size (`u32`).
    pub const CLUSTER_BITS: usize = 20;
    /// Virtual disk size in bytes (`u64`).
    pub const SIZE: usize = 24;
    /// 0 = none, 1 = AES, 2 = LUKS (`u32`).
    pub const CRYPT_METHOD: usize = 32;
    /// Number of entries in the active L1 table (`u32`).
    pub const L1_SIZE: usize = 36;
    /// Where the active L1 table starts (`u64`).
    pub const L1_TABLE_OFFSET: usize = 40;
    /// Where the refcount table starts (`u64`).
    pub const REFCOUNT_TABLE_OFFSET: usize = 48;
    /// Length of the refcount table in clusters (`u32`).
    pub const REFCOUNT_TABLE_CLUSTERS: usize = 56;
    /// Number of internal snapshots (`u32`).
    pub const NB_SNAPSHOTS: usize = 60;
    /// Where the snapshot table starts (`u64`).
    pub const SNAPSHOTS_OFFSET: usize = 64;
    /// Incompatible feature bits, version 3 only (`u64`).
    pub const INCOMPATIBLE_FEATURES: usize = 72;
    /// Length of a version 2 header.
    pub const V2_HEADER_LEN: usize = 72;
    /// Length of the fixed part of a version 3 header.
    pub const V3_HEADER_LEN: usize = 104;
}

/// Incompatible feature bits (qcow2 version 3, header bytes 72..80).
pub mod incompatible {
    /// Refcounts may be inconsistent (lazy refcounts in use, or not closed cleanly).
    pub const DIRTY: u64 = 1 << 0;
    /// qemu found the metadata corrupt and stopped writing to it.
    pub const CORRUPT: u64 = 1 << 1;
    /// Guest data lives in an external data file.
    pub const EXTERNAL_DATA_FILE: u64 = 1 << 2;
    /// Compressed clusters use the compression type field (zstd) instead of zlib.
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    /// L2 entries are 128 bits with subcluster allocation.
    pub const EXTENDED_L2: u64 = 1 << 4;
}

/// What is wrong with a qcow2 header, split by whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// The header is damaged or inconsistent (with the file it heads).
    Corrupt(String),
    /// The header is valid but asks for something vmstash cannot read; says what to do.
    Unsupported(String),
}

impl HeaderProblem {
    /// The error for the image at `path`.
    pub(super) fn into_error(self, path: &Path) -> SourceError {
        match self {
            Self::Corrupt(what) => SourceError::Corrupt {
                path: path.to_owned(),
                what,
            },
            Self::Unsupported(what) => SourceError::Unsupported {
                path: path.to_owned(),
                what,
            },
        }
    }
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Corrupt(what) | Self::Unsupported(what) => f.write_str(what),
        }
    }
}

/// The qcow2 header fields that decide whether vmstash can read an image, as found.
///
/// [`HeaderSummary::parse`] only decodes them; [`HeaderSummary::check`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSummary {
    /// Header version (2 or 3 once parsed).
    pub version: u32,
    /// Where the backing file name starts, 0 for none.
    pub backing_file_offset: u64,
    /// Length of the backing file name in bytes.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Encryption method: 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Where the active L1 table starts.
    pub l1_table_offset: u64,
    /// Where the refcount table starts.
    pub refcount_table_offset: u64,
    /// Length of the refcount table in clusters.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Where the snapshot table starts.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (0 for version 2).
    pub incompatible_features: u64,
}

impl HeaderSummary {
    /// Parses the first bytes of an image (as many as the file has, up to 104).
    pub fn parse(bytes: &[u8]) -> Result<Self, HeaderProblem> {
        if bytes.len() < field::V2_HEADER_LEN {
            return Err(HeaderProblem::Corrupt(format!(
                "the file is {} bytes long, shorter than a qcow2 header",
                bytes.len()
            )));
        }
        if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
            return Err(HeaderProblem::Corrupt(
                "the qcow2 magic is missing".to_owned(),
            ));
        }
        let version = be_u32(bytes, field::VERSION)?;
        let incompatible_features = match version {
            2 => 0,
            3 if bytes.len() < field::V3_HEADER_LEN => {
                return Err(HeaderProblem::Corrupt(format!(
                    "the file is {} bytes long, shorter than a qcow2 version 3 header",
                    bytes.len()
                )))
            }
            3 => be_u64(bytes, field::INCOMPATIBLE_FEATURES)?,
            other => {
                return Err(HeaderProblem::Unsupported(format!(
                    "it is qcow2 version {other}; vmstash reads versions 2 and 3"
                )))
            }
        };
        Ok(Self {
            version,
            backing_file_offset: be_u64(bytes, field::BACKING_FILE_OFFSET)?,
            backing_file_size: be_u32(bytes, field::BACKING_FILE_SIZE)?,
            cluster_bits: be_u32(bytes, field::CLUSTER_BITS)?,
            size: be_u64(bytes, field::SIZE)?,
            crypt_method: be_u32(bytes, field::CRYPT_METHOD)?,
            l1_size: be_u32(bytes, field::L1_SIZE)?,
            l1_table_offset: be_u64(bytes, field::L1_TABLE_OFFSET)?,
            refcount_table_offset: be_u64(bytes, field::REFCOUNT_TABLE_OFFSET)?,
            refcount_table_clusters: be_u32(bytes, field::REFCOUNT_TABLE_CLUSTERS)?,
            nb_snapshots: be_u32(bytes, field::NB_SNAPSHOTS)?,
            snapshots_offset: be_u64(bytes, field::SNAPSHOTS_OFFSET)?,
            incompatible_features,
        })
    }

    /// Checks that vmstash (and imago) can read an image with this header, whose file is
    /// `file_len` bytes long.
    pub fn check(&self, file_len: u64) -> Result<(), HeaderProblem> {
        if !CLUSTER_BITS_RANGE.contains(&self.cluster_bits) {
            return Err(HeaderProblem::Corrupt(format!(
                "cluster_bits is {}, outside {CLUSTER_BITS_RANGE:?}",
                self.cluster_bits
            )));
        }
        self.check_encryption()?;
        self.check_incompatible_features()?;
        self.check_l1_size()?;
        self.check_in_file(file_len)
    }

    /// The cluster size in bytes. Call after [`HeaderSummary::check`] (which bounds
    /// `cluster_bits`); saturates otherwise.
    pub fn cluster_size(&self) -> NonZeroU64 {
        1u64.checked_shl(self.cluster_bits)
            .and_then(NonZeroU64::new)
            .unwrap_or(NonZeroU64::MAX)
    }

    /// Refuses encrypted images: imago would hand out the ciphertext.
    fn check_encryption(&self) -> Result<(), HeaderProblem> {
        let method = match self.crypt_method {
            0 => return Ok(()),
            1 => "legacy AES encryption".to_owned(),
            2 => "LUKS encryption".to_owned(),
            other => format!("unknown encryption method {other}"),
        };
        Err(HeaderProblem::Unsupported(format!(
            "it uses {method}; back up a decrypted copy made with `qemu-img convert`"
        )))
    }

    /// Refuses incompatible features imago cannot read, with what to do about each.
    fn check_incompatible_features(&self) -> Result<(), HeaderProblem> {
        let features = self.incompatible_features;
        if features & incompatible::CORRUPT != 0 {
            return Err(HeaderProblem::Corrupt(
                "qemu marked the image corrupt; repair it with `qemu-img check -r all`".to_owned(),
            ));
        }
        if features & incompatible::DIRTY != 0 {
            return Err(HeaderProblem::Unsupported(
                "it is marked dirty: a VM has it open with lazy refcounts, or it was not \
                 closed cleanly; back up a snapshot, or run `qemu-img check -r leaks` on it \
                 while no VM uses it"
                    .to_owned(),
            ));
        }
        if features & incompatible::COMPRESSION_TYPE != 0 {
            return Err(HeaderProblem::Unsupported(
                "its compressed clusters use zstd; convert it with \
                 `qemu-img convert -O qcow2 -o compression_type=zlib`"
                    .to_owned(),
            ));
        }
        if features & incompatible::EXTENDED_L2 != 0 {
            return Err(HeaderProblem::Unsupported(
                "it uses extended L2 entries (subclusters); convert it with \
                 `qemu-img convert -O qcow2 -o extended_l2=off`"
                    .to_owned(),
            ));
        }
        let unknown = features & !incompatible::EXTERNAL_DATA_FILE;
        if unknown != 0 {
            return Err(HeaderProblem::Unsupported(format!(
                "it has incompatible feature bits {unknown:#x} that vmstash does not know \
                 (written by a newer qemu?); convert it with `qemu-img convert -O qcow2`"
            )));
        }
        Ok(())
    }

    /// Checks that the L1 table is of a size qemu accepts and addresses the whole disk (as
    /// qemu does), which also bounds how far a mapping scan of the disk can go.
    fn check_l1_size(&self) -> Result<(), HeaderProblem> {
        if self.l1_size > MAX_L1_ENTRIES {
            return Err(HeaderProblem::Corrupt(format!(
                "the L1 table has {} entries, more than qemu's limit of {MAX_L1_ENTRIES}",
                self.l1_size
            )));
        }
        // One L1 entry maps one L2 table: cluster_size / 8 entries of cluster_size bytes each.
        // cluster_bits is in 9..=21 here, so the shift is 15..=39.
        let bytes_per_l1_entry = 1u64 << (2 * self.cluster_bits - 3);
        let needed = self.size.div_ceil(bytes_per_l1_entry);
        if needed > u64::from(self.l1_size) {
            return Err(HeaderProblem::Corrupt(format!(
                "the L1 table has {} entries, too few for the virtual size of {} bytes \
                 (which needs {needed})",
                self.l1_size, self.size
            )));
        }
        Ok(())
    }

    /// Checks that everything the header points at lies in the file of `file_len` bytes: the
    /// L1 table and the backing file name whole (a missing part would read as zeros, that is as
    /// unallocated clusters or a shorter name), the refcount and snapshot tables (which vmstash
    /// does not read) up to the file's last cluster.
    fn check_in_file(&self, file_len: u64) -> Result<(), HeaderProblem> {
        let cluster = Presence::InClusters(self.cluster_size());
        let regions = [
            (
                "the L1 table",
                self.l1_table_offset,
                u64::from(self.l1_size).saturating_mul(TABLE_ENTRY_LEN),
                Presence::Whole,
            ),
            (
                "the refcount table",
                self.refcount_table_offset,
                u64::from(self.refcount_table_clusters).saturating_mul(self.cluster_size().get()),
                cluster,
            ),
            (
                "the snapshot table",
                self.snapshots_offset,
                u64::from(self.nb_snapshots).saturating_mul(MIN_SNAPSHOT_ENTRY_LEN),
                cluster,
            ),
            (
                "the backing file name",
                self.backing_file_offset,
                u64::from(self.backing_file_size),
                Presence::Whole,
            ),
        ];
        for (what, start, len, presence) in regions {
            if !lies_in_file(start, len, file_len, presence) {
                return Err(HeaderProblem::Corrupt(format!(
                    "the header places {what} at bytes {start}..{}, past the end of the file \
                     ({file_len} bytes); was the file truncated?",
                    start.saturating_add(len)
                )));
            }
        }
        Ok(())
    }
}

/// Reads the big-endian `u32` at `at` of a header.
fn be_u32(bytes: &[u8], at: usize) -> Result<u32, HeaderProblem> {
    header_bytes(bytes, at).map(u32::from_be_bytes)
}

/// Reads the big-endian `u64` at `at` of a header.
fn be_u64(bytes: &[u8], at: usize) -> Result<u64, HeaderProblem> {
    header_bytes(bytes, at).map(u64::from_be_bytes)
}

/// The `N` header bytes at `at`.
fn header_bytes<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], HeaderProblem> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .and_then(|slice| <[u8; N]>::try_from(slice).ok())
        .ok_or_else(|| HeaderProblem::Corrupt(format!("the header ends before byte {at}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header `qemu-img create -f qcow2 disk.qcow2 512M` writes, as parsed: its file is
    /// 196616 bytes long (the L1 table's single entry is its last 8 bytes).
    fn fresh_512m() -> HeaderSummary {
        HeaderSummary {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 512 << 20,
            crypt_method: 0,
            l1_size: 1,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
        }
    }

    #[test]
    fn header_summary_rejects_short_and_unknown_versions() {
        let mut bytes = [0u8; field::V3_HEADER_LEN];
        bytes[..4].copy_from_slice(&MAGIC);
        bytes[field::VERSION + 3] = 4;
        assert!(matches!(
            HeaderSummary::parse(&bytes),
            Err(HeaderProblem::Unsupported(_))
        ));
        bytes[field::VERSION + 3] = 3;
        assert!(matches!(
            HeaderSummary::parse(&bytes[..90]),
            Err(HeaderProblem::Corrupt(_))
        ));
        bytes[field::VERSION + 3] = 2;
        assert!(HeaderSummary::parse(&bytes[..field::V2_HEADER_LEN]).is_ok());
    }

    #[test]
    fn tables_must_start_in_the_file_and_the_l1_table_must_be_whole() {
        let header = fresh_512m();
        assert_eq!(header.check(196_616), Ok(()));
        // The L1 table's last byte is missing; in the 100000-byte cut it is gone altogether.
        for file_len in [196_615, 100_000] {
            let Err(HeaderProblem::Corrupt(what)) = header.check(file_len) else {
                panic!("{file_len}: accepted");
            };
            assert!(what.contains("L1 table at bytes 196608..196616"), "{what}");
            assert!(what.contains(&format!("({file_len} bytes)")), "{what}");
        }
        // The refcount table may end inside the file's last cluster, not start past its end.
        let l1_first = HeaderSummary {
            l1_table_offset: 0x10000,
            refcount_table_offset: 0x20000,
            ..header
        };
        assert_eq!(l1_first.check(0x20001), Ok(()));
        let Err(HeaderProblem::Corrupt(what)) = l1_first.check(0x20000) else {
            panic!("a refcount table past the end was accepted");
        };
        assert!(what.contains("refcount table"), "{what}");
    }

    #[test]
    fn backing_name_and_snapshots_must_be_in_the_file() {
        let with_name = HeaderSummary {
            backing_file_offset: 0x200,
            backing_file_size: 9,
            ..fresh_512m()
        };
        assert_eq!(with_name.check(196_616), Ok(()));
        let cut_header = HeaderSummary {
            size: 0,
            l1_size: 0,
            refcount_table_clusters: 0,
            ..with_name
        };
        assert_eq!(cut_header.check(0x209), Ok(()));
        let Err(HeaderProblem::Corrupt(what)) = cut_header.check(0x208) else {
            panic!("a cut backing file name was accepted");
        };
        assert!(what.contains("backing file name"), "{what}");

        let with_snapshots = HeaderSummary {
            nb_snapshots: 2,
            snapshots_offset: 0x40000,
            ..fresh_512m()
        };
        assert!(with_snapshots.check(0x40000).is_err());
        assert_eq!(with_snapshots.check(0x40001), Ok(()));
    }

    #[test]
    fn offsets_near_the_top_of_the_range_do_not_overflow() {
        let header = HeaderSummary {
            l1_table_offset: u64::MAX - 7,
            ..fresh_512m()
        };
        assert!(matches!(
            header.check(u64::MAX),
            Err(HeaderProblem::Corrupt(_))
        ));
        let header = HeaderSummary {
            refcount_table_offset: u64::MAX - 0xffff,
            refcount_table_clusters: u32::MAX,
            ..fresh_512m()
        };
        assert!(matches!(
            header.check(u64::MAX),
            Err(HeaderProblem::Corrupt(_))
        ));
    }
}
