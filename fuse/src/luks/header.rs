//! Recognising a LUKS volume and reading its header, without a passphrase: enough to show a
//! locked volume (version, UUID, label, key slots).

use super::bytes::{be_u16, field};
use super::error::LuksError;
use super::layout::Header;
use super::{luks1, luks2};
use crate::guestfs::{Device, DeviceError};

/// Whether `head` (the first bytes of a device, at least 8) starts with a primary LUKS header
/// of version 1 or 2. A LUKS2 secondary header (`SKUL\xba\xbe`) is not a primary.
pub fn recognises(head: &[u8]) -> bool {
    field(head, 0, 6) == Some(&luks2::MAGIC_PRIMARY[..]) && matches!(be_u16(head, 6), Some(1 | 2))
}

impl Header {
    /// The header of the LUKS volume on `dev`. For LUKS2 the newest good copy (the secondary
    /// when the primary is damaged); [`LuksError::Corrupt`] when there is none.
    pub fn read(dev: &dyn Device) -> Result<Header, LuksError> {
        let mut head = [0u8; luks1::HEADER_LEN];
        let readable = dev.read_at(0, &mut head);
        if readable.is_ok() && recognises(&head) && be_u16(&head, 6) == Some(1) {
            return luks1::parse(&head);
        }
        if let Err(DeviceError::Read(e)) = readable {
            return Err(LuksError::Device(DeviceError::Read(e)));
        }
        // LUKS2, or a damaged primary whose secondary may still be good.
        luks2::read(dev)
    }
}
