//! A VM's backup with changed-block tracking (spec/FORMAT.md §19.6): a pull-mode backup job
//! of a running VM (or `qemu-nbd` on a shut-off VM's images, see
//! [`crate::libvirt::offline_job`]) exports every included disk over NBD as of one instant and
//! makes a checkpoint then; the disks are hashed on the hypervisor through those exports, reading only the chunks
//! the dirty bitmap since the parent snapshot's checkpoint marks (all chunks when there is no
//! usable parent); every other chunk keeps its id from the parent snapshot.
//!
//! Whenever the tracking cannot be trusted (no checkpoint in the last snapshot, the checkpoint
//! gone from libvirt, a bitmap missing from the export, a disk new or resized) the disk is
//! hashed whole through the same export, and one line says why. Every [`VERIFY_EVERY`]th backup
//! (and with `--verify-cbt`) hashes everything and compares with what the bitmap said.

use anyhow::{Context, Result};
use vmstash_libvirt_xml::backup::{checkpoint_for_redefine, JobDisk};
use vmstash_libvirt_xml::DiskDef;
use vmstash_repo::backup::{BackupDisk, BackupReport};
use vmstash_repo::repository::now_rfc3339;
use vmstash_repo::snapshot::{Checkpoint, Manifest};
use vmstash_repo::Id;

use super::cbt_summary::CbtSummary;
use super::domain::VmBackup;
use crate::helper::ChunkReport;
use crate::libvirt::backup_job::{self, checkpoint_name, scratch_path, BackupJob, JobKind};
use crate::libvirt::hypervisor::declared_format;
use crate::libvirt::nbd_disk::{NbdDisk, NbdExport};
use crate::libvirt::offline_job::{self, OfflineDisk};
use crate::source::ImageFormat;

/// Every how many backups of a VM one hashes every chunk and checks the dirty bitmaps against
/// it: a week of nightly backups. A bitmap that lost writes (QEMU crashed before flushing it, a
/// bug) is then found within a week, and the check costs reading the disks on the host once a
/// week, not moving them: only chunks the repository lacks cross the network.
pub const VERIFY_EVERY: u32 = 7;

/// How a CBT backup went: done, or not possible (and why, for the line that says so).
pub enum Outcome {
    /// The snapshot is saved.
    Done(Box<(BackupReport, CbtSummary)>),
    /// Changed-block tracking cannot be used for this VM; nothing was changed on it.
    NotUsed(String),
}

/// The parent a backup counts from: the latest snapshot of the VM and its checkpoint.
pub(super) struct Since {
    /// The snapshot.
    pub id: Id,
    /// Its manifest.
    pub manifest: Manifest,
    /// The checkpoint made with it.
    pub checkpoint: Checkpoint,
}

/// The latest snapshot of the VM, if it was made with a checkpoint; otherwise says why the
/// backup hashes everything. Whether the hypervisor still has the checkpoint is the caller's.
pub(super) fn latest_with_checkpoint(v: &VmBackup<'_>) -> Result<Option<Since>> {
    let latest = v
        .repo
        .snapshots()?
        .into_iter()
        .rev()
        .find(|(_, m)| m.name == v.name);
    let Some((id, manifest)) = latest else {
        return Ok(None);
    };
    let Some(checkpoint) = manifest.checkpoint.clone() else {
        (v.say)(&format!(
            "{}: hashing every chunk: its last snapshot {} was made without changed-block tracking",
            v.name,
            id.short()
        ));
        return Ok(None);
    };
    Ok(Some(Since {
        id,
        manifest,
        checkpoint,
    }))
}

