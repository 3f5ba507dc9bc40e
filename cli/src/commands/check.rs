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
            for hint in repair_hints(&report.errors) {
                eprintln!("vmstash: to repair: {hint}");
            }
        }
        Ok(ExitCode::from(exit::FAILURE))
    }
}

/// The commands that repair what `errors` describe, each once.
fn repair_hints(errors: &[String]) -> Vec<&'static str> {
    let mut hints = Vec::new();
    let mut add = |hint| {
        if !hints.contains(&hint) {
            hints.push(hint);
        }
    };
    for e in errors {
        if e.starts_with("index/")
            || e.contains("listed in the index but missing")
            || e.contains("is truncated")
        {
            add("`vmstash repair index` rebuilds the index from the packs that are there; then `vmstash check` names the lost chunks, and backing up the same disks again stores them anew");
        } else if e.starts_with("snapshot ") && e.contains("missing or damaged") {
            add("back up the disks of the affected snapshots again: chunks of the same content are stored anew, and the older snapshots restore again");
        } else if e.starts_with("snapshots/") {
            add("`vmstash forget ID` removes a snapshot file that cannot be read (ID: the start of its name)");
        } else if e.starts_with("data/") {
            add("a pack whose bytes are damaged: back up the affected disks again to a new repository or restore from a copy; `vmstash check --read-data` names every damaged chunk");
        }
    }
    hints
}
