//! Checksums of Btrfs metadata blocks (superblock and tree nodes): the first 32 bytes of a
//! block hold the checksum of the rest, of the type the superblock names.
//!
//! CRC32C (the default, `csum_type` 0) and SHA-256 (2) are verified. xxHash64 (1) and
//! BLAKE2b-256 (3) are accepted without verification: vmstash has no implementation of them,
//! and the other structural checks (bytenr, fsid, level, item bounds) still apply. Any other
//! type is refused as unsupported.

use sha2::{Digest, Sha256};

/// How metadata blocks are checksummed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CsumType {
    /// CRC32C (Castagnoli), stored little-endian in the first 4 bytes.
    Crc32c,
    /// xxHash64: not verified.
    XxHash64,
    /// SHA-256 over the block.
    Sha256,
    /// BLAKE2b-256: not verified.
    Blake2b,
}

impl CsumType {
    /// The type for the superblock's `csum_type`, `None` for an unknown one.
    pub(super) fn from_raw(raw: u16) -> Option<CsumType> {
        match raw {
            0 => Some(CsumType::Crc32c),
            1 => Some(CsumType::XxHash64),
            2 => Some(CsumType::Sha256),
            3 => Some(CsumType::Blake2b),
            _ => None,
        }
    }

    /// Whether `block`'s stored checksum matches its bytes after the checksum field; true for
    /// the types that are not verified, false when the block is shorter than the field.
    pub(super) fn matches(self, block: &[u8]) -> bool {
        let (Some(stored), Some(body)) = (block.get(..CSUM_SIZE), block.get(CSUM_SIZE..)) else {
            return false;
        };
        match self {
            CsumType::Crc32c => stored.get(..4) == Some(&crc32c(body).to_le_bytes()[..]),
            CsumType::Sha256 => stored == Sha256::digest(body).as_slice(),
            CsumType::XxHash64 | CsumType::Blake2b => true,
        }
    }
}

/// Bytes reserved for the checksum at the start of every metadata block.
pub(super) const CSUM_SIZE: usize = 32;

/// CRC32C of `bytes` (initial value and final xor `!0`, as Btrfs and iSCSI use it; the
/// `crc32c` crate, with the CPU's instruction where there is one).
pub(super) fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answers() {
        // RFC 3720, B.4: 32 bytes of zeros, and "123456789" (the catalogue's check value).
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn unknown_types_and_short_blocks() {
        assert_eq!(CsumType::from_raw(4), None);
        assert!(!CsumType::Crc32c.matches(&[0u8; 10]));
        let mut block = vec![0u8; 64];
        let c = crc32c(&block[32..]);
        block[..4].copy_from_slice(&c.to_le_bytes());
        assert!(CsumType::Crc32c.matches(&block));
        block[40] ^= 1;
        assert!(!CsumType::Crc32c.matches(&block));
    }
}
