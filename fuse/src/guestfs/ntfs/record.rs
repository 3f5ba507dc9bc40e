//! Checks of the on-disk records that the `ntfs` crate parses, made before it parses them.
//!
//! The crate validates much of what it reads but still indexes slices with offsets taken from
//! the disk in a few places (attribute headers shorter than their fields, index entries shorter
//! than their header, an entry area whose start lies after its end, record sizes from the boot
//! sector or an index root). Each record the adapter lets the crate load was first read here,
//! byte for byte the same, and refused unless every offset the crate will follow stays inside
//! it. Layouts: <https://flatcap.github.io/linux-ntfs/ntfs/concepts/file_record.html>,
//! `…/index_record.html`, `…/index_entry.html`, `…/attributes/index_root.html`.

use crate::le;

/// The unit of the update sequence ("multi-sector transfer") protection: the last two bytes of
/// every 512 bytes of a record hold a check value, their real contents are in an array in the
/// header. Always 512, whatever the sector size.
const FIXUP_STRIDE: usize = 512;

/// The attribute type code of `$DATA`, read from raw records.
pub(super) const TYPE_DATA: u32 = 0x80;
/// Attribute type code that ends a file record's attribute list.
const END_OF_ATTRIBUTES: u32 = 0xFFFF_FFFF;
/// Generic attribute header: type, length, non-resident flag, name length and offset, flags,
/// instance.
const ATTRIBUTE_HEADER: usize = 16;
/// A resident attribute's header: the generic one, value length (u32), value offset (u16),
/// indexed flag, padding.
const RESIDENT_HEADER: usize = 24;
/// A non-resident attribute's header, up to and including its initialized size (0x38..0x40).
const NON_RESIDENT_HEADER: usize = 64;
/// An index record's header before its node header: signature, update sequence offset and
/// count, log sequence number, VCN.
const INDEX_RECORD_HEADER: usize = 24;
/// An index root's header before its node header: indexed type, collation rule, index record
/// size, clusters per index record, padding.
const INDEX_ROOT_HEADER: usize = 16;
/// An index node header: entries offset, index size, allocated size, flags, padding.
const INDEX_NODE_HEADER: usize = 16;
/// An index entry's header: file reference, entry length, key length, flags, padding.
const INDEX_ENTRY_HEADER: usize = 16;
/// An attribute list entry's header (before its name).
const ATTRIBUTE_LIST_ENTRY: usize = 26;
/// Index entry flag: the last entry of its node (no key).
const LAST_ENTRY: u8 = 0x02;
/// File record flag: the record is in use.
const IN_USE: u16 = 0x0001;
/// File record flag: the record is a directory (has a `$I30` index).
const IS_DIRECTORY: u16 = 0x0002;
/// The low 48 bits of a file reference are the record number, the high 16 its sequence number.
const RECORD_NUMBER_MASK: u64 = (1 << 48) - 1;

/// Smallest and largest index record size accepted (NTFS uses 4096).
pub(super) const INDEX_RECORD_SIZES: std::ops::RangeInclusive<u32> = 512..=65536;

/// A file record ("FILE"), checked and with its update sequence applied: the bytes the crate
/// sees after its own fixup.
pub(super) struct FileRecord {
    bytes: Vec<u8>,
}

impl FileRecord {
    /// Checks `bytes` (one whole record as read from the disk) the way the crate will walk it.
    pub(super) fn parse(mut bytes: Vec<u8>) -> Result<FileRecord, String> {
        if bytes.get(..4) != Some(b"FILE".as_slice()) {
            return Err("a file record has no FILE signature".into());
        }
        apply_fixup(&mut bytes)?;
        let used = u32_at(&bytes, 0x18)?;
        let allocated = u32_at(&bytes, 0x1C)?;
        let len = u32::try_from(bytes.len()).map_err(|_| "file record too large".to_owned())?;
        if allocated > len || used > allocated {
            return Err(format!(
                "a file record claims {used} of {allocated} bytes in a {len}-byte record"
            ));
        }
        let record = FileRecord { bytes };
        let mut pos = usize::from(u16_at(&record.bytes, 0x14)?);
        while let Some(ty) = opt_u32_at(&record.bytes, pos) {
            if ty == END_OF_ATTRIBUTES {
                break;
            }
            let attribute = record.attribute_at(pos)?;
            pos = pos
                .checked_add(attribute.bytes.len())
                .ok_or_else(|| "attribute offset overflows".to_owned())?;
        }
        Ok(record)
    }

