//! Why a LUKS volume could not be read or unlocked, split by whose fault it is: damaged
//! header bytes, a valid volume using something vmstash does not implement, a key slot whose
//! key derivation asks for more than vmstash will spend, the passphrase, or the backup's
//! bytes themselves.

use crate::guestfs::DeviceError;

/// Why a LUKS header could not be read or the volume not unlocked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LuksError {
    /// The header is damaged: a bad magic or checksum, JSON that does not parse, a length or
    /// offset outside the device.
    #[error("damaged LUKS header: {0}")]
    Corrupt(String),
    /// Valid, but not something vmstash reads: a cipher, hash or key slot type it does not
    /// implement (named in the message).
    #[error("not supported by vmstash: {0}")]
    Unsupported(String),
    /// A key slot's key derivation asks for more memory or time than the limits allow
    /// ([`KdfLimits`](super::KdfLimits)); refused before anything is allocated.
    #[error("refused: {0}")]
    TooCostly(String),
    /// Every key slot that could be tried was tried, and none opens with the passphrase.
    #[error("no key slot opens with this passphrase")]
    WrongPassphrase,
    /// The backup's bytes could not be read (or the header points past the device's end).
    #[error("{0}")]
    Device(#[from] DeviceError),
}

impl LuksError {
    /// A damaged header, `detail` saying what and where.
    pub(crate) fn corrupt(detail: impl ToString) -> LuksError {
        LuksError::Corrupt(detail.to_string())
    }

    /// Something vmstash does not implement, `detail` naming it.
    pub(crate) fn unsupported(detail: impl ToString) -> LuksError {
        LuksError::Unsupported(detail.to_string())
    }
}
