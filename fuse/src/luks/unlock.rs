//! Opening a key slot with a passphrase: derive the slot's key (PBKDF2 or Argon2), decrypt
//! its area (the slot's cipher, 512-byte sectors numbered from 0), merge the anti-forensic
//! stripes, and check the result against the digest that covers the slot. The first slot
//! that checks gives the volume key.

use zeroize::Zeroizing;

use super::af;
use super::cipher::{SectorCipher, VolumeKey, IV_UNIT};
use super::error::LuksError;
use super::kdf::KdfLimits;
use super::layout::{Digest, Header, Keyslot, SlotParams};
use crate::guestfs::{Device, DeviceError};

/// The volume key of `header`'s volume on `dev`, from the first key slot that `passphrase`
/// opens, trying slots by priority (high first, "ignore" last), each within `limits`.
///
/// [`LuksError::WrongPassphrase`] when slots were tried and none opened;
/// otherwise, when no slot could even be tried, why the first could not (an unsupported
/// cipher, a refused cost). A read error of the backup stops at once.
pub fn unlock(
    header: &Header,
    dev: &dyn Device,
    passphrase: &[u8],
    limits: &KdfLimits,
) -> Result<VolumeKey, LuksError> {
    let mut slots: Vec<&Keyslot> = header.keyslots.iter().collect();
    slots.sort_by_key(|s| {
        (
            std::cmp::Reverse(s.priority.clamp(1, 2)),
            s.priority == 0,
            s.id,
        )
    });
    let mut tried = false;
    let mut first_problem = None;
    for slot in slots {
        match try_slot(header, slot, dev, passphrase, limits) {
            Ok(Some(key)) => return Ok(key),
            Ok(None) => tried = true,
            Err(LuksError::Device(e)) => return Err(LuksError::Device(e)),
            Err(e) => {
                first_problem.get_or_insert(e);
            }
        }
    }
    match first_problem {
        Some(problem) if !tried => Err(problem),
        _ if tried => Err(LuksError::WrongPassphrase),
        _ => Err(LuksError::corrupt("no active key slot")),
    }
}

/// The volume key if `passphrase` opens `slot`, `None` if it does not.
fn try_slot(
    header: &Header,
    slot: &Keyslot,
    dev: &dyn Device,
    passphrase: &[u8],
    limits: &KdfLimits,
) -> Result<Option<VolumeKey>, LuksError> {
    let p: &SlotParams = slot.params.as_ref().map_err(Clone::clone)?;
    let what = format!("key slot {}", slot.id);
    let digest = header
        .digests
        .iter()
        .find(|d| d.keyslots.contains(&slot.id))
        .ok_or_else(|| LuksError::corrupt(format!("{what} has no digest")))?;
    limits.check_pbkdf2(digest.iterations, &format!("the digest of {what}"))?;
    p.kdf.check(limits, &what)?;
    let material_len = af::material_len(p.volume_key_len, p.stripes)?;
    // Whole 512-byte sectors: at most 8 MiB (af::MAX_STRIPES stripes of a 128-byte key).
    let area_len = material_len
        .div_ceil(IV_UNIT)
        .checked_mul(IV_UNIT)
        .ok_or_else(|| LuksError::corrupt(format!("{what}: key material too large")))?;
    if u64::try_from(area_len).unwrap_or(u64::MAX) > p.area_size {
        return Err(LuksError::corrupt(format!(
            "{what}: {area_len} bytes of key material in a {}-byte area",
            p.area_size
        )));
    }
    let mut material = Zeroizing::new(vec![0u8; area_len]);
    dev.read_at(p.area_offset, &mut material)
        .map_err(|e| match e {
            DeviceError::PastEnd(past) => {
                LuksError::corrupt(format!("{what}'s key material: {past}"))
            }
            read => LuksError::Device(read),
        })?;
    let slot_key = p.kdf.derive(passphrase, p.area_key_len, limits, &what)?;
    SectorCipher::new(p.area_cipher, &slot_key)?.decrypt_area(&mut material);
    let key = af::merge(&material, p.volume_key_len, p.stripes, p.af_hash)?;
    Ok(matches(digest, &key).then(|| VolumeKey(key)))
}

/// Whether `key`'s PBKDF2 digest is `digest`'s (compared without an early exit).
fn matches(digest: &Digest, key: &[u8]) -> bool {
    let mut got = Zeroizing::new(vec![0u8; digest.digest.len()]);
    digest
        .hash
        .pbkdf2(key, &digest.salt, digest.iterations.max(1), &mut got);
    !digest.digest.is_empty()
        && got
            .iter()
            .zip(&digest.digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}
