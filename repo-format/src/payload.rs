//! Compression framing of every plaintext before it is sealed
//! (spec/FORMAT.md §5 "Payload framing").
//!
//! One flag byte, then the bytes: `0` stored as is, `1` one zstd frame that
//! declares its content size. A chunk that zstd does not make smaller is
//! stored, so random data costs one byte, not a failed frame.
//!
//! Writers may choose freely between the two (§5), so the writer here does
//! not spend zstd's time on data it cannot shrink: a chunk whose sampled
//! bytes are spread almost evenly over all 256 values (Shannon entropy above
//! [`INCOMPRESSIBLE_BITS`] bits per byte: encrypted volumes, compressed files,
//! random data) is stored without trying. On the benchmark image (half text,
//! half random) that halved the CPU time zstd took. The price is a few
//! percent of ratio on the rare chunk that is high-entropy yet repetitive
//! (a random block repeated within the chunk), never correctness.

use std::cell::RefCell;

use crate::{Error, Result};

/// Flag: the payload follows uncompressed.
pub const STORED: u8 = 0;
/// Flag: a zstd frame with its content size follows.
pub const ZSTD: u8 = 1;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Plaintexts shorter than this are always offered to zstd (metadata, small blobs): the
/// smallest chunk size, whose sample is 8 KiB.
const SAMPLE_FROM: usize = 64 * 1024;
/// Of every [`SAMPLE_STRIDE`] bytes, the first [`SAMPLE_LEN`] are counted: an eighth of the
/// chunk, spread over all of it.
const SAMPLE_STRIDE: usize = 512;
/// See [`SAMPLE_STRIDE`].
const SAMPLE_LEN: usize = 64;
/// Entropy, in bits per byte, above which a sample is taken for incompressible. Uniformly random
/// bytes measure about 7.98 on an 8 KiB sample, 7.995 on 64 KiB; text 4–5.5, executables 5–6.5,
/// base64 6.
pub const INCOMPRESSIBLE_BITS: f64 = 7.9;

/// Whether `plain` looks incompressible by the entropy of a sample of its bytes.
fn looks_incompressible(plain: &[u8]) -> bool {
    if plain.len() < SAMPLE_FROM {
        return false;
    }
    let mut counts = [0u32; 256];
    let mut total = 0u32;
    for block in plain.chunks(SAMPLE_STRIDE) {
        for &b in block.get(..SAMPLE_LEN).unwrap_or(block) {
            if let Some(c) = counts.get_mut(usize::from(b)) {
                *c = c.saturating_add(1);
            }
        }
        total = total.saturating_add(u32::try_from(block.len().min(SAMPLE_LEN)).unwrap_or(0));
    }
    let n = f64::from(total.max(1));
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    entropy > INCOMPRESSIBLE_BITS
}

/// Frames `plain`, compressed at `level` if that makes it smaller (and the data does not look
/// incompressible, see the module docs).
pub fn encode(plain: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(plain, level, &mut out);
    out
}

/// Appends the framed `plain` to `out`: zstd writes straight into `out`'s spare room, so a
/// blob is compressed into its pack without a buffer of its own.
pub fn encode_into(plain: &[u8], level: i32, out: &mut Vec<u8>) {
    let start = out.len();
    if !looks_incompressible(plain) {
        out.push(ZSTD);
        let body = out.len();
        out.reserve(zstd::zstd_safe::compress_bound(plain.len()));
        let written = COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().map(|(l, _)| *l) != Some(level) {
                *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
            }
            let (_, comp) = slot.as_mut()?;
            comp.include_contentsize(true).ok()?;
            let mut cursor = std::io::Cursor::new(&mut *out);
            cursor.set_position(u64::try_from(body).ok()?);
            comp.compress_to_buffer(plain, &mut cursor).ok()
        });
        if written.is_some_and(|n| n < plain.len() && out.len() == body + n) {
            return;
        }
        out.truncate(start);
    }
    out.push(STORED);
    out.extend_from_slice(plain);
}

/// Unframes a payload of at most `max_len` plaintext bytes; `file` names
/// the source in errors. Never allocates more than `max_len`.
pub fn decode(framed: &[u8], max_len: usize, file: &str) -> Result<Vec<u8>> {
    let Some((&flag, body)) = framed.split_first() else {
        return Err(Error::corrupt(file, "empty payload"));
    };
    match flag {
        STORED if body.len() <= max_len => Ok(body.to_vec()),
        STORED => Err(Error::corrupt(file, "stored payload longer than allowed")),
        ZSTD => decompress(body, max_len, file),
        other => Err(Error::corrupt(
            file,
            format!("unknown compression flag {other}"),
        )),
    }
}

