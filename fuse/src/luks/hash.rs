//! The hash functions LUKS names by string (`hash_spec` in LUKS1, `hash` of a LUKS2 key slot,
//! anti-forensic splitter or digest): PBKDF2-HMAC over them, and plain digests for the
//! anti-forensic splitter's diffusion. SHA-1, SHA-256 and SHA-512 cover what cryptsetup has
//! used by default (SHA-1 until 1.7, SHA-256 since); the rest are [`LuksError::Unsupported`].

use sha1::Sha1;
use sha2::digest::Digest;
use sha2::{Sha256, Sha512};

use super::error::LuksError;

/// A hash function a LUKS header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// `sha1`: LUKS1 before cryptsetup 1.7.
    Sha1,
    /// `sha256`: cryptsetup's default since 1.7.
    Sha256,
    /// `sha512`.
    Sha512,
}

impl Hash {
    /// The hash named `name` (as cryptsetup spells it, any case).
    pub fn from_name(name: &str) -> Result<Hash, LuksError> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Ok(Hash::Sha1),
            "sha256" => Ok(Hash::Sha256),
            "sha512" => Ok(Hash::Sha512),
            _ => Err(LuksError::unsupported(format!("hash {name:?}"))),
        }
    }

    /// The digest's length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
            Hash::Sha512 => 64,
        }
    }

    /// PBKDF2-HMAC with this hash: `out.len()` bytes of key from `password` and `salt`.
    /// `iterations` is bounded by the caller ([`KdfLimits`](super::KdfLimits)).
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        match self {
            Hash::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, out),
            Hash::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, out),
            Hash::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, out),
        }
    }

    /// The digest of `parts` concatenated, cut or written to `out` (at most
    /// [`Hash::output_len`] bytes of it are filled; the diffusion of the anti-forensic
    /// splitter cuts its last block's digest short).
    pub fn digest_into(self, parts: &[&[u8]], out: &mut [u8]) {
        fn run<D: Digest>(parts: &[&[u8]], out: &mut [u8]) {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            let full = d.finalize();
            for (o, h) in out.iter_mut().zip(full.iter()) {
                *o = *h;
            }
        }
        match self {
            Hash::Sha1 => run::<Sha1>(parts, out),
            Hash::Sha256 => run::<Sha256>(parts, out),
            Hash::Sha512 => run::<Sha512>(parts, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_rfc_6070_and_names_are_checked() {
        // RFC 6070, test 2: "password", "salt", 2 iterations, 20 bytes.
        let mut out = [0u8; 20];
        Hash::Sha1.pbkdf2(b"password", b"salt", 2, &mut out);
        assert_eq!(
            out,
            [
                0xea, 0x6c, 0x01, 0x4d, 0xc7, 0x2d, 0x6f, 0x8c, 0xcd, 0x1e, 0xd9, 0x2a, 0xce, 0x1d,
                0x41, 0xf0, 0xd8, 0xde, 0x89, 0x57
            ]
        );
        assert_eq!(Hash::from_name("SHA256").ok(), Some(Hash::Sha256));
        assert!(matches!(
            Hash::from_name("whirlpool"),
            Err(LuksError::Unsupported(m)) if m.contains("whirlpool")
        ));
        let mut short = [0u8; 4];
        Hash::Sha256.digest_into(&[b"a", b"bc"], &mut short);
        assert_eq!(
            short,
            [0xba, 0x78, 0x16, 0xbf],
            "sha256(\"abc\") cut to 4 bytes"
        );
    }
}
