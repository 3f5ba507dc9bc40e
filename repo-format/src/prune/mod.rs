//! `prune`: reclaims the space of blobs no snapshot needs, while backups, restores and mounts go
//! on (spec/FORMAT.md §20).
//!
//! A run marks the packs it takes out of the index (unused ones, and partly used ones whose
//! needed blobs it copied into new packs) and deletes the packs that earlier runs marked once
//! every lock holder that could still use them has ended. It holds a shared lock and the prune
//! lock ([`PruneLock`]); `instant_delete` holds an exclusive lock instead and deletes at once.
//! The steps and why each order is safe are §20.3's; every step leaves a state a crash could
//! leave and the next run handles.

mod lock;
mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;

pub use lock::{remove_stale_prune_lock, PruneLock, PRUNE_PURPOSE};
pub use plan::{classify, MaxUnused, Plan};

use crate::backend::{relative_path, FileKind};
use crate::commit::Committer;
use crate::id::Id;
use crate::index::{self, IndexedPack, MasterIndex};
use crate::leftovers::remove_leftovers;
use crate::lock::Holder;
use crate::marks::{Mark, MarkFile};
use crate::repository::Repository;
use crate::{pack, threads, CancelToken, Error, Result};

/// The default `--keep-delete`: a day less an hour, so that a daily prune deletes what the
/// previous day's run marked (rustic's default).
pub const DEFAULT_KEEP_DELETE: Duration = Duration::from_secs(23 * 3600);

/// What a prune may do.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Unused space tolerated in kept packs.
    pub max_unused: MaxUnused,
    /// Sealed bytes to copy at most when repacking (`None`: no limit).
    pub max_repack_bytes: Option<u64>,
    /// How long a mark must be old before its packs may be deleted.
    pub keep_delete: Duration,
    /// Decide and report, change nothing.
    pub dry_run: bool,
    /// Exclusive lock, delete now (restic's behaviour).
    pub instant_delete: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused: MaxUnused::Hundredths(500),
            max_repack_bytes: None,
            keep_delete: DEFAULT_KEEP_DELETE,
            dry_run: false,
            instant_delete: false,
        }
    }
}

/// The phases a prune reports progress for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the snapshots' maps; total: snapshots.
    Snapshots,
    /// Copying needed blobs out of partly used packs; total: sealed bytes.
    Repack,
    /// Deleting packs; total: packs.
    Delete,
}

/// Receives a prune's progress.
pub trait PruneProgress: Sync {
    /// A phase starts with `total` units of work.
    fn start(&self, phase: Phase, total: u64);
    /// `n` more units of the current phase are done.
    fn advance(&self, n: u64);
}

