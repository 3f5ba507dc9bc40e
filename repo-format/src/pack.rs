//! Pack files: many sealed blobs and an encrypted header listing them
//! (spec/FORMAT.md §8 "Packs").
//!
//! ```text
//! 0     1   format version (1)
//! 1     1   file type 5 (pack)
//! 2     32  salt: the pack key is HKDF(master, salt, "vmstash/v1/pack")
//! 34    ..  blobs, each nonce ‖ ciphertext ‖ tag (§7), back to back
//! ..    h   sealed header: nonce ‖ AES-GCM(u32 count ‖ count × entry) ‖ tag,
//!           associated data "vmstash/v1/pack-header"
//! end-4 4   h, u32 LE
//! ```
//! Because the index (§10) repeats each pack's salt, a reader fetches one
//! blob with one range read and never needs the pack header; the header is
//! there so that `check` and index rebuilding can work from packs alone.

use crate::blob::{self, BlobType};
use crate::crypto::{purpose, random_salt, FileKey, MasterKey, SALT_LEN, SEAL_OVERHEAD};
use crate::entry::{BlobEntry, Reader, ENTRY_LEN};
use crate::id::Id;
use crate::sealed::{check_header, FileType};
use crate::version::FORMAT_VERSION_BYTE;
use crate::{payload, Error, Result};

/// Bytes before the first blob.
pub const PACK_HEADER_LEN: usize = 2 + SALT_LEN;
/// Associated data of the sealed pack header.
const HEADER_AAD: &[u8] = b"vmstash/v1/pack-header";
pub use crate::entry::MAX_PACK_LEN;

/// Builds one pack in memory.
pub struct PackWriter {
    key: FileKey,
    salt: [u8; SALT_LEN],
    buf: Vec<u8>,
    entries: Vec<BlobEntry>,
}

/// A finished pack, ready to be stored as `data/<id>`.
pub struct FinishedPack {
    /// SHA-256 of `bytes`: the pack's file name.
    pub id: Id,
    /// The salt, repeated in the index.
    pub salt: [u8; SALT_LEN],
    /// The whole file.
    pub bytes: Vec<u8>,
    /// The blobs in it.
    pub entries: Vec<BlobEntry>,
}

impl PackWriter {
    /// Starts a pack with a fresh salt, reserving `capacity` bytes.
    pub fn new(master: &MasterKey, capacity: usize) -> PackWriter {
        PackWriter::in_buffer(master, Vec::new(), capacity)
    }

    /// Starts a pack with a fresh salt in `buf` (emptied; a finished pack's buffer, reused so
    /// that a backup's packs do not keep asking the allocator for fresh megabytes), reserving
    /// `capacity` bytes.
    pub fn in_buffer(master: &MasterKey, mut buf: Vec<u8>, capacity: usize) -> PackWriter {
        let salt = random_salt();
        buf.clear();
        buf.reserve(capacity);
        buf.push(FORMAT_VERSION_BYTE);
        buf.push(FileType::Pack.byte());
        buf.extend_from_slice(&salt);
        PackWriter {
            key: master.subkey(&salt, purpose::PACK),
            salt,
            buf,
            entries: Vec::new(),
        }
    }

    /// Seals and appends a blob whose framed payload (§5) is `framed`.
    pub fn add(&mut self, ty: BlobType, id: Id, raw_length: u32, framed: &[u8]) -> Result<()> {
        self.append(ty, id, raw_length, |out| out.extend_from_slice(framed))
    }

    /// Seals what `write` appends as a blob's framed payload, and records its entry.
    fn append(
        &mut self,
        ty: BlobType,
        id: Id,
        raw_length: u32,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<()> {
        let too_big = || Error::InvalidParameter("pack exceeds 2 GiB".into());
        let start = self.buf.len();
        let offset = u32::try_from(start).map_err(|_| too_big())?;
        self.key
            .seal_with(&blob::aad(ty, &id), &mut self.buf, write);
        let length = u32::try_from(self.buf.len() - start).map_err(|_| too_big())?;
        if u64::from(offset) + u64::from(length) > MAX_PACK_LEN {
            self.buf.truncate(start);
            return Err(too_big());
        }
        self.entries.push(BlobEntry {
            ty,
            id,
            offset,
            length,
            raw_length,
        });
        Ok(())
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Blobs so far.
    pub fn blob_count(&self) -> usize {
        self.entries.len()
    }

    /// True before the first blob.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the header and trailer and names the pack.
    pub fn finish(mut self) -> FinishedPack {
        let sealed = self.key.seal(&encode_entries(&self.entries), HEADER_AAD);
        let h = u32::try_from(sealed.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&sealed);
        self.buf.extend_from_slice(&h.to_le_bytes());
        FinishedPack {
            id: Id::of(&self.buf),
            salt: self.salt,
            bytes: self.buf,
            entries: self.entries,
        }
    }
}

/// `u32 count ‖ entries`, as in the pack header.
fn encode_entries(entries: &[BlobEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * ENTRY_LEN);
    let n = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_le_bytes());
    for e in entries {
        e.encode_into(&mut out);
    }
    out
}

/// Decodes the plaintext of a pack header.
pub fn decode_header_plaintext(plain: &[u8], file: &str) -> Result<Vec<BlobEntry>> {
    let mut r = Reader::new(plain, file);
    let n = r.count(ENTRY_LEN)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(BlobEntry::decode(r.take(ENTRY_LEN)?, file)?);
    }
    r.finish()?;
    Ok(entries)
}