/// [`decode`] on a buffer the caller gives up: a stored payload becomes the plaintext in place
/// (one `memmove`, no allocation).
pub fn decode_owned(mut framed: Vec<u8>, max_len: usize, file: &str) -> Result<Vec<u8>> {
    match framed.first() {
        Some(&STORED) if framed.len() - 1 <= max_len => {
            framed.remove(0);
            Ok(framed)
        }
        _ => decode(&framed, max_len, file),
    }
}

fn decompress(body: &[u8], max_len: usize, file: &str) -> Result<Vec<u8>> {
    let declared = zstd::zstd_safe::get_frame_content_size(body)
        .ok()
        .flatten()
        .ok_or_else(|| Error::corrupt(file, "zstd frame without a content size"))?;
    let declared = usize::try_from(declared)
        .ok()
        .filter(|&n| n <= max_len)
        .ok_or_else(|| Error::corrupt(file, "zstd frame declares more bytes than allowed"))?;
    let out = DECOMPRESSOR
        .with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new()?);
            }
            match slot.as_mut() {
                Some(d) => d.decompress(body, declared),
                None => Err(std::io::Error::other("no zstd context")),
            }
        })
        .map_err(|e| Error::corrupt(file, format!("zstd: {e}")))?;
    if out.len() != declared {
        return Err(Error::corrupt(file, "zstd frame shorter than declared"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_and_random_round_trip() {
        let text = b"hello world ".repeat(1000);
        let framed = encode(&text, 3);
        assert_eq!(framed[0], ZSTD);
        assert!(framed.len() < text.len() / 10);
        assert_eq!(decode(&framed, text.len(), "t").expect("decode"), text);

        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13).to_le_bytes()[0])
            .collect();
        let framed = encode(&random, 3);
        assert_eq!(decode(&framed, random.len(), "t").expect("decode"), random);
    }

    #[test]
    fn random_chunks_are_stored_without_trying_and_text_is_compressed() {
        let random = crate::testing::noise(9, 512 << 10);
        assert!(looks_incompressible(&random));
        assert_eq!(encode(&random, 3)[0], STORED);
        let text: Vec<u8> = (0..60_000u32)
            .flat_map(|i| format!("line {i} of a log file\n").into_bytes())
            .collect();
        assert!(!looks_incompressible(&text));
        assert_eq!(encode(&text, 3)[0], ZSTD);
        let mut half = crate::testing::noise(3, 256 << 10);
        half.resize(512 << 10, 0);
        assert!(!looks_incompressible(&half), "half zeros is compressible");
        assert_eq!(encode(&half, 3)[0], ZSTD);
        assert!(
            !looks_incompressible(&random[..1000]),
            "small inputs are always tried"
        );
    }

    #[test]
    fn framing_into_a_buffer_appends_exactly_the_framed_payload() {
        let text = b"hello world ".repeat(1000);
        let random = crate::testing::noise(6, 70_000);
        for plain in [&text[..], &random[..], b"", b"x"] {
            let mut out = b"head".to_vec();
            encode_into(plain, 3, &mut out);
            assert_eq!(&out[..4], b"head");
            assert_eq!(decode(&out[4..], plain.len(), "t").expect("decode"), plain);
        }
    }

    #[test]
    fn owned_decoding_agrees_with_borrowed() {
        let text = b"hello world ".repeat(1000);
        let random = crate::testing::noise(5, 100_000);
        for plain in [&text[..], &random[..], b""] {
            let framed = encode(plain, 3);
            assert_eq!(
                decode_owned(framed.clone(), plain.len(), "t").expect("owned"),
                decode(&framed, plain.len(), "t").expect("borrowed")
            );
        }
        assert!(decode_owned(vec![STORED, 1, 2, 3], 2, "t").is_err());
        assert!(decode_owned(Vec::new(), 2, "t").is_err());
    }

    #[test]
    fn caps_and_garbage() {
        let text = vec![b'a'; 10_000];
        let framed = encode(&text, 3);
        assert!(decode(&framed, 9_999, "t").is_err());
        assert!(decode(&[], 10, "t").is_err());
        assert!(decode(&[7, 1, 2], 10, "t").is_err());
        assert!(decode(&[ZSTD, 1, 2, 3], 10, "t").is_err());
        assert!(decode(&[STORED, 1, 2, 3], 2, "t").is_err());
    }
}
