//! A file's attributes as the adapter reads them: finding one by type and name (in extension
//! records too, through the crate), its names (`$FILE_NAME`), its `$STANDARD_INFORMATION`
//! (times and file attributes, from the checked record), and the unnamed `$DATA`: its head,
//! for special files, and its contents, zeros past the initialized size.
//!
//! Every walk of a file's attributes is capped ([`MAX_ATTRIBUTES`]): an attribute list can
//! point to many records, and the crate follows them all.

use std::io::SeekFrom;

use ntfs::structured_values::{NtfsFileName, NtfsFileNamespace};
use ntfs::{NtfsAttributeFlags, NtfsAttributeItem, NtfsAttributeType, NtfsFile, NtfsReadSeek};

use super::mft::Loaded;
use super::record::{FileRecord, TYPE_DATA};
use super::{corrupt, crate_error, NtfsFs, FS};
use crate::guestfs::{DeviceCursor, FsError};

/// The attribute type code of `$STANDARD_INFORMATION`, read from raw records.
const TYPE_STANDARD_INFORMATION: u32 = 0x10;
/// Attributes of one file, counting those in extension records.
const MAX_ATTRIBUTES: usize = 65_536;

/// `$STANDARD_INFORMATION`: NTFS times and file attributes.
pub(super) struct StdInfo {
    /// Creation (100 ns units since 1601).
    pub(super) created: u64,
    /// Last modification of the data.
    pub(super) modified: u64,
    /// Last change of the MFT record.
    pub(super) changed: u64,
    /// Last access.
    pub(super) accessed: u64,
    /// File attributes (READ_ONLY, HIDDEN, …).
    pub(super) attributes: u32,
}

/// `$STANDARD_INFORMATION`: creation, modification, MFT change and access times (u64 each),
/// then the file attributes (u32); Windows NT 4 wrote these 48 bytes, later versions more.
pub(super) fn std_info(raw: &FileRecord) -> Result<StdInfo, FsError> {
    let value = raw
        .unnamed(TYPE_STANDARD_INFORMATION)
        .and_then(|a| a.resident_value())
        .ok_or_else(|| corrupt("a file has no $STANDARD_INFORMATION"))?;
    let u64_at = |at: usize| {
        value
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let attributes = value
        .get(32..36)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes);
    match (u64_at(0), u64_at(8), u64_at(16), u64_at(24), attributes) {
        (Some(created), Some(modified), Some(changed), Some(accessed), Some(attributes)) => {
            Ok(StdInfo {
                created,
                modified,
                changed,
                accessed,
                attributes,
            })
        }
        _ => Err(corrupt("a $STANDARD_INFORMATION is too short")),
    }
}

impl NtfsFs {
    /// The first attribute of `file` of type `ty` named `name` ("" for none), looking into
    /// extension records too.
    pub(super) fn find_attribute<'n, 'f>(
        &self,
        cursor: &mut DeviceCursor,
        file: &'f NtfsFile<'n>,
        ty: NtfsAttributeType,
        name: &str,
    ) -> Result<Option<NtfsAttributeItem<'n, 'f>>, FsError> {
        let mut items = file.attributes();
        let mut seen = 0usize;
        while let Some(item) = items.next(cursor) {
            seen += 1;
            if seen > MAX_ATTRIBUTES {
                return Err(corrupt("a file has too many attributes"));
            }
            let item = item.map_err(crate_error)?;
            let matches = {
                let attribute = item.to_attribute().map_err(crate_error)?;
                attribute.ty().ok() == Some(ty) && attribute.name().map_err(crate_error)? == name
            };
            if matches {
                return Ok(Some(item));
            }
        }
        Ok(None)
    }

