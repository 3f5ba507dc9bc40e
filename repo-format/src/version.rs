//! Format versions: every check of spec/FORMAT.md §16 "Versioning rules" in one place.
//!
//! A file records the format version in byte 0 (sealed files and packs, read before anything is
//! decrypted) or in a JSON `version` member (key files, read before Argon2id runs; config and
//! manifests, read before any other member). A reader refuses a version it does not know with
//! [`Error::Incompatible`], naming the file and the version found, and says to upgrade when the
//! version is newer: a newer repository is never reported as corrupt, as a wrong password or as
//! an authentication failure.

use crate::{Error, Result};

/// The repository format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The version byte every sealed file and pack of this format starts with.
pub(crate) const FORMAT_VERSION_BYTE: u8 = 1;
const _: () = assert!(u32::from_le_bytes([FORMAT_VERSION_BYTE, 0, 0, 0]) == FORMAT_VERSION);

/// Checks byte 0 of a sealed file or pack.
pub(crate) fn check_version_byte(byte: u8, file: &str) -> Result<()> {
    if byte == FORMAT_VERSION_BYTE {
        Ok(())
    } else {
        Err(unsupported(file, u64::from(byte)))
    }
}

/// Checks the JSON `version` member of a key file, config or manifest: missing or not an
/// integer is damage, another number is an unsupported version.
pub(crate) fn check_json_version(v: Option<&serde_json::Value>, file: &str) -> Result<()> {
    match v.and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(FORMAT_VERSION) => Ok(()),
        Some(v) => Err(unsupported(file, v)),
        None => Err(Error::corrupt(file, "no version field")),
    }
}

/// The error for a file of a format version this build does not know.
fn unsupported(file: &str, found: u64) -> Error {
    let what = if found > u64::from(FORMAT_VERSION) {
        format!(
            "repository format version {found} is newer than this vmstash supports ({FORMAT_VERSION}); upgrade vmstash"
        )
    } else {
        format!("unknown repository format version {found} (this vmstash reads version {FORMAT_VERSION})")
    };
    Error::Incompatible {
        file: file.to_string(),
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_versions_say_upgrade_and_missing_ones_are_damage() {
        assert!(check_version_byte(1, "f").is_ok());
        let newer = check_version_byte(2, "index/ab").expect_err("v2");
        assert!(matches!(&newer, Error::Incompatible { file, .. } if file == "index/ab"));
        assert!(newer.to_string().contains("upgrade vmstash"), "{newer}");
        let older = check_version_byte(0, "f").expect_err("v0");
        assert!(!older.to_string().contains("upgrade"), "{older}");
        assert!(check_json_version(Some(&serde_json::json!(1)), "config").is_ok());
        assert!(matches!(
            check_json_version(Some(&serde_json::json!(7)), "config"),
            Err(Error::Incompatible { .. })
        ));
        assert!(matches!(
            check_json_version(Some(&serde_json::json!("1")), "config"),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            check_json_version(None, "config"),
            Err(Error::Corrupt { .. })
        ));
    }
}