    /// The attribute at `pos`, whose header must lie inside the record.
    fn attribute_at(&self, pos: usize) -> Result<RawAttribute<'_>, String> {
        let rest = self.bytes.get(pos..).unwrap_or_default();
        if rest.len() < ATTRIBUTE_HEADER {
            return Err(format!("an attribute at {pos} runs past its record's end"));
        }
        let len = usize::try_from(u32_at(rest, 4)?).unwrap_or(usize::MAX);
        let header = match rest.get(8) {
            Some(0) => RESIDENT_HEADER,
            _ => NON_RESIDENT_HEADER,
        };
        let bytes = rest
            .get(..len)
            .filter(|_| len >= header)
            .ok_or_else(|| format!("an attribute at {pos} has an invalid length {len}"))?;
        Ok(RawAttribute { bytes })
    }

    /// The record's attributes, in order (all were checked by `parse`).
    pub(super) fn attributes(&self) -> impl Iterator<Item = RawAttribute<'_>> {
        let mut pos = usize::from(u16_at(&self.bytes, 0x14).unwrap_or(0));
        std::iter::from_fn(move || {
            let ty = opt_u32_at(&self.bytes, pos)?;
            if ty == END_OF_ATTRIBUTES {
                return None;
            }
            let attribute = self.attribute_at(pos).ok()?;
            pos = pos.checked_add(attribute.bytes.len())?;
            Some(attribute)
        })
    }

    /// The first attribute of type `ty` without a name, if any.
    pub(super) fn unnamed(&self, ty: u32) -> Option<RawAttribute<'_>> {
        self.attributes()
            .find(|a| a.ty() == ty && a.name_length() == 0)
    }

    fn flags(&self) -> u16 {
        u16_at(&self.bytes, 0x16).unwrap_or(0)
    }

    /// Whether the record holds a file (deleted files' records are free).
    pub(super) fn in_use(&self) -> bool {
        self.flags() & IN_USE != 0
    }

    /// Whether the record is a directory's.
    pub(super) fn is_directory(&self) -> bool {
        self.flags() & IS_DIRECTORY != 0
    }

    /// The base record's number when this is an extension record (0 for a base record).
    pub(super) fn base_record(&self) -> u64 {
        u64_at(&self.bytes, 0x20).unwrap_or(0) & RECORD_NUMBER_MASK
    }
}

/// One attribute of a checked [`FileRecord`]: at least its full header long.
pub(super) struct RawAttribute<'r> {
    bytes: &'r [u8],
}

impl<'r> RawAttribute<'r> {
    /// The attribute type code.
    pub(super) fn ty(&self) -> u32 {
        u32_at(self.bytes, 0).unwrap_or(0)
    }

    /// The name's length in UTF-16 units.
    pub(super) fn name_length(&self) -> u8 {
        self.bytes.get(9).copied().unwrap_or(0)
    }

    fn is_resident(&self) -> bool {
        self.bytes.get(8) == Some(&0)
    }