/// The salt and the blob list of a whole pack file, with every entry
/// checked to lie between the pack header and the sealed header.
pub fn read_header(
    master: &MasterKey,
    bytes: &[u8],
    file: &str,
) -> Result<([u8; SALT_LEN], Vec<BlobEntry>)> {
    let total = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    read_header_with(master, total, file, |offset, len| {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        bytes
            .get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::corrupt(file, "truncated"))
    })
}

/// Like [`read_header`] for a pack of `total` bytes read through `read_range(offset, len)`:
/// three small reads (the file's start, its trailer, the sealed header), not the whole pack.
pub fn read_header_with(
    master: &MasterKey,
    total: u64,
    file: &str,
    mut read_range: impl FnMut(u64, u32) -> Result<Vec<u8>>,
) -> Result<([u8; SALT_LEN], Vec<BlobEntry>)> {
    let head_len = u64::try_from(PACK_HEADER_LEN).unwrap_or(u64::MAX);
    let trailer = total
        .checked_sub(4)
        .filter(|&t| t >= head_len)
        .ok_or_else(|| Error::corrupt(file, "truncated: no trailer"))?;
    let head = read_range(0, u32::try_from(PACK_HEADER_LEN).unwrap_or(u32::MAX))?;
    check_header(&head, FileType::Pack, file)?;
    let salt = pack_salt(&head, file)?;
    let h = Reader::new(&read_range(trailer, 4)?, file).u32()?;
    let seal_overhead = u32::try_from(SEAL_OVERHEAD).unwrap_or(u32::MAX);
    let start = trailer
        .checked_sub(u64::from(h))
        .filter(|&s| s >= head_len && h >= seal_overhead)
        .ok_or_else(|| Error::corrupt(file, format!("header length {h} exceeds the pack")))?;
    let sealed = read_range(start, h)?;
    let key = master.subkey(&salt, purpose::PACK);
    let plain = key
        .open(&sealed, HEADER_AAD)
        .map_err(|_| Error::corrupt(file, "pack header fails authentication"))?;
    let entries = decode_header_plaintext(&plain, file)?;
    if let Some(e) = entries
        .iter()
        .find(|e| usize::try_from(e.offset).is_ok_and(|o| o < PACK_HEADER_LEN) || e.end() > start)
    {
        return Err(Error::corrupt(
            file,
            format!("blob {} lies outside the blob area", e.id.short()),
        ));
    }
    Ok((salt, entries))
}

fn pack_salt(bytes: &[u8], file: &str) -> Result<[u8; SALT_LEN]> {
    bytes
        .get(2..PACK_HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| Error::corrupt(file, "truncated: no salt"))
}

/// Opens one sealed blob read from a pack with `salt` and checks that it
/// is the blob `entry` names: GCM tag, length, then SHA-256.
pub fn open_blob(
    master: &MasterKey,
    salt: &[u8; SALT_LEN],
    entry: &BlobEntry,
    sealed: &[u8],
    file: &str,
) -> Result<Vec<u8>> {
    open_blob_owned(master, salt, entry, sealed.to_vec(), file)
}

