//! Compression framing of every plaintext before it is sealed
//! (spec/FORMAT.md §5 "Payload framing").
//!
//! One flag byte, then the bytes: `0` stored as is, `1` one zstd frame that
//! declares its content size. A chunk that zstd does not make smaller is
//! stored, so random data costs one byte, not a failed frame.

use std::cell::RefCell;

use crate::{Error, Result};

/// Flag: the payload follows uncompressed.
pub const STORED: u8 = 0;
/// Flag: a zstd frame with its content size follows.
pub const ZSTD: u8 = 1;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
}

/// Frames `plain`, compressed at `level` if that makes it smaller.
pub fn encode(plain: &[u8], level: i32) -> Vec<u8> {
    let compressed = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        let (_, comp) = slot.as_mut()?;
        comp.include_contentsize(true).ok()?;
        comp.compress(plain).ok()
    });
    match compressed {
        Some(c) if c.len() < plain.len() => {
            let mut out = Vec::with_capacity(c.len() + 1);
            out.push(ZSTD);
            out.extend_from_slice(&c);
            out
        }
        _ => {
            let mut out = Vec::with_capacity(plain.len() + 1);
            out.push(STORED);
            out.extend_from_slice(plain);
            out
        }
    }
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

fn decompress(body: &[u8], max_len: usize, file: &str) -> Result<Vec<u8>> {
    let declared = zstd::zstd_safe::get_frame_content_size(body)
        .ok()
        .flatten()
        .ok_or_else(|| Error::corrupt(file, "zstd frame without a content size"))?;
    let declared = usize::try_from(declared)
        .ok()
        .filter(|&n| n <= max_len)
        .ok_or_else(|| Error::corrupt(file, "zstd frame declares more bytes than allowed"))?;
    let out = zstd::bulk::decompress(body, declared)
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