    /// A resident attribute's value (`None` when non-resident or out of bounds).
    pub(super) fn resident_value(&self) -> Option<&'r [u8]> {
        if !self.is_resident() {
            return None;
        }
        let len = usize::try_from(u32_at(self.bytes, 16).ok()?).ok()?;
        let start = usize::from(u16_at(self.bytes, 20).ok()?);
        self.bytes.get(start..start.checked_add(len)?)
    }

    /// A non-resident attribute's initialized size ("valid data length": bytes past it read
    /// as zeros), when this attribute holds the start of its value.
    pub(super) fn initialized_size(&self) -> Option<u64> {
        if self.is_resident() || u64_at(self.bytes, 0x10).ok()? != 0 {
            return None;
        }
        u64_at(self.bytes, 0x38).ok()
    }

    /// Where a non-resident attribute's value lies (`None` when resident), its data runs
    /// decoded as the crate decodes them: up to the end marker or the first run the crate
    /// would refuse. `cluster`: the cluster size.
    pub(super) fn value_map(&self, cluster: u64) -> Option<ValueMap> {
        if self.is_resident() {
            return None;
        }
        let size = u64_at(self.bytes, 0x30).ok()?;
        let runs_start = usize::from(u16_at(self.bytes, 0x20).ok()?);
        let data = self.bytes.get(runs_start..).unwrap_or_default();
        let mut runs = Vec::new();
        let (mut pos, mut start, mut lcn) = (0usize, 0u64, 0u64);
        while let Some(&header) = data.get(pos) {
            let count_len = usize::from(header & 0x0F);
            let delta_len = usize::from(header >> 4);
            if header == 0 || count_len > 8 || delta_len > 8 {
                break;
            }
            let Some(count) = data.get(pos + 1..pos + 1 + count_len).map(unsigned_le) else {
                break;
            };
            let delta_at = pos + 1 + count_len;
            let Some(delta) = data.get(delta_at..delta_at + delta_len).map(signed_le) else {
                break;
            };
            let Some(len) = count.checked_mul(cluster).filter(|_| count != 0) else {
                break;
            };
            // A zero delta is a sparse run; otherwise the run starts delta clusters from the
            // previous one's start.
            let at = if delta == 0 {
                None
            } else {
                let next = if delta > 0 {
                    lcn.checked_add(delta.unsigned_abs())
                } else {
                    lcn.checked_sub(delta.unsigned_abs())
                };
                let Some(next) = next else { break };
                lcn = next;
                let Some(at) = lcn.checked_mul(cluster) else {
                    break;
                };
                Some(at).filter(|at| *at != 0)
            };
            runs.push(Run { start, len, at });
            let Some(next) = start.checked_add(len) else {
                break;
            };
            start = next;
            pos = delta_at + delta_len;
        }
        Some(ValueMap { size, runs })
    }
}

/// One data run: `len` bytes of the value from `start`, on the disk at `at` (none: sparse).
struct Run {
    start: u64,
    len: u64,
    at: Option<u64>,
}

/// Where a non-resident value's bytes are on the disk.
pub(super) struct ValueMap {
    size: u64,
    runs: Vec<Run>,
}

impl ValueMap {
    /// The disk position of the value's byte `offset`: `None` past the value's end, in a
    /// sparse run, or past the runs.
    pub(super) fn position(&self, offset: u64) -> Option<u64> {
        if offset >= self.size {
            return None;
        }
        let run = self
            .runs
            .iter()
            .find(|r| offset >= r.start && offset - r.start < r.len)?;
        run.at?.checked_add(offset - run.start)
    }
}

/// The records an `$ATTRIBUTE_LIST` value points to, each once, after checking that every
/// entry lies whole inside it: type (u32), entry length (u16), name length (u8, in UTF-16
/// units) and offset (u8), lowest VCN (u64), file reference (u64), instance (u16), name.
pub(super) fn attribute_list_records(mut rest: &[u8]) -> Result<Vec<u64>, String> {
    let mut records = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while !rest.is_empty() {
        if rest.len() < ATTRIBUTE_LIST_ENTRY {
            return Err("an attribute list entry is cut short".into());
        }
        let len = usize::from(u16_at(rest, 4)?);
        let name = 2 * usize::from(rest.get(6).copied().unwrap_or(0));
        if len < ATTRIBUTE_LIST_ENTRY + name || len > rest.len() {
            return Err(format!(
                "an attribute list entry has an invalid length {len}"
            ));
        }
        let number = u64_at(rest, 16)? & RECORD_NUMBER_MASK;
        if seen.insert(number) {
            records.push(number);
        }
        rest = rest.get(len..).unwrap_or_default();
    }
    Ok(records)
}

/// Checks the value of a `$I30` `$INDEX_ROOT` attribute; returns its index record size.
pub(super) fn check_index_root(value: &[u8]) -> Result<u32, String> {
    let record_size = u32_at(value, 8)?;
    let entries = node_entries(value, INDEX_ROOT_HEADER)?;
    check_index_entries(entries)?;
    Ok(record_size)
}

