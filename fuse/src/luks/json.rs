//! The LUKS2 JSON metadata (LUKS2 On-Disk Format Specification, section 3): key slots,
//! digests, segments, as typed structs (`serde_json`), then checked and turned into a
//! [`Header`]. Offsets and sizes are decimal strings (JSON numbers lose precision above
//! 2^53), counts and key sizes plain numbers, salts and digests base64.
//!
//! Only the one-segment layout of a volume at rest is read: several segments (a
//! reencryption in progress) or mandatory requirements are [`LuksError::Unsupported`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::af;
use super::cipher::{CipherSpec, IV_UNIT};
use super::error::LuksError;
use super::hash::Hash;
use super::kdf::{Argon2Variant, Kdf};
use super::layout::{Digest, Header, HeaderCopy, Keyslot, Segment, SlotParams, SECTOR_SIZES};

/// LUKS2 has at most 32 key slots (`LUKS2_KEYSLOTS_MAX`).
const MAX_KEYSLOTS: usize = 32;
/// The largest volume or area key accepted (AES-256-XTS takes 64 bytes).
const MAX_KEY_SIZE: usize = 128;
/// The longest volume key digest accepted: PBKDF2 with SHA-512 gives 64 bytes, cryptsetup
/// writes one hash output.
const MAX_DIGEST: usize = 64;

#[derive(Deserialize)]
struct Metadata {
    keyslots: BTreeMap<String, JsonKeyslot>,
    segments: BTreeMap<String, JsonSegment>,
    digests: BTreeMap<String, JsonDigest>,
    #[serde(default)]
    config: Option<JsonConfig>,
}

#[derive(Deserialize)]
struct JsonKeyslot {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    key_size: usize,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default)]
    area: Option<JsonArea>,
    #[serde(default)]
    kdf: Option<JsonKdf>,
    #[serde(default)]
    af: Option<JsonAf>,
}

#[derive(Deserialize)]
struct JsonArea {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    offset: Option<String>,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    encryption: Option<String>,
    #[serde(default)]
    key_size: Option<usize>,
}

#[derive(Deserialize)]
struct JsonKdf {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    iterations: Option<u32>,
    #[serde(default)]
    time: Option<u32>,
    #[serde(default)]
    memory: Option<u32>,
    #[serde(default)]
    cpus: Option<u32>,
    #[serde(default)]
    salt: Option<String>,
}

#[derive(Deserialize)]
struct JsonAf {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    stripes: Option<u32>,
    #[serde(default)]
    hash: Option<String>,
}

#[derive(Deserialize)]
struct JsonSegment {
    #[serde(rename = "type")]
    kind: String,
    offset: String,
    size: String,
    #[serde(default)]
    iv_tweak: Option<String>,
    #[serde(default)]
    encryption: Option<String>,
    #[serde(default)]
    sector_size: Option<u32>,
}

#[derive(Deserialize)]
struct JsonDigest {
    #[serde(rename = "type")]
    kind: String,
    keyslots: Vec<String>,
    hash: String,
    iterations: u32,
    salt: String,
    digest: String,
}

#[derive(Deserialize)]
struct JsonConfig {
    #[serde(default)]
    requirements: Option<JsonRequirements>,
}

#[derive(Deserialize)]
struct JsonRequirements {
    #[serde(default)]
    mandatory: Vec<String>,
}

