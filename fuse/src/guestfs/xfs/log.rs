//! Whether an XFS filesystem's internal log was clean: the last record before the log's head
//! is an unmount record. The log is never replayed (the mount is read-only); a dirty log means
//! the filesystem was in use when backed up, so changes of its last seconds may be missing
//! from what is shown, as after a crash before log recovery.
//!
//! The head is found as the kernel finds it (`xlog_find_head`, simplified): every 512-byte
//! basic block of the log starts with the pass ("cycle") that wrote it, so the log reads as
//! blocks of cycle `c` followed by blocks of cycle `c - 1`; the head is where the cycle drops.
//! A record header (`xlog_rec_header`, magic `0xFEEDBABE`) carries the cycle in its second
//! word instead. Torn writes are not looked for: this is a hint for a log line, nothing is
//! read differently.

use super::superblock::Superblock;
use crate::be::u32_at;
use crate::guestfs::Device;

/// Bytes of a basic block.
const BB: u64 = 512;
/// A log record header's magic.
const RECORD_MAGIC: u32 = 0xFEED_BABE;
/// `h_version` bit of a version 2 log (headers may span several basic blocks).
const VERSION_2: u32 = 2;
/// Bytes of log record data a version 2 header's cycle array covers per basic block.
const HEADER_CYCLE_SIZE: u32 = 32 * 1024;
/// `oh_flags` bit of an unmount record's operation.
const UNMOUNT_TRANS: u8 = 0x20;
/// Most basic blocks searched back from the head for the last record header (a record is
/// at most 256 KiB, its header a few blocks).
const MAX_BACK: u64 = 1024;

/// What the log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LogState {
    /// Cleanly unmounted.
    Clean,
    /// Changes are in the log only.
    Dirty,
    /// The log is on another device.
    External,
    /// The log could not be read or made sense of.
    Unknown(String),
}

impl LogState {
    /// The mount's log line for this state, if it needs one.
    pub(super) fn note(&self) -> Option<String> {
        match self {
            LogState::Clean => None,
            LogState::Dirty => Some(
                "its log was not clean (in use when backed up): shown without replaying it, as after a crash; the newest changes may be missing".to_owned(),
            ),
            LogState::External => Some("its log is on another device; not checked".to_owned()),
            LogState::Unknown(why) => Some(format!("its log could not be checked ({why})")),
        }
    }
}

/// The state of `sb`'s log on `dev`.
pub(super) fn state(dev: &dyn Device, sb: &Superblock) -> LogState {
    if sb.log_start == 0 {
        return LogState::External;
    }
    let Ok(start) = sb.block_offset(sb.log_start) else {
        return LogState::Unknown("its start is outside the filesystem".to_owned());
    };
    let blocks = u64::from(sb.log_blocks).saturating_mul(sb.block_size.into()) / BB;
    if blocks < 2 {
        return LogState::Unknown("it is empty".to_owned());
    }
    let log = Log { dev, start, blocks };
    log.state().unwrap_or_else(LogState::Unknown)
}

/// The log's basic blocks.
struct Log<'a> {
    dev: &'a dyn Device,
    start: u64,
    blocks: u64,
}

impl Log<'_> {
    fn state(&self) -> Result<LogState, String> {
        let first = self.cycle(0)?;
        let last = self.cycle(self.blocks - 1)?;
        if first == 0 {
            return Ok(LogState::Unknown("it was never written".to_owned()));
        }
        let head = if first == last {
            self.blocks
        } else {
            self.first_with_other_cycle(first)?
        };
        let (record, header) = self.last_record(head)?;
        let ops = u32_at(&header, 40).unwrap_or(0);
        let version = u32_at(&header, 8).unwrap_or(0);
        let size = u32_at(&header, 320).unwrap_or(0);
        let header_blocks = if version & VERSION_2 != 0 && size > HEADER_CYCLE_SIZE {
            u64::from(size.div_ceil(HEADER_CYCLE_SIZE))
        } else {
            1
        };
        if ops != 1 {
            return Ok(LogState::Dirty);
        }
        let op = self.block((record + header_blocks) % self.blocks)?;
        Ok(if op.get(9).is_some_and(|f| f & UNMOUNT_TRANS != 0) {
            LogState::Clean
        } else {
            LogState::Dirty
        })
    }

    /// Basic block `n` of the log.
    fn block(&self, n: u64) -> Result<[u8; 512], String> {
        let mut b = [0u8; 512];
        let at = self.start.checked_add(n * BB).ok_or("past 2^64")?;
        self.dev.read_at(at, &mut b).map_err(|e| e.to_string())?;
        Ok(b)
    }

    /// The cycle that wrote basic block `n`.
    fn cycle(&self, n: u64) -> Result<u32, String> {
        let b = self.block(n)?;
        let word = u32_at(&b, 0).unwrap_or(0);
        Ok(if word == RECORD_MAGIC {
            u32_at(&b, 4).unwrap_or(0)
        } else {
            word
        })
    }

    /// The first block whose cycle is not `first`'s (binary search).
    fn first_with_other_cycle(&self, first: u32) -> Result<u64, String> {
        let (mut lo, mut hi) = (0u64, self.blocks - 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.cycle(mid)? == first {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(hi)
    }

    /// The last record header before block `head`, and its block number.
    fn last_record(&self, head: u64) -> Result<(u64, [u8; 512]), String> {
        for back in 1..=MAX_BACK.min(self.blocks) {
            let n = (head + self.blocks - back) % self.blocks;
            let b = self.block(n)?;
            if u32_at(&b, 0) == Some(RECORD_MAGIC) {
                return Ok((n, b));
            }
        }
        Err("no record header before its head".to_owned())
    }
}
