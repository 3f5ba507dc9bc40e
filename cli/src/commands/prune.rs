//! `vmstash prune` (and the prune of `forget --prune`): reclaims the space of data no snapshot
//! needs while backups, restores and mounts go on (spec §20). A run marks what it takes out of
//! the index and deletes what earlier runs marked, once nothing that started before the mark
//! still runs; `--instant-delete` deletes at once under an exclusive lock.

use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use vmstash_repo::prune::{prune, MaxUnused, Phase, PruneOptions, PruneProgress, PruneReport};
use vmstash_repo::Repository;

use crate::args::{value_error, Global, PruneArgs};
use crate::exit::{self, usage};
use crate::output::{human, line, print_json};
use crate::{interrupt, progress, repo};

/// Runs `vmstash prune`.
pub fn run(g: &Global, a: &PruneArgs, dry_run: bool) -> Result<ExitCode> {
    let options = options(g, a, dry_run)?;
    let repo = repo::open(g)?;
    let report = run_on(g, &repo, &options)?;
    if g.json {
        print_json(&serde_json::to_value(&report)?);
    } else {
        print_report(&report);
    }
    Ok(exit::ok())
}

/// The engine's options from the flags; a malformed value is a usage error.
pub fn options(g: &Global, a: &PruneArgs, dry_run: bool) -> Result<PruneOptions> {
    if g.no_lock {
        return Err(usage(
            "--no-lock is for commands that only read; prune writes to the repository",
        ));
    }
    let max_unused = MaxUnused::parse(&a.max_unused).map_err(|e| usage(value_error(&e)))?;
    Ok(PruneOptions {
        max_unused,
        max_repack_bytes: a.max_repack_size,
        keep_delete: a.keep_delete,
        dry_run,
        instant_delete: a.instant_delete,
    })
}

/// Prunes `repo` with progress bars; returns the engine's report.
pub fn run_on(g: &Global, repo: &Repository, options: &PruneOptions) -> Result<PruneReport> {
    let cancel = interrupt::cancel_on_signals()?;
    let bars = Bars {
        g,
        bar: Mutex::new(None),
    };
    let report = prune(repo, options, &bars, &cancel).context("pruning")?;
    bars.finish();
    Ok(report)
}

/// One progress bar per phase.
struct Bars<'a> {
    g: &'a Global,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars<'_> {
    fn finish(&self) {
        if let Some(bar) = self
            .bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            bar.finish_and_clear();
        }
    }
}

impl PruneProgress for Bars<'_> {
    fn start(&self, phase: Phase, total: u64) {
        self.finish();
        let bar = match phase {
            Phase::Snapshots => progress::count(self.g, total, "reading snapshots"),
            Phase::Repack => progress::bytes(self.g, total, "repacking"),
            Phase::Delete => progress::count(self.g, total, "deleting packs"),
        };
        *self
            .bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = self
            .bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            bar.inc(n);
        }
    }
}

/// The report as a few lines: what was found, what was (or would be) done, what waits.
pub fn print_report(r: &PruneReport) {
    let verb = |done: &str, dry: &str| {
        if r.dry_run {
            dry.to_string()
        } else {
            done.to_string()
        }
    };
    line(format_args!(
        "{} snapshots need {} chunks; {} packs hold {} of needed and {} of unneeded data",
        r.snapshots,
        r.needed_blobs,
        r.packs.count,
        human(r.used_bytes),
        human(r.unused_bytes)
    ));
    if r.adopted > 0 {
        line(format_args!(
            "{} packs no index listed (from interrupted backups) {} indexed",
            r.adopted,
            verb("were", "would be")
        ));
    }
    line(format_args!(
        "{}: {} packs with no needed data ({}), {} partly used packs repacked ({} copied); {} unused left",
        verb("marked for deletion", "would mark for deletion"),
        r.removed.count,
        human(r.removed.bytes),
        r.repacked.count,
        human(r.copied_bytes),
        human(r.unused_after)
    ));
    line(format_args!(
        "{} {} marked packs ({})",
        verb("deleted", "would delete"),
        r.deleted.count,
        human(r.deleted.bytes)
    ));
    if r.recovered > 0 {
        line(format_args!(
            "{} marked packs a snapshot needs {} indexed again",
            r.recovered,
            verb("were", "would be")
        ));
    }
    if r.waiting.count > 0 {
        let why = if r.waiting_for.is_empty() {
            "the --keep-delete delay".to_string()
        } else {
            format!("{} to end", r.waiting_for.join(", "))
        };
        line(format_args!(
            "{} marked packs ({}) wait for {why}; a later prune deletes them",
            r.waiting.count,
            human(r.waiting.bytes)
        ));
    }
    for name in &r.unreadable_packs {
        eprintln!(
            "vmstash: warning: pack {name} is in no index and its header does not read; `vmstash check --read-data` tells whether anything needs it"
        );
    }
    for name in &r.unreadable_marks {
        eprintln!(
            "vmstash: warning: marks/{name} cannot be read; the packs it lists are never deleted (remove the file to let them be pruned)"
        );
    }
    if r.missing_blobs > 0 {
        eprintln!(
            "vmstash: warning: {} chunks that snapshots need are in no pack: run `vmstash check`",
            r.missing_blobs
        );
    }
    if r.dry_run {
        line("dry run: nothing changed");
    }
}

/// Flags of `forget` that only make sense with `--prune`.
pub fn refuse_without_prune(a: &PruneArgs) -> Result<()> {
    if a.instant_delete || a.max_repack_size.is_some() {
        return Err(usage(
            "--instant-delete and --max-repack-size need --prune (or use `vmstash prune`)",
        ));
    }
    Ok(())
}
