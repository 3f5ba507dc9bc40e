//! Backups of libvirt domains: `vmstash backup --connect URI --vm NAME`,
//! `vmstash vms` and `vmstash vm-repair`.
//!
//! A running domain gets an external, disk-only, metadata-free snapshot:
//! its disks switch to new overlay files, so the original images stop
//! changing and are read as they were at that instant. Then every overlay
//! is committed back (`blockcommit --active --pivot`) and deleted. The
//! commit runs whatever happened in between — a failed read, Ctrl-C,
//! SIGTERM — so the domain is left on its original disks with no overlay.
//! Only `kill -9` can leave an overlay behind; it carries
//! [`OVERLAY_MARK`] in its name, and the next backup (or `vm-repair`)
//! finds and commits it before anything else.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::json;
use vmstash_repo::{Id, Repository};

use crate::args::{BackupArgs, Global, VmRepairArgs, VmsArgs};
use crate::backup::{self, DiskInput, SnapshotPlan};
use crate::cmd::print_json;
use crate::helper::RemoteHelper;
use crate::libvirt::shell::{LocalShell, Shell, SshShell};
use crate::libvirt::uri::ConnectUri;
use crate::libvirt::virsh::{DiskSpec, Virsh};
use crate::libvirt::xml::{parse_domain, DiskDef, DiskPlan, DomainDef};
use crate::source::{self, DiskSource, ImageFormat};
use crate::ssh::{SshOptions, SshSession, SshTarget};
use crate::{exit, progress};

/// Marks overlay files made by vmstash; nothing else may use it.
pub const OVERLAY_MARK: &str = ".vmstash-overlay-";

/// A hypervisor: where commands run and how its disk images are read.
pub struct Hypervisor {
    /// virsh there.
    pub virsh: Virsh,
    uri: ConnectUri,
    /// The SSH session of a remote hypervisor.
    ssh: Option<SshSession>,
    /// The hashblocks helper running there, once started.
    helper: Mutex<Option<RemoteHelper>>,
}

/// The SSH options given on the command line.
pub fn ssh_options(g: &Global) -> SshOptions {
    SshOptions {
        identity: g.identity.clone(),
        known_hosts: g.known_hosts.clone(),
        accept_new_host_key: g.accept_new_host_key,
        ssh_config: None,
    }
}

impl Hypervisor {
    /// Connects to the hypervisor named by a libvirt URI.
    pub fn connect(g: &Global, uri: &str) -> Result<Hypervisor> {
        let uri = ConnectUri::parse(uri)?;
        let (shell, ssh): (Arc<dyn Shell>, _) = match &uri {
            ConnectUri::Local { .. } => (Arc::new(LocalShell), None),
            ConnectUri::Ssh {
                user, host, port, ..
            } => {
                let target = SshTarget {
                    user: user.clone(),
                    host: host.clone(),
                    port: *port,
                };
                let session = SshSession::connect(&target, &ssh_options(g))?;
                (Arc::new(SshShell::new(session.clone())), Some(session))
            }
        };
        Ok(Hypervisor {
            virsh: Virsh::new(shell, uri.virsh_uri()),
            uri,
            ssh,
            helper: Mutex::new(None),
        })
    }

    /// Starts the hashblocks helper on a remote hypervisor, so that disks are hashed there and
    /// only chunks the repository lacks are read; says in one line why when it cannot.
    fn start_helper(&self, g: &Global) {
        let Some(ssh) = &self.ssh else {
            return;
        };
        match RemoteHelper::start(ssh) {
            Ok(helper) => *self.helper.lock().unwrap_or_else(PoisonError::into_inner) = Some(helper),
            Err(why) if !g.quiet => eprintln!(
                "vmstash: warning: not using the hashblocks helper on {}: {why}; reading whole disks over SFTP",
                ssh.describe()
            ),
            Err(_) => {}
        }
    }

