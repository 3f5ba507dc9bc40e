//! `vmstash restore`: a snapshot's disks back to image files.
//!
//! The engine (`vmstash_repo::restore`) fetches, verifies and writes each disk's non-zero
//! chunks on every core, sparse; this command picks the disks, checks that none of their
//! images exists before writing anything, writes each image under a temporary name and renames
//! it only when every chunk has been verified (a damaged repository fails loudly and leaves no
//! half-right image behind), converts to qcow2 on request, and defines the VM with `--define`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use vmstash_libvirt_xml::{rewrite_for_define, DefineOptions, RestoredDisk};
use vmstash_repo::snapshot::{Disk, Manifest};
use vmstash_repo::{restore, threads, CancelToken, DiskReader};

use crate::args::{Global, RestoreArgs, RestoreFormat};
use crate::exit;
use crate::libvirt::hypervisor::Hypervisor;
use crate::output::{human, line, print_json};
use crate::restore_target::Dest;
use crate::{interrupt, progress, repo};

/// Runs `vmstash restore`.
pub fn run(g: &Global, a: &RestoreArgs) -> Result<ExitCode> {
    if a.snapshot.contains(':') {
        return super::restore_files::run(g, a);
    }
    let started = Instant::now();
    let sink = BarSink {
        bar: progress::bytes(g, 0, "restore"),
    };
    let cancel = interrupt::cancel_on_signals()?;
    let done = match restore_snapshot(g, a, &sink, &cancel)? {
        Restored::Done(done) => done,
        Restored::Canceled { disk, written } => {
            sink.bar.finish_and_clear();
            eprintln!(
                "vmstash: interrupted: the partly written image of disk {disk} was removed{}; the repository was not changed",
                if written.is_empty() { String::new() } else { format!(" (restored before: {})", written.join(", ")) }
            );
            return Ok(ExitCode::from(exit::INTERRUPTED));
        }
    };
    sink.bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if g.json {
        print_json(
            &json!({"message_type": "summary", "snapshot_id": done.id.to_hex(),
            "files": done.files,
            "bytes": done.bytes, "duration_seconds": secs}),
        );
    } else if !g.quiet {
        for p in &done.files {
            line(format_args!("restored {p}"));
        }
        if let Some(name) = &done.defined {
            line(format_args!(
                "defined VM {name}; start it with `virsh start {name}`"
            ));
        }
        line(format_args!(
            "snapshot {} restored: {} in {secs:.1} s",
            done.id.short(),
            human(done.bytes)
        ));
    }
    Ok(exit::ok())
}

/// What a restore tells while it runs.
pub trait RestoreSink: Sync {
    /// The bytes of the disks to restore, once known.
    fn total(&self, bytes: u64);
    /// `bytes` more were written.
    fn advance(&self, bytes: u64);
    /// Something the user should know (QEMU pass-through left out of a defined VM).
    fn warn(&self, line: &str);
}

/// The terminal's progress bar.
struct BarSink {
    bar: indicatif::ProgressBar,
}

