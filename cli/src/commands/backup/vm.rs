//! `vmstash backup --connect URI (--vm NAME … | --all)`: each VM's disks read at one instant
//! (a running VM's through a backup job with changed-block tracking, see [`super::cbt`], or
//! through an external snapshot, see [`crate::libvirt::overlay`]), hashed on the hypervisor by
//! the helper where it runs, and stored as one snapshot per VM.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use vmstash_libvirt_xml::{parse_domain, DiskDef, DiskPlan, DomainDef};
use vmstash_repo::{CancelToken, Repository};

use super::cbt;
use super::cbt_summary::cbt_verdict;
use super::domain::{VmBackup, VmConfig};
use super::sink::{BackupSink, Terminal};
use crate::args::{BackupArgs, CbtMode, Global};
use crate::exit;
use crate::libvirt::backup_job::end_leftover_job;
use crate::libvirt::hypervisor::Hypervisor;
use crate::libvirt::offline_job::end_leftovers;
use crate::libvirt::overlay::{commit_overlays, repair_domain, snapshot_live};
use crate::{interrupt, repo};

/// Runs `vmstash backup --connect URI …`.
pub(super) fn run(g: &Global, connect: &str, a: &BackupArgs) -> Result<ExitCode> {
    let sink = Terminal::new(g);
    let hv = Hypervisor::connect(connect, &g.ssh_options())?;
    if hv.qmp_socket().is_some() {
        let repo = repo::open(g)?;
        return super::qmp::run(g, &repo, &hv, a, Instant::now());
    }
    let cancel = interrupt::cancel_on_signals()?;
    let choose = |hv: &Hypervisor| -> Result<Vec<String>> {
        if a.all {
            hv.virsh.list_all()
        } else {
            Ok(a.vms.clone())
        }
    };
    let mut outcome = back_up_vms(g, &hv, a, &choose, &sink, &cancel)?;
    if cancel.is_cancelled() {
        eprintln!("vmstash: interrupted; every VM was left on its original disks");
        return Ok(ExitCode::from(exit::INTERRUPTED));
    }
    if outcome.names.len() == 1 {
        // One VM: its own error, whose kind sets the exit code (3 for missed CBT writes).
        return match outcome.failed.pop() {
            Some((_, e)) => Err(e),
            None => Ok(exit::ok()),
        };
    }
    match outcome.failed.as_slice() {
        [] => Ok(exit::ok()),
        failed => {
            for (name, e) in failed {
                eprintln!("vmstash: backing up {name}: {}", crate::output::describe(e));
            }
            let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
            bail!(
                "{} of {} VMs failed: {}",
                failed.len(),
                outcome.names.len(),
                names.join(", ")
            )
        }
    }
}

/// What [`back_up_vms`] did.
pub struct VmsOutcome {
    /// The VMs it was to back up.
    pub names: Vec<String>,
    /// Those that failed, with why.
    pub failed: Vec<(String, anyhow::Error)>,
}

/// Backs up the libvirt domains `choose` picks on `hv` (connected; not a QMP socket) into
/// the repository of `g`, one snapshot each, telling `sink`; stops between (and inside)
/// VMs when `cancel` is set, every VM back on its own disks. An error is one that stops
/// them all (the repository, the hypervisor); a VM's own failure is in the outcome.
pub fn back_up_vms(
    g: &Global,
    hv: &Hypervisor,
    a: &BackupArgs,
    choose: &dyn Fn(&Hypervisor) -> Result<Vec<String>>,
    sink: &dyn BackupSink,
    cancel: &CancelToken,
) -> Result<VmsOutcome> {
    // Each VM's summary counts from here (the first) or from the end of the VM before: its
    // share of the connection, the helper's start, the snapshot and the commit included.
    let mut since = Instant::now();
    let say = |m: &str| sink.say(m);
    if hv.qmp_socket().is_some() {
        bail!(
            "{} is a QEMU's QMP socket, not libvirt: back it up with `vmstash backup --connect`",
            hv.uri()
        );
    }
    let repo = repo::open(g)?;
    if !a.no_helper {
        if let Err(why) = hv.start_helper() {
            say(&format!(
                "vmstash: warning: {why}; reading whole disks over SFTP"
            ));
        }
    }
    let names = choose(hv)?;
    if names.is_empty() {
        bail!("no VM to back up: give --vm NAME or --all");
    }
    let _lock = repo::lock_for_writing(g, &repo, "backup")?;
    let mut failed = Vec::new();
    for name in &names {
        if cancel.is_cancelled() {
            break;
        }
        let result = back_up_domain(&say, sink, &repo, hv, name, a, since, cancel);
        since = Instant::now();
        match result {
            Ok(()) => {}
            Err(_) if cancel.is_cancelled() => break,
            Err(e) => failed.push((name.clone(), e)),
        }
    }
    Ok(VmsOutcome { names, failed })
}

/// Backs up one domain: a running one with changed-block tracking where it can (see
/// [`cbt`]), else through an external snapshot; its summary, printed once the domain is back
/// on its disks, counts the time from `since`.
#[allow(clippy::too_many_arguments)]
fn back_up_domain(
    say: &dyn Fn(&str),
    sink: &dyn BackupSink,
    repo: &Repository,
    hv: &Hypervisor,
    name: &str,
    a: &BackupArgs,
    since: Instant,
    cancel: &CancelToken,
) -> Result<()> {
    let state = hv.virsh.state(name)?;
    let live = matches!(state.as_str(), "running" | "paused" | "pmsuspended");
    if live {
        if let Some(checkpoint) = end_leftover_job(&hv.virsh, name)? {
            say(&format!(
                "{name}: ended the backup job an interrupted backup had left (checkpoint {checkpoint})"
            ));
        }
    }
    let xml = repair_domain(say, &hv.virsh, name)?.xml;
    let dom = parse_domain(&xml)?;
    if !live {
        let key = dom.uuid.as_deref().unwrap_or(name);
        for what in end_leftovers(&hv.virsh, name, key, &dom.disks)? {
            say(&format!(
                "{name}: removed {what}, left by an interrupted backup"
            ));
        }
    }
    let disks = included_disks(say, &dom, &a.exclude_disks);
    if disks.is_empty() {
        bail!("{name} has no disk vmstash can back up");
    }
    let v = VmBackup {
        say,
        sink,
        repo,
        hv,
        name,
        a,
        since,
        cancel,
        config: VmConfig::Libvirt(xml),
        dom,
        disks,
    };
    if a.cbt != CbtMode::Never {
        match cbt::back_up(&v, live)? {
            cbt::Outcome::Done(done) => {
                let (report, summary) = *done;
                v.summarise(&report, Some(&summary));
                return cbt_verdict(name, &summary);
            }
            cbt::Outcome::NotUsed(why) if a.cbt == CbtMode::Always => {
                bail!("cannot back up {name} with changed-block tracking (--cbt always): {why}")
            }
            cbt::Outcome::NotUsed(why) => say(&format!(
                "{name}: not using changed-block tracking: {why}; {}",
                if live {
                    "reading through an external snapshot"
                } else {
                    "reading its disk images"
                }
            )),
        }
    }
    if !live {
        return v.read_images().map(|r| v.summarise(&r, None));
    }
    let overlays = snapshot_live(say, &hv.virsh, name, &v.dom, &v.disks)?;
    let result = v.read_images();
    let cleanup = commit_overlays(&hv.virsh, name, &overlays);
    match (result, cleanup) {
        (Ok(report), Ok(())) => {
            v.summarise(&report, None);
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
                    v.summarise(&report, None);
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
