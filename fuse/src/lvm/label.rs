//! The PV label, the PV header and the metadata area header: where a physical volume's
//! metadata text is, and the text itself (the newest copy its area holds).

use super::{lvm_crc, read, LvmError, MAX_METADATA};
use crate::guestfs::Device;
use crate::le;

const SECTOR: u64 = 512;
/// The label is in one of the first four sectors.
const LABEL_SCAN_SECTORS: u64 = 4;
const LABEL_ID: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
/// The metadata area header's magic.
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// Most data or metadata areas a PV header may list (LVM writes one data area and up to two
/// metadata areas).
const MAX_AREAS: usize = 8;
/// Most metadata locations a metadata area header may list (LVM uses the first).
const MAX_LOCATIONS: usize = 4;

/// A physical volume: its UUID, its data area, and the metadata text of its first metadata
/// area that checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalVolume {
    /// The PV's UUID as the label stores it: 32 characters, without dashes.
    pub uuid: String,
    /// The device size the PV header records (bytes; 0 when not recorded).
    pub device_size: u64,
    /// The metadata text (the volume group), from the first metadata area whose checksums
    /// match; `None` when the PV has no metadata area (LVM allows PVs without one).
    pub metadata: Option<Vec<u8>>,
}

/// The physical volume on `dev`, if it carries an LVM2 label; `Ok(None)` when it does not.
pub fn read_physical_volume(dev: &dyn Device) -> Result<Option<PhysicalVolume>, LvmError> {
    let scan = LABEL_SCAN_SECTORS.min(dev.len() / SECTOR);
    for sector in 0..scan {
        let bytes = read(dev, sector * SECTOR, 512)?;
        if bytes.get(0..8) != Some(LABEL_ID.as_slice()) {
            continue;
        }
        return read_label(dev, sector, &bytes).map(Some);
    }
    Ok(None)
}

/// Reads the label in `sector` (its bytes `bytes`), the PV header and the metadata.
fn read_label(dev: &dyn Device, sector: u64, bytes: &[u8]) -> Result<PhysicalVolume, LvmError> {
    let corrupt = |what: &str| LvmError::Corrupt(format!("PV label in sector {sector}: {what}"));
    if le::u64_at(bytes, 8) != Some(sector) {
        return Err(corrupt("it names another sector"));
    }
    let crc = le::u32_at(bytes, 16).ok_or_else(|| corrupt("too short"))?;
    if lvm_crc(bytes.get(20..).unwrap_or_default()) != crc {
        return Err(corrupt("its checksum does not match"));
    }
    if bytes.get(24..32) != Some(LABEL_TYPE.as_slice()) {
        return Err(LvmError::Unsupported(
            "an LVM label of another type than LVM2 001".to_owned(),
        ));
    }
    let header_at = le::u32_at(bytes, 20).ok_or_else(|| corrupt("too short"))?;
    let header = bytes
        .get(usize::try_from(header_at).unwrap_or(usize::MAX)..)
        .filter(|h| h.len() >= 32 + 8)
        .ok_or_else(|| corrupt("the PV header is outside the sector"))?;
    let uuid = std::str::from_utf8(&header[..32])
        .ok()
        .filter(|u| u.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or_else(|| corrupt("the PV UUID is not 32 letters and digits"))?
        .to_owned();
    let device_size = le::u64_at(header, 32).unwrap_or(0);
    let (_data, rest) = areas(&header[40..]).ok_or_else(|| corrupt("its area lists do not end"))?;
    let (metadata_areas, _) = areas(rest).ok_or_else(|| corrupt("its area lists do not end"))?;
    let mut last_error = None;
    for (offset, size) in metadata_areas {
        match read_metadata_area(dev, offset, size) {
            Ok(text) => {
                return Ok(PhysicalVolume {
                    uuid,
                    device_size,
                    metadata: Some(text),
                })
            }
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) => Err(e),
        None => Ok(PhysicalVolume {
            uuid,
            device_size,
            metadata: None,
        }),
    }
}

/// Areas of a PV: (offset, size) in bytes.
type Areas = Vec<(u64, u64)>;

/// A zero-terminated list of (offset, size) pairs, and the bytes after its terminator; `None`
/// when it does not end within the bytes or within [`MAX_AREAS`].
fn areas(bytes: &[u8]) -> Option<(Areas, &[u8])> {
    let mut out = Vec::new();
    for i in 0..=MAX_AREAS {
        let at = i * 16;
        let (offset, size) = (le::u64_at(bytes, at)?, le::u64_at(bytes, at + 8)?);
        if offset == 0 && size == 0 {
            return Some((out, bytes.get(at + 16..)?));
        }
        out.push((offset, size));
    }
    None
}

/// The current metadata text of the metadata area at `offset` (`size` bytes, its header
/// included).
fn read_metadata_area(dev: &dyn Device, offset: u64, size: u64) -> Result<Vec<u8>, LvmError> {
    let corrupt = |what: String| LvmError::Corrupt(format!("metadata area at {offset}: {what}"));
    let header = read(dev, offset, 512)?;
    let crc = le::u32_at(&header, 0).unwrap_or(0);
    if lvm_crc(&header[4..]) != crc {
        return Err(corrupt("its header's checksum does not match".to_owned()));
    }
    if header.get(4..20) != Some(MDA_MAGIC.as_slice()) {
        return Err(corrupt("its header lacks LVM's magic".to_owned()));
    }
    let start = le::u64_at(&header, 24).unwrap_or(0);
    let area_size = le::u64_at(&header, 32).unwrap_or(0);
    if start != offset || area_size > size || area_size < 1024 {
        return Err(corrupt(format!(
            "its header says it starts at {start} and holds {area_size} bytes"
        )));
    }
    let (text_offset, text_size, text_crc) = (0..MAX_LOCATIONS)
        .filter_map(|i| {
            let at = 40 + i * 24;
            Some((
                le::u64_at(&header, at)?,
                le::u64_at(&header, at + 8)?,
                le::u32_at(&header, at + 16)?,
            ))
        })
        .next()
        .filter(|(o, s, _)| *o != 0 || *s != 0)
        .ok_or_else(|| corrupt("it holds no metadata".to_owned()))?;
    // The text is in a circular buffer after the 512-byte header: it may wrap to its start.
    let buffer = area_size - 512;
    if text_offset < 512
        || text_offset >= area_size
        || text_size > buffer
        || text_size > MAX_METADATA
    {
        return Err(corrupt(format!(
            "metadata of {text_size} bytes at {text_offset} does not fit it"
        )));
    }
    let first = text_size.min(area_size - text_offset);
    let mut text = read(dev, offset + text_offset, to_usize(first))?;
    if first < text_size {
        text.extend(read(dev, offset + 512, to_usize(text_size - first))?);
    }
    if lvm_crc(&text) != text_crc {
        return Err(corrupt(
            "its metadata text's checksum does not match".to_owned(),
        ));
    }
    // LVM ends the text with a NUL.
    while text.last() == Some(&0) {
        text.pop();
    }
    Ok(text)
}

/// A length already checked against [`MAX_METADATA`].
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
