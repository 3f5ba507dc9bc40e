//! The ciphers of LUKS volumes and key slots: AES in XTS mode with the `plain64` (or 32-bit
//! `plain`) IV, dm-crypt's default since cryptsetup 1.6. The IV of a sector is its number
//! counted in 512-byte units from the start of the segment or key slot area, whatever the
//! sector size (cryptsetup sets dm-crypt's `iv_large_sectors` only for plain mode, never for
//! LUKS: checked on a LUKS2 volume with 4096-byte sectors that `cryptsetup reencrypt
//! --encrypt` wrote), plus the segment's `iv_tweak`, as the XTS tweak (little-endian).
//! CBC with ESSIV and other ciphers are [`LuksError::Unsupported`], the cipher named.

use aes::cipher::{BlockCipher, BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use xts_mode::Xts128;
use zeroize::Zeroizing;

use super::error::LuksError;

/// The unit dm-crypt counts IVs in, and the sector size of key slot areas.
pub const IV_UNIT: usize = 512;

/// How the IV is made from the sector number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvMode {
    /// `plain64`: the sector number as a 64-bit little-endian integer.
    Plain64,
    /// `plain`: the sector number's low 32 bits (LUKS1 volumes of old cryptsetups).
    Plain,
}

/// A cipher specification LUKS names: `aes-xts-plain64` in LUKS2, cipher name `aes` and
/// mode `xts-plain64` in LUKS1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSpec {
    /// How sector numbers become IVs.
    pub iv: IvMode,
}

impl CipherSpec {
    /// The cipher of `cipher-mode` (`aes-xts-plain64`), or why vmstash cannot decrypt it.
    pub fn from_name(name: &str) -> Result<CipherSpec, LuksError> {
        match name.to_ascii_lowercase().as_str() {
            "aes-xts-plain64" => Ok(CipherSpec {
                iv: IvMode::Plain64,
            }),
            "aes-xts-plain" => Ok(CipherSpec { iv: IvMode::Plain }),
            _ => Err(LuksError::unsupported(format!("cipher {name}"))),
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

/// A cipher keyed for decrypting sectors. Its AES key schedules are zeroized when it is
/// dropped (the `aes` crate's `zeroize` feature); it has no `Debug` and no `Clone`.
pub struct SectorCipher {
    xts: Xts,
    iv: IvMode,
}

impl SectorCipher {
    /// `spec` keyed with `key`: 32, 48 or 64 bytes (AES-128, -192 or -256 halves).
    pub fn new(spec: CipherSpec, key: &[u8]) -> Result<SectorCipher, LuksError> {
        fn halves<C: KeyInit + BlockCipher + BlockEncrypt + BlockDecrypt>(
            key: &[u8],
        ) -> Option<Box<Xts128<C>>> {
            let (a, b) = key.split_at(key.len() / 2);
            Some(Box::new(Xts128::new(
                C::new_from_slice(a).ok()?,
                C::new_from_slice(b).ok()?,
            )))
        }
        let xts = match key.len() {
            32 => halves(key).map(Xts::Aes128),
            48 => halves(key).map(Xts::Aes192),
            64 => halves(key).map(Xts::Aes256),
            _ => None,
        }
        .ok_or_else(|| {
            LuksError::unsupported(format!("aes-xts with a {}-bit key", key.len() * 8))
        })?;
        Ok(SectorCipher { xts, iv: spec.iv })
    }

    /// Decrypts `sector` in place; `iv` is its number in 512-byte units (plus any tweak).
    /// `sector` is a whole sector: a non-empty multiple of 16 bytes (callers pass 512 or
    /// 4096), so XTS never needs ciphertext stealing.
    pub fn decrypt_sector(&self, sector: &mut [u8], iv: u64) {
        if sector.len() < 16 {
            return;
        }
        let iv = match self.iv {
            IvMode::Plain64 => iv,
            IvMode::Plain => iv & u64::from(u32::MAX),
        };
        let tweak = u128::from(iv).to_le_bytes();
        match &self.xts {
            Xts::Aes128(x) => x.decrypt_sector(sector, tweak),
            Xts::Aes192(x) => x.decrypt_sector(sector, tweak),
            Xts::Aes256(x) => x.decrypt_sector(sector, tweak),
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
            CipherSpec::from_name("aes-cbc-essiv:sha256"),
            Err(LuksError::Unsupported(m)) if m.contains("aes-cbc-essiv:sha256")
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
