//! The ciphers of LUKS volumes and key slots: AES in XTS mode with the `plain64` (or 32-bit
//! `plain`) IV, dm-crypt's default since cryptsetup 1.6, and AES in CBC mode with the
//! `essiv:sha256` IV, the default of LUKS1 before it. The IV of a sector comes from its
//! number counted in 512-byte units from the start of the segment or key slot area, whatever
//! the sector size (cryptsetup sets dm-crypt's `iv_large_sectors` only for plain mode, never
//! for LUKS: checked on a LUKS2 volume with 4096-byte sectors that `cryptsetup reencrypt
//! --encrypt` wrote), plus the segment's `iv_tweak`:
//!
//! - `plain64`: that number, little-endian, as the XTS tweak (`plain`: its low 32 bits);
//! - `essiv:sha256`: that number, little-endian, encrypted with AES-256 under the SHA-256 of
//!   the volume key, as the CBC IV.
//!
//! Other ciphers, modes and IVs are [`LuksError::Unsupported`], the cipher named.

use aes::cipher::{BlockCipher, BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256, Block};
use sha2::{Digest as _, Sha256};
use xts_mode::Xts128;
use zeroize::Zeroizing;

use super::error::LuksError;

/// The unit dm-crypt counts IVs in, and the sector size of key slot areas.
pub const IV_UNIT: usize = 512;
/// AES's block length.
const BLOCK: usize = 16;

/// A cipher specification LUKS names: `aes-xts-plain64` in LUKS2, cipher name `aes` and
/// mode `xts-plain64` in LUKS1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherSpec {
    /// `aes-xts-plain64`.
    XtsPlain64,
    /// `aes-xts-plain`: the IV's low 32 bits only (old LUKS1 volumes).
    XtsPlain,
    /// `aes-cbc-essiv:sha256`.
    CbcEssivSha256,
}

impl CipherSpec {
    /// The cipher of `cipher-mode` (`aes-xts-plain64`), or why vmstash cannot decrypt it.
    pub fn from_name(name: &str) -> Result<CipherSpec, LuksError> {
        match name.to_ascii_lowercase().as_str() {
            "aes-xts-plain64" => Ok(CipherSpec::XtsPlain64),
            "aes-xts-plain" => Ok(CipherSpec::XtsPlain),
            "aes-cbc-essiv:sha256" => Ok(CipherSpec::CbcEssivSha256),
            _ => Err(LuksError::unsupported(format!("cipher {name}"))),
        }
    }
}

/// AES with one of its three key sizes; boxed, as the key schedules differ in size.
enum Aes {
    Aes128(Box<Aes128>),
    Aes192(Box<Aes192>),
    Aes256(Box<Aes256>),
}

impl Aes {
    /// AES keyed with `key` (16, 24 or 32 bytes).
    fn new(key: &[u8]) -> Option<Aes> {
        match key.len() {
            16 => Aes128::new_from_slice(key)
                .ok()
                .map(|c| Aes::Aes128(Box::new(c))),
            24 => Aes192::new_from_slice(key)
                .ok()
                .map(|c| Aes::Aes192(Box::new(c))),
            32 => Aes256::new_from_slice(key)
                .ok()
                .map(|c| Aes::Aes256(Box::new(c))),
            _ => None,
        }
    }

    /// CBC decryption of `data` (whole blocks) in place, from `iv`.
    fn cbc_decrypt(&self, data: &mut [u8], iv: [u8; BLOCK]) {
        let mut prev = iv;
        for chunk in data.chunks_exact_mut(BLOCK) {
            let mut block = Block::default();
            block.copy_from_slice(chunk);
            let cipher_text = block;
            match self {
                Aes::Aes128(c) => c.decrypt_block(&mut block),
                Aes::Aes192(c) => c.decrypt_block(&mut block),
                Aes::Aes256(c) => c.decrypt_block(&mut block),
            }
            for ((out, b), p) in chunk.iter_mut().zip(block.iter()).zip(prev) {
                *out = b ^ p;
            }
            prev.copy_from_slice(&cipher_text);
        }
    }
}

/// AES-XTS with one of the three AES key sizes (the XTS key is two AES keys); boxed, as the
/// key schedules differ in size.
enum Xts {
    Aes128(Box<Xts128<Aes128>>),
    Aes192(Box<Xts128<Aes192>>),
    Aes256(Box<Xts128<Aes256>>),
}

impl Xts {
    /// AES-XTS keyed with `key` (32, 48 or 64 bytes: two AES keys).
    fn new(key: &[u8]) -> Option<Xts> {
        fn halves<C: KeyInit + BlockCipher + BlockEncrypt + BlockDecrypt>(
            key: &[u8],
        ) -> Option<Box<Xts128<C>>> {
            let (a, b) = key.split_at(key.len() / 2);
            Some(Box::new(Xts128::new(
                C::new_from_slice(a).ok()?,
                C::new_from_slice(b).ok()?,
            )))
        }
        match key.len() {
            32 => halves(key).map(Xts::Aes128),
            48 => halves(key).map(Xts::Aes192),
            64 => halves(key).map(Xts::Aes256),
            _ => None,
        }
    }
}