impl RestoreSink for BarSink {
    fn total(&self, bytes: u64) {
        self.bar.set_length(bytes);
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn warn(&self, line: &str) {
        self.bar.suspend(|| eprintln!("vmstash: warning: {line}"));
    }
}

/// How a restore ended.
pub enum Restored {
    /// Every disk was restored.
    Done(RestoreDone),
    /// Canceled while disk `disk` was written; its partial image was removed.
    Canceled {
        /// The disk being written.
        disk: String,
        /// The images restored before it.
        written: Vec<String>,
    },
}

/// A finished restore.
pub struct RestoreDone {
    /// The snapshot restored.
    pub id: vmstash_repo::Id,
    /// The files written (as the destination's host names them).
    pub files: Vec<String>,
    /// The bytes of the disks restored.
    pub bytes: u64,
    /// The VM defined, with `define`.
    pub defined: Option<String>,
}

/// Restores the disks of snapshot `a.snapshot` (and its domain XML or QEMU configuration)
/// into `a.target`, and defines the VM when `a.define` says so: what `vmstash restore` and a
/// daemon's restore job do. Nothing is written when an image exists already.
pub fn restore_snapshot(
    g: &Global,
    a: &RestoreArgs,
    sink: &dyn RestoreSink,
    cancel: &CancelToken,
) -> Result<Restored> {
    let repo = &repo::open(g)?;
    let _lock = repo::lock_for_reading(g, repo, "restore")?;
    let (listing, _) = repo::snapshots_warning_of_damage(repo)?;
    let (id, m) = listing.find(&a.snapshot, &a.filter.filter())?;
    let disks = select_disks(&m.disks, &a.disks)?;
    if a.define && m.qemu.is_some() && m.domain_xml.is_none() {
        return Err(crate::exit::usage(format!(
            "--define: snapshot {} is of a QEMU without libvirt (backed up through its QMP socket), so there is no domain XML to define; restore without --define, and start QEMU on the restored disks with the command line the restore writes to {QEMU_CONFIG_FILE}",
            id.short()
        )));
    }
    let dest = Dest::open(g, &a.target)?;
    check_targets(&dest, &disks, a.format)?;
    let index = Arc::new(repo.load_index().context("loading the repository index")?);
    let bytes = disks.iter().map(|d| d.size).sum();
    sink.total(bytes);
    let mut files = Vec::new();
    for &disk in &disks {
        let reader = DiskReader::new(repo.clone(), Arc::clone(&index), Arc::new(disk.clone()))
            .zero_lost(a.zero_lost);
        let restored = restore_disk(&reader, &dest, a.format, sink, cancel);
        if cancel.is_cancelled() {
            return Ok(Restored::Canceled {
                disk: disk.name.clone(),
                written: files,
            });
        }
        let path = restored
            .with_context(|| format!("restoring disk {} of snapshot {}", disk.name, id.short()))?;
        files.push(path);
    }
    if let Some(xml) = &m.domain_xml {
        dest.write_file("domain.xml", xml.as_bytes())?;
        files.push(dest.display("domain.xml"));
    }
    if let Some(qemu) = &m.qemu {
        dest.write_file(QEMU_CONFIG_FILE, &qemu_config_json(qemu)?)?;
        files.push(dest.display(QEMU_CONFIG_FILE));
    }
    let defined = if a.define {
        let (name, file) = define_vm(g, &m, a, &dest, &disks, sink)?;
        files.push(file);
        Some(name)
    } else {
        None
    };
    Ok(Restored::Done(RestoreDone {
        id,
        files,
        bytes,
        defined,
    }))
}

/// Defines the restored VM on the hypervisor; returns its name and the XML file used.
fn define_vm(
    g: &Global,
    m: &Manifest,
    a: &RestoreArgs,
    dest: &Dest,
    disks: &[&Disk],
    sink: &dyn RestoreSink,
) -> Result<(String, String)> {
    let xml = m.domain_xml.as_deref().context(
        "this snapshot has no domain XML (a backup of disk files, not of a VM); there is nothing to define",
    )?;
    let ext = extension(a.format);
    let restored: Vec<RestoredDisk> = disks
        .iter()
        .map(|d| RestoredDisk {
            target: d.name.clone(),
            path: dest.path(&format!("{}.{ext}", d.name)),
            format: ext.to_string(),
        })
        .collect();
    let options = DefineOptions {
        new_name: a.name.as_deref(),
        keep_qemu_passthrough: a.keep_qemu_passthrough,
    };
    let defined = rewrite_for_define(xml, &restored, &options)?;
    for removed in &defined.removed {
        sink.warn(&format!("QEMU pass-through left out of the defined VM (it may name files, devices or sockets of the backed-up host): {removed}"));
    }
    let new_xml = defined.xml;
    let name = a.name.clone().unwrap_or_else(|| m.name.clone());
    let uri = a.connect.clone().unwrap_or_else(|| dest.hypervisor_uri());
    let hv = Hypervisor::connect(&uri, &g.ssh_options())?;
    if hv.virsh.exists(&name)? {
        bail!(
            "a VM named {name:?} already exists; choose a new one with --name (the restored disks are in {})",
            dest.display("")
        );
    }
    let file = format!("{name}.define.xml");
    dest.write_file(&file, new_xml.as_bytes())?;
    hv.virsh
        .define(&dest.path(&file))
        .with_context(|| format!("defining {name}"))?;
    Ok((name, dest.display(&file)))
}

fn extension(format: RestoreFormat) -> &'static str {
    match format {
        RestoreFormat::Raw => "raw",
        RestoreFormat::Qcow2 => "qcow2",
    }
}