/// Backs up the VM of `v` with changed-block tracking, if it can be used: a running one
/// (`live`) through a libvirt backup job, a shut-off one through `qemu-nbd` on its images.
pub fn back_up(v: &VmBackup<'_>, live: bool) -> Result<Outcome> {
    if !v.hv.can_read_nbd() {
        let why = if v.a.no_helper {
            "--no-helper was given, and the helper is what reads a backup job's exports on the host"
        } else {
            "the hashblocks helper does not run on the host, and it is what reads a backup job's exports there"
        };
        return Ok(Outcome::NotUsed(why.to_owned()));
    }
    if !v
        .disks
        .iter()
        .any(|d| declared_format(d) == ImageFormat::Qcow2)
    {
        return Ok(Outcome::NotUsed(
            "it has no qcow2 disk (dirty bitmaps need qcow2)".to_owned(),
        ));
    }
    let time = v.a.time.clone().unwrap_or_else(now_rfc3339);
    let checkpoint = checkpoint_name(&time);
    let since = find_since(v, live)?;
    let verify = v.a.verify_cbt
        || since
            .as_ref()
            .is_some_and(|s| s.checkpoint.since_full_hash + 1 >= VERIFY_EVERY);
    let virsh = &v.hv.virsh;
    let disks = job_disks(v, &checkpoint, since.as_ref());
    let offline = offline_disks(v, &disks);
    let cleanup = if live {
        backup_job::cleanup_commands(virsh, v.name, &checkpoint)
    } else {
        offline_job::cleanup_commands(v.key(), &checkpoint, &offline)
    };
    v.hv.on_exit(&cleanup)?;
    let started = if live {
        start_job(v, &checkpoint, since.as_ref(), disks)
    } else {
        offline_job::begin(v.say, virsh, (v.name, v.key()), &checkpoint, &offline)
    };
    let job = match started {
        Ok(job) => job,
        Err(e) => {
            v.hv.on_exit(&[])?;
            return Ok(Outcome::NotUsed(format!(
                "{}: {}",
                if live {
                    "libvirt could not start a backup job"
                } else {
                    "its disks could not be exported"
                },
                crate::output::describe(&e)
            )));
        }
    };
    let done = read_and_store(v, &job, since.as_ref(), verify, &time);
    let ended = match &job.kind {
        JobKind::Libvirt { scratch } if done.is_ok() => {
            backup_job::end_saved(virsh, v.name, &job, scratch)
        }
        JobKind::Libvirt { scratch } => backup_job::end_failed(virsh, v.name, &checkpoint, scratch),
        JobKind::QemuNbd {
            pid_files,
            images,
            xml,
        } => offline_job::end(virsh, v.name, &job, pid_files, images, xml, done.is_ok()),
    };
    let cleared = v.hv.on_exit(&[]);
    let ended = ended.and(cleared).with_context(|| {
        format!(
            "the backup job of {} could not be ended; run `vmstash vm-repair --connect {} --vm {}`",
            v.name,
            v.hv.uri(),
            v.name
        )
    });
    match (done, ended) {
        (Ok(done), Ok(())) => Ok(Outcome::Done(Box::new(done))),
        (Ok(done), Err(e)) => {
            v.summarise(&done.0, Some(&done.1));
            Err(e)
        }
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => Err(e.context(crate::output::describe(&c))),
    }
}

/// The included disks of a shut-off domain as `offline_job` takes them.
fn offline_disks<'a>(v: &'a VmBackup<'_>, disks: &[JobDisk]) -> Vec<OfflineDisk<'a>> {
    disks
        .iter()
        .filter(|d| !matches!(d, JobDisk::Skip { .. }))
        .filter_map(|d| {
            let def = v.disks.iter().find(|x| x.target == d.target())?;
            Some(OfflineDisk {
                def,
                format: declared_format(def).name(),
                job: d.clone(),
            })
        })
        .collect()
}

/// The latest snapshot of the VM, if its checkpoint is still on the hypervisor (or, lost by
/// libvirt, can be redefined from the snapshot: its bitmaps are still in the images); otherwise
/// says why the backup hashes everything.
fn find_since(v: &VmBackup<'_>, live: bool) -> Result<Option<Since>> {
    let Some(since) = latest_with_checkpoint(v)? else {
        return Ok(None);
    };
    let (id, checkpoint) = (since.id, &since.checkpoint);
    if !v.hv.virsh.checkpoints(v.name)?.contains(&checkpoint.name) {
        if let Err(e) = redefine(v, checkpoint, live) {
            (v.say)(&format!(
                "{}: hashing every chunk: checkpoint {} of its last snapshot {} is gone from libvirt, and its images cannot take it back ({})",
                v.name,
                checkpoint.name,
                id.short(),
                crate::output::describe(&e)
            ));
            return Ok(None);
        }
        (v.say)(&format!(
            "{}: checkpoint {} of its last snapshot {} was gone from libvirt (the VM was redefined?); redefined it from the snapshot",
            v.name,
            checkpoint.name,
            id.short()
        ));
    }
    Ok(Some(since))
}

