//! An unlocked LUKS volume's decrypted bytes as a [`Device`] over the encrypted one: each
//! read covers whole sectors of the segment, read from the inner device in runs of at most
//! [`MAX_RUN`] bytes, decrypted, and the asked-for part copied out.

use std::sync::Arc;

use super::cipher::{SectorCipher, IV_UNIT};
use super::layout::Header;
use crate::guestfs::device::check_range;
use crate::guestfs::{Device, DeviceError};

/// The most ciphertext read and decrypted at once (a bound on a read's scratch memory).
pub const MAX_RUN: usize = 1 << 20;

/// The decrypted data segment of an unlocked LUKS volume.
pub struct LuksDevice {
    inner: Arc<dyn Device>,
    cipher: SectorCipher,
    header: Header,
    /// Where the segment starts on `inner`.
    offset: u64,
    /// The segment's length: a whole number of sectors.
    len: u64,
    /// 512 to 4096.
    sector_size: usize,
}

impl LuksDevice {
    /// The segment `header` describes on `inner`, decrypted by `cipher`. `len` is the
    /// segment's length, checked by the caller to be whole sectors inside `inner`.
    pub(crate) fn new(
        inner: Arc<dyn Device>,
        cipher: SectorCipher,
        header: Header,
        len: u64,
    ) -> LuksDevice {
        LuksDevice {
            inner,
            cipher,
            offset: header.segment.offset,
            len,
            sector_size: usize::try_from(header.segment.sector_size).unwrap_or(IV_UNIT),
            header,
        }
    }

    /// The header it was opened with (version, UUID, label, key slots).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The IV of the sector that starts `at` bytes into the segment: its number in 512-byte
    /// units, plus the segment's tweak (dm-crypt's 64-bit counter wraps).
    fn iv(&self, at: u64) -> u64 {
        (at / 512).wrapping_add(self.header.segment.iv_tweak)
    }
}

impl Device for LuksDevice {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        check_range(self, offset, buf.len())?;
        let ss = u64::try_from(self.sector_size).unwrap_or(512);
        let mut scratch = Vec::new();
        let mut done = 0usize;
        while done < buf.len() {
            // In range (checked above), so none of this overflows.
            let pos = offset + u64::try_from(done).unwrap_or(u64::MAX);
            let start = pos - pos % ss;
            let skip = usize::try_from(pos - start).unwrap_or(0);
            let want = (buf.len() - done).saturating_add(skip);
            let run = want
                .div_ceil(self.sector_size)
                .saturating_mul(self.sector_size)
                .min(MAX_RUN);
            scratch.resize(run, 0);
            self.inner.read_at(self.offset + start, &mut scratch)?;
            for (i, sector) in scratch.chunks_exact_mut(self.sector_size).enumerate() {
                let at = start + u64::try_from(i).unwrap_or(0) * ss;
                self.cipher.decrypt_sector(sector, self.iv(at));
            }
            let n = (run - skip).min(buf.len() - done);
            let (Some(dst), Some(src)) = (buf.get_mut(done..done + n), scratch.get(skip..skip + n))
            else {
                // Unreachable: a run is whole sectors past `skip`, `n` at most what is left.
                return Err(DeviceError::PastEnd(crate::guestfs::device::PastEnd {
                    offset,
                    len: buf.len(),
                    size: self.len,
                }));
            };
            dst.copy_from_slice(src);
            done += n;
        }
        Ok(())
    }
}
