//! `vmstash repair index|packs|snapshots`, each under an exclusive lock:
//!
//! - `index`: a new index built from the packs' own headers, replacing index files that are
//!   damaged or list packs that are gone. Afterwards `check` lists exactly which chunks (and so
//!   which snapshots) are lost, and the next backup of the same disks stores them again.
//! - `packs ID…`: the readable chunks of damaged packs copied into new packs, the packs deleted.
//! - `snapshots`: snapshots whose chunks are gone rewritten to record exactly the lost bytes.

use std::process::ExitCode;

use anyhow::{Context, Result};
use vmstash_repo::backend::FileKind;
use vmstash_repo::repair::{rebuild_index, repair_snapshots, salvage_packs};
use vmstash_repo::Id;

use crate::args::{Global, RepairCommand, RepairPacksArgs, RepairSnapshotsArgs};
use crate::exit;
use crate::output::{line, print_json};
use crate::{interrupt, progress, repo};

/// Runs `vmstash repair …`.
pub fn run(g: &Global, command: &RepairCommand) -> Result<ExitCode> {
    match command {
        RepairCommand::Index => repair_index(g),
        RepairCommand::Packs(a) => repair_packs(g, a),
        RepairCommand::Snapshots(a) => repair_snapshots_cmd(g, a),
    }
}

fn repair_packs(g: &Global, a: &RepairPacksArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let _lock = repo::lock_exclusively(g, &repo, "repair packs")?;
    let names: Vec<String> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut ids = Vec::new();
    for spec in &a.ids {
        let spec_lc = spec.to_ascii_lowercase();
        let hits: Vec<&String> = names.iter().filter(|n| n.starts_with(&spec_lc)).collect();
        match hits.as_slice() {
            [one] if !spec.is_empty() => ids.extend(Id::from_hex(one)),
            [] => return Err(exit::usage(format!("no pack matches {spec:?}"))),
            _ => {
                return Err(exit::usage(format!(
                    "{spec:?} matches several packs; give more of the id"
                )))
            }
        }
    }
    let cancel = interrupt::cancel_on_signals()?;
    let report = salvage_packs(&repo, &ids, &cancel).context("salvaging packs")?;
    if g.json {
        print_json(&serde_json::to_value(&report)?);
        return Ok(exit::ok());
    }
    line(format_args!(
        "{} packs removed: {} chunks copied into new packs, {} held elsewhere too, {} lost",
        report.packs.len(),
        report.salvaged,
        report.elsewhere,
        report.lost
    ));
    if report.lost > 0 {
        line("`vmstash check` names the snapshots that needed the lost chunks; back up those disks again to store them anew, or run `vmstash repair snapshots` to record the lost bytes so the rest restores");
    }
    Ok(exit::ok())
}

fn repair_snapshots_cmd(g: &Global, a: &RepairSnapshotsArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let _lock = repo::lock_exclusively(g, &repo, "repair snapshots")?;
    let cancel = interrupt::cancel_on_signals()?;
    let report =
        repair_snapshots(&repo, a.forget, a.dry_run, &cancel).context("repairing snapshots")?;
    if g.json {
        print_json(&serde_json::to_value(&report)?);
        return Ok(exit::ok());
    }
    let verb = if a.dry_run {
        "would rewrite"
    } else {
        "rewrote"
    };
    for r in &report.repaired {
        line(format_args!(
            "{verb} snapshot {} ({}): {} bytes lost{}",
            r.original.get(..8).unwrap_or(&r.original),
            r.name,
            r.lost_bytes,
            if r.id.is_empty() {
                String::new()
            } else {
                format!(", now snapshot {}", r.id.get(..8).unwrap_or(&r.id))
            }
        ));
    }
    for name in &report.unreadable {
        let what = if report.forgot {
            "removed"
        } else {
            "cannot be read (--forget removes it)"
        };
        line(format_args!("snapshot file snapshots/{name} {what}"));
    }
    line(format_args!(
        "{} snapshots {}, {} intact{}",
        report.repaired.len(),
        if a.dry_run { "to rewrite" } else { "rewritten" },
        report.intact,
        if a.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    ));
    if !report.repaired.is_empty() && !a.dry_run {
        line("restore and mount refuse the lost bytes unless given --zero-lost; backing up the same disks again stores what can still be read");
    }
    Ok(exit::ok())
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
