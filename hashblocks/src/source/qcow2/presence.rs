//! The end-of-file rule of [`super::eof`] as arithmetic: how much of a region that an image's
//! metadata points at must lie inside its file. Kept apart so that the header check and the
//! table scans share it without depending on each other.

use std::num::NonZeroU64;

/// How much of a region the metadata points at must be inside its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presence {
    /// Every byte.
    Whole,
    /// Every byte must lie in a cluster of this many bytes (counted from the start of the file)
    /// that starts before the end of the file: only the file's last cluster may be cut short.
    InClusters(NonZeroU64),
}

impl Presence {
    /// How far regions may reach in a file of `file_len` bytes: its end, or the end of its last
    /// cluster.
    pub(super) fn reach(self, file_len: u64) -> u64 {
        match self {
            Self::Whole => file_len,
            Self::InClusters(cluster) => {
                let cluster = cluster.get();
                file_len.div_ceil(cluster).saturating_mul(cluster)
            }
        }
    }
}

/// Whether the `len` bytes at `start` lie in a file of `file_len` bytes, as `presence` requires.
/// An empty region always does; one whose end overflows never does.
pub(super) fn lies_in_file(start: u64, len: u64, file_len: u64, presence: Presence) -> bool {
    len == 0
        || start
            .checked_add(len)
            .is_some_and(|end| end <= presence.reach(file_len))
}
