//! The anti-forensic information splitter (LUKS1 on-disk format specification, section 2.4;
//! the same in LUKS2 as `af` type `luks1`): a key slot stores the key spread over `stripes`
//! blocks so that destroying any part of them destroys the key. Merging XORs the stripes
//! together with a hash-based diffusion between them.

use zeroize::Zeroizing;

use super::error::LuksError;
use super::hash::Hash;

/// The most stripes a key slot may have: cryptsetup always writes 4000; a few more are
/// accepted, anything larger is damage (and would make the key material huge).
pub const MAX_STRIPES: u32 = 65_536;

/// The number of bytes of key material `stripes` stripes of a `key_len`-byte key take.
pub fn material_len(key_len: usize, stripes: u32) -> Result<usize, LuksError> {
    if stripes == 0 || stripes > MAX_STRIPES {
        return Err(LuksError::corrupt(format!(
            "{stripes} anti-forensic stripes (1 to {MAX_STRIPES} expected)"
        )));
    }
    usize::try_from(stripes)
        .ok()
        .and_then(|s| s.checked_mul(key_len))
        .ok_or_else(|| LuksError::corrupt("key material too large"))
}

/// The key that `material` (`stripes` blocks of `key_len` bytes, decrypted) holds.
pub fn merge(
    material: &[u8],
    key_len: usize,
    stripes: u32,
    hash: Hash,
) -> Result<Zeroizing<Vec<u8>>, LuksError> {
    let len = material_len(key_len, stripes)?;
    let material = material
        .get(..len)
        .ok_or_else(|| LuksError::corrupt("key material shorter than its stripes"))?;
    let mut d = Zeroizing::new(vec![0u8; key_len]);
    if key_len == 0 {
        return Ok(d);
    }
    let mut blocks = material.chunks_exact(key_len);
    let last = blocks.next_back().unwrap_or_default();
    for block in blocks {
        xor_into(&mut d, block);
        diffuse(&mut d, hash);
    }
    xor_into(&mut d, last);
    Ok(d)
}

/// `d ^= s`.
fn xor_into(d: &mut [u8], s: &[u8]) {
    for (a, b) in d.iter_mut().zip(s) {
        *a ^= b;
    }
}

/// The splitter's diffusion: each hash-sized piece `j` of `d` becomes the hash of `j`
/// (big-endian `u32`) followed by the piece, the last piece's hash cut to its length.
fn diffuse(d: &mut [u8], hash: Hash) {
    let mut out = Zeroizing::new([0u8; 64]);
    for (j, piece) in d.chunks_mut(hash.output_len()).enumerate() {
        let iv = u32::try_from(j).unwrap_or(u32::MAX).to_be_bytes();
        let n = piece.len();
        if let Some(o) = out.get_mut(..n) {
            hash.digest_into(&[&iv, piece], o);
            piece.copy_from_slice(o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The splitter's forward direction, for the round trip: random stripes but the last,
    /// which is chosen so that merging gives `key`.
    fn split(key: &[u8], stripes: u32, hash: Hash) -> Vec<u8> {
        let n = usize::try_from(stripes).expect("fits");
        let mut material: Vec<u8> = (0..key.len() * n)
            .map(|i| u8::try_from(i * 31 % 251).expect("byte"))
            .collect();
        let mut d = vec![0u8; key.len()];
        for block in material.chunks(key.len()).take(n - 1) {
            xor_into(&mut d, block);
            diffuse(&mut d, hash);
        }
        let last = &mut material[key.len() * (n - 1)..];
        for ((l, k), dd) in last.iter_mut().zip(key).zip(&d) {
            *l = k ^ dd;
        }
        material
    }

    #[test]
    fn merge_undoes_split_and_bounds_are_checked() {
        let key: Vec<u8> = (0..64u8).collect();
        for hash in [Hash::Sha1, Hash::Sha256, Hash::Sha512] {
            let material = split(&key, 4000, hash);
            let merged = merge(&material, 64, 4000, hash).expect("merge");
            assert_eq!(merged.as_slice(), key.as_slice(), "{hash:?}");
            assert!(merge(&material[..100], 64, 4000, hash).is_err(), "short");
        }
        assert!(material_len(64, 0).is_err());
        assert!(material_len(64, MAX_STRIPES + 1).is_err());
        assert_eq!(material_len(32, 4000).ok(), Some(128_000));
    }
}
