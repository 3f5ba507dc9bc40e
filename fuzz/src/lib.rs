//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Each target asserts a property of one decoder of `vmstash-repo`
//! (decode ∘ encode = id, errors of the right kind, bounded output), not
//! only that it returns.

use vmstash_repo::crypto::MasterKey;
use vmstash_repo::Error;

/// The master key every target uses: fixed, so that a crash reproduces.
pub fn master() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

/// Asserts that a decoder refused bad bytes the way it should: as a
/// damaged (`Corrupt`) or unsupported (`Incompatible`) file, never as an
/// I/O error, a wrong password or an invalid parameter.
pub fn assert_rejected(err: &Error) {
    assert!(
        matches!(err, Error::Corrupt { .. } | Error::Incompatible { .. }),
        "bad input must be Corrupt or Incompatible, got {err:?}"
    );
}

/// A cursor that reads the fuzzer's bytes as choices, yielding zeros once
/// they run out, so that every input is a valid sequence of choices.
pub struct Choices<'a> {
    bytes: &'a [u8],
}

impl<'a> Choices<'a> {
    /// Reads choices from `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Choices { bytes }
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next byte, 0 past the end.
    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// The next two bytes as a little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` next bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = tail;
        head
    }

    /// Every byte not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.bytes.len())
    }
}
