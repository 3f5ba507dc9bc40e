//! `vmstash backup`: disk files (`--disk`), or the VMs of a hypervisor (`--connect`, in
//! [`vm`]); and what both share: running the engine (`vmstash_repo::backup`) with a progress
//! bar, and printing what it did.

mod cbt;
pub mod cbt_summary;
mod domain;
mod qmp;
pub mod sink;
mod vm;

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use vmstash_repo::backup::{back_up, BackupDisk, BackupPlan, BackupReport};
use vmstash_repo::{CancelToken, Repository};

use crate::args::{BackupArgs, Global};
use crate::exit::{self, usage};
use crate::output::{self, human, print_json};
use crate::{interrupt, repo, source};

pub use sink::{BackupSink, SinkProgress};
pub use vm::back_up_vms;

/// Runs `vmstash backup`.
pub fn run(g: &Global, a: &BackupArgs) -> Result<ExitCode> {
    match &a.connect {
        Some(uri) => vm::run(g, uri, a),
        None => run_disks(g, a),
    }
}

/// Runs `vmstash backup --disk …`.
fn run_disks(g: &Global, a: &BackupArgs) -> Result<ExitCode> {
    if !a.vms.is_empty() || a.all || !a.exclude_disks.is_empty() || a.no_helper {
        return Err(usage(
            "--vm, --all, --exclude-disk and --no-helper are for VMs (with --connect), not for --disk files",
        ));
    }
    let repo = repo::open(g)?;
    let _lock = repo::lock_for_writing(g, &repo, "backup")?;
    let started = Instant::now();
    let names = disk_names(&a.disks);
    let disks = a
        .disks
        .iter()
        .zip(names)
        .map(|(p, name)| {
            let reader =
                source::open(p).with_context(|| format!("opening disk {}", p.display()))?;
            if reader.size() == 0 {
                bail!(
                    "{} is empty (0 bytes): there is nothing to back up",
                    p.display()
                );
            }
            Ok(BackupDisk::new(name, p.display().to_string(), reader))
        })
        .collect::<Result<Vec<_>>>()?;
    let name = a
        .name
        .clone()
        .or_else(|| disks.first().map(|d| d.name.clone()))
        .unwrap_or_default();
    check_names(&name, &a.tags)?;
    let cancel = interrupt::cancel_on_signals()?;
    let mut plan = BackupPlan::new(name, disks);
    plan.tags.clone_from(&a.tags);
    plan.started = Some(started);
    plan.time.clone_from(&a.time);
    let terminal = sink::Terminal::new(g);
    let report = store(&terminal, &repo, plan, &cancel)?;
    terminal.summary(&report, None);
    Ok(exit::ok())
}

/// Refuses a snapshot name or tag that could not be shown (a name is a directory in the mount
/// and in restores).
fn check_names(name: &str, tags: &[String]) -> Result<()> {
    if !vmstash_repo::snapshot::is_safe_name(name) {
        return Err(usage(format!(
            "--name {name:?}: a snapshot name must be a non-empty file name without '/'"
        )));
    }
    if let Some(bad) = tags.iter().find(|t| t.is_empty() || t.contains(',')) {
        return Err(usage(format!(
            "--tag {bad:?}: a tag must be non-empty and without ','"
        )));
    }
    Ok(())
}

/// Backs up `plan`, telling `sink` (a progress bar on a terminal, saying more with `-v`; a
/// daemon job's progress). The caller holds the repository lock. When `cancel` is set the
/// backup stops, no snapshot is written, and one line says so.
pub fn store(
    sink: &dyn BackupSink,
    repo: &Repository,
    plan: BackupPlan,
    cancel: &CancelToken,
) -> Result<BackupReport> {
    sink.starting(&plan.name, &plan.disks);
    let what: Vec<String> = plan
        .disks
        .iter()
        .map(|d| format!("{} ({})", d.name, d.source))
        .collect();
    let snapshot = plan.name.clone();
    let report = back_up(repo, plan, &SinkProgress(sink), cancel);
    sink.ended(report.as_ref().ok());
    if matches!(report, Err(vmstash_repo::Error::Cancelled)) {
        sink.say(&format!(
            "vmstash: interrupted: no snapshot of {snapshot} was written; the data already uploaded stays in the repository for the next backup to reuse, and the repository is intact"
        ));
    }
    report.with_context(|| format!("backing up disk(s) {}", what.join(", ")))
}

/// Prints what a backup did: one line (two with changed-block tracking), or the JSON summary.
pub fn print_summary(g: &Global, report: &BackupReport, cbt: Option<&cbt_summary::CbtSummary>) {
    let (id, m) = (&report.id, &report.manifest);
    let s = &m.summary;
    if g.json {
        let mut summary = json!({
            "message_type": "summary", "snapshot_id": id.to_hex(), "short_id": id.short(),
            "name": m.name, "disks": m.disks.len(), "disk_bytes": s.disk_bytes,
            "bytes_read": s.bytes_read, "bytes_added": s.bytes_added, "chunks": s.chunks,
            "zero_chunks": s.zero_chunks, "new_chunks": s.new_chunks,
            "duration_seconds": s.duration_seconds, "adopted_packs": report.adopted.packs,
        });
        if let Some(cbt) = cbt {
            summary["cbt"] = cbt.json();
        }
        print_json(&summary);
    } else if !g.quiet {
        if report.adopted.packs > 0 {
            output::line(format_args!(
                "indexed {} packs ({} chunks) an interrupted backup had left unindexed, and reused them",
                report.adopted.packs, report.adopted.blobs
            ));
        }
        output::line(format_args!(
            "snapshot {} saved: {} disk(s), {} in {:.1} s; read {}, added {} ({} new of {} chunks, {} zero)",
            id.short(),
            m.disks.len(),
            human(s.disk_bytes),
            s.duration_seconds,
            human(s.bytes_read),
            human(s.bytes_added),
            s.new_chunks,
            s.chunks,
            s.zero_chunks
        ));
        if let Some(cbt) = cbt {
            output::line(format_args!("{}", cbt.line()));
        }
    }
}

/// Snapshot disk names: file names without extension, made unique.
fn disk_names(paths: &[std::path::PathBuf]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        let stem = Path::new(p)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty() && s != "." && s != "..")
            .unwrap_or_else(|| "disk".to_string());
        let mut name = stem.clone();
        let mut n = 2;
        while out.contains(&name) {
            name = format!("{stem}-{n}");
            n += 1;
        }
        out.push(name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let n = disk_names(&["/a/disk.img".into(), "/b/disk.qcow2".into(), "/c/x".into()]);
        assert_eq!(n, ["disk", "disk-2", "x"]);
    }

    #[test]
    fn names_and_tags_that_cannot_be_shown_are_usage_errors() {
        assert!(check_names("web1", &["nightly".into()]).is_ok());
        for (name, tags) in [
            ("a/b", vec![]),
            ("", vec![]),
            ("web1", vec![String::new()]),
            ("web1", vec!["a,b".into()]),
        ] {
            let err = check_names(name, &tags).expect_err(name);
            assert!(err.is::<crate::exit::UsageError>(), "{err}");
        }
    }
}