/// The header the JSON text `text` describes (UUID, label and copy are the caller's).
pub fn parse(text: &[u8]) -> Result<Header, LuksError> {
    let meta: Metadata = serde_json::from_slice(text)
        .map_err(|e| LuksError::corrupt(format!("LUKS2 JSON metadata: {e}")))?;
    if let Some(req) = meta.config.as_ref().and_then(|c| c.requirements.as_ref()) {
        if !req.mandatory.is_empty() {
            return Err(LuksError::unsupported(format!(
                "LUKS2 requirements {:?}",
                req.mandatory
            )));
        }
    }
    if meta.keyslots.len() > MAX_KEYSLOTS {
        return Err(LuksError::corrupt(format!(
            "{} LUKS2 key slots (at most {MAX_KEYSLOTS})",
            meta.keyslots.len()
        )));
    }
    let segment = segment(&meta.segments)?;
    let mut keyslots = Vec::new();
    for (id, slot) in &meta.keyslots {
        let id = number(id, "key slot id")?;
        let u32_id = u32::try_from(id).map_err(|_| LuksError::corrupt("key slot id"))?;
        keyslots.push(Keyslot {
            id: u32_id,
            kdf_name: slot
                .kdf
                .as_ref()
                .map(|k| k.kind.clone())
                .unwrap_or_default(),
            priority: slot.priority.unwrap_or(1),
            params: slot_params(slot, u32_id),
        });
    }
    let mut digests = Vec::new();
    for (id, d) in &meta.digests {
        if d.kind != "pbkdf2" {
            return Err(LuksError::unsupported(format!(
                "LUKS2 digest {id} of type {:?}",
                d.kind
            )));
        }
        let keyslots = d
            .keyslots
            .iter()
            .map(|k| {
                number(k, "digest's key slot").and_then(|n| {
                    u32::try_from(n).map_err(|_| LuksError::corrupt("digest's key slot"))
                })
            })
            .collect::<Result<Vec<u32>, LuksError>>()?;
        let digest = base64(&d.digest, "digest")?;
        if digest.is_empty() || digest.len() > MAX_DIGEST {
            return Err(LuksError::corrupt(format!(
                "digest {id} of {} bytes",
                digest.len()
            )));
        }
        digests.push(Digest {
            keyslots,
            hash: Hash::from_name(&d.hash)?,
            iterations: d.iterations,
            salt: base64(&d.salt, "digest salt")?,
            digest,
        });
    }
    Ok(Header {
        version: 2,
        uuid: String::new(),
        label: String::new(),
        keyslots,
        digests,
        segment,
        copy: HeaderCopy::Primary,
    })
}

/// The volume's one crypt segment.
fn segment(segments: &BTreeMap<String, JsonSegment>) -> Result<Segment, LuksError> {
    let mut all = segments.values();
    let (Some(s), None) = (all.next(), all.next()) else {
        return Err(LuksError::unsupported(format!(
            "{} LUKS2 segments (a reencryption in progress?); only one is read",
            segments.len()
        )));
    };
    if s.kind != "crypt" {
        return Err(LuksError::unsupported(format!(
            "LUKS2 segment of type {:?}",
            s.kind
        )));
    }
    let sector_size = s.sector_size.unwrap_or(512);
    if !SECTOR_SIZES.contains(&sector_size) {
        return Err(LuksError::corrupt(format!("sector size {sector_size}")));
    }
    let size = match s.size.as_str() {
        "dynamic" => None,
        n => {
            let n = number(n, "segment size")?;
            if n % u64::from(sector_size) != 0 {
                return Err(LuksError::corrupt(format!(
                    "segment size {n} is not a multiple of its {sector_size}-byte sectors"
                )));
            }
            Some(n)
        }
    };
    Ok(Segment {
        offset: number(&s.offset, "segment offset")?,
        size,
        iv_tweak: s
            .iv_tweak
            .as_deref()
            .map(|t| number(t, "iv_tweak"))
            .transpose()?
            .unwrap_or(0),
        encryption: s.encryption.clone().unwrap_or_default(),
        sector_size,
    })
}

