//! The backup-job lifecycle of changed-block tracking (CBT): a pull-mode `backup-begin` that
//! exports each disk over NBD as of one instant and makes a checkpoint at that instant, then
//! `domjobabort` when the disks have been read, and the checkpoints before it deleted once the
//! snapshot that records the new one is saved.
//!
//! Nothing of it may outlive vmstash: the job, its scratch files and the new checkpoint are
//! ended by [`end_failed`] on every failure; a helper on the host is left the same commands to
//! run if vmstash is killed (spec §19.7); and a job whose socket says it is vmstash's, found
//! at the next backup or by `vm-repair`, is ended by [`end_leftover_job`].

use anyhow::{Context, Result};
use vmstash_libvirt_xml::backup::{
    backup_xml, checkpoint_xml, export_bitmap, running_job, JobDisk,
};
use vmstash_libvirt_xml::DiskDef;

use crate::libvirt::nbd_disk::NbdExport;
use crate::libvirt::virsh::Virsh;

/// Prefix of the checkpoints vmstash makes (and of its job sockets): nothing else may use it.
pub const CHECKPOINT_PREFIX: &str = "vmstash-";
/// Where the job's socket goes: QEMU binds it, so the directory must be writable by QEMU's user.
const SOCKET_DIR: &str = "/var/lib/libvirt/qemu";
/// Marks the scratch files of a job (beside each disk image).
const SCRATCH_MARK: &str = ".vmstash-scratch-";

/// The NBD exports of one backup's disks, as of one instant, and the checkpoint made then: a
/// running domain's pull-mode backup job, or `qemu-nbd` servers of a shut-off domain's images
/// ([`crate::libvirt::offline_job`]).
pub struct BackupJob {
    /// The checkpoint it made.
    pub checkpoint: String,
    /// The included disks' exports, by target.
    pub exports: Vec<(String, NbdExport)>,
    /// The checkpoint its bitmaps count from, when some disk is incremental.
    pub since: Option<String>,
    /// Who serves the exports.
    pub kind: JobKind,
}

/// Who serves a [`BackupJob`]'s exports.
pub enum JobKind {
    /// libvirt's backup job; its scratch files.
    Libvirt {
        /// The scratch files libvirt made.
        scratch: Vec<String>,
    },
    /// `qemu-nbd` servers on the images of a shut-off domain.
    QemuNbd {
        /// Their pid files.
        pid_files: Vec<String>,
        /// The qcow2 images that got the new checkpoint's bitmap.
        images: Vec<String>,
        /// The checkpoint's XML, for `checkpoint-create --redefine` once the snapshot is saved.
        xml: String,
    },
}

/// The name of the checkpoint made with a snapshot whose time is `time` (RFC 3339): its
/// digits, so that checkpoints sort by time.
pub fn checkpoint_name(time: &str) -> String {
    let digits: String = time.chars().filter(char::is_ascii_digit).collect();
    format!("{CHECKPOINT_PREFIX}{digits}")
}

/// The socket a job making `checkpoint` exports on.
fn socket_path(checkpoint: &str) -> String {
    format!("{SOCKET_DIR}/{checkpoint}.sock")
}

/// The scratch file of disk `d` for the job making `checkpoint`: beside a file image, in
/// libvirt's image directory for a block device.
pub fn scratch_path(d: &DiskDef, checkpoint: &str) -> String {
    let src = d.source.as_deref().unwrap_or_default();
    if d.kind == "file" {
        return format!("{src}{SCRATCH_MARK}{checkpoint}");
    }
    let base = std::path::Path::new(src)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "/var/lib/libvirt/images/{base}-{}{SCRATCH_MARK}{checkpoint}",
        d.target
    )
}

/// The commands that end the job making `checkpoint` and delete that checkpoint: what the
/// helper runs if vmstash vanishes mid-backup.
pub fn cleanup_commands(virsh: &Virsh, domain: &str, checkpoint: &str) -> Vec<Vec<String>> {
    vec![
        virsh.argv(&["domjobabort", domain]),
        virsh.argv(&["checkpoint-delete", domain, checkpoint]),
    ]
}

