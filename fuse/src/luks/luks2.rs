//! The LUKS2 binary header (LUKS2 On-Disk Format Specification, section 2): two copies, the
//! primary at offset 0 (magic `LUKS\xba\xbe`) and the secondary right after it (magic
//! `SKUL\xba\xbe`), each a 4096-byte binary header followed by the JSON metadata area,
//! `hdr_size` bytes in all, protected by a SHA-256 over those bytes with the checksum field
//! zeroed. A copy whose magic, `hdr_offset` or checksum is wrong is damaged; of two good
//! copies the one with the higher `seqid` wins (cryptsetup does the same, then repairs the
//! other). When the primary is damaged, its `hdr_size` cannot be trusted, so the secondary
//! is looked for at every offset a header size allows, as cryptsetup does.

use sha2::{Digest as _, Sha256};

use super::bytes::{be_u16, be_u64, field, text};
use super::error::LuksError;
use super::json;
use super::layout::{Header, HeaderCopy};
use crate::guestfs::{Device, DeviceError};

/// The binary header's length; the JSON area follows it.
pub const BINARY_LEN: usize = 4096;
/// The primary header's magic.
pub const MAGIC_PRIMARY: [u8; 6] = *b"LUKS\xba\xbe";
/// The secondary header's magic.
pub const MAGIC_SECONDARY: [u8; 6] = *b"SKUL\xba\xbe";
/// The header sizes (binary header and JSON area) the specification allows: 16 KiB to
/// 4 MiB, powers of two. So the JSON area is at most 4 MiB less 4 KiB.
pub const HEADER_SIZES: [u64; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];
/// Where the checksum field is, and its length (SHA-256 uses its first 32 bytes).
const CSUM_AT: usize = 448;
const CSUM_LEN: usize = 64;
/// Where `hdr_offset` is: the copy's own offset on the device.
const HDR_OFFSET_AT: usize = 256;

/// One good copy of the header: its sequence number and bytes.
struct Copy {
    seqid: u64,
    bytes: Vec<u8>,
    which: HeaderCopy,
}

/// The newest good copy of the LUKS2 header on `dev`, parsed.
pub fn read(dev: &dyn Device) -> Result<Header, LuksError> {
    let primary = read_copy(dev, 0, MAGIC_PRIMARY, HeaderCopy::Primary)?;
    let secondary_offsets: Vec<u64> = match &primary {
        Ok(p) => vec![u64::try_from(p.bytes.len()).unwrap_or(u64::MAX)],
        Err(_) => HEADER_SIZES.to_vec(),
    };
    let secondary = read_secondary(dev, &secondary_offsets)?;
    let chosen = match (primary, secondary) {
        (Ok(p), Ok(s)) if s.seqid > p.seqid => s,
        (Ok(p), _) => p,
        (Err(_), Ok(s)) => s,
        (Err(p), Err(s)) => {
            return Err(LuksError::corrupt(format!(
                "both LUKS2 header copies are damaged: primary: {}; secondary: {}",
                detail(&p),
                detail(&s)
            )))
        }
    };
    parse(&chosen.bytes, chosen.which)
}

/// The first good secondary copy at `offsets`; else the damage of the first copy there that
/// has the secondary's magic (a missing magic at the offsets merely allowed says nothing).
fn read_secondary(dev: &dyn Device, offsets: &[u64]) -> Result<Result<Copy, LuksError>, LuksError> {
    let mut damage = None;
    for &offset in offsets {
        match read_copy(dev, offset, MAGIC_SECONDARY, HeaderCopy::Secondary)? {
            Ok(copy) => return Ok(Ok(copy)),
            Err(e) if offsets.len() == 1 => damage = Some(e),
            Err(e) if damage.is_none() && has_magic(dev, offset, MAGIC_SECONDARY)? => {
                damage = Some(e);
            }
            Err(_) => {}
        }
    }
    Ok(Err(damage.unwrap_or_else(|| {
        LuksError::corrupt("no secondary LUKS2 header at any offset a header size allows")
    })))
}

