//! Little-endian integers at byte offsets of untrusted buffers (see [`crate::ints`]).

crate::ints::int_readers!(from_le_bytes);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffers_and_huge_offsets_give_none() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(u16_at(&b, 0), Some(0x0201));
        assert_eq!(u32_at(&b, 4), Some(0x0807_0605));
        assert_eq!(u64_at(&b, 0), Some(0x0807_0605_0403_0201));
        assert_eq!(u32_at(&b, 5), None);
        assert_eq!(u16_at(&b, usize::MAX), None);
    }
}
