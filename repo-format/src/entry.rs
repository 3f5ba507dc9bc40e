//! The 45-byte blob entry shared by pack headers and index files
//! (spec/FORMAT.md §8.2 "Blob entry").
//!
//! ```text
//! 0   1   blob type (0 data, 1 map)
//! 1   32  blob id
//! 33  4   offset of the sealed blob in its pack, u32 LE
//! 37  4   sealed length (nonce ‖ ciphertext ‖ tag), u32 LE
//! 41  4   plaintext length, u32 LE
//! ```

use crate::blob::{BlobType, MAX_BLOB_LEN};
use crate::crypto::SEAL_OVERHEAD;
use crate::id::{Id, ID_LEN};
use crate::{Error, Result};

/// Largest pack a reader accepts: offsets in entries are u32 (spec §8).
pub const MAX_PACK_LEN: u64 = 1 << 31;

/// Encoded size of one entry.
pub const ENTRY_LEN: usize = 1 + ID_LEN + 4 + 4 + 4;

/// Where a blob sits in its pack, and how large it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobEntry {
    /// Data or map.
    pub ty: BlobType,
    /// SHA-256 of the plaintext.
    pub id: Id,
    /// Byte offset of the sealed blob in the pack file.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

impl BlobEntry {
    /// Appends the 45 encoded bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.ty.byte());
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.raw_length.to_le_bytes());
    }

    /// Decodes one entry from exactly [`ENTRY_LEN`] bytes and checks that
    /// its sizes are possible.
    pub fn decode(bytes: &[u8], file: &str) -> Result<BlobEntry> {
        let mut r = Reader::new(bytes, file);
        let ty = BlobType::from_byte(r.u8()?, file)?;
        let id = r.id()?;
        let entry = BlobEntry {
            ty,
            id,
            offset: r.u32()?,
            length: r.u32()?,
            raw_length: r.u32()?,
        };
        entry.validate(file)?;
        Ok(entry)
    }

    fn validate(&self, file: &str) -> Result<()> {
        let max_sealed = MAX_BLOB_LEN + 1 + u32::try_from(SEAL_OVERHEAD).unwrap_or(u32::MAX);
        let ok = self.raw_length <= MAX_BLOB_LEN
            && self.length > u32::try_from(SEAL_OVERHEAD).unwrap_or(u32::MAX)
            && self.length <= max_sealed
            && self.end() <= MAX_PACK_LEN;
        if ok {
            Ok(())
        } else {
            Err(Error::corrupt(
                file,
                format!("impossible blob entry for {}: {self:?}", self.id.short()),
            ))
        }
    }

    /// One past the last byte of the sealed blob.
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.length)
    }
}

/// A bounds-checked little-endian cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], file: &'a str) -> Self {
        Reader {
            bytes,
            pos: 0,
            file,
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(Error::corrupt(
                self.file,
                format!("truncated: needs {n} bytes at offset {}", self.pos),
            ));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn id(&mut self) -> Result<Id> {
        let b = self.take(ID_LEN)?;
        Id::from_slice(b).ok_or_else(|| Error::corrupt(self.file, "short id"))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Reads a u32 count of items of `item_len` bytes each and refuses it
    /// when the remaining bytes cannot hold that many: the cap that keeps a
    /// hostile count from driving an allocation.
    pub(crate) fn count(&mut self, item_len: usize) -> Result<usize> {
        let n = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        if n.checked_mul(item_len)
            .is_none_or(|need| need > self.remaining())
        {
            return Err(Error::corrupt(
                self.file,
                format!("count {n} at offset {} exceeds the file", self.pos),
            ));
        }
        Ok(n)
    }

    pub(crate) fn finish(&self) -> Result<()> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(Error::corrupt(
                self.file,
                format!("{} trailing bytes", self.remaining()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let e = BlobEntry {
            ty: BlobType::Map,
            id: Id::of(b"a"),
            offset: 34,
            length: 100,
            raw_length: 71,
        };
        let mut buf = Vec::new();
        e.encode_into(&mut buf);
        assert_eq!(buf.len(), ENTRY_LEN);
        assert_eq!(BlobEntry::decode(&buf, "f").expect("decode"), e);
        assert!(BlobEntry::decode(&buf[..44], "f").is_err());
        let mut bad = buf.clone();
        bad[0] = 9;
        assert!(BlobEntry::decode(&bad, "f").is_err());
        let mut huge = e;
        huge.raw_length = MAX_BLOB_LEN + 1;
        let mut b2 = Vec::new();
        huge.encode_into(&mut b2);
        assert!(BlobEntry::decode(&b2, "f").is_err());
    }
}