    /// Each chunk's id, hashed on the host by the helper; `None` without a helper.
    fn chunk_ids(
        &self,
        path: &str,
        format: ImageFormat,
        chunk_size: u32,
        size: u64,
    ) -> Result<Option<Vec<Id>>> {
        let mut helper = self.helper.lock().unwrap_or_else(PoisonError::into_inner);
        helper
            .as_mut()
            .map(|h| h.hash_disk(path, format, chunk_size, size))
            .transpose()
    }

    /// Opens a disk image on the hypervisor as the format libvirt declares.
    fn open_disk(&self, path: &str, format: ImageFormat) -> Result<Box<dyn DiskSource>> {
        let Some(ssh) = &self.ssh else {
            return Ok(source::open_as(Path::new(path), format)?);
        };
        let sftp = ssh.sftp()?;
        let src = match format {
            ImageFormat::Raw => {
                let device_size = if sftp.metadata(path)?.is_block_device() {
                    self.remote_device_size(path)
                } else {
                    None
                };
                source::open_sftp_raw(sftp, path, device_size)?
            }
            ImageFormat::Qcow2 => source::open_sftp_qcow2(&sftp, path)?,
        };
        Ok(match self.remote_map(path, format) {
            Some(ranges) => source::with_data_ranges(src, ranges),
            None => src,
        })
    }

    /// The size of a remote block device (`blockdev --getsize64`), which
    /// SFTP does not report; `None` for files or when it cannot be learned.
    fn remote_device_size(&self, path: &str) -> Option<u64> {
        let out = self
            .virsh
            .shell()
            .run(&["blockdev", "--getsize64", path])
            .ok()
            .filter(|o| o.status == 0)?;
        out.stdout.trim().parse().ok()
    }

    /// The data ranges of a remote image from the hypervisor's `qemu-img
    /// map` (`-U`: the image is in use by the VM); `None` when qemu-img is
    /// missing or fails, and the whole disk is read.
    fn remote_map(&self, path: &str, format: ImageFormat) -> Option<Vec<std::ops::Range<u64>>> {
        let out = self
            .virsh
            .shell()
            .run(&[
                "qemu-img",
                "map",
                "-U",
                "--output=json",
                "-f",
                format.name(),
                path,
            ])
            .ok()
            .filter(|o| o.status == 0)?;
        source::parse_qemu_img_map(&out.stdout)
    }
}

/// The declared image format of a disk (raw when libvirt does not say).
fn declared_format(disk: &DiskDef) -> ImageFormat {
    match disk.format.as_deref() {
        Some("qcow2") => ImageFormat::Qcow2,
        _ => ImageFormat::Raw,
    }
}

/// Runs `vmstash backup --connect URI (--vm NAME … | --all)`.
pub fn run_backup(
    g: &Global,
    repo: &Repository,
    connect: &str,
    a: &BackupArgs,
) -> Result<ExitCode> {
    let (vms, all, excluded, tags) = (&a.vms, a.all, &a.exclude_disks, &a.tags);
    let hv = Hypervisor::connect(g, connect)?;
    if !a.no_helper {
        hv.start_helper(g);
    }
    let names = if all {
        hv.virsh.list_all()?
    } else {
        vms.to_vec()
    };
    if names.is_empty() {
        bail!("no VM to back up: give --vm NAME or --all");
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted))
            .context("installing the signal handler")?;
    }
    let _lock = repo.lock(false)?;
    let mut failed = Vec::new();
    for name in &names {
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        let stop = || interrupted.load(Ordering::Relaxed);
        match back_up_domain(g, repo, &hv, name, excluded, tags, &stop) {
            Ok(()) => {}
            Err(_) if interrupted.load(Ordering::Relaxed) => break,
            Err(e) if names.len() == 1 => return Err(e),
            Err(e) => {
                eprintln!("vmstash: backing up {name}: {e:#}");
                failed.push(name.clone());
            }
        }
    }
    if interrupted.load(Ordering::Relaxed) {
        eprintln!("vmstash: interrupted; every VM was left on its original disks");
        return Ok(ExitCode::from(130));
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} VMs failed: {}",
            failed.len(),
            names.len(),
            failed.join(", ")
        );
    }
    Ok(exit::ok())
}