/// What decrypts the sectors.
enum Mode {
    /// XTS; `truncate` for the 32-bit `plain` IV.
    Xts { xts: Xts, truncate: bool },
    /// CBC, with the ESSIV cipher keyed by the SHA-256 of the volume key.
    CbcEssiv { aes: Aes, essiv: Box<Aes256> },
}

/// A cipher keyed for decrypting sectors. Its AES key schedules are zeroized when it is
/// dropped (the `aes` crate's `zeroize` feature); it has no `Debug` and no `Clone`.
pub struct SectorCipher {
    mode: Mode,
}

impl SectorCipher {
    /// `spec` keyed with `key`: for XTS 32, 48 or 64 bytes (AES-128, -192 or -256 halves),
    /// for CBC 16, 24 or 32 bytes.
    pub fn new(spec: CipherSpec, key: &[u8]) -> Result<SectorCipher, LuksError> {
        let bad_key = |mode: &str| {
            LuksError::unsupported(format!("aes-{mode} with a {}-bit key", key.len() * 8))
        };
        let mode = match spec {
            CipherSpec::XtsPlain64 | CipherSpec::XtsPlain => Mode::Xts {
                xts: Xts::new(key).ok_or_else(|| bad_key("xts"))?,
                truncate: spec == CipherSpec::XtsPlain,
            },
            CipherSpec::CbcEssivSha256 => {
                let salt = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(key)));
                Mode::CbcEssiv {
                    aes: Aes::new(key).ok_or_else(|| bad_key("cbc"))?,
                    essiv: Box::new(
                        Aes256::new_from_slice(salt.as_slice()).map_err(|_| bad_key("cbc"))?,
                    ),
                }
            }
        };
        Ok(SectorCipher { mode })
    }

    /// Decrypts `sector` in place; `iv` is its number in 512-byte units (plus any tweak).
    /// `sector` is a whole sector: a non-empty multiple of 16 bytes (callers pass 512 to
    /// 4096), so XTS never needs ciphertext stealing.
    pub fn decrypt_sector(&self, sector: &mut [u8], iv: u64) {
        if sector.len() < BLOCK {
            return;
        }
        match &self.mode {
            Mode::Xts { xts, truncate } => {
                let iv = if *truncate {
                    iv & u64::from(u32::MAX)
                } else {
                    iv
                };
                let tweak = u128::from(iv).to_le_bytes();
                match xts {
                    Xts::Aes128(x) => x.decrypt_sector(sector, tweak),
                    Xts::Aes192(x) => x.decrypt_sector(sector, tweak),
                    Xts::Aes256(x) => x.decrypt_sector(sector, tweak),
                }
            }
            Mode::CbcEssiv { aes, essiv } => {
                let mut block = Block::from(u128::from(iv).to_le_bytes());
                essiv.encrypt_block(&mut block);
                aes.cbc_decrypt(sector, block.into());
            }
        }
    }

    /// Decrypts a key slot area in place: 512-byte sectors numbered from 0. A short last
    /// piece (the area is always a whole number of sectors on disk) is left as it is.
    pub fn decrypt_area(&self, area: &mut [u8]) {
        for (n, sector) in area.chunks_exact_mut(IV_UNIT).enumerate() {
            self.decrypt_sector(sector, u64::try_from(n).unwrap_or(u64::MAX));
        }
    }
}

/// A volume's key: zeroized on drop, no `Debug`, no `Clone`.
pub struct VolumeKey(pub(crate) Zeroizing<Vec<u8>>);

impl VolumeKey {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty (never, for a key that opened a slot).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xts_matches_ieee_1619_vector_4() {
        // IEEE P1619/D16 XTS-AES-128 vector 4: key1 27182818..., key2 31415926..., data unit
        // 0, 512 bytes of 00..ff twice; the first 16 bytes of ciphertext.
        let key1 = hex("2718281828459045235360287471352631415926535897932384626433832795");
        let mut sector: Vec<u8> = (0..512)
            .map(|i| u8::try_from(i % 256).expect("byte"))
            .collect();
        let plain = sector.clone();
        // Encrypt with the crate directly, decrypt through SectorCipher.
        let (a, b) = key1.split_at(16);
        let xts = Xts128::new(
            Aes128::new_from_slice(a).expect("key"),
            Aes128::new_from_slice(b).expect("key"),
        );
        xts.encrypt_sector(&mut sector, [0u8; 16]);
        assert_eq!(&sector[..16], &hex("27a7479befa1d476489f308cd4cfa6e2")[..]);
        let c = SectorCipher::new(
            CipherSpec::from_name("aes-xts-plain64").expect("spec"),
            &key1,
        )
        .expect("cipher");
        c.decrypt_sector(&mut sector, 0);
        assert_eq!(sector, plain);
    }

    #[test]
    fn other_ciphers_and_key_sizes_are_named() {
        assert!(matches!(
            CipherSpec::from_name("twofish-cbc-essiv:sha256"),
            Err(LuksError::Unsupported(m)) if m.contains("twofish-cbc-essiv:sha256")
        ));
        let spec = CipherSpec::from_name("aes-xts-plain64").expect("spec");
        assert!(matches!(
            SectorCipher::new(spec, &[0u8; 16]),
            Err(LuksError::Unsupported(m)) if m.contains("128-bit")
        ));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }
}
