//! `vmstash check [--read-data]`: is every snapshot restorable?

use std::process::ExitCode;

use anyhow::Result;
use vmstash_repo::backend::FileKind;
use vmstash_repo::check::{check, ReadData};

use crate::args::{CheckArgs, Global};
use crate::exit;
use crate::output::{line, print_json};
use crate::{progress, repo};

/// Runs `vmstash check`.
pub fn run(g: &Global, a: &CheckArgs) -> Result<ExitCode> {
    let read = match (a.read_data, a.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some(subset)) => subset,
        (false, None) => ReadData::None,
    };
    let repo = &repo::open(g)?;
    let _lock = repo::lock_for_reading(g, repo, "check")?;
    let total: u64 = if read == ReadData::All {
        repo.backend()
            .list(FileKind::Pack)?
            .iter()
            .map(|(_, s)| s)
            .sum()
    } else {
        0
    };
    let bar = progress::bytes(g, total, "reading packs");
    let report = check(repo, read, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    if g.json {
        print_json(&serde_json::to_value(&report)?);
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        if !g.quiet {
            line(format_args!(
                "checked {} snapshots, {} packs ({} read), {} blobs: {}",
                report.snapshots,
                report.packs,
                report.packs_read,
                report.blobs,
                if report.is_ok() {
                    "no errors".to_string()
                } else {
                    format!("{} errors", report.errors.len())
                }
            ));
        }
    }
    if report.is_ok() {
        Ok(exit::ok())
    } else {
        if !g.json {
            eprintln!("vmstash: the repository is damaged; the errors above name the files and the snapshots affected");
            for hint in repair_hints(&report) {
                eprintln!("vmstash: to repair: {hint}");
            }
        }
        Ok(ExitCode::from(exit::FAILURE))
    }
}

/// The commands that repair what `report` found, each once.
fn repair_hints(report: &vmstash_repo::check::CheckReport) -> Vec<String> {
    let mut hints: Vec<String> = Vec::new();
    let mut add = |hint: String| {
        if !hints.contains(&hint) {
            hints.push(hint);
        }
    };
    if !report.damaged_packs.is_empty() {
        let ids: Vec<&str> = report
            .damaged_packs
            .iter()
            .map(|p| p.get(..16).unwrap_or(p))
            .collect();
        add(format!(
            "`vmstash repair packs {}` copies what still reads out of the damaged packs and removes them; then `vmstash check` names the lost chunks",
            ids.join(" ")
        ));
    }
    for e in &report.errors {
        if e.starts_with("index/") || e.contains("listed in the index but missing") {
            add("`vmstash repair index` rebuilds the index from the packs that are there; then `vmstash check` names the lost chunks, and backing up the same disks again stores them anew".into());
        } else if e.starts_with("snapshots/") {
            add("`vmstash repair snapshots --forget` removes snapshot files that cannot be read (or `vmstash forget ID`, ID: the start of the name)".into());
        }
    }
    if !report.damaged_snapshots.is_empty() && report.damaged_packs.is_empty() {
        add("back up the disks of the affected snapshots again: chunks of the same content are stored anew, and the older snapshots restore again; or `vmstash repair snapshots` rewrites them to record the lost bytes, so that the rest restores".into());
    }
    hints
}
