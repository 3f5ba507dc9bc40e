//! `vmstash diff OLD NEW`: per disk, how many chunks differ and how many bytes of data are new
//! or gone at those places.

use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;
use vmstash_repo::diff::diff;
use vmstash_repo::selection::SnapshotFilter;

use crate::args::{DiffArgs, Global};
use crate::exit;
use crate::output::{human, line, print_json};
use crate::repo;

/// Runs `vmstash diff`.
pub fn run(g: &Global, a: &DiffArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let _lock = repo::lock_for_reading(g, &repo, "diff")?;
    let (listing, _) = repo::snapshots_warning_of_damage(&repo)?;
    let all = SnapshotFilter::default();
    let (old_id, old) = listing.find(&a.old, &all)?;
    let (new_id, new) = listing.find(&a.new, &all)?;
    let index = repo.load_index().context("loading the repository index")?;
    let disks = diff(&repo, &index, &old, &new)?;
    if g.json {
        print_json(&json!({"old": old_id.to_hex(), "new": new_id.to_hex(), "disks": disks}));
        return Ok(exit::ok());
    }
    line(format_args!(
        "comparing snapshot {} with {}:",
        old_id.short(),
        new_id.short()
    ));
    for d in &disks {
        match (d.old_size, d.new_size) {
            (None, Some(size)) => line(format_args!(
                "+ {}: new disk of {}, {} of data",
                d.name,
                human(size),
                human(d.bytes_added)
            )),
            (Some(size), None) => line(format_args!(
                "- {}: disk of {} gone, {} of data",
                d.name,
                human(size),
                human(d.bytes_removed)
            )),
            (old_size, new_size) => line(format_args!(
                "M {}: {} chunks changed, +{} -{}{}",
                d.name,
                d.chunks_changed,
                human(d.bytes_added),
                human(d.bytes_removed),
                if old_size == new_size {
                    String::new()
                } else {
                    format!(
                        ", size {} → {}",
                        human(old_size.unwrap_or(0)),
                        human(new_size.unwrap_or(0))
                    )
                }
            )),
        }
    }
    Ok(exit::ok())
}
