//! Fields at byte offsets of untrusted header bytes: byte ranges, NUL-padded strings, and
//! (both LUKS versions store their binary headers big-endian) the crate's big-endian integer
//! readers under the names the LUKS code uses. `None` when the buffer is too short, never a
//! panic.

/// The `len` bytes at `at`.
pub(crate) fn field(b: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    b.get(at..at.checked_add(len)?)
}

pub(crate) use crate::be::{u16_at as be_u16, u32_at as be_u32, u64_at as be_u64};

/// The NUL-padded text field of `len` bytes at `at`, up to its first NUL; non-UTF-8 bytes
/// become U+FFFD (the field is shown, never used as a name).
pub(crate) fn text(b: &[u8], at: usize, len: usize) -> Option<String> {
    let raw = field(b, at, len)?;
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    Some(String::from_utf8_lossy(raw.get(..end)?).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffers_give_none() {
        let b = [0u8, 1, 2, 3, 4, 5, 6, 7, b'a', b'b', 0, b'c'];
        assert_eq!(be_u16(&b, 0), Some(1));
        assert_eq!(be_u32(&b, 0), Some(0x0001_0203));
        assert_eq!(be_u64(&b, 0), Some(0x0001_0203_0405_0607));
        assert_eq!(be_u64(&b, 5), None);
        assert_eq!(be_u16(&b, usize::MAX), None);
        assert_eq!(text(&b, 8, 4).as_deref(), Some("ab"));
        assert_eq!(text(&b, 8, 5), None);
    }
}
