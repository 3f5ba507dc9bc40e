//! Pack headers and blobs, three ways:
//!
//! - raw: the input as a header plaintext (`decode_header_plaintext`, which
//!   must be canonical) and as a whole pack (`read_header` under a fixed
//!   key, which refuses it unless it is a pack sealed under that key, and
//!   then lists only blobs inside the pack);
//! - forged: the input (after a mode byte) as a header plaintext that this
//!   target seals properly into a pack, so that `read_header`'s checks after
//!   authentication are fuzzed: it accepts exactly the headers that decode
//!   and whose every blob lies in the blob area;
//! - tampered: a real pack built with `PackWriter` from blobs the input
//!   chooses (some under a false id or length), with one byte changed.
//!   `read_header` and `open_blob` never return anything but the original
//!   header and blobs, never a blob whose SHA-256 differs from its id, and
//!   refuse exactly what the change touched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstash_fuzz::{assert_rejected, master, Choices};
use vmstash_repo::blob::BlobType;
use vmstash_repo::crypto::{purpose, MasterKey, SALT_LEN};
use vmstash_repo::entry::BlobEntry;
use vmstash_repo::id::Id;
use vmstash_repo::pack::{self, PackWriter, PACK_HEADER_LEN};
use vmstash_repo::payload;

/// Associated data of a sealed pack header (spec/FORMAT.md §8).
const HEADER_AAD: &[u8] = b"vmstash/v1/pack-header";
/// The salt of forged packs.
const SALT: [u8; SALT_LEN] = [9; SALT_LEN];
/// Most blobs in a tampered pack.
const MAX_BLOBS: usize = 8;

fuzz_target!(|data: &[u8]| {
    let mk = master();
    raw(&mk, data);
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 0 => forged(&mk, rest),
        Some((_, rest)) => tampered(&mk, Choices::new(rest)),
        None => {}
    }
});

fn raw(mk: &MasterKey, data: &[u8]) {
    match pack::decode_header_plaintext(data, "p") {
        Ok(entries) => assert_eq!(encode_header(&entries), data, "not canonical"),
        Err(e) => assert_rejected(&e),
    }
    match pack::read_header(mk, data, "p") {
        // Only a pack sealed under `mk` (a seed) gets here.
        Ok((_, entries)) => {
            let blob_area = PACK_HEADER_LEN..data.len().saturating_sub(4);
            for e in &entries {
                let r = range(e);
                assert!(
                    blob_area.start <= r.start && r.end <= blob_area.end,
                    "{e:?} outside"
                );
            }
        }
        Err(e) => assert_rejected(&e),
    }
}

/// `u32 count ‖ entries`: the header plaintext, as the writer makes it.
fn encode_header(entries: &[BlobEntry]) -> Vec<u8> {
    let n = u32::try_from(entries.len()).expect("count fits u32");
    let mut out = n.to_le_bytes().to_vec();
    for e in entries {
        e.encode_into(&mut out);
    }
    out
}

/// Seals `data[2..]` as the header of a pack with `data[..2]` bytes of
/// (zero) blob area.
fn forged(mk: &MasterKey, data: &[u8]) {
    let mut c = Choices::new(data);
    let area = usize::from(c.u16() % 4096);
    let plain = c.rest();
    let mut bytes = vec![1, 5];
    bytes.extend_from_slice(&SALT);
    bytes.resize(PACK_HEADER_LEN + area, 0);
    let sealed = mk.subkey(&SALT, purpose::PACK).seal(plain, HEADER_AAD);
    bytes.extend_from_slice(&sealed);
    let h = u32::try_from(sealed.len()).expect("small header");
    bytes.extend_from_slice(&h.to_le_bytes());

    let limit = to_u64(PACK_HEADER_LEN + area);
    let expected = pack::decode_header_plaintext(plain, "p")
        .ok()
        .filter(|entries| {
            entries
                .iter()
                .all(|e| e.offset >= to_u32(PACK_HEADER_LEN) && e.end() <= limit)
        });
    match (pack::read_header(mk, &bytes, "p"), expected) {
        (Ok((salt, entries)), Some(expected)) => {
            assert_eq!(salt, SALT);
            assert_eq!(entries, expected);
            for e in &entries {
                let sealed = bytes
                    .get(range(e))
                    .expect("an accepted entry lies in the pack");
                let err = pack::open_blob(mk, &salt, e, sealed, "p").expect_err("zero blob");
                assert_rejected(&err);
            }
        }
        (Err(e), None) => assert_rejected(&e),
        (Ok((_, entries)), None) => panic!("accepted a bad header: {entries:?}"),
        (Err(e), Some(entries)) => panic!("refused a good header ({e}): {entries:?}"),
    }
}