/// Starts a pull-mode job for `disks` (every `device='disk'` of the domain, in its order)
/// making `checkpoint`.
pub fn begin(
    virsh: &Virsh,
    domain: &str,
    checkpoint: &str,
    disks: &[JobDisk],
    quiesce: bool,
) -> Result<BackupJob> {
    let socket = socket_path(checkpoint);
    virsh
        .backup_begin(
            domain,
            &backup_xml(&socket, disks),
            &checkpoint_xml(checkpoint, disks),
            quiesce,
        )
        .with_context(|| format!("starting a backup job of {domain}"))?;
    let exports = disks
        .iter()
        .filter_map(|d| {
            let (target, bitmap) = match d {
                JobDisk::Skip { .. } => return None,
                JobDisk::Full { target, .. } => (target, None),
                JobDisk::Incremental { target, .. } => (target, Some(export_bitmap(target))),
            };
            let export = NbdExport {
                socket: socket.clone(),
                name: target.clone(),
                bitmap,
            };
            Some((target.clone(), export))
        })
        .collect();
    let since = since_of(disks);
    let scratch = disks
        .iter()
        .filter_map(|d| match d {
            JobDisk::Skip { .. } => None,
            JobDisk::Full { scratch, .. } | JobDisk::Incremental { scratch, .. } => {
                Some(scratch.clone())
            }
        })
        .collect();
    Ok(BackupJob {
        checkpoint: checkpoint.to_owned(),
        exports,
        since,
        kind: JobKind::Libvirt { scratch },
    })
}

/// The checkpoint the incremental disks count from, if any.
pub fn since_of(disks: &[JobDisk]) -> Option<String> {
    disks.iter().find_map(|d| match d {
        JobDisk::Incremental { since, .. } => Some(since.clone()),
        _ => None,
    })
}

/// Ends a libvirt job whose disks were read and whose snapshot is saved, then deletes every
/// vmstash checkpoint of the domain but the job's own: the next backup counts from it.
pub fn end_saved(virsh: &Virsh, domain: &str, job: &BackupJob, scratch: &[String]) -> Result<()> {
    end_job(virsh, domain, scratch)?;
    for old in older_checkpoints(virsh, domain, &job.checkpoint)? {
        virsh
            .delete_checkpoint(domain, &old)
            .with_context(|| format!("deleting the old checkpoint {old} of {domain}"))?;
    }
    Ok(())
}

/// The domain's vmstash checkpoints other than `keep`.
pub fn older_checkpoints(virsh: &Virsh, domain: &str, keep: &str) -> Result<Vec<String>> {
    Ok(virsh
        .checkpoints(domain)?
        .into_iter()
        .filter(|c| c.starts_with(CHECKPOINT_PREFIX) && c != keep)
        .collect())
}

/// Ends the domain's job and deletes its `scratch` files if libvirt has not yet (it deletes
/// them just after `domjobabort` returns).
fn end_job(virsh: &Virsh, domain: &str, scratch: &[String]) -> Result<()> {
    virsh.end_backup_job(domain)?;
    for file in scratch {
        virsh.shell().remove_file(file)?;
    }
    Ok(())
}

/// Ends a job whose backup failed and deletes the checkpoint it made (no snapshot records it);
/// tries both before reporting the first failure.
pub fn end_failed(virsh: &Virsh, domain: &str, checkpoint: &str, scratch: &[String]) -> Result<()> {
    let ended = end_job(virsh, domain, scratch);
    let deleted = match virsh.checkpoints(domain) {
        Ok(names) if names.iter().any(|n| n == checkpoint) => {
            virsh.delete_checkpoint(domain, checkpoint)
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    ended.and(deleted)
}

/// Ends a backup job a killed vmstash left on the domain (its socket is named after a vmstash
/// checkpoint) and deletes that checkpoint; `Ok(None)` when there is none. A job vmstash did
/// not start is left alone, and is an error: the domain cannot take another.
pub fn end_leftover_job(virsh: &Virsh, domain: &str) -> Result<Option<String>> {
    let Some(xml) = virsh.backup_job_xml(domain)? else {
        return Ok(None);
    };
    let job = running_job(&xml)?;
    let checkpoint = job
        .socket
        .as_deref()
        .and_then(|s| s.strip_prefix(SOCKET_DIR))
        .and_then(|s| s.strip_prefix('/'))
        .and_then(|s| s.strip_suffix(".sock"))
        .filter(|c| c.starts_with(CHECKPOINT_PREFIX))
        .map(str::to_owned);
    let Some(checkpoint) = checkpoint else {
        anyhow::bail!(
            "{domain} is running a backup job vmstash did not start; wait for it to end (`virsh domjobinfo {domain}`) or end it with `virsh domjobabort {domain}`"
        );
    };
    end_failed(virsh, domain, &checkpoint, &job.scratch)?;
    Ok(Some(checkpoint))
}
