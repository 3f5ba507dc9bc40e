//! `vmstash check [--read-data]`: is every snapshot restorable?

use std::process::ExitCode;

use anyhow::Result;
use vmstash_repo::backend::FileKind;
use vmstash_repo::check::check;

use crate::args::{CheckArgs, Global};
use crate::exit;
use crate::output::{line, print_json};
use crate::{progress, repo};

/// Runs `vmstash check`.
pub fn run(g: &Global, a: &CheckArgs) -> Result<ExitCode> {
    let read_data = a.read_data;
    let repo = &repo::open(g)?;
    let _lock = repo::lock_for_reading(g, repo)?;
    let total: u64 = if read_data {
        repo.backend()
            .list(FileKind::Pack)?
            .iter()
            .map(|(_, s)| s)
            .sum()
    } else {
        0
    };
    let bar = progress::bytes(g, total, "reading packs");
    let report = check(repo, read_data, &|n| bar.inc(n))?;
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
        }
        Ok(ExitCode::from(exit::FAILURE))
    }
}
