//! Where a backup's lines, progress and summaries go: the terminal for `vmstash backup`
//! ([`Terminal`]), or a daemon job's log and progress for `vmstash serve` (its own sink).
//! The backup code says what happens; the sink decides who hears it.

use std::sync::{Mutex, PoisonError};

use indicatif::ProgressBar;
use vmstash_repo::backup::{BackupDisk, BackupReport};
use vmstash_repo::{ChunkDone, Progress};

use super::cbt_summary::CbtSummary;
use super::print_summary;
use crate::args::Global;
use crate::output::human;
use crate::progress;

/// Who hears of a backup.
pub trait BackupSink: Sync {
    /// A line about what is happening ("web1: skipping disk vdb (cdrom)").
    fn say(&self, line: &str);
    /// The disks of snapshot `name` are about to be read.
    fn starting(&self, name: &str, disks: &[BackupDisk]);
    /// One more chunk is done (read and stored, found unchanged, or known to be zeros).
    fn chunk_done(&self, done: &ChunkDone);
    /// The reading of the snapshot ended; `report` when it was stored.
    fn ended(&self, report: Option<&BackupReport>);
    /// A VM's snapshot is stored and the VM is back on its disks: its summary, with the
    /// changed-block tracking summary when it was used.
    fn summary(&self, report: &BackupReport, cbt: Option<&CbtSummary>);
}

/// The engine's progress, into a sink.
pub struct SinkProgress<'a>(pub &'a dyn BackupSink);

impl Progress for SinkProgress<'_> {
    fn advance(&self, bytes: u64) {
        self.0.chunk_done(&ChunkDone {
            bytes,
            ..ChunkDone::default()
        });
    }

    fn chunk_done(&self, done: &ChunkDone) {
        self.0.chunk_done(done);
    }
}

/// The terminal: lines on stderr (unless `--quiet`), a progress bar, the summary on stdout.
pub struct Terminal<'a> {
    g: &'a Global,
    bar: Mutex<Option<ProgressBar>>,
}

impl<'a> Terminal<'a> {
    /// The terminal, as `g` (`--quiet`, `--json`, `-v`) wants it.
    pub fn new(g: &'a Global) -> Terminal<'a> {
        Terminal {
            g,
            bar: Mutex::new(None),
        }
    }
}

impl BackupSink for Terminal<'_> {
    fn say(&self, line: &str) {
        if !self.g.quiet {
            eprintln!("{line}");
        }
    }

    fn starting(&self, _name: &str, disks: &[BackupDisk]) {
        let total: u64 = disks.iter().map(|d| d.reader.size()).sum();
        let bar = progress::bytes(self.g, total, "backup");
        if self.g.verbose > 0 {
            for d in disks {
                eprintln!(
                    "disk {}: {} ({}), {} virtual",
                    d.name,
                    d.source,
                    d.reader.format().name(),
                    human(d.reader.size())
                );
            }
        }
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        bar.set_message(names.join(" "));
        *self.bar.lock().unwrap_or_else(PoisonError::into_inner) = Some(bar);
    }

    fn chunk_done(&self, done: &ChunkDone) {
        if let Some(bar) = self
            .bar
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            bar.inc(done.bytes);
        }
    }

    fn ended(&self, report: Option<&BackupReport>) {
        if let Some(bar) = self
            .bar
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            bar.finish_and_clear();
        }
        let Some(report) = report.filter(|_| self.g.verbose > 0) else {
            return;
        };
        let parent = report
            .parent
            .map_or_else(|| "none".to_string(), |p| p.short());
        eprintln!(
            "snapshot name {:?}, parent snapshot {parent}, {} blobs were in the repository",
            report.manifest.name, report.known_blobs
        );
        for (d, c) in report.manifest.disks.iter().zip(&report.disks) {
            eprintln!(
                "disk {}: {} chunks, {} all-zero, {} new, {} read",
                d.name,
                c.chunks,
                c.zero,
                c.new,
                human(c.read)
            );
        }
    }

    fn summary(&self, report: &BackupReport, cbt: Option<&CbtSummary>) {
        print_summary(self.g, report, cbt);
    }
}