/// Progress ignored.
impl PruneProgress for crate::NoProgress {
    fn start(&self, _: Phase, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// Packs and their bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Packs {
    /// How many.
    pub count: usize,
    /// Their file sizes.
    pub bytes: u64,
}

impl Packs {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

/// What a prune found and did (or, dry, would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Snapshots whose blobs are kept.
    pub snapshots: usize,
    /// Distinct blobs they need.
    pub needed_blobs: usize,
    /// Indexed packs before the run (unindexed ones adopted included).
    pub packs: Packs,
    /// Sealed bytes of needed blobs, and of the rest, in those packs.
    pub used_bytes: u64,
    /// Sealed bytes of unneeded blobs and second copies.
    pub unused_bytes: u64,
    /// Unindexed packs that were indexed from their headers.
    pub adopted: usize,
    /// Unindexed packs whose header does not read (left alone: `repair packs`).
    pub unreadable_packs: Vec<String>,
    /// Needed blobs in no pack (`check` reports them).
    pub missing_blobs: usize,
    /// Packs holding no needed blob, marked for deletion.
    pub removed: Packs,
    /// Partly used packs rewritten, then marked.
    pub repacked: Packs,
    /// Blobs copied by repacking.
    pub repacked_blobs: u64,
    /// Their sealed bytes.
    pub copied_bytes: u64,
    /// Bytes written by repacking (packs and their index files).
    pub repack_written: u64,
    /// Unused bytes left in kept packs.
    pub unused_after: u64,
    /// Marked packs deleted (marked by an earlier run, or by this one with `instant_delete`).
    pub deleted: Packs,
    /// Marked packs a snapshot turned out to need, indexed again.
    pub recovered: usize,
    /// Marked packs still waiting: holders still running, or the keep-delete delay.
    pub waiting: Packs,
    /// The lock holders they wait for.
    pub waiting_for: Vec<String>,
    /// Mark files that cannot be read: their packs are never deleted.
    pub unreadable_marks: Vec<String>,
    /// Index files written and removed.
    pub index_files_written: usize,
    /// Old index files removed.
    pub index_files_removed: usize,
    /// Stale locks removed.
    pub stale_locks_removed: usize,
    /// Old temporary files removed.
    pub temporary_files_removed: usize,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ignore_missing(r: Result<()>) -> Result<()> {
    match r {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Runs a prune; see the module docs. Takes its own locks.
pub fn prune(
    repo: &Repository,
    opts: &PruneOptions,
    progress: &dyn PruneProgress,
    cancel: &CancelToken,
) -> Result<PruneReport> {
    let guard = repo.lock(PRUNE_PURPOSE, opts.instant_delete)?;
    let _prune_lock = PruneLock::take(repo, &guard)?;
    let me = guard.holder().clone();
    let run = || {
        Run {
            repo,
            opts,
            progress,
            cancel,
            me,
            report: PruneReport {
                dry_run: opts.dry_run,
                ..PruneReport::default()
            },
        }
        .run()
    };
    if opts.instant_delete {
        return run();
    }
    // Backups may run meanwhile: they go first. The work runs on a thread of lower CPU and
    // I/O priority, and every thread it starts inherits it.
    std::thread::scope(|s| {
        s.spawn(|| {
            crate::priority::lower_for_background();
            run()
        })
        .join()
        .unwrap_or(Err(Error::Aborted))
    })
}

/// The marks of earlier runs, sorted out by step 1.
#[derive(Default)]
struct OldMarks {
    /// Packs of due marks.
    due: HashSet<Id>,
    /// Names of due mark files (deleted after their packs).
    due_files: Vec<String>,
    /// Every pack a readable mark lists.
    all: HashSet<Id>,
    /// Packs of marks not yet due.
    waiting: HashSet<Id>,
    /// Some mark cannot be read.
    unreadable: bool,
}

struct Run<'a> {
    repo: &'a Repository,
    opts: &'a PruneOptions,
    progress: &'a dyn PruneProgress,
    cancel: &'a CancelToken,
    me: Holder,
    report: PruneReport,
}

impl Run<'_> {
    fn run(mut self) -> Result<PruneReport> {
        // 1. Old marks, judged against the locks live now.
        let old = self.old_marks()?;
        // 2. Listing, after step 1.
        let listing = self.repo.snapshot_listing()?;
        if let Some((name, e)) = listing.damaged.first() {
            return Err(Error::corrupt(
                relative_path(FileKind::Snapshot, name),
                format!(
                    "cannot be read ({e}); prune cannot know what it needs and stops: remove it with `vmstash forget {}` (or restore the file) and prune again",
                    name.get(..8).unwrap_or(name)
                ),
            ));
        }
        let index_files = self.repo.index_files()?;
        let old_index_files: Vec<String> = index_files.iter().map(|(n, _)| n.clone()).collect();
        let pack_sizes: HashMap<Id, u64> = self
            .repo
            .backend()
            .list(FileKind::Pack)?
            .into_iter()
            .filter_map(|(n, s)| Id::from_hex(&n).map(|id| (id, s)))
            .collect();
        let mut packs = index::distinct_packs(index_files);
        let indexed: HashSet<Id> = packs.iter().map(|p| p.id).collect();
        if !old.unreadable {
            self.adopt(&mut packs, &indexed, &old.all, &pack_sizes);
        }
        self.cancel.check()?;
        // 3. Needed blobs.
        self.report.snapshots = listing.snapshots.len();
        let maps = plan::map_index(packs.iter());
        let mut seen_segments = HashSet::new();
        let mut needed = HashSet::new();
        self.progress.start(
            Phase::Snapshots,
            u64::try_from(listing.snapshots.len()).unwrap_or(u64::MAX),
        );
        plan::needed_blobs(
            self.repo,
            &maps,
            &listing.snapshots,
            &mut seen_segments,
            &mut needed,
            self.cancel,
            &|| self.progress.advance(1),
        )?;
        self.report.needed_blobs = needed.len();
        // 4 and 5. Plan; due packs a snapshot needs are recovered.
        let plan = plan::classify(
            &packs,
            &mut needed,
            self.opts.max_unused,
            self.opts.max_repack_bytes,
        );
        let recovered = self.recover_needed(&old, &indexed, &mut needed, &pack_sizes)?;
        self.report.recovered = recovered.len();
        let delete_now: Vec<Id> = old
            .due
            .iter()
            .filter(|id| !indexed.contains(id) && !old.waiting.contains(id))
            .filter(|id| !recovered.iter().any(|p| &p.id == *id))
            .filter(|id| pack_sizes.contains_key(id))
            .copied()
            .collect();
        self.fill_report(&packs, &plan, &pack_sizes, &old, &delete_now);
        if self.opts.dry_run {
            return Ok(self.report);
        }
        // 6. Repack.
        self.repack(&packs, &plan)?;
        // 7. New index: every kept pack once, and the recovered ones.
        let taken: HashSet<usize> = plan
            .remove
            .iter()
            .copied()
            .chain(plan.repack.iter().map(|u| u.pack))
            .collect();
        let kept: Vec<&IndexedPack> = packs
            .iter()
            .enumerate()
            .filter(|(i, _)| !taken.contains(i))
            .map(|(_, p)| p)
            .chain(recovered.iter())
            .collect();
        self.write_index(&kept)?;
        // 8. Mark what was taken out.
        let marked: Vec<Id> = taken
            .iter()
            .filter_map(|&i| packs.get(i).map(|p| p.id))
            .collect();
        let mut mark = Mark {
            time: now_secs(),
            hostname: self.me.hostname.clone(),
            holders: None,
            packs: marked,
        };
        let mark_name = if mark.packs.is_empty() {
            None
        } else {
            Some(self.repo.save_mark(&mark)?)
        };
        // 9. Snapshots committed since step 2 keep what they need.
        let taken_packs: Vec<&IndexedPack> = taken.iter().filter_map(|&i| packs.get(i)).collect();
        let back =
            self.recover_for_late_snapshots(&listing.snapshots, &taken_packs, &mut seen_segments)?;
        mark.packs.retain(|id| !back.contains(id));
        drop(packs);
        // 10. Old index files.
        for name in &old_index_files {
            ignore_missing(self.repo.backend().remove(FileKind::Index, name))?;
            self.report.index_files_removed += 1;
        }
        // 11. Holders: whoever may have loaded the old index.
        let mut finished_marks = Vec::new();
        // With a live lock that cannot be read, its holder is unknown: the mark stays
        // unfinished, and a later run records the holders live then (step 1).
        if let (Some(name), Ok(holders)) = (mark_name, self.live_holders()) {
            mark.holders = Some(holders);
            let new = self.repo.save_mark(&mark)?;
            ignore_missing(self.repo.backend().remove(FileKind::Mark, &name))?;
            if self.opts.instant_delete {
                finished_marks.push(new);
            }
        }
        // 12. Delete.
        let mut delete: Vec<Id> = delete_now;
        if self.opts.instant_delete {
            delete.extend(mark.packs.iter().copied());
        }
        self.delete_packs(&delete, &pack_sizes)?;
        for name in old.due_files.iter().chain(&finished_marks) {
            ignore_missing(self.repo.backend().remove(FileKind::Mark, name))?;
        }
        // 13. Clean up after killed processes.
        self.report.stale_locks_removed = self.repo.remove_stale_locks()?.len();
        self.report.temporary_files_removed = remove_leftovers(self.repo, false)?.removed.len();
        Ok(self.report)
    }

    /// Step 1: which marks are due; marks of a stopped run get their holders.
    fn old_marks(&mut self) -> Result<OldMarks> {
        let mut out = OldMarks::default();
        let files = self.repo.mark_files()?;
        if files.is_empty() {
            return Ok(out);
        }
        let live = self.live_holders();
        let now = now_secs();
        let mut waiting_for = HashSet::new();
        for MarkFile { name, mark } in files {
            let mark = match mark {
                Ok(m) => m,
                Err(_) => {
                    out.unreadable = true;
                    self.report.unreadable_marks.push(name);
                    continue;
                }
            };
            out.all.extend(mark.packs.iter().copied());
            let due = match (&mark.holders, &live) {
                _ if self.opts.instant_delete => true,
                (Some(holders), Ok(live)) => {
                    let blocking: Vec<&Holder> =
                        holders.iter().filter(|h| live.contains(h)).collect();
                    waiting_for.extend(blocking.iter().map(ToString::to_string));
                    blocking.is_empty()
                        && now.saturating_sub(mark.time) >= self.opts.keep_delete.as_secs()
                }
                (None, Ok(live)) => {
                    if !self.opts.dry_run {
                        let finished = Mark {
                            holders: Some(live.clone()),
                            ..mark.clone()
                        };
                        self.repo.save_mark(&finished)?;
                        ignore_missing(self.repo.backend().remove(FileKind::Mark, &name))?;
                    }
                    false
                }
                (_, Err(_)) => false,
            };
            if due {
                out.due.extend(mark.packs);
                out.due_files.push(name);
            } else {
                out.waiting.extend(mark.packs);
            }
        }
        if let Err(e) = live {
            waiting_for.insert(format!("an unreadable lock ({e})"));
        }
        self.report.waiting_for = waiting_for.into_iter().collect();
        self.report.waiting_for.sort();
        Ok(out)
    }

    /// The holders of every live lock but this prune's own.
    fn live_holders(&self) -> Result<Vec<Holder>> {
        Ok(self
            .repo
            .live_holders()?
            .into_iter()
            .map(|(h, _)| h)
            .filter(|h| *h != self.me)
            .collect())
    }

    /// Step 2: packs neither indexed nor marked are indexed from their headers (in memory: the
    /// new index of step 7 lists them, or the mark of step 8 does).
    fn adopt(
        &mut self,
        packs: &mut Vec<IndexedPack>,
        indexed: &HashSet<Id>,
        marked: &HashSet<Id>,
        sizes: &HashMap<Id, u64>,
    ) {
        let mut orphans: Vec<(&Id, &u64)> = sizes
            .iter()
            .filter(|(id, _)| !indexed.contains(id) && !marked.contains(id))
            .collect();
        orphans.sort();
        for (id, &size) in orphans {
            match self.repo.read_pack_header(*id, size) {
                Ok(p) => {
                    packs.push(p);
                    self.report.adopted += 1;
                }
                Err(_) => self.report.unreadable_packs.push(id.to_hex()),
            }
        }
    }

    /// Step 4: marked packs (not indexed) holding needed blobs that no indexed pack holds.
    fn recover_needed(
        &self,
        old: &OldMarks,
        indexed: &HashSet<Id>,
        missing: &mut HashSet<Id>,
        sizes: &HashMap<Id, u64>,
    ) -> Result<Vec<IndexedPack>> {
        let mut out = Vec::new();
        if missing.is_empty() {
            return Ok(out);
        }
        let mut candidates: Vec<&Id> = old.all.iter().filter(|id| !indexed.contains(id)).collect();
        candidates.sort();
        for id in candidates {
            let Some(&size) = sizes.get(id) else {
                continue;
            };
            let Ok(p) = self.repo.read_pack_header(*id, size) else {
                continue;
            };
            if p.blobs.iter().any(|b| missing.contains(&b.id)) {
                for b in &p.blobs {
                    missing.remove(&b.id);
                }
                out.push(p);
            }
        }
        Ok(out)
    }

    fn fill_report(
        &mut self,
        packs: &[IndexedPack],
        plan: &Plan,
        sizes: &HashMap<Id, u64>,
        old: &OldMarks,
        delete_now: &[Id],
    ) {
        let size = |id: &Id| sizes.get(id).copied().unwrap_or(0);
        let r = &mut self.report;
        for p in packs {
            r.packs.add(size(&p.id));
        }
        r.used_bytes = plan.used_bytes;
        r.unused_bytes = plan.unused_bytes;
        r.missing_blobs = plan.missing_blobs;
        r.unused_after = plan.unused_after;
        for &i in &plan.remove {
            if let Some(p) = packs.get(i) {
                r.removed.add(size(&p.id));
            }
        }
        for u in &plan.repack {
            if let Some(p) = packs.get(u.pack) {
                r.repacked.add(size(&p.id));
                r.repacked_blobs += u64::try_from(u.used.len()).unwrap_or(u64::MAX);
                r.copied_bytes += u.used_bytes;
            }
        }
        for id in delete_now {
            r.deleted.add(size(id));
        }
        if self.opts.instant_delete {
            r.deleted.count += r.removed.count + r.repacked.count;
            r.deleted.bytes += r.removed.bytes + r.repacked.bytes;
        }
        for id in old.waiting.iter().filter(|id| sizes.contains_key(id)) {
            r.waiting.add(size(id));
        }
    }

    /// Step 6: copies the needed blobs of the packs to repack into new packs, on every core.
    fn repack(&mut self, packs: &[IndexedPack], plan: &Plan) -> Result<()> {
        if plan.repack.is_empty() {
            return Ok(());
        }
        let total: u64 = plan.repack.iter().map(|u| u.used_bytes).sum();
        self.progress.start(Phase::Repack, total);
        let empty = MasterIndex::default();
        // While a backup, restore or mount runs, the copying takes half the cores: they go first.
        let others = self.live_holders().map_or(true, |h| !h.is_empty());
        let workers = if others && !self.opts.instant_delete {
            (threads::workers() / 2).max(1)
        } else {
            threads::workers()
        };
        let committer = Committer::new(self.repo, &empty, workers);
        let next = AtomicUsize::new(0);
        let result = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        loop {
                            self.cancel.check()?;
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(usage) = plan.repack.get(i) else {
                                return Ok(());
                            };
                            let Some(pack) = packs.get(usage.pack) else {
                                return Ok(());
                            };
                            self.copy_blobs(pack, &usage.used, &committer)?;
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(Error::Aborted)))
                .collect::<Result<Vec<()>>>()
        });
        if let Err(e) = result {
            let upload = committer.stop();
            return Err(match e {
                Error::Aborted => upload.unwrap_or(Error::Aborted),
                e => e,
            });
        }
        let committed = committer.finish()?;
        self.report.repack_written = committed.stats.stored_bytes;
        Ok(())
    }

    /// Reads, verifies and stores again the blobs `used` of `pack`.
    fn copy_blobs(
        &self,
        pack: &IndexedPack,
        used: &[crate::entry::BlobEntry],
        committer: &Committer<'_>,
    ) -> Result<()> {
        let name = pack.id.to_hex();
        let file = relative_path(FileKind::Pack, &name);
        for entry in used {
            let sealed = self.repo.backend().read_range(
                FileKind::Pack,
                &name,
                u64::from(entry.offset),
                entry.length,
            )?;
            let plain =
                pack::open_blob_owned(self.repo.master(), &pack.salt, entry, sealed, &file)?;
            committer.save(entry.ty, entry.id, &plain)?;
            self.progress.advance(u64::from(entry.length));
        }
        Ok(())
    }

    /// Step 7: index files listing `packs`.
    fn write_index(&mut self, packs: &[&IndexedPack]) -> Result<()> {
        self.report.index_files_written += self.repo.save_index(packs)?;
        Ok(())
    }

    /// Step 9: for snapshots written since step 2, index again the taken packs they need.
    fn recover_for_late_snapshots(
        &mut self,
        seen: &[(Id, crate::snapshot::Manifest)],
        taken: &[&IndexedPack],
        seen_segments: &mut HashSet<Id>,
    ) -> Result<HashSet<Id>> {
        let before: HashSet<Id> = seen.iter().map(|(id, _)| *id).collect();
        let late: Vec<_> = self
            .repo
            .snapshot_listing()?
            .snapshots
            .into_iter()
            .filter(|(id, _)| !before.contains(id))
            .collect();
        if late.is_empty() || taken.is_empty() {
            return Ok(HashSet::new());
        }
        let current = self.repo.load_index()?;
        let maps = plan::map_index(taken.iter().copied());
        let both = MasterIndexPair {
            a: &current,
            b: &maps,
        };
        let mut needed = HashSet::new();
        for (_, manifest) in &late {
            for disk in &manifest.disks {
                for (s, seg) in disk.map.iter().enumerate() {
                    if seg.is_zero() || !seen_segments.insert(*seg) {
                        continue;
                    }
                    needed.insert(*seg);
                    let ids = both.map_segment(self.repo, disk, s)?;
                    needed.extend(ids.into_iter().filter(|id| !id.is_zero()));
                }
            }
        }
        let back: Vec<IndexedPack> = taken
            .iter()
            .filter(|p| p.blobs.iter().any(|b| needed.contains(&b.id)))
            .map(|p| (*p).clone())
            .collect();
        self.report.recovered += back.len();
        let refs: Vec<&IndexedPack> = back.iter().collect();
        self.write_index(&refs)?;
        Ok(back.iter().map(|p| p.id).collect())
    }

    /// Step 12: deletes packs (missing ones are already gone).
    fn delete_packs(&mut self, ids: &[Id], sizes: &HashMap<Id, u64>) -> Result<()> {
        self.progress
            .start(Phase::Delete, u64::try_from(ids.len()).unwrap_or(u64::MAX));
        for id in ids {
            if sizes.contains_key(id) {
                ignore_missing(self.repo.backend().remove(FileKind::Pack, &id.to_hex()))?;
            }
            self.progress.advance(1);
        }
        Ok(())
    }
}

/// Two indexes searched in turn: a late snapshot's map blobs are in packs indexed since the
/// prune loaded the index, or in a pack it just took out.
struct MasterIndexPair<'a> {
    a: &'a MasterIndex,
    b: &'a MasterIndex,
}

impl MasterIndexPair<'_> {
    fn map_segment(
        &self,
        repo: &Repository,
        disk: &crate::snapshot::Disk,
        s: usize,
    ) -> Result<Vec<Id>> {
        match crate::disk_reader::map_segment(repo, self.a, disk, s) {
            Err(Error::BlobNotFound(_)) => crate::disk_reader::map_segment(repo, self.b, disk, s),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests;
