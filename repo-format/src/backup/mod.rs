//! Backing up disks into a new snapshot: the engine behind `vmstash backup`.
//!
//! [`back_up`] reads every disk of a [`BackupPlan`] through the [pipeline](pipeline), stores the
//! chunks the repository lacks through a [`Committer`] and, once every pack and index file is
//! durable, writes the snapshot manifest: the commit point (spec §15). Whatever fails before it
//! — a disk that cannot be read, a damaged image, a full disk, a cancelled token — no snapshot is
//! written and the repository is left in a state a crash could also leave; the packs already
//! durable are indexed, so the next backup reuses them.
//!
//! The caller holds a shared lock on the repository ([`Repository::lock`]) while this runs.

mod pipeline;
mod queue;

use std::ops::Range;
use std::time::Instant;

pub use pipeline::{DiskCounts, MAX_READERS};

use crate::adopt::{adopt_unindexed_packs, Adopted};
use crate::cancel::CancelToken;
use crate::chunkmap::{chunk_count, SEGMENT_ENTRIES_U64};
use crate::commit::Committer;
use crate::disk_reader::map_segment;
use crate::id::Id;
use crate::index::MasterIndex;
use crate::marks::recover_needed_packs;
use crate::progress::Progress;
use crate::repository::{now_rfc3339, Repository};
use crate::snapshot::{is_safe_name, Checkpoint, Disk, Manifest, QemuConfig, Summary};
use crate::source::DiskSource;
use crate::{threads, Error, Result, FORMAT_VERSION};
use pipeline::DiskJob;

/// One disk to back up.
pub struct BackupDisk {
    /// Its name in the snapshot (the libvirt target, or the file's stem).
    pub name: String,
    /// Where it is read from, for the manifest and messages.
    pub source: String,
    /// Its reader.
    pub reader: Box<dyn DiskSource>,
    /// Each chunk's id as the hashblocks helper computed it next to the disk, if it ran:
    /// chunks the repository has, and zero chunks, are then not read.
    pub known_ids: Option<Vec<Id>>,
    /// Chunks (by number) that changed-block tracking says were not written since the parent
    /// snapshot ([`BackupPlan::cbt_parent`]) was taken: their ids are taken from its disk of the
    /// same name, whatever `known_ids` holds for them (spec §19.6 step 3).
    pub unchanged: Vec<Range<u64>>,
    /// `known_ids` hold every chunk's id from a full hash: compare those of the `unchanged`
    /// chunks with the parent's and count the differences ([`DiskCounts::cbt_mismatches`])
    /// instead of taking the parent's ids.
    pub verify_unchanged: bool,
}

impl BackupDisk {
    /// A disk named `name`, read by `reader`, described as `source`.
    pub fn new(
        name: impl Into<String>,
        source: impl Into<String>,
        reader: Box<dyn DiskSource>,
    ) -> Self {
        BackupDisk {
            name: name.into(),
            source: source.into(),
            reader,
            known_ids: None,
            unchanged: Vec::new(),
            verify_unchanged: false,
        }
    }
}

/// Everything a new snapshot is made of.
pub struct BackupPlan {
    /// Snapshot series name (VM name, or a name for a set of disk files).
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The libvirt domain XML of a VM backup.
    pub domain_xml: Option<String>,
    /// The disks, in order.
    pub disks: Vec<BackupDisk>,
    /// When the work began (hashing on a hypervisor included), for the summary's duration;
    /// `None`: when [`back_up`] is called.
    pub started: Option<Instant>,
    /// The snapshot's time (RFC 3339); `None`: now.
    pub time: Option<String>,
    /// The host and user to record; `None`: this process's (a copy keeps the original's).
    pub made_by: Option<(String, String)>,
    /// The snapshot this one is a copy of (the manifest's `original`), if any.
    pub original: Option<Id>,
    /// The hypervisor checkpoint made at the snapshot's instant, to record in it.
    pub checkpoint: Option<Checkpoint>,
    /// The configuration of a QEMU backed up through QMP, to record in the snapshot.
    pub qemu: Option<QemuConfig>,
    /// The snapshot the disks' `unchanged` chunks come from: it must be the latest snapshot of
    /// the plan's name (the new snapshot's parent), or the backup fails before reading.
    pub cbt_parent: Option<Id>,
}

impl BackupPlan {
    /// A plan for snapshot `name` of `disks`, without tags or domain XML.
    pub fn new(name: impl Into<String>, disks: Vec<BackupDisk>) -> Self {
        BackupPlan {
            name: name.into(),
            tags: Vec::new(),
            domain_xml: None,
            disks,
            started: None,
            time: None,
            made_by: None,
            original: None,
            checkpoint: None,
            qemu: None,
            cbt_parent: None,
        }
    }
}

