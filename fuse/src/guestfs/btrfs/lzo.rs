//! LZO1X decompression, and Btrfs's framing of it.
//!
//! No LZO crate fit: `lzokay-native` 0.1.0 subtracts match distances from the output length
//! unchecked and indexes with the result (a panic, or in release builds an out-of-bounds
//! index, on crafted input) and bounds no output; `rust-lzo` is a C translation full of
//! `unsafe`; `minilzo-rs` binds C. So this is a small decoder of the LZO1X format written
//! after the kernel's `lib/lzo/lzo1x_decompress_safe.c`: every input read and back-reference
//! is checked, and output stops at a caller's limit.
//!
//! Btrfs's framing (`fs/btrfs/lzo.c`): a 4-byte little-endian total length (counting itself),
//! then segments, each a 4-byte length and that many bytes of one LZO1X stream that
//! decompresses to at most a sector; a segment header never crosses a sector boundary (when
//! fewer than 4 bytes are left in a sector, they are padding).

/// Why LZO data could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum LzoError {
    /// The input ends before the stream does.
    #[error("LZO input cut short")]
    Truncated,
    /// A back-reference before the start of the output, or no end marker.
    #[error("invalid LZO stream")]
    Invalid,
    /// The output would be larger than allowed.
    #[error("LZO output larger than {0} bytes")]
    TooLarge(usize),
}

/// Input being read.
struct Input<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> Result<u8, LzoError> {
        let v = *self.b.get(self.at).ok_or(LzoError::Truncated)?;
        self.at += 1;
        Ok(v)
    }

    fn le16(&mut self) -> Result<usize, LzoError> {
        let lo = self.byte()?;
        let hi = self.byte()?;
        Ok(usize::from(u16::from_le_bytes([lo, hi])))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], LzoError> {
        let end = self.at.checked_add(n).ok_or(LzoError::Truncated)?;
        let s = self.b.get(self.at..end).ok_or(LzoError::Truncated)?;
        self.at = end;
        Ok(s)
    }

    /// A length continued in zero bytes (each worth 255) and a final byte, plus `base`.
    fn long_length(&mut self, base: usize) -> Result<usize, LzoError> {
        let mut zeros = 0usize;
        while self.b.get(self.at) == Some(&0) {
            self.at += 1;
            zeros += 1;
        }
        let last = usize::from(self.byte()?);
        zeros
            .checked_mul(255)
            .and_then(|z| z.checked_add(base)?.checked_add(last))
            .ok_or(LzoError::Invalid)
    }
}

/// Output being written, at most `max` bytes.
struct Output {
    b: Vec<u8>,
    max: usize,
}

impl Output {
    fn literals(&mut self, bytes: &[u8]) -> Result<(), LzoError> {
        if self.b.len().saturating_add(bytes.len()) > self.max {
            return Err(LzoError::TooLarge(self.max));
        }
        self.b.extend_from_slice(bytes);
        Ok(())
    }

    /// Copies `len` bytes from `distance` back (the copy may overlap what it writes).
    fn back_reference(&mut self, distance: usize, len: usize) -> Result<(), LzoError> {
        if distance == 0 || distance > self.b.len() {
            return Err(LzoError::Invalid);
        }
        if self.b.len().saturating_add(len) > self.max {
            return Err(LzoError::TooLarge(self.max));
        }
        for _ in 0..len {
            let at = self.b.len() - distance;
            let byte = *self.b.get(at).ok_or(LzoError::Invalid)?;
            self.b.push(byte);
        }
        Ok(())
    }
}