/// Redefines a checkpoint libvirt lost from the XML recorded in the snapshot; a running domain's
/// images are checked to hold its bitmaps (a shut-off one's are when qemu-nbd exports them).
fn redefine(v: &VmBackup<'_>, checkpoint: &Checkpoint, live: bool) -> Result<()> {
    let xml = checkpoint_for_redefine(&checkpoint.xml)?;
    v.hv.virsh.redefine_checkpoint(v.name, &xml, live)
}

/// Starts the backup job: incremental where `since` allows, and if libvirt refuses that (a
/// bitmap missing or inconsistent in the image), full, after one line saying why.
fn start_job(
    v: &VmBackup<'_>,
    checkpoint: &str,
    since: Option<&Since>,
    disks: Vec<JobDisk>,
) -> Result<BackupJob> {
    let quiesce = v.hv.virsh.agent_responds(v.name);
    if !quiesce {
        (v.say)(&format!(
            "{}: no guest agent answers; taking a crash-consistent backup (install qemu-guest-agent in the guest for a quiesced one)",
            v.name
        ));
    }
    let incremental = disks
        .iter()
        .any(|d| matches!(d, JobDisk::Incremental { .. }));
    match backup_job::begin(&v.hv.virsh, v.name, checkpoint, &disks, quiesce) {
        Err(e) if incremental => {
            (v.say)(&format!(
                "{}: hashing every chunk: libvirt refused to count from checkpoint {} ({})",
                v.name,
                since.map_or("", |s| s.checkpoint.name.as_str()),
                crate::output::describe(&e)
            ));
            let full = job_disks(v, checkpoint, None);
            backup_job::begin(&v.hv.virsh, v.name, checkpoint, &full, quiesce)
        }
        other => other,
    }
}

/// How each disk of the domain takes part: included qcow2 disks that the parent snapshot has
/// are incremental, other included disks full (qcow2 ones with a bitmap for the next time).
fn job_disks(v: &VmBackup<'_>, checkpoint: &str, since: Option<&Since>) -> Vec<JobDisk> {
    v.dom
        .disks
        .iter()
        .filter(|d| d.device == "disk")
        .map(|d| {
            let target = d.target.clone();
            if !v.disks.iter().any(|x| x.target == d.target) {
                return JobDisk::Skip { target };
            }
            let scratch = scratch_path(d, checkpoint);
            let qcow2 = declared_format(d) == ImageFormat::Qcow2;
            let in_parent = since.filter(|s| s.manifest.disks.iter().any(|p| p.name == target));
            match in_parent {
                Some(s) if qcow2 => JobDisk::Incremental {
                    target,
                    scratch,
                    since: s.checkpoint.name.clone(),
                },
                _ => JobDisk::Full {
                    target,
                    scratch,
                    bitmap: qcow2,
                },
            }
        })
        .collect()
}

/// Hashes every exported disk and stores the snapshot.
fn read_and_store(
    v: &VmBackup<'_>,
    job: &BackupJob,
    since: Option<&Since>,
    verify: bool,
    time: &str,
) -> Result<(BackupReport, CbtSummary)> {
    // A job libvirt would only start in full counts from nothing.
    let since = since.filter(|_| job.since.is_some());
    let chunk_size = v.repo.config().chunk_size;
    let mut inputs = Vec::new();
    let mut bytes_hashed = 0;
    let mut tracked = false;
    for (target, export) in &job.exports {
        let d = v
            .disks
            .iter()
            .find(|d| &d.target == target)
            .context("a disk of the job is not among the included disks")?;
        let parent_size = since
            .and_then(|s| s.manifest.disks.iter().find(|p| &p.name == target))
            .map(|p| p.size);
        let read = read_disk(v, d, export, parent_size, verify, chunk_size)?;
        bytes_hashed += read.bytes_hashed;
        if read.disk.reader.size() == 0 {
            (v.say)(&format!(
                "{}: skipping disk {target} (it is empty: 0 bytes)",
                v.name
            ));
            continue;
        }
        tracked |= !read.disk.unchanged.is_empty() && !read.disk.verify_unchanged;
        inputs.push(read.disk);
    }
    let xml = match &job.kind {
        JobKind::QemuNbd { xml, .. } => xml.clone(),
        JobKind::Libvirt { .. } => v.hv.virsh.checkpoint_xml(v.name, &job.checkpoint)?,
    };
    let checkpoint = Checkpoint {
        name: job.checkpoint.clone(),
        xml,
        since_full_hash: match since {
            Some(s) if tracked => s.checkpoint.since_full_hash + 1,
            _ => 0,
        },
    };
    let report = v.store(inputs, Some(time.to_owned()), |plan| {
        plan.checkpoint = Some(checkpoint);
        plan.cbt_parent = since.map(|s| s.id);
    })?;
    let missed_chunks = report.disks.iter().map(|c| c.cbt_mismatches).sum();
    let summary = CbtSummary {
        since: since.map(|s| s.checkpoint.name.clone()),
        checkpoint: job.checkpoint.clone(),
        bytes_hashed,
        verified: verify && since.is_some(),
        missed_chunks,
    };
    Ok((report, summary))
}