/// Checks an index record ("INDX") read from an `$INDEX_ALLOCATION`, as the crate will walk
/// it after its fixup.
pub(super) fn check_index_record(mut bytes: Vec<u8>) -> Result<(), String> {
    if bytes.get(..4) != Some(b"INDX".as_slice()) {
        return Err("an index record has no INDX signature".into());
    }
    apply_fixup(&mut bytes)?;
    let allocated = usize::try_from(u32_at(&bytes, INDEX_RECORD_HEADER + 8)?).unwrap_or(usize::MAX);
    if INDEX_RECORD_HEADER.saturating_add(allocated) > bytes.len() {
        return Err(format!(
            "an index record claims {allocated} bytes in {}",
            bytes.len()
        ));
    }
    let entries = node_entries(&bytes, INDEX_RECORD_HEADER)?;
    check_index_entries(entries)
}

/// The entries of the index node whose header starts at `header` in `bytes`.
fn node_entries(bytes: &[u8], header: usize) -> Result<&[u8], String> {
    let offset = usize::try_from(u32_at(bytes, header)?).unwrap_or(usize::MAX);
    let size = usize::try_from(u32_at(bytes, header + 4)?).unwrap_or(usize::MAX);
    let start = header.saturating_add(offset);
    let end = header.saturating_add(size);
    if bytes.len() < header + INDEX_NODE_HEADER || start >= bytes.len() || start > end {
        return Err(format!(
            "an index node's entries ({start}..{end}) are outside its {} bytes",
            bytes.len()
        ));
    }
    bytes
        .get(start..end)
        .ok_or_else(|| format!("an index node's entries end at {end}, past {}", bytes.len()))
}

/// Walks index entries as the crate does: each at least a header long and inside the node,
/// until the last-entry flag.
fn check_index_entries(mut rest: &[u8]) -> Result<(), String> {
    while !rest.is_empty() {
        if rest.len() < INDEX_ENTRY_HEADER {
            return Err("an index entry runs past its node's end".into());
        }
        let len = usize::from(u16_at(rest, 8)?);
        if len < INDEX_ENTRY_HEADER || len > rest.len() {
            return Err(format!("an index entry has an invalid length {len}"));
        }
        if rest.get(12).is_some_and(|flags| flags & LAST_ENTRY != 0) {
            break;
        }
        rest = rest.get(len..).unwrap_or_default();
    }
    Ok(())
}

/// Applies a record's update sequence: checks the last two bytes of each 512-byte stride
/// against the sequence number and puts the saved bytes back, in the crate's order.
fn apply_fixup(bytes: &mut [u8]) -> Result<(), String> {
    let offset = usize::from(u16_at(bytes, 4)?);
    let count = usize::from(u16_at(bytes, 6)?);
    let strides = count
        .checked_sub(1)
        .ok_or_else(|| "a record has an empty update sequence".to_owned())?;
    if offset + 2 * count > bytes.len() || strides * FIXUP_STRIDE > bytes.len() {
        return Err(format!(
            "a record's update sequence ({count} at {offset}) exceeds its {} bytes",
            bytes.len()
        ));
    }
    let number: [u8; 2] = pair(bytes, offset)?;
    for i in 0..strides {
        let saved = pair(bytes, offset + 2 + 2 * i)?;
        let end = (i + 1) * FIXUP_STRIDE - 2;
        let slot = bytes
            .get_mut(end..end + 2)
            .ok_or_else(|| "update sequence slot out of range".to_owned())?;
        if *slot != number {
            return Err(format!(
                "a record's update sequence does not match at byte {end} (torn write)"
            ));
        }
        slot.copy_from_slice(&saved);
    }
    Ok(())
}

fn pair(bytes: &[u8], at: usize) -> Result<[u8; 2], String> {
    bytes
        .get(at..at + 2)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("2 bytes at {at} are past the end ({})", bytes.len()))
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, String> {
    pair(bytes, at).map(u16::from_le_bytes)
}

fn opt_u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    le::u32_at(bytes, at)
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, String> {
    le::u32_at(bytes, at)
        .ok_or_else(|| format!("4 bytes at {at} are past the end ({})", bytes.len()))
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, String> {
    le::u64_at(bytes, at)
        .ok_or_else(|| format!("8 bytes at {at} are past the end ({})", bytes.len()))
}

/// A little-endian unsigned integer of up to 8 bytes.
fn unsigned_le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// A little-endian two's complement integer of 1 to 8 bytes.
fn signed_le(bytes: &[u8]) -> i64 {
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let mut full = [if negative { 0xFF } else { 0 }; 8];
    for (slot, b) in full.iter_mut().zip(bytes) {
        *slot = *b;
    }
    i64::from_le_bytes(full)
}