/// A blob as the tampered half adds it to a pack.
struct Blob {
    ty: BlobType,
    plain: Vec<u8>,
    claimed_id: Id,
    claimed_len: u32,
}

impl Blob {
    /// Reads one blob's choices: its type, its bytes (a run of up to 255
    /// bytes, repeated up to 16 times so that zstd has something to do),
    /// and whether its id or length is a lie.
    fn choose(c: &mut Choices<'_>) -> Blob {
        let spec = c.u8();
        let len = usize::from(c.u8());
        let plain = c.take(len).repeat(usize::from(spec >> 4) + 1);
        let claimed_id = if spec & 2 == 0 {
            Id::of(&plain)
        } else {
            Id::of(&[spec])
        };
        let claimed_len = to_u32(plain.len()) + u32::from(spec & 4 != 0);
        Blob {
            ty: if spec & 1 == 0 {
                BlobType::Data
            } else {
                BlobType::Map
            },
            plain,
            claimed_id,
            claimed_len,
        }
    }

    fn honest(&self) -> bool {
        self.claimed_id == Id::of(&self.plain) && to_usize(self.claimed_len) == self.plain.len()
    }
}

fn tampered(mk: &MasterKey, mut c: Choices<'_>) {
    let at = usize::from(c.u16());
    let xor = c.u8();
    let level = i32::from(c.u8() % 4);
    let mut blobs = Vec::new();
    while !c.is_empty() && blobs.len() < MAX_BLOBS {
        blobs.push(Blob::choose(&mut c));
    }
    let mut w = PackWriter::new(mk, 1024);
    for b in &blobs {
        let framed = payload::encode(&b.plain, level);
        w.add(b.ty, b.claimed_id, b.claimed_len, &framed)
            .expect("a small pack takes every blob");
    }
    let pack = w.finish();
    let mut bytes = pack.bytes.clone();
    let at = at % bytes.len();
    bytes[at] ^= xor;
    let changed = |r: &std::ops::Range<usize>| xor != 0 && r.contains(&at);

    let blob_area = PACK_HEADER_LEN
        ..pack
            .entries
            .last()
            .map_or(PACK_HEADER_LEN, |e| range(e).end);
    match pack::read_header(mk, &bytes, "p") {
        Ok((salt, entries)) => {
            assert_eq!(salt, pack.salt);
            assert_eq!(entries, pack.entries);
            assert!(
                xor == 0 || blob_area.contains(&at),
                "a change at {at} outside the blob area went unnoticed"
            );
        }
        Err(e) => {
            assert!(xor != 0, "an intact pack is refused: {e}");
            assert_rejected(&e);
        }
    }

    // Each blob as a reader fetches it: located by the index, one range read.
    for (b, e) in blobs.iter().zip(&pack.entries) {
        let r = range(e);
        match pack::open_blob(mk, &pack.salt, e, &bytes[r.clone()], "p") {
            Ok(plain) => {
                assert_eq!(Id::of(&plain), e.id, "a blob that does not hash to its id");
                assert_eq!(to_u32(plain.len()), e.raw_length);
                assert_eq!(plain, b.plain);
                assert!(!changed(&r), "a changed blob opened");
            }
            Err(err) => {
                assert_rejected(&err);
                assert!(
                    changed(&r) || !b.honest(),
                    "an intact blob is refused: {err}"
                );
            }
        }
    }
}

fn range(e: &BlobEntry) -> std::ops::Range<usize> {
    to_usize(e.offset)..usize::try_from(e.end()).expect("fits usize")
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).expect("fits u32")
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).expect("fits u64")
}

fn to_usize(n: u32) -> usize {
    usize::try_from(n).expect("fits usize")
}
