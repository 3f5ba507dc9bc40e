//! Keys and authenticated encryption (spec/FORMAT.md §3 "Cryptography").
//!
//! One random 256-bit master key per repository. Every encrypted file has a
//! random 32-byte salt; its AES-256-GCM key is HKDF-SHA256(master, salt,
//! info). A pack of 16 MiB holds at most a few thousand blobs, each sealed
//! with a fresh random 96-bit nonce under the pack's own subkey, so the
//! random-nonce collision bound (2^-32 after 2^32 messages per key) is never
//! approached. AES-NI and PCLMULQDQ are picked at run time by the `aes-gcm`
//! crate.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of a GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of a GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes of a per-file salt.
pub const SALT_LEN: usize = 32;
/// Bytes of every key.
pub const KEY_LEN: usize = 32;
/// What sealing adds to a plaintext: nonce and tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The repository's master key. Never printed, never cloned, zeroed on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; KEY_LEN]);

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> MasterKey {
        let mut k = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut k);
        MasterKey(k)
    }

    /// Wraps key bytes (from an unwrapped key file).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> MasterKey {
        MasterKey(bytes)
    }

    /// The raw key, for wrapping into a key file only.
    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The AES-256-GCM key of the file with this `salt`, for `purpose`
    /// (the HKDF info string, see [`purpose`]).
    pub fn subkey(&self, salt: &[u8; SALT_LEN], purpose: &[u8]) -> FileKey {
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.0);
        let mut okm = [0u8; KEY_LEN];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit: cannot fail.
        if hk.expand(purpose, &mut okm).is_err() {
            unreachable!("HKDF output length is constant and valid");
        }
        let key = FileKey::new(&okm);
        okm.zeroize();
        key
    }
}

/// HKDF info strings: one per kind of encrypted file.
pub mod purpose {
    /// Pack files (blobs and pack header).
    pub const PACK: &[u8] = b"vmstash/v1/pack";
    /// Config, index, snapshot and lock files.
    pub const FILE: &[u8] = b"vmstash/v1/file";
}

/// An AES-256-GCM key bound to one file.
pub struct FileKey(Aes256Gcm);

/// A seal or open failed: the tag did not verify or the input is too short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoError;

impl FileKey {
    /// A key from raw bytes.
    pub fn new(key: &[u8; KEY_LEN]) -> FileKey {
        FileKey(Aes256Gcm::new(key.into()))
    }

    /// Encrypts `plaintext` with a random nonce; returns nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&nonce);
        let ct = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_else(|_| unreachable!("AES-GCM encryption fails only past 64 GiB"));
        out.extend_from_slice(&ct);
        out
    }

    /// Verifies and decrypts nonce ‖ ciphertext ‖ tag.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CryptoError);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.0
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| CryptoError)
    }
}

/// Fills a fresh random salt.
pub fn random_salt() -> [u8; SALT_LEN] {
    let mut s = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let mk = MasterKey::generate();
        let salt = random_salt();
        let k = mk.subkey(&salt, purpose::FILE);
        let sealed = k.seal(b"hello", b"aad");
        assert_eq!(k.open(&sealed, b"aad").as_deref(), Ok(&b"hello"[..]));
        assert_eq!(k.open(&sealed, b"other"), Err(CryptoError));
        let mut bad = sealed.clone();
        bad[NONCE_LEN] ^= 1;
        assert_eq!(k.open(&bad, b"aad"), Err(CryptoError));
        assert_eq!(k.open(&sealed[..10], b"aad"), Err(CryptoError));
        let other = mk.subkey(&random_salt(), purpose::FILE);
        assert_eq!(other.open(&sealed, b"aad"), Err(CryptoError));
    }

    #[test]
    fn subkeys_differ_by_purpose() {
        let mk = MasterKey::from_bytes([7; 32]);
        let salt = [1; 32];
        let sealed = mk.subkey(&salt, purpose::PACK).seal(b"x", b"");
        assert!(mk.subkey(&salt, purpose::FILE).open(&sealed, b"").is_err());
        assert!(mk.subkey(&salt, purpose::PACK).open(&sealed, b"").is_ok());
    }
}
