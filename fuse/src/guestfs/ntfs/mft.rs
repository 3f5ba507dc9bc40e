//! MFT records: where each is (the MFT's own data runs, read from its first record), reading
//! and checking one ([`record`](super::record)) before the crate parses it, and loading a file
//! from its record and the extension records its attribute list points to.
//!
//! The crate reads a file's record through the MFT's runs as it decoded them itself; the
//! adapter decodes the same runs ([`ValueMap`]), reads the record from the same place, and
//! refuses the file when the two disagree, so the crate never parses bytes that were not
//! checked.

use ntfs::{Ntfs, NtfsAttributeType, NtfsFile, NtfsReadSeek};

use super::record::{self, FileRecord, ValueMap, TYPE_DATA};
use super::{corrupt, crate_error, NtfsFs, FIRST_USER_RECORD, FS, ROOT};
use crate::guestfs::device::check_range;
use crate::guestfs::{Device, DeviceCursor, FsError, MAX_LOCAL_INO};

/// The attribute type code of `$ATTRIBUTE_LIST`, read from raw records.
const TYPE_ATTRIBUTE_LIST: u32 = 0x20;
/// An attribute list's bytes (32 per attribute in another record: 32,768 of them).
const MAX_ATTRIBUTE_LIST: u64 = 1 << 20;

/// A file's record, as the crate's file and as checked bytes.
pub(super) struct Loaded<'n> {
    /// The crate's view.
    pub(super) file: NtfsFile<'n>,
    /// The record's bytes, checked.
    pub(super) raw: FileRecord,
}

/// Where the MFT's records are, from its own record, which the crate reads first for every
/// file: at the boot sector's MFT position, and again where the MFT's data starts, which must
/// be the same place.
pub(super) fn map(ntfs: &Ntfs, dev: &dyn Device) -> Result<ValueMap, FsError> {
    let at = ntfs
        .mft_position()
        .value()
        .ok_or_else(|| corrupt("no MFT position"))?
        .get();
    let len = usize::try_from(ntfs.file_record_size()).unwrap_or(usize::MAX);
    let mft = FileRecord::parse(read_raw(dev, at, len)?).map_err(corrupt)?;
    let Some(map) = mft
        .attributes()
        .find(|a| a.ty() == TYPE_DATA)
        .and_then(|data| data.value_map(u64::from(ntfs.cluster_size())))
    else {
        if mft.attributes().any(|a| a.ty() == TYPE_ATTRIBUTE_LIST) {
            return Err(FsError::unsupported(
                FS,
                "an MFT fragmented enough to keep its $DATA in another record",
            ));
        }
        return Err(corrupt("the MFT has no non-resident $DATA"));
    };
    if map.position(0) != Some(at) {
        return Err(corrupt(
            "the MFT's data does not start where the boot sector says",
        ));
    }
    Ok(map)
}

/// `len` bytes at `pos` of the partition.
fn read_raw(dev: &dyn Device, pos: u64, len: usize) -> Result<Vec<u8>, FsError> {
    check_range(dev, pos, len).map_err(corrupt)?;
    let mut buf = vec![0u8; len];
    dev.read_at(pos, &mut buf)
        .map_err(|e| FsError::device(FS, e))?;
    Ok(buf)
}

impl NtfsFs {
    fn record_size(&self) -> usize {
        usize::try_from(self.ntfs.file_record_size()).unwrap_or(usize::MAX)
    }

    /// Where MFT record `number` is (the crate reads it from there).
    fn record_position(&self, number: u64) -> Result<u64, FsError> {
        number
            .checked_mul(u64::from(self.ntfs.file_record_size()))
            .and_then(|offset| self.mft.position(offset))
            .ok_or(FsError::NotFound)
    }

    /// Reads and checks MFT record `number`.
    fn checked_record(&self, number: u64) -> Result<FileRecord, FsError> {
        let at = self.record_position(number)?;
        FileRecord::parse(read_raw(&*self.dev, at, self.record_size())?).map_err(corrupt)
    }

    /// Loads file `ino` (a number the adapter hands out: the root's or a user file's).
    pub(super) fn file(&self, cursor: &mut DeviceCursor, ino: u64) -> Result<Loaded<'_>, FsError> {
        if ino != ROOT && !(FIRST_USER_RECORD..=MAX_LOCAL_INO).contains(&ino) {
            return Err(FsError::NotFound);
        }
        self.load(cursor, ino)
    }

    /// File `number`: its record and any extension records checked, then loaded by the crate.
    pub(super) fn load(
        &self,
        cursor: &mut DeviceCursor,
        number: u64,
    ) -> Result<Loaded<'_>, FsError> {
        let raw = self.checked_record(number)?;
        if !raw.in_use() || raw.base_record() != 0 {
            return Err(FsError::NotFound);
        }
        let file = self.ntfs.file(cursor, number).map_err(crate_error)?;
        // The crate found the record through the same runs; should it have read other bytes
        // than those checked, none of its attributes are touched.
        if file.position().value().map(|p| p.get()) != Some(self.record_position(number)?) {
            return Err(corrupt("the MFT's runs are ambiguous"));
        }
        if raw.attributes().any(|a| a.ty() == TYPE_ATTRIBUTE_LIST) {
            self.check_extension_records(cursor, &file)?;
        }
        Ok(Loaded { file, raw })
    }

    /// Checks the records that `file`'s attribute list points to: the crate loads them while
    /// it walks the file's attributes.
    fn check_extension_records(
        &self,
        cursor: &mut DeviceCursor,
        file: &NtfsFile<'_>,
    ) -> Result<(), FsError> {
        let mut list = None;
        for attribute in file.attributes_raw() {
            let attribute = attribute.map_err(crate_error)?;
            if attribute.ty().ok() == Some(NtfsAttributeType::AttributeList) {
                list = Some(attribute);
                break;
            }
        }
        let Some(list) = list else {
            return Ok(());
        };
        // Read here first: the crate panics on an entry cut short (it reads entry headers
        // with binrw, whose errors but plain I/O ones it takes for impossible).
        let len = list.value_length();
        if len > MAX_ATTRIBUTE_LIST {
            return Err(corrupt(format!("an attribute list of {len} bytes")));
        }
        let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
        let mut value = list.value(cursor).map_err(crate_error)?;
        value.read_exact(cursor, &mut bytes).map_err(crate_error)?;
        let own = file.file_record_number();
        for number in record::attribute_list_records(&bytes).map_err(corrupt)? {
            if number != own {
                self.checked_record(number)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{image, open, record_offset};
    use crate::guestfs::FsError;

    #[test]
    fn a_damaged_root_record_is_corrupt() {
        let mut bytes = image();
        let root = record_offset(&bytes, 5);
        bytes[root..root + 1024].fill(0);
        assert!(matches!(
            open(bytes),
            Err(FsError::Corrupt { fs: "ntfs", .. })
        ));
        // A free root record is damage too, not "no such file".
        let mut bytes = image();
        bytes[root + 0x16..root + 0x18].fill(0);
        let err = open(bytes).err();
        assert!(
            matches!(&err, Some(FsError::Corrupt { detail, .. }) if detail.contains("free")),
            "{err:?}"
        );
    }
}
