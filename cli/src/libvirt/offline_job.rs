//! Changed-block tracking of a shut-off domain: nothing runs that could make a backup job, so
//! its qcow2 images get the new checkpoint's bitmap with `qemu-img bitmap --add --enable` (the
//! instant of the backup: nothing writes to them), each disk is exported read-only by a
//! `qemu-nbd` on the hypervisor (with `--bitmap` of the parent's checkpoint for an incremental
//! one: libvirt keeps every checkpoint's bitmap recording, so it holds every write since), and
//! once the snapshot is saved the checkpoint is registered with libvirt
//! (`checkpoint-create --redefine`) and the older vmstash checkpoints are dropped (libvirt 9
//! cannot delete a checkpoint of an inactive domain: their metadata goes with
//! `checkpoint-delete --metadata`, their bitmaps with `qemu-img bitmap --remove`).
//!
//! On failure the servers are stopped and the new bitmaps removed; the helper on the host is
//! left the same commands, for a vmstash killed mid-backup (spec §19.7).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use vmstash_libvirt_xml::backup::{redefine_xml, JobDisk};
use vmstash_libvirt_xml::DiskDef;

use crate::libvirt::backup_job::{
    older_checkpoints, since_of, BackupJob, JobKind, CHECKPOINT_PREFIX,
};
use crate::libvirt::nbd_disk::NbdExport;
use crate::libvirt::virsh::Virsh;

/// One disk of a shut-off domain's backup.
pub struct OfflineDisk<'a> {
    /// Its definition.
    pub def: &'a DiskDef,
    /// Its format as libvirt declares it (`raw`, `qcow2`).
    pub format: &'static str,
    /// How it takes part (never [`JobDisk::Skip`] here).
    pub job: JobDisk,
}

/// Where servers keep their sockets and pid files.
const SERVER_DIR: &str = "/tmp";

/// Where the server of disk `target` of the domain whose UUID is `key` keeps its socket and pid
/// file: named after the checkpoint (so vmstash's) and the domain (so a repair finds them).
fn server_paths(key: &str, checkpoint: &str, target: &str) -> (String, String) {
    let base = format!("{SERVER_DIR}/{checkpoint}-{key}-{target}");
    (format!("{base}.sock"), format!("{base}.pid"))
}

/// The shell script that stops the servers whose pid files follow the checkpoint's name and
/// their count, then removes the checkpoint's bitmap from every image after them.
const STOP_SCRIPT: &str = r#"c=$1; n=$2; shift 2
while [ "$n" -gt 0 ]; do
  if pkill -F "$1" 2>/dev/null; then
    i=0; while pgrep -F "$1" >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
  fi
  rm -f "$1" "${1%.pid}.sock"; shift; n=$((n-1))
done
for img do qemu-img bitmap --remove "$img" "$c" 2>/dev/null; done
exit 0"#;

/// The command that stops `pid_files`' servers and removes bitmap `checkpoint` from `images`.
fn stop_command(checkpoint: &str, pid_files: &[String], images: &[String]) -> Vec<String> {
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        STOP_SCRIPT.to_owned(),
        "sh".to_owned(),
        checkpoint.to_owned(),
        pid_files.len().to_string(),
    ];
    argv.extend(pid_files.iter().cloned());
    argv.extend(images.iter().cloned());
    argv
}