/// What opening key slot `id` takes, or why it cannot be opened.
fn slot_params(slot: &JsonKeyslot, id: u32) -> Result<SlotParams, LuksError> {
    if slot.kind != "luks2" {
        return Err(LuksError::unsupported(format!(
            "key slot {id} of type {:?}",
            slot.kind
        )));
    }
    let missing = |what: &str| LuksError::corrupt(format!("key slot {id} has no {what}"));
    let (area, kdf, af) = (
        slot.area.as_ref().ok_or_else(|| missing("area"))?,
        slot.kdf.as_ref().ok_or_else(|| missing("kdf"))?,
        slot.af.as_ref().ok_or_else(|| missing("af"))?,
    );
    if area.kind != "raw" {
        return Err(LuksError::unsupported(format!(
            "key slot {id} area of type {:?}",
            area.kind
        )));
    }
    if af.kind != "luks1" {
        return Err(LuksError::unsupported(format!(
            "key slot {id} anti-forensic splitter {:?}",
            af.kind
        )));
    }
    let area_key_len = area.key_size.ok_or_else(|| missing("area key_size"))?;
    for len in [slot.key_size, area_key_len] {
        if len == 0 || len > MAX_KEY_SIZE {
            return Err(LuksError::corrupt(format!(
                "key slot {id}: key of {len} bytes"
            )));
        }
    }
    let stripes = af.stripes.ok_or_else(|| missing("af stripes"))?;
    let material = af::material_len(slot.key_size, stripes)?;
    let area_size = number(
        area.size.as_deref().ok_or_else(|| missing("area size"))?,
        "area size",
    )?;
    let needed =
        u64::try_from(material.div_ceil(IV_UNIT).saturating_mul(IV_UNIT)).unwrap_or(u64::MAX);
    if needed > area_size {
        return Err(LuksError::corrupt(format!(
            "key slot {id}: {needed} bytes of key material in a {area_size}-byte area"
        )));
    }
    let salt = base64(
        kdf.salt.as_deref().ok_or_else(|| missing("kdf salt"))?,
        "kdf salt",
    )?;
    let kdf = match kdf.kind.as_str() {
        "pbkdf2" => Kdf::Pbkdf2 {
            hash: Hash::from_name(kdf.hash.as_deref().ok_or_else(|| missing("kdf hash"))?)?,
            iterations: kdf.iterations.ok_or_else(|| missing("kdf iterations"))?,
            salt,
        },
        "argon2i" | "argon2id" => Kdf::Argon2 {
            variant: if kdf.kind == "argon2i" {
                Argon2Variant::I
            } else {
                Argon2Variant::Id
            },
            time: kdf.time.ok_or_else(|| missing("kdf time"))?,
            memory_kib: kdf.memory.ok_or_else(|| missing("kdf memory"))?,
            lanes: kdf.cpus.ok_or_else(|| missing("kdf cpus"))?,
            salt,
        },
        other => {
            return Err(LuksError::unsupported(format!(
                "key slot {id} key derivation {other:?}"
            )))
        }
    };
    Ok(SlotParams {
        kdf,
        volume_key_len: slot.key_size,
        area_cipher: CipherSpec::from_name(
            area.encryption
                .as_deref()
                .ok_or_else(|| missing("area encryption"))?,
        )?,
        area_key_len,
        area_offset: number(
            area.offset
                .as_deref()
                .ok_or_else(|| missing("area offset"))?,
            "area offset",
        )?,
        area_size,
        stripes,
        af_hash: Hash::from_name(af.hash.as_deref().ok_or_else(|| missing("af hash"))?)?,
    })
}

/// The decimal number `s` (`what` names it for the error).
fn number(s: &str, what: &str) -> Result<u64, LuksError> {
    s.parse::<u64>()
        .map_err(|_| LuksError::corrupt(format!("{what} {s:?} is not a number")))
}

/// The bytes of the standard base64 text `s` (padding optional, whitespace not allowed).
fn base64(s: &str, what: &str) -> Result<Vec<u8>, LuksError> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bad = || LuksError::corrupt(format!("{what} is not base64"));
    let body = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 3);
    for chunk in body.as_bytes().chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | value(c).ok_or_else(bad)?;
        }
        let bytes = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return Err(bad()),
        };
        let shift = 6 * (4 - chunk.len());
        let acc = acc << shift;
        out.extend(acc.to_be_bytes().iter().skip(1).take(bytes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_and_rejects() {
        assert_eq!(base64("aGVsbG8=", "x").ok(), Some(b"hello".to_vec()));
        assert_eq!(base64("aGVsbG8h", "x").ok(), Some(b"hello!".to_vec()));
        assert_eq!(base64("aGk", "x").ok(), Some(b"hi".to_vec()));
        assert_eq!(base64("", "x").ok(), Some(Vec::new()));
        assert!(base64("a", "x").is_err());
        assert!(base64("a b=", "x").is_err());
    }
}