fn select_disks<'a>(all: &'a [Disk], wanted: &[String]) -> Result<Vec<&'a Disk>> {
    if wanted.is_empty() {
        return Ok(all.iter().collect());
    }
    wanted
        .iter()
        .map(|w| {
            all.iter().find(|d| d.name == *w).ok_or_else(|| {
                let names: Vec<_> = all.iter().map(|d| d.name.as_str()).collect();
                anyhow!(
                    "the snapshot has no disk {w:?}; it has: {}",
                    names.join(", ")
                )
            })
        })
        .collect()
}

/// The image file a disk is restored to.
fn image_name(disk: &Disk, format: RestoreFormat) -> String {
    format!("{}.{}", disk.name, extension(format))
}

/// Refuses to start when any disk's image already exists: nothing is written unless every
/// target is free.
fn check_targets(dest: &Dest, disks: &[&Disk], format: RestoreFormat) -> Result<()> {
    let taken: Vec<String> = disks
        .iter()
        .map(|d| image_name(d, format))
        .filter(|name| dest.exists(name))
        .map(|name| dest.display(&name))
        .collect();
    if !taken.is_empty() {
        bail!(
            "{} already exist{}; nothing was restored: remove {} or restore into another --target",
            taken.join(", "),
            if taken.len() == 1 { "s" } else { "" },
            if taken.len() == 1 { "it" } else { "them" }
        );
    }
    Ok(())
}

/// Restores one disk; returns where it was written. The image appears under its name only once
/// every chunk has been verified and written.
fn restore_disk(
    reader: &DiskReader,
    dest: &Dest,
    format: RestoreFormat,
    sink: &dyn RestoreSink,
    cancel: &CancelToken,
) -> Result<String> {
    let disk = reader.disk();
    let name = image_name(disk, format);
    let tmp = format!(".{}.raw.vmstash-partial", disk.name);
    let result = dest.create(&tmp, disk.size).and_then(|partial| {
        restore::restore_disk(
            reader,
            &partial,
            &dest.display(&tmp),
            // An object store wants more requests in flight than there are cores; each reads
            // a run of blobs (up to 8 MiB), so half as many threads as requests keep it busy.
            threads::io_workers().max(reader.repository().backend().requests_in_flight() / 2),
            &|n| sink.advance(n),
            cancel,
        )?;
        dest.finish(partial)?;
        match format {
            RestoreFormat::Raw => dest.rename(&tmp, &name),
            RestoreFormat::Qcow2 => dest.convert_to_qcow2(&tmp, &name),
        }
    });
    dest.remove(&tmp);
    result.map(|()| dest.display(&name))
}

/// The file a restore writes the configuration of a QEMU backed up through QMP to.
const QEMU_CONFIG_FILE: &str = "qemu.json";

/// The configuration of a QEMU backed up through QMP, as `qemu.json` holds it (pretty JSON).
fn qemu_config_json(qemu: &vmstash_repo::snapshot::QemuConfig) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(qemu)?;
    bytes.push(b'\n');
    Ok(bytes)
}
