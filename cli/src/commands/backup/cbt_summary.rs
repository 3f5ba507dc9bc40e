//! What changed-block tracking did in one backup, as the summary shows it.

use anyhow::Result;
use serde_json::json;

use crate::exit;
use crate::output::human;

/// What changed-block tracking did in one backup.
#[derive(Debug)]
pub struct CbtSummary {
    /// The checkpoint the backup counted from, if it was incremental.
    pub since: Option<String>,
    /// The checkpoint it made.
    pub checkpoint: String,
    /// Bytes read on the hypervisor to hash the disks.
    pub bytes_hashed: u64,
    /// True when every chunk was hashed and compared with the bitmaps.
    pub verified: bool,
    /// Chunks the bitmaps called unchanged that were not.
    pub missed_chunks: u64,
}

impl CbtSummary {
    /// The summary's `cbt` member in `--json` output.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "since": self.since, "checkpoint": self.checkpoint, "bytes_hashed": self.bytes_hashed,
            "verified": self.verified, "missed_chunks": self.missed_chunks,
        })
    }

    /// The line printed after the summary.
    pub fn line(&self) -> String {
        let how = match &self.since {
            Some(since) if self.verified => {
                format!("all chunks hashed to verify the bitmaps since {since}")
            }
            Some(since) => format!("incremental since checkpoint {since}"),
            None => "every chunk hashed (first backup with a checkpoint)".to_owned(),
        };
        format!(
            "changed-block tracking: {how}; read {} on the host; new checkpoint {}",
            human(self.bytes_hashed),
            self.checkpoint
        )
    }
}

/// The loud warning when the bitmaps missed writes, as an error that exits with
/// [`exit::CBT_MISSED`]; the snapshot (hashed whole) is saved either way.
pub fn cbt_verdict(name: &str, summary: &CbtSummary) -> Result<()> {
    if summary.missed_chunks == 0 {
        return Ok(());
    }
    Err(anyhow::Error::new(exit::CbtMissed(format!(
        "changed-block tracking of {name} missed writes: {} chunks changed that the dirty bitmaps since checkpoint {} did not mark. This snapshot hashed every chunk and is right; the incremental snapshots of {name} since its last full hash may hold stale data in such chunks: restore-check them, or keep this one",
        summary.missed_chunks,
        summary.since.as_deref().unwrap_or("?")
    ))))
}