/// Backs up one domain, snapshotting it first when it runs.
fn back_up_domain(
    g: &Global,
    repo: &Repository,
    hv: &Hypervisor,
    name: &str,
    excluded: &[String],
    tags: &[String],
    interrupted: &(dyn Fn() -> bool + Sync),
) -> Result<()> {
    let xml = repair_domain(g, &hv.virsh, name)?.xml;
    let dom = parse_domain(&xml)?;
    let disks = included_disks(g, &dom, excluded);
    if disks.is_empty() {
        bail!("{name} has no disk vmstash can back up");
    }
    let state = hv.virsh.state(name)?;
    let live = matches!(state.as_str(), "running" | "paused" | "pmsuspended");
    let mut all_tags = tags.to_vec();
    all_tags.push(format!("host:{}", hv.uri.host_label()));
    all_tags.push(format!("vm:{name}"));
    let read = |hv: &Hypervisor| -> Result<()> {
        let started = std::time::Instant::now();
        let inputs = disks
            .iter()
            .map(|d| disk_input(hv, d, repo.config().chunk_size))
            .collect::<Result<Vec<_>>>()?;
        let plan = SnapshotPlan {
            name: name.to_string(),
            tags: all_tags.clone(),
            domain_xml: Some(xml.clone()),
            disks: inputs,
            started,
        };
        let (id, manifest) = backup::store(g, repo, plan, interrupted)?;
        backup::print_summary(g, &id, &manifest);
        Ok(())
    };
    if !live {
        return read(hv);
    }
    let overlays = snapshot_live(g, &hv.virsh, name, &dom, &disks)?;
    let result = read(hv);
    let cleanup = commit_overlays(&hv.virsh, name, &overlays);
    match (result, cleanup) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e),
        (result, Err(c)) => {
            let c = c.context(format!(
                "{name} could not be switched back to its original disks; run `vmstash vm-repair --connect {} --vm {name}`",
                hv.uri.virsh_uri()
            ));
            match result {
                Ok(()) => Err(c),
                Err(e) => Err(e.context(format!("{c:#}"))),
            }
        }
    }
}

/// The disks to back up; says which are skipped and why.
fn included_disks(g: &Global, dom: &DomainDef, excluded: &[String]) -> Vec<DiskDef> {
    let mut out = Vec::new();
    for d in &dom.disks {
        match d.plan(excluded) {
            DiskPlan::Include => out.push(d.clone()),
            DiskPlan::Skip(why) if !g.quiet => {
                eprintln!("{}: skipping disk {} ({why})", dom.name, d.target);
            }
            DiskPlan::Skip(_) => {}
        }
    }
    out
}

fn disk_input(hv: &Hypervisor, d: &DiskDef, chunk_size: u32) -> Result<DiskInput> {
    let path = d.source.as_deref().context("disk without a source")?;
    let format = declared_format(d);
    let src = hv
        .open_disk(path, format)
        .with_context(|| format!("opening disk {} ({path})", d.target))?;
    let ids = hv
        .chunk_ids(path, format, chunk_size, src.size())
        .with_context(|| format!("hashing disk {} ({path}) on the host", d.target))?;
    Ok(DiskInput {
        name: d.target.clone(),
        source: path.to_string(),
        src,
        ids,
    })
}

/// An overlay made for one disk.
struct Overlay {
    target: String,
    file: String,
}

