//! The envelope of encrypted metadata files: config, index, snapshot, lock
//! (spec/FORMAT.md §6 "Sealed files").
//!
//! ```text
//! 0   1   format version (1)
//! 1   1   file type (FileType)
//! 2   32  salt: the file's AES-256-GCM key is HKDF(master, salt, "vmstash/v1/file")
//! 34  12  nonce
//! 46  n   ciphertext of the framed payload (§5)
//! ..  16  GCM tag; associated data = bytes 0..2
//! ```
//! The version byte is read before anything is decrypted, so a newer
//! repository is refused with a clear message, not a tag failure.

use crate::crypto::{purpose, random_salt, MasterKey, SALT_LEN, SEAL_OVERHEAD};
use crate::version::{check_version_byte, FORMAT_VERSION_BYTE};
use crate::{payload, Error, Result};

/// Bytes before the sealed payload: version, type, salt.
pub const HEADER_LEN: usize = 2 + SALT_LEN;

/// Largest plaintext of a metadata file: 256 MiB (an index of ~5 M blobs).
pub const MAX_PLAINTEXT: usize = 256 * 1024 * 1024;

/// What an encrypted metadata file is; bound into its authentication tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    /// `config`
    Config,
    /// `index/<id>`
    Index,
    /// `snapshots/<id>`
    Snapshot,
    /// `locks/<id>`
    Lock,
    /// `data/<xx>/<id>` (first two bytes of a pack file)
    Pack,
    /// `marks/<id>` (§20.1)
    Mark,
}

impl FileType {
    /// The type byte.
    pub const fn byte(self) -> u8 {
        match self {
            FileType::Config => 1,
            FileType::Index => 2,
            FileType::Snapshot => 3,
            FileType::Lock => 4,
            FileType::Pack => 5,
            FileType::Mark => 6,
        }
    }
}

/// Seals `plaintext` (framed and compressed at `level`) as a file of `ty`.
pub fn seal(master: &MasterKey, ty: FileType, plaintext: &[u8], level: i32) -> Vec<u8> {
    let salt = random_salt();
    let header = [FORMAT_VERSION_BYTE, ty.byte()];
    let framed = payload::encode(plaintext, level);
    let sealed = master.subkey(&salt, purpose::FILE).seal(&framed, &header);
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&sealed);
    out
}

/// Checks the two header bytes of any repository file.
pub(crate) fn check_header(bytes: &[u8], ty: FileType, file: &str) -> Result<()> {
    let [version, kind] = bytes
        .get(..2)
        .and_then(|h| <[u8; 2]>::try_from(h).ok())
        .ok_or_else(|| {
            Error::corrupt(
                file,
                format!("{} bytes, shorter than any {ty:?} file", bytes.len()),
            )
        })?;
    check_version_byte(version, file)?;
    if kind != ty.byte() {
        return Err(Error::corrupt(
            file,
            format!("file type byte is {kind}, expected {} ({ty:?})", ty.byte()),
        ));
    }
    Ok(())
}

/// Verifies and decrypts a file of `ty`; `file` names it in errors.
pub fn open(master: &MasterKey, ty: FileType, bytes: &[u8], file: &str) -> Result<Vec<u8>> {
    check_header(bytes, ty, file)?;
    if bytes.len() < HEADER_LEN + SEAL_OVERHEAD {
        return Err(Error::corrupt(file, "truncated: shorter than its header"));
    }
    let (header, rest) = bytes.split_at(HEADER_LEN);
    let (aad, salt) = header.split_at(2);
    let salt: &[u8; SALT_LEN] = salt
        .try_into()
        .map_err(|_| Error::corrupt(file, "bad salt"))?;
    let framed = master
        .subkey(salt, purpose::FILE)
        .open(rest, aad)
        .map_err(|_| {
            Error::corrupt(
                file,
                "authentication failed (damaged, truncated, or encrypted with another key)",
            )
        })?;
    payload::decode(&framed, MAX_PLAINTEXT, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_type_binding_and_version() {
        let mk = MasterKey::generate();
        let bytes = seal(&mk, FileType::Index, b"{}", 3);
        assert_eq!(
            open(&mk, FileType::Index, &bytes, "f").expect("open"),
            b"{}"
        );
        assert!(matches!(
            open(&mk, FileType::Snapshot, &bytes, "f"),
            Err(Error::Corrupt { .. })
        ));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(matches!(
            open(&mk, FileType::Index, &v2, "f"),
            Err(Error::Incompatible { .. })
        ));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(open(&mk, FileType::Index, &flipped, "f").is_err());
        assert!(open(&mk, FileType::Index, &bytes[..20], "f").is_err());
        assert!(open(&mk, FileType::Index, &[], "f").is_err());
    }
}
