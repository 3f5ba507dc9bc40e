//! What a LUKS header says, the same for both versions once parsed: the volume's identity,
//! its key slots, the digest that recognises the volume key, and the encrypted segment.
//! [`luks1`](super::luks1) and [`luks2`](super::luks2) build it from the bytes; unlocking
//! and decrypting read only this.

use super::cipher::CipherSpec;
use super::error::LuksError;
use super::hash::Hash;
use super::kdf::Kdf;

/// A LUKS header: what a locked volume shows without a passphrase, and what unlocking needs.
#[derive(Debug, Clone)]
pub struct Header {
    /// 1 or 2.
    pub version: u16,
    /// The volume's UUID, as text.
    pub uuid: String,
    /// Its label (LUKS2; empty when none, and always for LUKS1).
    pub label: String,
    /// The key slots in use.
    pub keyslots: Vec<Keyslot>,
    /// The digests that recognise the volume key.
    pub(crate) digests: Vec<Digest>,
    /// The encrypted data.
    pub segment: Segment,
    /// Which LUKS2 header copy was read (always the primary for LUKS1).
    pub copy: HeaderCopy,
}

/// Which copy of a LUKS2 header was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCopy {
    /// The primary, at the start of the device.
    Primary,
    /// The secondary, because the primary is damaged or older.
    Secondary,
}

/// An active key slot.
#[derive(Debug, Clone)]
pub struct Keyslot {
    /// Its number (0-7 in LUKS1, 0-31 in LUKS2).
    pub id: u32,
    /// Its key derivation's name as the header gives it ("pbkdf2", "argon2id").
    pub kdf_name: String,
    /// LUKS2 priority: 0 ignore (tried last), 1 normal, 2 high (tried first).
    pub priority: u32,
    /// How to open it, or why vmstash cannot (an unsupported slot type or cipher).
    pub(crate) params: Result<SlotParams, LuksError>,
}

/// What opening a key slot takes.
#[derive(Debug, Clone)]
pub(crate) struct SlotParams {
    /// The passphrase's key derivation.
    pub(crate) kdf: Kdf,
    /// The length of the volume key the slot holds.
    pub(crate) volume_key_len: usize,
    /// The cipher of the slot's area, and its key's length.
    pub(crate) area_cipher: CipherSpec,
    /// The length of the area cipher's key.
    pub(crate) area_key_len: usize,
    /// Where the area is on the device, in bytes.
    pub(crate) area_offset: u64,
    /// Its length in bytes.
    pub(crate) area_size: u64,
    /// Anti-forensic stripes.
    pub(crate) stripes: u32,
    /// The anti-forensic diffusion's hash.
    pub(crate) af_hash: Hash,
}

/// A PBKDF2 digest of the volume key, recognising it among wrong ones.
#[derive(Debug, Clone)]
pub(crate) struct Digest {
    /// The key slots it checks.
    pub(crate) keyslots: Vec<u32>,
    /// PBKDF2's hash.
    pub(crate) hash: Hash,
    /// PBKDF2's iterations.
    pub(crate) iterations: u32,
    /// PBKDF2's salt.
    pub(crate) salt: Vec<u8>,
    /// The expected PBKDF2 output.
    pub(crate) digest: Vec<u8>,
}

/// The encrypted data segment.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Where it starts on the device, in bytes.
    pub offset: u64,
    /// Its length in bytes; `None` for "dynamic" (to the device's end).
    pub size: Option<u64>,
    /// Added to every sector's IV.
    pub iv_tweak: u64,
    /// The cipher's name as the header gives it ("aes-xts-plain64").
    pub encryption: String,
    /// Its sector size: 512, 1024, 2048 or 4096 bytes.
    pub sector_size: u32,
}

/// The sector sizes dm-crypt supports.
pub(crate) const SECTOR_SIZES: [u32; 4] = [512, 1024, 2048, 4096];
