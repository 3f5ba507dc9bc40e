//! `vmstash stats`: how much is stored, and how well it deduplicates and compresses.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use vmstash_repo::backend::FileKind;
use vmstash_repo::disk_reader::map_segment;
use vmstash_repo::Repository;

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
    let v = measure(repo)?;
    if g.json {
        print_json(&v);
        return Ok(exit::ok());
    }
    let count = |key: &str| v[key].as_u64().unwrap_or(0);
    let times = |key: &str| v[key].as_f64().unwrap_or(0.0);
    line(format_args!(
        "snapshots:                 {}",
        count("snapshots")
    ));
    line(format_args!(
        "logical size (all disks):  {}",
        human(count("logical_bytes"))
    ));
    line(format_args!(
        "  of which non-zero:       {}",
        human(count("nonzero_logical_bytes"))
    ));
    line(format_args!(
        "unique data:               {} in {} blobs",
        human(count("unique_data_bytes")),
        count("blobs")
    ));
    line(format_args!(
        "stored in repository:      {}",
        human(count("repository_bytes"))
    ));
    line(format_args!(
        "deduplication ratio:       {:.2}x",
        times("dedup_ratio")
    ));
    line(format_args!(
        "compression ratio:         {:.2}x",
        times("compression_ratio")
    ));
    Ok(exit::ok())
}

/// What `vmstash stats --json` prints: snapshots, logical and non-zero bytes of their disks,
/// unique and stored bytes, and the ratios (the daemon's `/stats` too). The caller holds a
/// lock.
pub fn measure(repo: &Repository) -> Result<serde_json::Value> {
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
    Ok(json!({
        "snapshots": snaps.len(), "blobs": idx.len(), "logical_bytes": logical,
        "nonzero_logical_bytes": nonzero, "unique_data_bytes": unique,
        "stored_blob_bytes": blob_stored, "repository_bytes": files,
        "stored_bytes": files,
        "dedup_ratio": ratio(nonzero, unique), "compression_ratio": ratio(unique, blob_stored),
        "space_saving_ratio": ratio(logical, files),
    }))
}