    /// `file`'s names, DOS names left out.
    pub(super) fn names(
        &self,
        cursor: &mut DeviceCursor,
        file: &NtfsFile<'_>,
    ) -> Result<Vec<NtfsFileName>, FsError> {
        let mut names = Vec::new();
        let mut items = file.attributes();
        let mut seen = 0usize;
        while let Some(item) = items.next(cursor) {
            seen += 1;
            if seen > MAX_ATTRIBUTES {
                return Err(corrupt("a file has too many attributes"));
            }
            let item = item.map_err(crate_error)?;
            let attribute = item.to_attribute().map_err(crate_error)?;
            if attribute.ty().ok() != Some(NtfsAttributeType::FileName) {
                continue;
            }
            // Resident only: the crate reads a name with binrw, and panics on a read error.
            if !attribute.is_resident() {
                return Err(corrupt("a non-resident $FILE_NAME"));
            }
            let name = attribute
                .structured_value::<_, NtfsFileName>(cursor)
                .map_err(crate_error)?;
            if name.namespace() != NtfsFileNamespace::Dos {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// The unnamed `$DATA` attribute's value length and its first `limit` bytes (none when
    /// `limit` is 0); `None` without such an attribute.
    pub(super) fn data_head(
        &self,
        cursor: &mut DeviceCursor,
        file: &NtfsFile<'_>,
        limit: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, FsError> {
        let Some(item) = self.find_attribute(cursor, file, NtfsAttributeType::Data, "")? else {
            return Ok(None);
        };
        let attribute = item.to_attribute().map_err(crate_error)?;
        let len = attribute.value_length();
        if limit == 0 {
            return Ok(Some((len, Vec::new())));
        }
        let mut head = vec![0u8; usize::try_from(len.min(limit)).unwrap_or(0)];
        let mut value = attribute.value(cursor).map_err(crate_error)?;
        value.read_exact(cursor, &mut head).map_err(crate_error)?;
        Ok(Some((len, head)))
    }

    /// Up to `len` bytes of `f`'s unnamed `$DATA` at `offset`: fewer at its end, none past
    /// it or without one; zeros past its initialized size. Compressed and encrypted data are
    /// refused as unsupported rather than shown raw.
    pub(super) fn read_data(
        &self,
        cursor: &mut DeviceCursor,
        f: &Loaded<'_>,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, FsError> {
        let Some(item) = self.find_attribute(cursor, &f.file, NtfsAttributeType::Data, "")? else {
            return Ok(Vec::new());
        };
        let attribute = item.to_attribute().map_err(crate_error)?;
        if attribute
            .flags()
            .intersects(NtfsAttributeFlags::COMPRESSED | NtfsAttributeFlags::ENCRYPTED)
        {
            return Err(FsError::unsupported(
                FS,
                "compressed and encrypted NTFS files",
            ));
        }
        let size = attribute.value_length();
        if offset >= size {
            return Ok(Vec::new());
        }
        let n = (size - offset).min(u64::from(len));
        let mut buf = vec![0u8; usize::try_from(n).map_err(|_| corrupt("read too large"))?];
        let mut value = attribute.value(cursor).map_err(crate_error)?;
        value
            .seek(cursor, SeekFrom::Start(offset))
            .map_err(crate_error)?;
        value.read_exact(cursor, &mut buf).map_err(crate_error)?;
        let initialized = f.raw.unnamed(TYPE_DATA).and_then(|a| a.initialized_size());
        if let Some(valid) = initialized.and_then(|v| v.checked_sub(offset)) {
            if let Some(tail) = usize::try_from(valid).ok().and_then(|v| buf.get_mut(v..)) {
                tail.fill(0);
            }
        } else if initialized.is_some() {
            buf.fill(0);
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{entry, image, open, record_offset, u16_at, u32_at};
    use crate::guestfs::{FsError, GuestFs};

    /// The offset in `bytes` of file `ino`'s unnamed `$DATA` attribute.
    fn data_attribute(bytes: &[u8], ino: u64) -> usize {
        let at = record_offset(bytes, usize::try_from(ino).expect("ino"));
        let record = &bytes[at..at + 1024];
        let mut pos = u16_at(record, 0x14);
        while u32_at(record, pos) != 0x80 || record[pos + 9] != 0 {
            pos += u32_at(record, pos + 4);
        }
        at + pos
    }

    #[test]
    fn valid_data_length_and_compression() {
        let good = image();
        let ino = entry(&open(good.clone()).expect("opens"), "big.bin").ino;
        let data = data_attribute(&good, ino);
        // Bytes past the initialized size read as zeros; the size stays.
        let mut bytes = good.clone();
        let initialized = data + 0x38;
        assert!(initialized % 512 + 8 <= 510, "field across a sector end");
        bytes[initialized..initialized + 8].copy_from_slice(&100_000u64.to_le_bytes());
        let fs = open(bytes).expect("opens");
        let got = fs.read(ino, 99_990, 20).expect("read");
        let expected: Vec<u8> = (99_990..100_000u32)
            .map(|i| u8::try_from(i % 253).expect("byte"))
            .chain([0; 10])
            .collect();
        assert_eq!(got, expected);
        assert_eq!(fs.read(ino, 200_000, 5).expect("read"), [0; 5]);
        assert_eq!(fs.attr(ino).expect("attr").size, 307_200);
        // Compressed data is refused, not shown raw.
        let mut bytes = good;
        bytes[data + 12] |= 0x01;
        let fs = open(bytes).expect("opens");
        let err = fs.read(ino, 0, 10).expect_err("refused");
        assert!(err.to_string().contains("compressed"), "{err}");
        assert!(
            matches!(err, FsError::Unsupported { fs: "ntfs", .. }),
            "{err:?}"
        );
    }
}