/// Decompresses one LZO1X stream of at most `max` bytes of output.
pub(super) fn decompress_lzo1x(input: &[u8], max: usize) -> Result<Vec<u8>, LzoError> {
    let mut ip = Input { b: input, at: 0 };
    let mut op = Output {
        b: Vec::with_capacity(max.min(64 * 1024)),
        max,
    };
    // `state`: literals the last instruction copied (0–3, or 4 after a literal run).
    let mut state: usize;
    let mut next: usize;
    let first = *input.first().ok_or(LzoError::Truncated)?;
    if first > 17 {
        ip.at = 1;
        let t = usize::from(first - 17);
        if t < 4 {
            op.literals(ip.take(t)?)?;
            state = t;
        } else {
            op.literals(ip.take(t)?)?;
            state = 4;
        }
    } else {
        state = 0;
    }
    loop {
        let t = usize::from(ip.byte()?);
        let (distance, len);
        if t < 16 {
            if state == 0 {
                let run = if t == 0 { ip.long_length(15)? } else { t } + 3;
                op.literals(ip.take(run)?)?;
                state = 4;
                continue;
            }
            next = t & 3;
            let h = usize::from(ip.byte()?);
            if state != 4 {
                distance = 1 + (t >> 2) + (h << 2);
                len = 2;
            } else {
                distance = 1 + 0x800 + (t >> 2) + (h << 2);
                len = 3;
            }
        } else if t >= 64 {
            next = t & 3;
            let h = usize::from(ip.byte()?);
            distance = 1 + ((t >> 2) & 7) + (h << 3);
            len = (t >> 5) + 1;
        } else if t >= 32 {
            let l = t & 31;
            len = if l == 0 { ip.long_length(31)? } else { l } + 2;
            let d = ip.le16()?;
            distance = 1 + (d >> 2);
            next = d & 3;
        } else {
            let l = t & 7;
            len = if l == 0 { ip.long_length(7)? } else { l } + 2;
            let d = ip.le16()?;
            let far = (t & 8) << 11;
            if far == 0 && d >> 2 == 0 {
                // The end marker (0x11 0x00 0x00).
                return if len == 3 {
                    Ok(op.b)
                } else {
                    Err(LzoError::Invalid)
                };
            }
            distance = far + (d >> 2) + 0x4000;
            next = d & 3;
        }
        op.back_reference(distance, len)?;
        state = next;
        op.literals(ip.take(next)?)?;
    }
}

/// Decompresses Btrfs's LZO framing in `data` (a compressed extent or inline extent) to at
/// most `max` bytes; each segment gives at most `sector` bytes.
pub(super) fn decompress_btrfs(
    data: &[u8],
    sector: usize,
    max: usize,
) -> Result<Vec<u8>, LzoError> {
    let word = |at: usize| -> Result<usize, LzoError> {
        let b = data.get(at..at.checked_add(4).ok_or(LzoError::Truncated)?);
        let b: [u8; 4] = b
            .and_then(|b| b.try_into().ok())
            .ok_or(LzoError::Truncated)?;
        usize::try_from(u32::from_le_bytes(b)).map_err(|_| LzoError::Invalid)
    };
    let total = word(0)?;
    if total < 4 || total > data.len() || sector == 0 {
        return Err(LzoError::Invalid);
    }
    let mut out = Vec::new();
    let mut at = 4usize;
    while at < total && out.len() < max {
        if sector - at % sector < 4 {
            at = at - at % sector + sector;
            continue;
        }
        let len = word(at)?;
        at += 4;
        let end = at
            .checked_add(len)
            .filter(|e| *e <= total)
            .ok_or(LzoError::Truncated)?;
        let segment = decompress_lzo1x(data.get(at..end).unwrap_or_default(), sector)?;
        if out.len().saturating_add(segment.len()) > max {
            return Err(LzoError::TooLarge(max));
        }
        out.extend_from_slice(&segment);
        at = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_matches_and_the_end_marker() {
        // 21 = 4 literals "abcd", then an M2 match (t=64+..) … built by hand: literal run of
        // 4 ("abcd"), a 3-byte back-reference of distance 4 (M2: t = 0b010_000_00 | D<<2,
        // H = 0 → distance 1 + D), then the end marker.
        let stream = [21u8, b'a', b'b', b'c', b'd', 0b0100_1100, 0, 0x11, 0, 0];
        assert_eq!(decompress_lzo1x(&stream, 100).expect("valid"), b"abcdabc");
        assert_eq!(
            decompress_lzo1x(&stream, 5),
            Err(LzoError::TooLarge(5)),
            "output bounded"
        );
        assert_eq!(
            decompress_lzo1x(&stream[..6], 100),
            Err(LzoError::Truncated)
        );
        // A back-reference before the start.
        let bad = [18u8, b'a', 0b0111_1100, 9, 0x11, 0, 0];
        assert_eq!(decompress_lzo1x(&bad, 100), Err(LzoError::Invalid));
        assert!(decompress_lzo1x(&[], 100).is_err());
        // Long runs of zero length bytes do not overflow.
        let mut zeros = vec![0u8; 10_000];
        zeros.insert(0, 0);
        assert!(decompress_lzo1x(&zeros, 100).is_err());
    }

    #[test]
    fn btrfs_framing() {
        let stream = [21u8, b'a', b'b', b'c', b'd', 0b0100_1100, 0, 0x11, 0, 0];
        let mut framed = Vec::new();
        framed.extend_from_slice(&(4 + 4 + 10u32).to_le_bytes());
        framed.extend_from_slice(&10u32.to_le_bytes());
        framed.extend_from_slice(&stream);
        assert_eq!(
            decompress_btrfs(&framed, 4096, 1000).expect("valid"),
            b"abcdabc"
        );
        framed[0] = 200;
        assert!(decompress_btrfs(&framed, 4096, 1000).is_err());
    }
}