/// One disk hashed through its export, as the engine takes it.
pub(super) struct ReadDisk {
    /// The disk as the engine takes it.
    pub disk: BackupDisk,
    /// Bytes read through NBD to hash it.
    pub bytes_hashed: u64,
}

/// Hashes disk `d` through `export`: with the export's bitmap where there is one and the
/// parent's disk has the export's size, else whole; with `verify`, also whole, to compare.
pub(super) fn read_disk(
    v: &VmBackup<'_>,
    d: &DiskDef,
    export: &NbdExport,
    parent_size: Option<u64>,
    verify: bool,
    chunk_size: u32,
) -> Result<ReadDisk> {
    let format = declared_format(d);
    let whole = NbdExport {
        bitmap: None,
        ..export.clone()
    };
    let hash = |e: &NbdExport| -> Result<Option<NbdDisk>> {
        Ok(v.hv
            .hash_nbd(e, chunk_size, format)
            .with_context(|| format!("hashing disk {} through its backup export", d.target))?
            .map_err(|no| {
                (v.say)(&format!(
                    "{}: disk {}: hashing every chunk: {}",
                    v.name, d.target, no.0
                ));
            })
            .ok())
    };
    let mut bytes_hashed = 0;
    let mut tracked = None;
    if export.bitmap.is_some() {
        if let Some(nbd) = hash(export)? {
            bytes_hashed += nbd.bytes_hashed;
            if parent_size == Some(nbd.reader.size()) {
                tracked = Some(nbd);
            } else {
                (v.say)(&format!(
                    "{}: disk {}: hashing every chunk: it is now {} bytes, {} in the last snapshot",
                    v.name,
                    d.target,
                    nbd.reader.size(),
                    parent_size.unwrap_or(0)
                ));
            }
        }
    }
    let (nbd, unchanged, verify_unchanged) = match tracked {
        Some(nbd) if !verify => {
            let unchanged = unchanged_ranges(&nbd.chunks);
            (nbd, unchanged, false)
        }
        tracked => {
            let full =
                hash(&whole)?.context("the export offers no bitmap although none was asked for")?;
            bytes_hashed += full.bytes_hashed;
            let unchanged = tracked
                .map(|t| unchanged_ranges(&t.chunks))
                .unwrap_or_default();
            (full, unchanged, true)
        }
    };
    let ids = nbd
        .chunks
        .iter()
        .map(|c| match c {
            ChunkReport::Id(id) => *id,
            ChunkReport::Unchanged => Id::ZERO,
        })
        .collect();
    let source = d.source.clone().unwrap_or_default();
    let mut disk = BackupDisk::new(d.target.clone(), source, nbd.reader);
    disk.known_ids = Some(ids);
    disk.verify_unchanged = verify_unchanged && !unchanged.is_empty();
    disk.unchanged = unchanged;
    Ok(ReadDisk { disk, bytes_hashed })
}

/// The chunk numbers reported unchanged, as sorted ranges.
fn unchanged_ranges(chunks: &[ChunkReport]) -> Vec<std::ops::Range<u64>> {
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for (no, c) in (0u64..).zip(chunks) {
        if *c != ChunkReport::Unchanged {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.end == no => last.end = no + 1,
            _ => out.push(no..no + 1),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_chunks_become_ranges() {
        let id = ChunkReport::Id(Id::ZERO);
        let u = ChunkReport::Unchanged;
        assert_eq!(
            unchanged_ranges(&[u, u, id, u, id, id, u]),
            [0..2, 3..4, 6..7]
        );
        assert!(unchanged_ranges(&[id, id]).is_empty());
    }

    #[test]
    fn checkpoints_are_named_by_the_snapshot_time() {
        assert_eq!(
            checkpoint_name("2026-12-04T00:30:46.123456Z"),
            "vmstash-20261204003046123456"
        );
    }
}
