//! Integers at byte offsets of untrusted buffers, little endian ([`crate::le`]: partition
//! tables, LVM, ext4, NTFS) or big endian ([`crate::be`]: XFS): `None` when the buffer is too
//! short, never a panic. One macro makes both sets, so they cannot drift apart.

/// Defines `u16_at`, `u32_at` and `u64_at` reading with `$from` (`from_le_bytes` or
/// `from_be_bytes`).
macro_rules! int_readers {
    ($from:ident) => {
        /// The `u16` at `at`.
        pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
            Some(u16::$from(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
        }

        /// The `u32` at `at`.
        pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
            Some(u32::$from(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
        }

        /// The `u64` at `at`.
        pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
            Some(u64::$from(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
        }
    };
}

pub(crate) use int_readers;
