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

/// The CRC32C (Castagnoli, reflected polynomial 0x82F63B78) lookup table.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        #[allow(clippy::as_conversions)] // i < 256: lossless
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC32C of `bytes` (initial value and final xor `!0`, as Btrfs and iSCSI use it).
pub(super) fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        let at = usize::from((crc.to_le_bytes()[0]) ^ b);
        crc = (crc >> 8) ^ TABLE.get(at).copied().unwrap_or(0);
    }
    !crc
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
