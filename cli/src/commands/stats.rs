//! `vmstash stats`: how much is stored, and how well it deduplicates and compresses.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use vmstash_repo::backend::FileKind;
use vmstash_repo::disk_reader::map_segment;

use crate::args::Global;
use crate::output::{human, line, print_json};
use crate::{exit, repo};

/// A byte count as a float, for ratios: exact below 2^53, which every
/// real byte count is.
#[allow(clippy::as_conversions)]
fn approx(n: u64) -> f64 {
    n as f64
}

/// Runs `vmstash stats`.
pub fn run(g: &Global) -> Result<ExitCode> {
    let repo = &repo::open(g)?;
    let _lock = repo::lock_for_reading(g, repo, "stats")?;
    let idx = repo.load_index()?;
    let snaps = repo::snapshots_warning_of_damage(repo)?.0.snapshots;
    let mut logical = 0u64;
    let mut nonzero = 0u64;
    for (_, m) in &snaps {
        for d in &m.disks {
            logical += d.size;
            for seg in 0..d.map.len() {
                let ids = map_segment(repo, &idx, d, seg)?;
                let full = ids.iter().filter(|i| !i.is_zero()).count();
                nonzero += u64::try_from(full).unwrap_or(0) * u64::from(d.chunk_size);
            }
        }
    }
    let unique: u64 = idx
        .iter()
        .filter(|l| l.entry.ty == vmstash_repo::blob::BlobType::Data)
        .map(|l| u64::from(l.entry.raw_length))
        .sum();
    let blob_stored: u64 = idx.iter().map(|l| u64::from(l.entry.length)).sum();
    let mut files = 0u64;
    for kind in [
        FileKind::Config,
        FileKind::Key,
        FileKind::Pack,
        FileKind::Index,
        FileKind::Snapshot,
    ] {
        files += repo
            .backend()
            .list(kind)?
            .iter()
            .map(|(_, s)| s)
            .sum::<u64>();
    }
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { approx(a) / approx(b) };
    let v = json!({
        "snapshots": snaps.len(), "blobs": idx.len(), "logical_bytes": logical,
        "nonzero_logical_bytes": nonzero, "unique_data_bytes": unique,
        "stored_blob_bytes": blob_stored, "repository_bytes": files,
        "dedup_ratio": ratio(nonzero, unique), "compression_ratio": ratio(unique, blob_stored),
        "space_saving_ratio": ratio(logical, files),
    });
    if g.json {
        print_json(&v);
    } else {
        line(format_args!("snapshots:                 {}", snaps.len()));
        line(format_args!(
            "logical size (all disks):  {}",
            human(logical)
        ));
        line(format_args!(
            "  of which non-zero:       {}",
            human(nonzero)
        ));
        line(format_args!(
            "unique data:               {} in {} blobs",
            human(unique),
            idx.len()
        ));
        line(format_args!("stored in repository:      {}", human(files)));
        line(format_args!(
            "deduplication ratio:       {:.2}x",
            ratio(nonzero, unique)
        ));
        line(format_args!(
            "compression ratio:         {:.2}x",
            ratio(unique, blob_stored)
        ));
    }
    Ok(exit::ok())
}
