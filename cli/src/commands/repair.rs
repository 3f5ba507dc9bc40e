//! `vmstash repair index`: a new index built from the packs' own headers, replacing index files
//! that are damaged or list packs that are gone. Afterwards `check` lists exactly which chunks
//! (and so which snapshots) are lost, and the next backup of the same disks stores them again.

use std::process::ExitCode;

use anyhow::{Context, Result};
use vmstash_repo::backend::FileKind;
use vmstash_repo::repair::rebuild_index;

use crate::args::{Global, RepairCommand};
use crate::exit;
use crate::output::{line, print_json};
use crate::{interrupt, progress, repo};

/// Runs `vmstash repair …`.
pub fn run(g: &Global, command: &RepairCommand) -> Result<ExitCode> {
    match command {
        RepairCommand::Index => repair_index(g),
    }
}

fn repair_index(g: &Global) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let _lock = repo::lock_exclusively(g, &repo, "repair index")?;
    let total: u64 = repo
        .backend()
        .list(FileKind::Pack)?
        .iter()
        .map(|(_, size)| size)
        .sum();
    let bar = progress::bytes(g, total, "reading pack headers");
    let cancel = interrupt::cancel_on_signals()?;
    let report = rebuild_index(&repo, &|n| bar.inc(n), &cancel).context("rebuilding the index")?;
    bar.finish_and_clear();
    if g.json {
        print_json(&serde_json::to_value(&report)?);
        return Ok(exit::ok());
    }
    for name in &report.unreadable_packs {
        eprintln!("vmstash: warning: pack {name} has no readable header; no index lists it now");
    }
    line(format_args!(
        "new index: {} packs, {} chunks in {} files; {} old index files removed",
        report.packs, report.blobs, report.index_files_written, report.index_files_removed
    ));
    if !report.lost_packs.is_empty() {
        line(format_args!(
            "{} packs the old index listed are gone or unreadable: run `vmstash check` to see which snapshots lost chunks; backing up the same disks again stores those chunks anew",
            report.lost_packs.len()
        ));
    }
    Ok(exit::ok())
}
