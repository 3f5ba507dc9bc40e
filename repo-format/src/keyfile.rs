//! Key files: the master key wrapped by a password (spec/FORMAT.md §4 "Key files").
//!
//! A key file is plaintext JSON, so that the KDF parameters can be read
//! before anything is decrypted. The wrapping key is argon2id(password,
//! salt) with the parameters stored beside it; the master key is sealed with
//! AES-256-GCM under it. Several key files (passwords) may open one
//! repository; changing a password rewrites one small file.

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{random_salt, FileKey, MasterKey, KEY_LEN, SEAL_OVERHEAD};
use crate::version::{check_json_version, FORMAT_VERSION};
use crate::{Error, Result};

/// Associated data of the sealed master key.
const KEY_AAD: &[u8] = b"vmstash/v1/key";

/// Largest key file read: a key file is a few hundred bytes.
pub const MAX_KEY_FILE_LEN: usize = 64 * 1024;

/// argon2id cost parameters, stored in each key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// The defaults for new key files: 64 MiB, 3 passes, 1 lane — RFC 9106's
    /// second recommended option, about 0.2 s on one core here.
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    /// Bounds a reader accepts, so that a hostile key file cannot make the
    /// reader allocate gigabytes or spin for hours.
    fn validate(&self, file: &str) -> Result<Params> {
        let in_range = (8..=4 * 1024 * 1024).contains(&self.memory_kib)
            && (1..=64).contains(&self.iterations)
            && (1..=64).contains(&self.parallelism);
        if !in_range {
            return Err(Error::Incompatible {
                file: file.to_string(),
                what: format!("argon2id parameters out of the supported range: {self:?}"),
            });
        }
        Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(KEY_LEN),
        )
        .map_err(|e| Error::corrupt(file, format!("invalid argon2id parameters: {e}")))
    }
}

/// The JSON of a key file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// Repository format version.
    pub version: u32,
    /// When the key was made (RFC 3339).
    pub created: String,
    /// Who made it.
    pub username: String,
    /// On which machine.
    pub hostname: String,
    /// Always "argon2id".
    pub kdf: String,
    /// argon2id costs.
    pub params: KdfParams,
    /// argon2id salt, hex.
    pub salt: String,
    /// nonce ‖ AES-256-GCM(master key) ‖ tag, hex.
    pub sealed_key: String,
}

/// Derives the wrapping key of `password`.
fn wrapping_key(password: &[u8], salt: &[u8], params: Params) -> Result<FileKey> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password, salt, out.as_mut())
        .map_err(|e| Error::InvalidParameter(format!("argon2id: {e}")))?;
    Ok(FileKey::new(&out))
}

impl KeyFile {
    /// Wraps `master` under `password`.
    pub fn create(
        master: &MasterKey,
        password: &[u8],
        params: KdfParams,
        username: &str,
        hostname: &str,
        created: &str,
    ) -> Result<KeyFile> {
        let salt = random_salt();
        let kdf = params.validate("new key")?;
        let sealed = wrapping_key(password, &salt, kdf)?.seal(master.expose(), KEY_AAD);
        Ok(KeyFile {
            version: FORMAT_VERSION,
            created: created.to_string(),
            username: username.to_string(),
            hostname: hostname.to_string(),
            kdf: "argon2id".to_string(),
            params,
            salt: hex::encode(salt),
            sealed_key: hex::encode(sealed),
        })
    }

    /// Parses key-file bytes; `file` names it in errors.
    pub fn decode(bytes: &[u8], file: &str) -> Result<KeyFile> {
        if bytes.len() > MAX_KEY_FILE_LEN {
            return Err(Error::corrupt(file, "key file larger than 64 KiB"));
        }
        let probe: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(file, format!("not JSON: {e}")))?;
        check_json_version(probe.get("version"), file)?;
        let key: KeyFile = serde_json::from_value(probe)
            .map_err(|e| Error::corrupt(file, format!("bad key file: {e}")))?;
        if key.kdf != "argon2id" {
            return Err(Error::Incompatible {
                file: file.to_string(),
                what: format!("unknown key derivation function {:?}", key.kdf),
            });
        }
        Ok(key)
    }

    /// Serialises to the bytes stored.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_else(|_| unreachable!("plain struct"))
    }

    /// Unwraps the master key; `Ok(None)` when the password does not fit.
    pub fn unwrap_key(&self, password: &[u8], file: &str) -> Result<Option<MasterKey>> {
        let params = self.params.validate(file)?;
        let salt = hex::decode(&self.salt).map_err(|_| Error::corrupt(file, "salt is not hex"))?;
        let sealed = hex::decode(&self.sealed_key)
            .map_err(|_| Error::corrupt(file, "sealed_key is not hex"))?;
        if salt.len() < 8 {
            return Err(Error::corrupt(file, "salt shorter than 8 bytes"));
        }
        if sealed.len() != KEY_LEN + SEAL_OVERHEAD {
            return Err(Error::corrupt(file, "sealed_key is not 60 bytes"));
        }
        let Ok(plain) = wrapping_key(password, &salt, params)?.open(&sealed, KEY_AAD) else {
            return Ok(None);
        };
        let plain = Zeroizing::new(plain);
        let arr: [u8; KEY_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| Error::corrupt(file, "master key is not 32 bytes"))?;
        Ok(Some(MasterKey::from_bytes(arr)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn wrap_unwrap_and_wrong_password() {
        let mk = MasterKey::from_bytes([9; 32]);
        let kf = KeyFile::create(&mk, b"pw", FAST, "u", "h", "t").expect("create");
        let bytes = kf.encode();
        let back = KeyFile::decode(&bytes, "k").expect("decode");
        let got = back.unwrap_key(b"pw", "k").expect("unwrap").expect("fits");
        assert_eq!(got.expose(), &[9; 32]);
        assert!(back.unwrap_key(b"nope", "k").expect("unwrap").is_none());
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        let mk = MasterKey::generate();
        let mut kf = KeyFile::create(&mk, b"pw", FAST, "u", "h", "t").expect("create");
        kf.version = 2;
        let err = KeyFile::decode(&kf.encode(), "k").expect_err("v2");
        assert!(matches!(err, Error::Incompatible { .. }), "{err}");
        assert!(matches!(
            KeyFile::decode(b"{", "k"),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn refuses_huge_kdf_costs() {
        let mk = MasterKey::generate();
        let mut kf = KeyFile::create(&mk, b"pw", FAST, "u", "h", "t").expect("create");
        kf.params.memory_kib = u32::MAX;
        assert!(matches!(
            kf.unwrap_key(b"pw", "k"),
            Err(Error::Incompatible { .. })
        ));
    }
}