/// What the helper runs if vmstash vanishes while the servers of `disks` run: stop them, and
/// remove the bitmaps the backup added.
pub fn cleanup_commands(
    key: &str,
    checkpoint: &str,
    disks: &[OfflineDisk<'_>],
) -> Vec<Vec<String>> {
    let pid_files: Vec<String> = disks
        .iter()
        .map(|d| server_paths(key, checkpoint, &d.def.target).1)
        .collect();
    vec![stop_command(checkpoint, &pid_files, &bitmap_images(disks))]
}

/// The images of `disks` that get the new checkpoint's bitmap.
fn bitmap_images(disks: &[OfflineDisk<'_>]) -> Vec<String> {
    disks
        .iter()
        .filter(|d| d.job.gets_bitmap())
        .filter_map(|d| d.def.source.clone())
        .collect()
}

/// Adds the bitmap `checkpoint` to the qcow2 images and starts a `qemu-nbd` per disk; an
/// incremental disk whose image lacks the parent's bitmap is exported whole, after a line to
/// `say`. Undoes what it did when it fails. `key` is the domain's UUID.
pub fn begin(
    say: &dyn Fn(&str),
    virsh: &Virsh,
    (domain, key): (&str, &str),
    checkpoint: &str,
    disks: &[OfflineDisk<'_>],
) -> Result<BackupJob> {
    let shell = virsh.shell();
    let images = bitmap_images(disks);
    let mut added: Vec<String> = Vec::new();
    let mut pid_files: Vec<String> = Vec::new();
    let mut exports = Vec::new();
    let started = (|| -> Result<()> {
        for image in &images {
            let out = shell.run(&["qemu-img", "bitmap", "--add", "--enable", image, checkpoint])?;
            if out.status != 0 {
                bail!(
                    "adding bitmap {checkpoint} to {image} failed: {}",
                    out.stderr.trim()
                );
            }
            added.push(image.clone());
        }
        for d in disks {
            let target = &d.def.target;
            let since = match &d.job {
                JobDisk::Incremental { since, .. } => Some(since.as_str()),
                _ => None,
            };
            let (socket, pid_file) = server_paths(key, checkpoint, target);
            pid_files.push(pid_file.clone());
            let image = d.def.source.as_deref().context("disk without a source")?;
            let mut bitmap = since;
            if let Err(e) = serve(virsh, image, d.format, target, &socket, &pid_file, bitmap) {
                let Some(since) = bitmap else {
                    return Err(e);
                };
                say(&format!(
                    "{domain}: disk {target}: hashing every chunk: its image has no usable bitmap {since} ({e:#})"
                ));
                bitmap = None;
                serve(virsh, image, d.format, target, &socket, &pid_file, None)?;
            }
            let export = NbdExport {
                socket,
                name: target.clone(),
                bitmap: bitmap.map(str::to_owned),
            };
            exports.push((target.clone(), export));
        }
        Ok(())
    })();
    if let Err(e) = started {
        let _ = shell.run(&as_refs(&stop_command(checkpoint, &pid_files, &added)));
        return Err(e.context(format!("exporting the disks of {domain} with qemu-nbd")));
    }
    let jobs: Vec<JobDisk> = disks.iter().map(|d| d.job.clone()).collect();
    let since = since_of(&jobs);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(BackupJob {
        checkpoint: checkpoint.to_owned(),
        exports,
        since: since.clone(),
        kind: JobKind::QemuNbd {
            pid_files,
            images,
            xml: redefine_xml(checkpoint, since.as_deref(), created, &jobs),
        },
    })
}

/// Starts a read-only `qemu-nbd` of `image` on `socket`, exporting `target` (with `bitmap`).
fn serve(
    virsh: &Virsh,
    image: &str,
    format: &str,
    target: &str,
    socket: &str,
    pid_file: &str,
    bitmap: Option<&str>,
) -> Result<()> {
    let mut argv = vec![
        "qemu-nbd",
        "--read-only",
        "--persistent",
        // Two hash requests of up to 4 connections each (with --verify-cbt), and room.
        "--shared=16",
        "--fork",
        "--pid-file",
        pid_file,
        "--socket",
        socket,
        "--export-name",
        target,
        "--format",
        format,
    ];
    if let Some(bitmap) = bitmap {
        argv.extend(["--bitmap", bitmap]);
    }
    argv.push(image);
    let out = virsh.shell().run(&argv)?;
    match out.status {
        0 => Ok(()),
        127 => bail!("qemu-nbd is not installed on the host (Debian: qemu-utils)"),
        _ => bail!("qemu-nbd {image} failed: {}", out.stderr.trim()),
    }
}

fn as_refs(argv: &[String]) -> Vec<&str> {
    argv.iter().map(String::as_str).collect()
}

/// Stops the servers; when the snapshot is saved (`saved`), registers the checkpoint with
/// libvirt and drops the older vmstash checkpoints, else removes the new bitmaps.
pub fn end(
    virsh: &Virsh,
    domain: &str,
    job: &BackupJob,
    pid_files: &[String],
    images: &[String],
    xml: &str,
    saved: bool,
) -> Result<()> {
    let shell = virsh.shell();
    let drop_bitmaps: &[String] = if saved { &[] } else { images };
    let stopped = shell.run(&as_refs(&stop_command(
        &job.checkpoint,
        pid_files,
        drop_bitmaps,
    )))?;
    if stopped.status != 0 {
        bail!("stopping qemu-nbd failed: {}", stopped.stderr.trim());
    }
    if !saved {
        return Ok(());
    }
    virsh
        .redefine_checkpoint(domain, xml, false)
        .with_context(|| format!("registering checkpoint {} of {domain}", job.checkpoint))?;
    for old in older_checkpoints(virsh, domain, &job.checkpoint)? {
        virsh.forget_checkpoint(domain, &old)?;
        for image in images {
            let _ = shell.run(&["qemu-img", "bitmap", "--remove", image, &old]);
        }
    }
    Ok(())
}

/// Cleans what a vmstash killed during a shut-off domain's backup left without a helper to
/// clean it (a `qemu:///` connection): its `qemu-nbd` servers, and bitmaps named like vmstash
/// checkpoints in the domain's qcow2 images that libvirt has no checkpoint for. Returns what
/// it removed, for the caller to say.
pub fn end_leftovers(
    virsh: &Virsh,
    domain: &str,
    key: &str,
    disks: &[DiskDef],
) -> Result<Vec<String>> {
    let shell = virsh.shell();
    let mut done = Vec::new();
    let marker = format!("-{key}-");
    let pid_files: Vec<String> = shell
        .list_dir(SERVER_DIR)?
        .into_iter()
        .filter(|f| f.starts_with(CHECKPOINT_PREFIX) && f.contains(&marker) && f.ends_with(".pid"))
        .map(|f| format!("{SERVER_DIR}/{f}"))
        .collect();
    if !pid_files.is_empty() {
        let stopped = shell.run(&as_refs(&stop_command("-", &pid_files, &[])))?;
        if stopped.status != 0 {
            bail!(
                "stopping leftover qemu-nbd servers failed: {}",
                stopped.stderr.trim()
            );
        }
        done.extend(
            pid_files
                .iter()
                .map(|p| format!("the qemu-nbd server of {p}")),
        );
    }
    let known = virsh.checkpoints(domain)?;
    for image in disks
        .iter()
        .filter(|d| d.format.as_deref() == Some("qcow2"))
        .filter_map(|d| d.source.as_deref())
    {
        for bitmap in image_bitmaps(virsh, image)? {
            if bitmap.starts_with(CHECKPOINT_PREFIX) && !known.contains(&bitmap) {
                let out = shell.run(&["qemu-img", "bitmap", "--remove", image, &bitmap])?;
                if out.status != 0 {
                    bail!(
                        "removing bitmap {bitmap} from {image} failed: {}",
                        out.stderr.trim()
                    );
                }
                done.push(format!("bitmap {bitmap} of {image}"));
            }
        }
    }
    Ok(done)
}

/// The names of the persistent bitmaps in a qcow2 image (`qemu-img info`).
fn image_bitmaps(virsh: &Virsh, image: &str) -> Result<Vec<String>> {
    let out = virsh
        .shell()
        .run(&["qemu-img", "info", "-U", "--output=json", image])?;
    if out.status != 0 {
        bail!("qemu-img info {image} failed: {}", out.stderr.trim());
    }
    let info: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("reading `qemu-img info` of {image}"))?;
    Ok(info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|bitmaps| {
            bitmaps
                .iter()
                .filter_map(|b| b["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}
