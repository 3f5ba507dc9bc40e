//! Content ids: SHA-256 digests naming blobs and repository files
//! (spec/FORMAT.md §2 "Ids").

use std::fmt;

use sha2::{Digest, Sha256};

/// Length of every id in bytes.
pub const ID_LEN: usize = 32;

/// A SHA-256 digest: the id of a blob (of its plaintext) or of a repository
/// file (of its stored bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id([u8; ID_LEN]);

impl Id {
    /// The all-zero id. In chunk maps it stands for a chunk (or a whole map
    /// segment) whose bytes are all zero and which is therefore not stored.
    pub const ZERO: Id = Id([0; ID_LEN]);

    /// The id of `bytes`: their SHA-256.
    pub fn of(bytes: &[u8]) -> Id {
        Id(Sha256::digest(bytes).into())
    }

    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; ID_LEN]) -> Id {
        Id(bytes)
    }

    /// Reads an id from the first 32 bytes of `bytes`, if there are that many.
    pub fn from_slice(bytes: &[u8]) -> Option<Id> {
        let arr: [u8; ID_LEN] = bytes.get(..ID_LEN)?.try_into().ok()?;
        Some(Id(arr))
    }

    /// The digest bytes.
    pub const fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    /// True for [`Id::ZERO`].
    pub fn is_zero(&self) -> bool {
        self.0 == [0; ID_LEN]
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex characters, as shown to users.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Id> {
        let mut arr = [0u8; ID_LEN];
        hex::decode_to_slice(s, &mut arr).ok()?;
        Some(Id(arr))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.to_hex())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Id::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex characters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            Id::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        let id = Id::of(b"x");
        assert_eq!(Id::from_hex(&id.to_hex()), Some(id));
        assert_eq!(Id::from_hex("abc"), None);
        assert_eq!(Id::from_hex(&"g".repeat(64)), None);
        assert!(Id::ZERO.is_zero());
        assert_eq!(id.short().len(), 8);
    }
}