/// What a backup did.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The new snapshot's id.
    pub id: Id,
    /// The new snapshot.
    pub manifest: Manifest,
    /// The previous snapshot of the same name, if any.
    pub parent: Option<Id>,
    /// Blobs the repository had before (adopted ones included).
    pub known_blobs: usize,
    /// Packs of an interrupted backup that no index listed, indexed by this one (§15).
    pub adopted: Adopted,
    /// Packs a prune marked while this backup ran that the snapshot needs, indexed again
    /// before it was written (§20.4).
    pub recovered: usize,
    /// Per disk, in the plan's order.
    pub disks: Vec<DiskCounts>,
}

/// Backs up every disk of `plan` into `repo` and commits the snapshot; see the module docs.
///
/// `progress` is told the guest bytes done (their sum is the disks' total size); `cancel` is
/// polled before each chunk is read.
pub fn back_up(
    repo: &Repository,
    plan: BackupPlan,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<BackupReport> {
    let started = plan.started.unwrap_or_else(Instant::now);
    let time = plan.time.clone().unwrap_or_else(now_rfc3339);
    check_names(&plan)?;
    cancel.check()?;
    // Marks before the index (§20.4), so that adoption never takes a marked pack for an orphan.
    // A mark that cannot be read leaves adoption out: not adopting is always safe.
    let marked = repo.marked_packs();
    let mut index = repo.load_index()?;
    let adopted = match &marked {
        Ok(marked) => adopt_unindexed_packs(repo, &index, marked)?,
        Err(_) => Adopted::default(),
    };
    if adopted.packs > 0 {
        index = repo.load_index()?;
    }
    let parent = repo
        .snapshots()?
        .into_iter()
        .rev()
        .find(|(_, m)| m.name == plan.name);
    let mut plan = plan;
    let mismatches = take_unchanged_from_parent(repo, &index, &mut plan, parent.as_ref())?;
    let parent = parent.map(|(id, _)| id);
    let workers = threads::workers();
    let committer = Committer::new(repo, &index, workers);
    let jobs: Vec<DiskJob<'_>> = plan
        .disks
        .iter()
        .map(|d| DiskJob {
            name: &d.name,
            src: d.reader.as_ref(),
            ids: d.known_ids.as_deref(),
        })
        .collect();
    let chunk_size = repo.config().chunk_size;
    let results = pipeline::back_up_disks(
        &committer,
        &jobs,
        u64::from(chunk_size),
        workers,
        progress,
        cancel,
    );
    let results = match results.and_then(|r| cancel.check().map(|()| r)) {
        Ok(r) => r,
        Err(e) => {
            let upload_error = committer.stop();
            return Err(match e {
                Error::Aborted => upload_error.unwrap_or(Error::Aborted),
                e => e,
            });
        }
    };
    let committed = committer.finish()?;
    let stats = committed.stats;
    let mut disks = Vec::new();
    let mut counts = Vec::new();
    let mut total = DiskCounts::default();
    for ((input, result), mismatches) in plan.disks.iter().zip(results).zip(mismatches) {
        let mut c = result.counts;
        c.cbt_mismatches = mismatches;
        disks.push(Disk {
            name: input.name.clone(),
            source: input.source.clone(),
            format: input.reader.format().name().to_string(),
            size: input.reader.size(),
            chunk_size,
            map: result.map,
            lost: Vec::new(),
        });
        total.read += c.read;
        total.chunks += c.chunks;
        total.zero += c.zero;
        total.new += c.new;
        counts.push(c);
    }
    let (hostname, username) = plan.made_by.unwrap_or_else(|| {
        let me = repo.identity();
        (me.hostname.clone(), me.username.clone())
    });
    let mut manifest = Manifest {
        version: FORMAT_VERSION,
        time,
        hostname,
        username,
        name: plan.name,
        tags: plan.tags,
        parent,
        disks,
        domain_xml: plan.domain_xml,
        summary: Summary {
            disk_bytes: plan.disks.iter().map(|d| d.reader.size()).sum(),
            bytes_read: total.read,
            bytes_added: stats.stored_bytes,
            chunks: total.chunks,
            zero_chunks: total.zero,
            new_chunks: total.new,
            duration_seconds: started.elapsed().as_secs_f64(),
        },
        original: plan.original,
        checkpoint: plan.checkpoint,
        qemu: plan.qemu,
    };
    // The snapshot's own size is part of what was added; estimate it by its plaintext (it
    // compresses well), then store the real one.
    manifest.summary.bytes_added += u64::try_from(manifest.encode().len()).unwrap_or(0) / 2;
    let recovered = recover_needed_packs(repo, &committed.packs)?;
    let (id, _) = repo.save_snapshot(&manifest)?;
    Ok(BackupReport {
        id,
        manifest,
        parent,
        known_blobs: index.len(),
        adopted,
        recovered,
        disks: counts,
    })
}

/// Fills the known ids of every disk's `unchanged` chunks with the ids they have in `parent`
/// (the latest snapshot of the plan's name), which must be the plan's `cbt_parent` and hold a
/// disk of the same name, size and chunk size; or, for a disk to verify, counts the chunks
/// whose ids differ. Returns the counts, one per disk.
fn take_unchanged_from_parent(
    repo: &Repository,
    index: &MasterIndex,
    plan: &mut BackupPlan,
    parent: Option<&(Id, Manifest)>,
) -> Result<Vec<u64>> {
    let chunk_size = repo.config().chunk_size;
    let mut mismatches = vec![0u64; plan.disks.len()];
    for (disk, mismatched) in plan.disks.iter_mut().zip(&mut mismatches) {
        if disk.unchanged.is_empty() {
            continue;
        }
        let theirs = match (parent, plan.cbt_parent) {
            (Some((id, m)), Some(want)) if *id == want => {
                m.disks.iter().find(|d| d.name == disk.name)
            }
            _ => {
                return Err(Error::InvalidParameter(format!(
                    "disk {} has chunks to take from snapshot {}, which is not the latest snapshot of {} (another backup of it ran meanwhile?); back it up again",
                    disk.name,
                    plan.cbt_parent.map_or_else(|| "(none)".to_owned(), |id| id.short()),
                    plan.name
                )))
            }
        };
        let chunks = chunk_count(disk.reader.size(), chunk_size);
        let theirs = theirs
            .filter(|d| d.size == disk.reader.size() && d.chunk_size == chunk_size)
            .ok_or_else(|| {
                Error::InvalidParameter(format!(
                    "the parent snapshot has no disk {} of {} bytes to take unchanged chunks from",
                    disk.name,
                    disk.reader.size()
                ))
            })?;
        let ids = disk
            .known_ids
            .as_mut()
            .filter(|ids| u64::try_from(ids.len()).ok() == Some(chunks))
            .ok_or_else(|| {
                Error::InvalidParameter(format!(
                    "disk {} has unchanged chunks but not an id for each chunk",
                    disk.name
                ))
            })?;
        let mut segment: Option<(usize, Vec<Id>)> = None;
        for no in disk.unchanged.iter().flat_map(Clone::clone) {
            let (seg, at) = (
                usize::try_from(no / SEGMENT_ENTRIES_U64).unwrap_or(usize::MAX),
                usize::try_from(no % SEGMENT_ENTRIES_U64).unwrap_or(usize::MAX),
            );
            if segment.as_ref().is_none_or(|(s, _)| *s != seg) {
                segment = Some((seg, map_segment(repo, index, theirs, seg)?));
            }
            let id = segment.as_ref().and_then(|(_, ids)| ids.get(at));
            match (id, usize::try_from(no).ok().and_then(|i| ids.get_mut(i))) {
                (Some(id), Some(slot)) if disk.verify_unchanged => {
                    *mismatched += u64::from(slot != id);
                }
                (Some(id), Some(slot)) => *slot = *id,
                _ => {
                    return Err(Error::InvalidParameter(format!(
                        "unchanged chunk {no} is beyond the end of disk {}",
                        disk.name
                    )))
                }
            }
        }
    }
    Ok(mismatches)
}

/// Refuses a plan whose snapshot or disk names could not be file names in a restore or the
/// mount, or whose disk names repeat.
fn check_names(plan: &BackupPlan) -> Result<()> {
    if let Some(bad) = std::iter::once(&plan.name)
        .chain(plan.disks.iter().map(|d| &d.name))
        .find(|n| !is_safe_name(n))
    {
        return Err(Error::InvalidParameter(format!(
            "{bad:?} cannot be a snapshot or disk name: it must be a non-empty file name without '/'"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = plan.disks.iter().find(|d| !seen.insert(d.name.as_str())) {
        return Err(Error::InvalidParameter(format!(
            "two disks are named {:?}; disk names in a snapshot must differ",
            twice.name
        )));
    }
    if plan.disks.is_empty() {
        return Err(Error::InvalidParameter(
            "a snapshot needs at least one disk".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
