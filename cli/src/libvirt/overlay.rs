//! The overlay lifecycle of a live backup.
//!
//! A running domain gets an external, disk-only, metadata-free snapshot ([`snapshot_live`]):
//! its disks switch to new overlay files, so the original images stop changing and are read as
//! they were at that instant. Then every overlay is committed back (`blockcommit --active
//! --pivot`) and deleted ([`commit_overlays`]). The caller runs the commit whatever happened in
//! between — a failed read, Ctrl-C, SIGTERM — so the domain is left on its original disks with
//! no overlay. Only `kill -9` can leave an overlay behind; it carries [`OVERLAY_MARK`] in its
//! name, and the next backup (or `vm-repair`) finds and commits it before anything else
//! ([`repair_domain`]: leftover overlays still in use, then orphaned overlay files).
//!
//! Messages for the user (no guest agent, an overlay repaired) go to the caller's `say`.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use vmstash_libvirt_xml::{parse_domain, DiskDef, DomainDef};

use crate::libvirt::shell::Shell;
use crate::libvirt::virsh::{DiskSpec, Virsh};

/// Marks overlay files made by vmstash; nothing else may use it.
pub const OVERLAY_MARK: &str = ".vmstash-overlay-";

/// An overlay made for one disk.
pub struct Overlay {
    target: String,
    file: String,
}

/// Switches every included disk of a running domain to a new overlay.
pub fn snapshot_live(
    say: &dyn Fn(&str),
    virsh: &Virsh,
    name: &str,
    dom: &DomainDef,
    disks: &[DiskDef],
) -> Result<Vec<Overlay>> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut overlays = Vec::new();
    let specs: Vec<DiskSpec> = dom
        .disks
        .iter()
        .filter(|d| d.device == "disk")
        .map(|d| {
            let chosen = disks.iter().any(|x| x.target == d.target);
            let overlay = chosen.then(|| overlay_path(d, stamp)).flatten();
            if let Some(file) = &overlay {
                overlays.push(Overlay {
                    target: d.target.clone(),
                    file: file.clone(),
                });
            }
            DiskSpec {
                target: d.target.clone(),
                overlay,
            }
        })
        .collect();
    let quiesce = virsh.agent_responds(name);
    if !quiesce {
        say(&format!(
            "{name}: no guest agent answers; taking a crash-consistent snapshot (install qemu-guest-agent in the guest for a quiesced one)"
        ));
    }
    virsh
        .snapshot_disks(name, &specs, quiesce)
        .with_context(|| format!("creating the external snapshot of {name}"))?;
    Ok(overlays)
}

/// Where the overlay of `disk` goes: beside a file image, or in libvirt's
/// image directory for a block device.
fn overlay_path(disk: &DiskDef, stamp: u64) -> Option<String> {
    let src = disk.source.as_deref()?;
    if disk.kind == "file" {
        return Some(format!("{src}{OVERLAY_MARK}{stamp}"));
    }
    let base = Path::new(src).file_name()?.to_string_lossy().into_owned();
    Some(format!(
        "/var/lib/libvirt/images/{base}-{}{OVERLAY_MARK}{stamp}",
        disk.target
    ))
}

/// Commits every overlay back and deletes it; tries them all before
/// reporting the first failure.
pub fn commit_overlays(virsh: &Virsh, name: &str, overlays: &[Overlay]) -> Result<()> {
    let mut first_err = None;
    for o in overlays {
        let r = virsh
            .blockcommit_pivot(name, &o.target)
            .and_then(|()| virsh.shell().remove_file(&o.file));
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// What [`repair_domain`] did, and the domain as it is afterwards.
pub struct Repaired {
    /// Overlay files committed or deleted.
    pub done: Vec<String>,
    /// The domain XML after the repair.
    pub xml: String,
}

/// Commits overlays left behind by a killed backup and deletes orphaned
/// overlay files.
pub fn repair_domain(say: &dyn Fn(&str), virsh: &Virsh, name: &str) -> Result<Repaired> {
    let mut xml = virsh.dumpxml(name)?;
    let mut dom = parse_domain(&xml)?;
    let mut done = commit_active_overlays(say, virsh, name, &dom)?;
    if !done.is_empty() {
        xml = virsh.dumpxml(name)?;
        dom = parse_domain(&xml)?;
    }
    for file in orphaned_overlays(virsh.shell().as_ref(), &dom) {
        virsh.shell().remove_file(&file)?;
        say(&format!("{name}: removed the orphaned overlay {file}"));
        done.push(file);
    }
    Ok(Repaired { done, xml })
}

/// Switches disks still running on a vmstash overlay back to their base.
fn commit_active_overlays(
    say: &dyn Fn(&str),
    virsh: &Virsh,
    name: &str,
    dom: &DomainDef,
) -> Result<Vec<String>> {
    let stale: Vec<&DiskDef> = dom
        .disks
        .iter()
        .filter(|d| {
            d.source
                .as_deref()
                .is_some_and(|s| s.contains(OVERLAY_MARK))
        })
        .collect();
    if stale.is_empty() {
        return Ok(Vec::new());
    }
    let state = virsh.state(name)?;
    if !matches!(state.as_str(), "running" | "paused") {
        let files: Vec<_> = stale.iter().filter_map(|d| d.source.clone()).collect();
        bail!(
            "{name} is {state} and its disks point at overlays left by an interrupted backup ({}); start it and run `vmstash vm-repair`, so that they are committed back",
            files.join(", ")
        );
    }
    let mut done = Vec::new();
    for d in stale {
        let file = d.source.clone().unwrap_or_default();
        virsh.abort_block_job(name, &d.target)?;
        virsh
            .blockcommit_pivot(name, &d.target)
            .with_context(|| format!("committing the leftover overlay {file} of {name}"))?;
        virsh.shell().remove_file(&file)?;
        say(&format!(
            "{name}: committed and removed the leftover overlay {file} of disk {}",
            d.target
        ));
        done.push(file);
    }
    Ok(done)
}

/// Overlay files of this domain's disks that no disk uses any more: left
/// when a backup was killed after the commit but before the deletion.
/// Only `<image name>.vmstash-overlay-<digits>` beside a disk image
/// qualifies; a directory that cannot be listed is skipped.
fn orphaned_overlays(shell: &dyn Shell, dom: &DomainDef) -> Vec<String> {
    let in_use: Vec<&str> = dom
        .disks
        .iter()
        .filter_map(|d| d.source.as_deref())
        .collect();
    let mut out = Vec::new();
    for d in dom.disks.iter().filter(|d| d.kind == "file") {
        let Some(src) = d.source.as_deref() else {
            continue;
        };
        let path = Path::new(src);
        let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else {
            continue;
        };
        let base = base.to_string_lossy();
        let base = base.split(OVERLAY_MARK).next().unwrap_or_default();
        let prefix = format!("{base}{OVERLAY_MARK}");
        let dir = dir.to_string_lossy();
        for entry in shell.list_dir(&dir).unwrap_or_default() {
            let is_ours = entry.strip_prefix(&prefix).is_some_and(|stamp| {
                !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit())
            });
            let full = format!("{}/{entry}", dir.trim_end_matches('/'));
            if is_ours && !in_use.contains(&full.as_str()) && !out.contains(&full) {
                out.push(full);
            }
        }
    }
    out
}
