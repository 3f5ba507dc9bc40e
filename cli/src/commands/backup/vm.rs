//! `vmstash backup --connect URI (--vm NAME … | --all)`: each VM's disks read at one instant
//! (through an external snapshot while it runs, see [`crate::libvirt::overlay`]), hashed on the
//! hypervisor by the helper where it runs, and stored as one snapshot per VM.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use vmstash_libvirt_xml::{parse_domain, DiskDef, DiskPlan, DomainDef};
use vmstash_repo::backup::{BackupDisk, BackupPlan, BackupReport};
use vmstash_repo::{CancelToken, Repository};

use super::{print_summary, store};
use crate::args::{BackupArgs, Global};
use crate::exit;
use crate::libvirt::hypervisor::{declared_format, Hypervisor};
use crate::libvirt::overlay::{commit_overlays, repair_domain, snapshot_live};
use crate::{interrupt, repo};

/// Runs `vmstash backup --connect URI …`.
pub(super) fn run(g: &Global, connect: &str, a: &BackupArgs) -> Result<ExitCode> {
    // Each VM's summary counts from here (the first) or from the end of the VM before: its
    // share of the connection, the helper's start, the snapshot and the commit included.
    let mut since = Instant::now();
    let say = |m: &str| {
        if !g.quiet {
            eprintln!("{m}");
        }
    };
    let repo = repo::open(g)?;
    let hv = Hypervisor::connect(connect, &g.ssh_options())?;
    if !a.no_helper {
        if let Err(why) = hv.start_helper() {
            say(&format!(
                "vmstash: warning: {why}; reading whole disks over SFTP"
            ));
        }
    }
    let names = if a.all {
        hv.virsh.list_all()?
    } else {
        a.vms.clone()
    };
    if names.is_empty() {
        bail!("no VM to back up: give --vm NAME or --all");
    }
    let cancel = interrupt::cancel_on_signals()?;
    let _lock = repo::lock_for_writing(g, &repo, "backup")?;
    let mut failed = Vec::new();
    for name in &names {
        if cancel.is_cancelled() {
            break;
        }
        let result = back_up_domain(g, &say, &repo, &hv, name, a, since, &cancel);
        since = Instant::now();
        match result {
            Ok(()) => {}
            Err(_) if cancel.is_cancelled() => break,
            Err(e) if names.len() == 1 => return Err(e),
            Err(e) => {
                eprintln!(
                    "vmstash: backing up {name}: {}",
                    crate::output::describe(&e)
                );
                failed.push(name.clone());
            }
        }
    }
    if cancel.is_cancelled() {
        eprintln!("vmstash: interrupted; every VM was left on its original disks");
        return Ok(ExitCode::from(exit::INTERRUPTED));
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

/// Backs up one domain, snapshotting it first when it runs; its summary, printed once the
/// domain is back on its disks, counts the time from `since`.
#[allow(clippy::too_many_arguments)]
fn back_up_domain(
    g: &Global,
    say: &dyn Fn(&str),
    repo: &Repository,
    hv: &Hypervisor,
    name: &str,
    a: &BackupArgs,
    since: Instant,
    cancel: &CancelToken,
) -> Result<()> {
    let xml = repair_domain(say, &hv.virsh, name)?.xml;
    let dom = parse_domain(&xml)?;
    let disks = included_disks(say, &dom, &a.exclude_disks);
    if disks.is_empty() {
        bail!("{name} has no disk vmstash can back up");
    }
    let state = hv.virsh.state(name)?;
    let live = matches!(state.as_str(), "running" | "paused" | "pmsuspended");
    let mut tags = a.tags.clone();
    tags.push(format!("host:{}", hv.host_label()));
    tags.push(format!("vm:{name}"));
    let read = |hv: &Hypervisor| -> Result<BackupReport> {
        let mut inputs = Vec::new();
        for d in &disks {
            let disk = disk_input(hv, d, repo.config().chunk_size)?;
            if disk.reader.size() == 0 {
                say(&format!(
                    "{name}: skipping disk {} (it is empty: 0 bytes)",
                    d.target
                ));
            } else {
                inputs.push(disk);
            }
        }
        if inputs.is_empty() {
            bail!("{name} has no disk with data to back up");
        }
        let mut plan = BackupPlan::new(name, inputs);
        plan.tags.clone_from(&tags);
        plan.domain_xml = Some(xml.clone());
        plan.started = Some(since);
        plan.time.clone_from(&a.time);
        store(g, repo, plan, cancel)
    };
    let summarise = |mut report: BackupReport| {
        report.manifest.summary.duration_seconds = since.elapsed().as_secs_f64();
        print_summary(g, &report);
    };
    if !live {
        return read(hv).map(summarise);
    }
    let overlays = snapshot_live(say, &hv.virsh, name, &dom, &disks)?;
    let result = read(hv);
    let cleanup = commit_overlays(&hv.virsh, name, &overlays);
    match (result, cleanup) {
        (Ok(report), Ok(())) => {
            summarise(report);
            Ok(())
        }
        (Err(e), Ok(())) => Err(e),
        (result, Err(c)) => {
            let c = c.context(format!(
                "{name} could not be switched back to its original disks; run `vmstash vm-repair --connect {} --vm {name}`",
                hv.uri()
            ));
            match result {
                Ok(report) => {
                    summarise(report);
                    Err(c)
                }
                Err(e) => Err(e.context(crate::output::describe(&c))),
            }
        }
    }
}

/// The disks to back up; says which are skipped and why.
fn included_disks(say: &dyn Fn(&str), dom: &DomainDef, excluded: &[String]) -> Vec<DiskDef> {
    let mut out = Vec::new();
    for d in &dom.disks {
        match d.plan(excluded) {
            DiskPlan::Include => out.push(d.clone()),
            DiskPlan::Skip(why) => {
                say(&format!("{}: skipping disk {} ({why})", dom.name, d.target))
            }
        }
    }
    out
}

/// Opens one disk of the domain on the hypervisor, with its chunk ids when the helper runs.
fn disk_input(hv: &Hypervisor, d: &DiskDef, chunk_size: u32) -> Result<BackupDisk> {
    let path = d.source.as_deref().context("disk without a source")?;
    let format = declared_format(d);
    let src = hv
        .open_disk(path, format)
        .with_context(|| format!("opening disk {} ({path})", d.target))?;
    let ids = hv
        .chunk_ids(path, format, chunk_size, src.size())
        .with_context(|| format!("hashing disk {} ({path}) on the host", d.target))?;
    let mut disk = BackupDisk::new(d.target.clone(), path, src);
    disk.known_ids = ids;
    Ok(disk)
}