/// Whether the bytes at `offset` start with `magic` (false past the device's end).
fn has_magic(dev: &dyn Device, offset: u64, magic: [u8; 6]) -> Result<bool, LuksError> {
    let mut found = [0u8; 6];
    match dev.read_at(offset, &mut found) {
        Ok(()) => Ok(found == magic),
        Err(DeviceError::PastEnd(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What a damaged copy's error says, without the "damaged LUKS header" prefix.
fn detail(e: &LuksError) -> String {
    match e {
        LuksError::Corrupt(d) => d.clone(),
        other => other.to_string(),
    }
}

/// The copy of the header at `offset`: `Ok(Err(..))` when it is damaged (wrong magic,
/// version, size, offset or checksum), `Err` only when the device cannot be read.
fn read_copy(
    dev: &dyn Device,
    offset: u64,
    magic: [u8; 6],
    which: HeaderCopy,
) -> Result<Result<Copy, LuksError>, LuksError> {
    let mut binary = vec![0u8; BINARY_LEN];
    match dev.read_at(offset, &mut binary) {
        Ok(()) => {}
        Err(DeviceError::PastEnd(p)) => return Ok(Err(LuksError::corrupt(p))),
        Err(e) => return Err(e.into()),
    }
    let hdr_size = match check_binary(&binary, offset, magic) {
        Ok(size) => size,
        Err(e) => return Ok(Err(e)),
    };
    // hdr_size is one of HEADER_SIZES: at most 4 MiB.
    let mut bytes = binary;
    bytes.resize(usize::try_from(hdr_size).unwrap_or(BINARY_LEN), 0);
    let json_at = u64::try_from(BINARY_LEN).unwrap_or(u64::MAX);
    match dev.read_at(
        offset.saturating_add(json_at),
        bytes.get_mut(BINARY_LEN..).unwrap_or_default(),
    ) {
        Ok(()) => {}
        Err(DeviceError::PastEnd(p)) => return Ok(Err(LuksError::corrupt(p))),
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = check_checksum(&bytes, offset) {
        return Ok(Err(e));
    }
    let seqid = be_u64(&bytes, 16).unwrap_or(0);
    Ok(Ok(Copy {
        seqid,
        bytes,
        which,
    }))
}

/// Checks a copy's binary header at `offset`: magic, version 2, `hdr_offset`, a header size
/// the specification allows, SHA-256 checksums. Returns the header size.
fn check_binary(b: &[u8], offset: u64, magic: [u8; 6]) -> Result<u64, LuksError> {
    let at = |what: &str| format!("{what} of the LUKS2 header at {offset}");
    if field(b, 0, 6) != Some(&magic[..]) {
        return Err(LuksError::corrupt(at("no magic")));
    }
    let version = be_u16(b, 6).unwrap_or(0);
    if version != 2 {
        return Err(LuksError::corrupt(at(&format!("version {version}"))));
    }
    let hdr_size = be_u64(b, 8).unwrap_or(0);
    if !HEADER_SIZES.contains(&hdr_size) {
        return Err(LuksError::corrupt(at(&format!("header size {hdr_size}"))));
    }
    let hdr_offset = be_u64(b, HDR_OFFSET_AT).unwrap_or(u64::MAX);
    if hdr_offset != offset {
        return Err(LuksError::corrupt(at(&format!("hdr_offset {hdr_offset}"))));
    }
    let alg = text(b, 72, 32).unwrap_or_default();
    if alg != "sha256" {
        return Err(LuksError::unsupported(at(&format!("checksum {alg:?}"))));
    }
    Ok(hdr_size)
}

/// Checks the SHA-256 of the whole copy (binary header and JSON area) with the checksum
/// field read as zeros.
fn check_checksum(bytes: &[u8], offset: u64) -> Result<(), LuksError> {
    let stored = field(bytes, CSUM_AT, 32).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(bytes.get(..CSUM_AT).unwrap_or_default());
    h.update([0u8; CSUM_LEN]);
    h.update(bytes.get(CSUM_AT + CSUM_LEN..).unwrap_or_default());
    if h.finalize().as_slice() != stored {
        return Err(LuksError::corrupt(format!(
            "checksum mismatch of the LUKS2 header at {offset}"
        )));
    }
    Ok(())
}

/// The header a good copy's bytes hold: UUID and label from the binary header, the rest from
/// the JSON area (up to its first NUL).
fn parse(bytes: &[u8], which: HeaderCopy) -> Result<Header, LuksError> {
    let label = text(bytes, 24, 48).unwrap_or_default();
    let uuid = text(bytes, 168, 40).unwrap_or_default();
    let area = bytes.get(BINARY_LEN..).unwrap_or_default();
    let end = area.iter().position(|&c| c == 0).unwrap_or(area.len());
    let mut header = json::parse(area.get(..end).unwrap_or_default())?;
    header.uuid = uuid;
    header.label = label;
    header.copy = which;
    Ok(header)
}

/// Recomputes the checksum of a copy of the header (for tests that damage JSON on purpose).
#[cfg(test)]
pub(crate) fn reseal(copy: &mut [u8]) {
    copy[CSUM_AT..CSUM_AT + CSUM_LEN].fill(0);
    let sum = Sha256::digest(&*copy);
    copy[CSUM_AT..CSUM_AT + 32].copy_from_slice(&sum);
}
