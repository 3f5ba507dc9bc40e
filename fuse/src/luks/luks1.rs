//! The LUKS1 header (LUKS1 On-Disk Format Specification 1.2.3, section 2): 592 bytes at the
//! device's start, big-endian, then each key slot's key material at its own offset and the
//! payload at `payload_offset` sectors. One cipher for the payload and every key slot, one
//! PBKDF2 digest (20 bytes) of the volume key, PBKDF2 key slots over `hash_spec`.

use super::af;
use super::bytes::{be_u32, field, text};
use super::cipher::{CipherSpec, IV_UNIT};
use super::error::LuksError;
use super::hash::Hash;
use super::kdf::Kdf;
use super::layout::{Digest, Header, HeaderCopy, Keyslot, Segment, SlotParams};

/// The header's length.
pub const HEADER_LEN: usize = 592;
/// Key slots in a LUKS1 header.
const KEYSLOTS: u32 = 8;
/// Where the first key slot's 48 bytes start.
const KEYSLOT_TABLE: usize = 208;
/// One key slot's length in the table.
const KEYSLOT_LEN: usize = 48;
/// `active` of a slot in use (`LUKS_KEY_ENABLED`).
const KEY_ENABLED: u32 = 0x00ac_71f3;
/// `active` of an unused slot (`LUKS_KEY_DISABLED`).
const KEY_DISABLED: u32 = 0x0000_dead;
/// The master key digest's length (`LUKS_DIGESTSIZE`).
const DIGEST_LEN: usize = 20;
/// Salts' length (`LUKS_SALTSIZE`).
const SALT_LEN: usize = 32;
/// The largest volume key accepted (AES-256-XTS takes 64 bytes).
const MAX_KEY_BYTES: u32 = 128;
/// LUKS1 counts offsets in 512-byte sectors.
const SECTOR: u64 = 512;

/// The header in `b` (at least [`HEADER_LEN`] bytes, magic already checked).
pub fn parse(b: &[u8]) -> Result<Header, LuksError> {
    let short = || LuksError::corrupt("LUKS1 header shorter than 592 bytes");
    let cipher_name = text(b, 8, 32).ok_or_else(short)?;
    let cipher_mode = text(b, 40, 32).ok_or_else(short)?;
    let hash_spec = text(b, 72, 32).ok_or_else(short)?;
    let payload_offset = be_u32(b, 104).ok_or_else(short)?;
    let key_bytes = be_u32(b, 108).ok_or_else(short)?;
    let mk_digest = field(b, 112, DIGEST_LEN).ok_or_else(short)?;
    let mk_salt = field(b, 132, SALT_LEN).ok_or_else(short)?;
    let mk_iterations = be_u32(b, 164).ok_or_else(short)?;
    let uuid = text(b, 168, 40).ok_or_else(short)?;
    if key_bytes == 0 || key_bytes > MAX_KEY_BYTES {
        return Err(LuksError::corrupt(format!(
            "LUKS1 key of {key_bytes} bytes"
        )));
    }
    let key_len = usize::try_from(key_bytes).map_err(|_| short())?;
    let encryption = format!("{cipher_name}-{cipher_mode}");
    let hash = Hash::from_name(&hash_spec);
    let cipher = CipherSpec::from_name(&encryption);
    let mut keyslots = Vec::new();
    for id in 0..KEYSLOTS {
        let at = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_mul(KEYSLOT_LEN))
            .and_then(|o| o.checked_add(KEYSLOT_TABLE))
            .ok_or_else(short)?;
        let slot = field(b, at, KEYSLOT_LEN).ok_or_else(short)?;
        let active = be_u32(slot, 0).ok_or_else(short)?;
        match active {
            KEY_DISABLED => continue,
            KEY_ENABLED => {}
            other => {
                return Err(LuksError::corrupt(format!(
                    "LUKS1 key slot {id} state {other:#010x} (neither enabled nor disabled)"
                )))
            }
        }
        let iterations = be_u32(slot, 4).ok_or_else(short)?;
        let salt = field(slot, 8, SALT_LEN).ok_or_else(short)?.to_vec();
        let material_sector = be_u32(slot, 40).ok_or_else(short)?;
        let stripes = be_u32(slot, 44).ok_or_else(short)?;
        let params = (|| {
            let material = af::material_len(key_len, stripes)?;
            let area_size = u64::try_from(material.div_ceil(IV_UNIT))
                .ok()
                .and_then(|n| n.checked_mul(SECTOR))
                .ok_or_else(|| LuksError::corrupt("key material too large"))?;
            Ok(SlotParams {
                kdf: Kdf::Pbkdf2 {
                    hash: hash.clone()?,
                    iterations,
                    salt,
                },
                volume_key_len: key_len,
                area_cipher: cipher.clone()?,
                area_key_len: key_len,
                area_offset: u64::from(material_sector) * SECTOR,
                area_size,
                stripes,
                af_hash: hash.clone()?,
            })
        })();
        keyslots.push(Keyslot {
            id,
            kdf_name: "pbkdf2".to_owned(),
            priority: 1,
            params,
        });
    }
    let digests = match &hash {
        Ok(hash) => vec![Digest {
            keyslots: (0..KEYSLOTS).collect(),
            hash: *hash,
            iterations: mk_iterations,
            salt: mk_salt.to_vec(),
            digest: mk_digest.to_vec(),
        }],
        Err(_) => Vec::new(),
    };
    Ok(Header {
        version: 1,
        uuid,
        label: String::new(),
        keyslots,
        digests,
        segment: Segment {
            offset: u64::from(payload_offset) * SECTOR,
            size: None,
            iv_tweak: 0,
            encryption,
            sector_size: 512,
        },
        copy: HeaderCopy::Primary,
    })
}