/// [`open_blob`] on bytes the caller lets it overwrite (a slice of a larger read): decrypted in
/// place, then decompressed or copied out once.
pub fn open_blob_in_place(
    master: &MasterKey,
    salt: &[u8; SALT_LEN],
    entry: &BlobEntry,
    sealed: &mut [u8],
    file: &str,
) -> Result<Vec<u8>> {
    let framed = decrypt_in_place(master, salt, entry, sealed, file)?;
    let framed = sealed
        .get(framed)
        .ok_or_else(|| Error::corrupt(file, "a blob's payload lies outside it"))?;
    let max = usize::try_from(entry.raw_length).unwrap_or(usize::MAX);
    let plain = payload::decode(framed, max, file)?;
    blob::verify(&plain, &entry.id, entry.raw_length, file)?;
    Ok(plain)
}

/// Decrypts the sealed blob `entry` in place with the pack's subkey; the range of `sealed` that
/// now holds its framed payload.
fn decrypt_in_place(
    master: &MasterKey,
    salt: &[u8; SALT_LEN],
    entry: &BlobEntry,
    sealed: &mut [u8],
    file: &str,
) -> Result<std::ops::Range<usize>> {
    master
        .subkey(salt, purpose::PACK)
        .open_in_place(sealed, &blob::aad(entry.ty, &entry.id))
        .map_err(|_| {
            Error::corrupt(
                file,
                format!(
                    "blob {} at offset {} fails authentication",
                    entry.id.short(),
                    entry.offset
                ),
            )
        })
}

/// [`open_blob`] on a buffer the caller gives up: decrypted and unframed in place, so a stored
/// (uncompressed) blob costs no copy and no allocation.
pub fn open_blob_owned(
    master: &MasterKey,
    salt: &[u8; SALT_LEN],
    entry: &BlobEntry,
    mut sealed: Vec<u8>,
    file: &str,
) -> Result<Vec<u8>> {
    let framed = decrypt_in_place(master, salt, entry, &mut sealed, file)?;
    sealed.truncate(framed.end);
    sealed.drain(..framed.start);
    let max = usize::try_from(entry.raw_length).unwrap_or(usize::MAX);
    let plain = payload::decode_owned(sealed, max, file)?;
    blob::verify(&plain, &entry.id, entry.raw_length, file)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack_of(master: &MasterKey, blobs: &[&[u8]]) -> FinishedPack {
        let mut w = PackWriter::new(master, 1024);
        for b in blobs {
            let framed = payload::encode(b, 3);
            let len = u32::try_from(b.len()).expect("small");
            w.add(BlobType::Data, Id::of(b), len, &framed).expect("add");
        }
        w.finish()
    }

    #[test]
    fn write_read_every_blob() {
        let mk = MasterKey::generate();
        let blobs: [&[u8]; 3] = [b"one", &[7u8; 5000], b""];
        let p = pack_of(&mk, &blobs);
        assert_eq!(p.id, Id::of(&p.bytes));
        let (salt, entries) = read_header(&mk, &p.bytes, "p").expect("header");
        assert_eq!(salt, p.salt);
        assert_eq!(entries, p.entries);
        for (e, b) in entries.iter().zip(blobs) {
            let range =
                usize::try_from(e.offset).expect("fits")..usize::try_from(e.end()).expect("fits");
            let got = open_blob(&mk, &salt, e, &p.bytes[range], "p").expect("blob");
            assert_eq!(got, b);
        }
    }

    #[test]
    fn flipped_byte_and_truncation_are_errors() {
        let mk = MasterKey::generate();
        let p = pack_of(&mk, &[b"payload"]);
        let e = p.entries[0];
        let mut bad = p.bytes.clone();
        bad[usize::try_from(e.offset).expect("fits") + 13] ^= 1;
        let range =
            usize::try_from(e.offset).expect("fits")..usize::try_from(e.end()).expect("fits");
        let err = open_blob(&mk, &p.salt, &e, &bad[range], "p").expect_err("flipped");
        assert!(err.to_string().contains("authentication"), "{err}");
        for cut in [0, 1, 2, 30, p.bytes.len() - 1] {
            assert!(read_header(&mk, &p.bytes[..cut], "p").is_err(), "cut {cut}");
        }
        let mut huge_h = p.bytes.clone();
        let n = huge_h.len();
        huge_h[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_header(&mk, &huge_h, "p").is_err());
    }

    #[test]
    fn wrong_blob_in_right_place_is_detected() {
        let mk = MasterKey::generate();
        let p = pack_of(&mk, &[b"a", b"b"]);
        let mut lie = p.entries[0];
        lie.id = p.entries[1].id;
        let range =
            usize::try_from(lie.offset).expect("fits")..usize::try_from(lie.end()).expect("fits");
        assert!(open_blob(&mk, &p.salt, &lie, &p.bytes[range], "p").is_err());
    }
}