/// Switches every included disk of a running domain to a new overlay.
fn snapshot_live(
    g: &Global,
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
    if !quiesce && !g.quiet {
        eprintln!(
            "{name}: no guest agent answers; taking a crash-consistent snapshot (install qemu-guest-agent in the guest for a quiesced one)"
        );
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
fn commit_overlays(virsh: &Virsh, name: &str, overlays: &[Overlay]) -> Result<()> {
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
struct Repaired {
    /// Overlay files committed or deleted.
    done: Vec<String>,
    /// The domain XML after the repair.
    xml: String,
}

/// Commits overlays left behind by a killed backup and deletes orphaned
/// overlay files.
fn repair_domain(g: &Global, virsh: &Virsh, name: &str) -> Result<Repaired> {
    let mut xml = virsh.dumpxml(name)?;
    let mut dom = parse_domain(&xml)?;
    let mut done = commit_active_overlays(g, virsh, name, &dom)?;
    if !done.is_empty() {
        xml = virsh.dumpxml(name)?;
        dom = parse_domain(&xml)?;
    }
    for file in orphaned_overlays(virsh.shell().as_ref(), &dom) {
        virsh.shell().remove_file(&file)?;
        if !g.quiet {
            eprintln!("{name}: removed the orphaned overlay {file}");
        }
        done.push(file);
    }
    Ok(Repaired { done, xml })
}

/// Switches disks still running on a vmstash overlay back to their base.
fn commit_active_overlays(
    g: &Global,
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
        if !g.quiet {
            eprintln!(
                "{name}: committed and removed the leftover overlay {file} of disk {}",
                d.target
            );
        }
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

/// Runs `vmstash vm-repair`.
pub fn run_repair(g: &Global, a: &VmRepairArgs) -> Result<ExitCode> {
    let hv = Hypervisor::connect(g, &a.connect)?;
    let done = repair_domain(g, &hv.virsh, &a.vm)?.done;
    if g.json {
        print_json(&json!({"message_type": "repaired", "vm": a.vm, "overlays_committed": done}));
    } else if done.is_empty() && !g.quiet {
        println!("{}: no leftover overlays; nothing to repair", a.vm);
    }
    Ok(exit::ok())
}

/// Runs `vmstash vms`.
pub fn run_list(g: &Global, a: &VmsArgs) -> Result<ExitCode> {
    let hv = Hypervisor::connect(g, &a.connect)?;
    let mut out = Vec::new();
    for name in hv.virsh.list_all()? {
        // A domain undefined between the listing and now is simply gone.
        let found = hv
            .virsh
            .state(&name)
            .and_then(|state| Ok((state, hv.virsh.dumpxml(&name)?)));
        let (state, xml) = match found {
            Ok(found) => found,
            Err(_) if !hv.virsh.exists(&name)? => continue,
            Err(e) => return Err(e),
        };
        let dom = parse_domain(&xml)?;
        let disks: Vec<_> = dom
            .disks
            .iter()
            .map(|d| {
                let size = hv.virsh.capacity(&name, &d.target).ok();
                json!({"target": d.target, "device": d.device, "type": d.kind, "source": d.source,
                       "format": d.format, "virtual_size": size, "readonly": d.readonly})
            })
            .collect();
        out.push(json!({"name": name, "state": state, "uuid": dom.uuid, "disks": disks}));
    }
    if g.json {
        print_json(&serde_json::Value::Array(out));
        return Ok(exit::ok());
    }
    for vm in &out {
        println!(
            "{} ({})",
            vm["name"].as_str().unwrap_or(""),
            vm["state"].as_str().unwrap_or("")
        );
        for d in vm["disks"].as_array().into_iter().flatten() {
            let size = d["virtual_size"]
                .as_u64()
                .map_or_else(|| "-".into(), progress::human);
            println!(
                "  {:<6} {:<6} {:<6} {:>10}  {}",
                d["target"].as_str().unwrap_or(""),
                d["device"].as_str().unwrap_or(""),
                d["format"].as_str().unwrap_or("-"),
                size,
                d["source"].as_str().unwrap_or("-")
            );
        }
    }
    Ok(exit::ok())
}
