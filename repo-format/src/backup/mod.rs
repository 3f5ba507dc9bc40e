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

use std::time::Instant;

pub use pipeline::{DiskCounts, MAX_READERS};

use crate::adopt::{adopt_unindexed_packs, Adopted};
use crate::cancel::CancelToken;
use crate::commit::Committer;
use crate::id::Id;
use crate::marks::recover_needed_packs;
use crate::progress::Progress;
use crate::repository::{now_rfc3339, Repository};
use crate::snapshot::{is_safe_name, Disk, Manifest, Summary};
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
        .find(|(_, m)| m.name == plan.name)
        .map(|(id, _)| id);
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
    for (input, result) in plan.disks.iter().zip(results) {
        let c = result.counts;
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
