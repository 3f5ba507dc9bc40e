//! LUKS1 and LUKS2 volumes inside a snapshot's disks, unlocked in user space (the host never
//! sees a key or activates a dm-crypt device): the header read without a passphrase, a key
//! slot opened with one, and the decrypted data as a [`Device`] the filesystem readers open
//! like a partition.
//!
//! The formats are cryptsetup's: the LUKS1 On-Disk Format Specification 1.2.3 and the LUKS2
//! On-Disk Format Specification 1.1.x. What is read:
//!
//! - LUKS1: PBKDF2 key slots (SHA-1, SHA-256, SHA-512), the master key digest;
//! - LUKS2: both header copies with their SHA-256 checksums (the secondary when the primary is
//!   damaged or older), the JSON metadata (at most 4 MiB), `luks2` key slots with PBKDF2,
//!   Argon2i or Argon2id, `pbkdf2` digests, one `crypt` segment of 512- to 4096-byte sectors,
//!   fixed or `dynamic` size, with its `iv_tweak`;
//! - ciphers: `aes-xts-plain64` (and `aes-xts-plain`) with 256-, 384- or 512-bit keys, and
//!   `aes-cbc-essiv:sha256` (LUKS1's default before cryptsetup 1.6) with 128- to 256-bit
//!   keys, for the data and the key slots. Others (Serpent, Twofish, other IVs) are
//!   [`LuksError::Unsupported`], named.
//!
//! Everything from the header is checked before use: lengths and offsets against the device,
//! the JSON area's size, anti-forensic stripes ([`af::MAX_STRIPES`]), key sizes, and the key
//! derivation's costs against [`KdfLimits`] before anything is derived or allocated. Key
//! material (slot keys, decrypted stripes, the volume key) is zeroized when dropped and has no
//! `Debug`.
//!
//! - [`header`]: recognising a volume, reading its header ([`luks1`], [`luks2`], [`json`]
//!   into the common [`layout`]);
//! - [`kdf`], [`hash`], [`af`], [`cipher`]: the primitives;
//! - [`unlock`]: opening a key slot; [`device`]: the decrypted bytes.
//!
//! Fuzzed by `fuzz/fuzz_targets/luks_header.rs` (with [`KdfLimits::FUZZ`]).

pub mod af;
mod bytes;
pub mod cipher;
pub mod device;
pub mod error;
pub mod hash;
pub mod header;
pub mod json;
pub mod kdf;
pub mod layout;
pub mod luks1;
pub mod luks2;
pub mod unlock;

use std::sync::Arc;

use crate::guestfs::Device;

pub use device::LuksDevice;
pub use error::LuksError;
pub use header::recognises;
pub use kdf::KdfLimits;
pub use layout::{Header, HeaderCopy, Keyslot, Segment};

/// A passphrase for LUKS volumes: zeroized when dropped, never printed (no `Debug`).
pub struct Passphrase(zeroize::Zeroizing<Vec<u8>>);

impl Passphrase {
    /// `bytes` as a passphrase (taken over, not copied).
    pub fn new(bytes: Vec<u8>) -> Passphrase {
        Passphrase(zeroize::Zeroizing::new(bytes))
    }
}

/// The LUKS volume on `inner`, unlocked with the first of `passphrases` that opens a key slot;
/// [`LuksError::WrongPassphrase`] when none does (or none is given).
pub fn open_with_any(
    inner: &Arc<dyn Device>,
    passphrases: &[Passphrase],
) -> Result<LuksDevice, LuksError> {
    for p in passphrases {
        match open(Arc::clone(inner), &p.0) {
            Err(LuksError::WrongPassphrase) => continue,
            other => return other,
        }
    }
    Err(LuksError::WrongPassphrase)
}

/// The LUKS volume on `inner`, unlocked with `passphrase`, as its decrypted data.
pub fn open(inner: Arc<dyn Device>, passphrase: &[u8]) -> Result<LuksDevice, LuksError> {
    open_with_limits(inner, passphrase, &KdfLimits::DEFAULT)
}

/// [`open`], with the key derivation's costs bounded by `limits` (the fuzz target passes
/// [`KdfLimits::FUZZ`]; key slots that cost more are refused, not weakened).
pub fn open_with_limits(
    inner: Arc<dyn Device>,
    passphrase: &[u8],
    limits: &KdfLimits,
) -> Result<LuksDevice, LuksError> {
    let header = Header::read(inner.as_ref())?;
    let spec = cipher::CipherSpec::from_name(&header.segment.encryption)?;
    let len = segment_len(&header.segment, inner.len())?;
    let key = unlock::unlock(&header, inner.as_ref(), passphrase, limits)?;
    let cipher = cipher::SectorCipher::new(spec, &key.0)?;
    Ok(LuksDevice::new(inner, cipher, header, len))
}

/// The length of `segment` on a device of `device_len` bytes: its own size, or for "dynamic"
/// the rest of the device cut to whole sectors; [`LuksError::Corrupt`] when it does not fit.
fn segment_len(segment: &Segment, device_len: u64) -> Result<u64, LuksError> {
    let rest = device_len.checked_sub(segment.offset).ok_or_else(|| {
        LuksError::Corrupt(format!(
            "the data segment starts at {}, past the device's end ({device_len} bytes)",
            segment.offset
        ))
    })?;
    match segment.size {
        None => Ok(rest - rest % u64::from(segment.sector_size.max(1))),
        Some(size) if size <= rest => Ok(size),
        Some(size) => Err(LuksError::Corrupt(format!(
            "the data segment of {size} bytes at {} runs past the device's end ({device_len} \
             bytes)",
            segment.offset
        ))),
    }
}

#[cfg(test)]
mod tests;
