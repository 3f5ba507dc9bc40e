//! `vmstash backup --connect qmp+ssh://[user@]host/path/to/qmp.sock` (or `qmp:///path`): one
//! running QEMU that no libvirt manages, backed up through its QMP socket (spec/FORMAT.md
//! §19.8). Its disks are taken from `query-block`; a fleecing (see [`crate::qemu::fleece`])
//! gives their point-in-time view over NBD with the dirty bitmaps since the last snapshot, which
//! the helper reads on the host as for a libvirt backup job; the snapshot keeps QEMU's command
//! line (and Proxmox's `qm config`) in place of a domain XML.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use vmstash_libvirt_xml::{DiskDef, DomainDef};
use vmstash_repo::backup::BackupReport;
use vmstash_repo::repository::now_rfc3339;
use vmstash_repo::snapshot::{Checkpoint, QemuConfig};
use vmstash_repo::Repository;

use super::cbt::{latest_with_checkpoint, read_disk, Since, VERIFY_EVERY};
use super::cbt_summary::{cbt_verdict, CbtSummary};
use super::domain::{VmBackup, VmConfig};
use crate::args::{BackupArgs, CbtMode, Global};
use crate::exit::{self, usage};
use crate::libvirt::backup_job::checkpoint_name;
use crate::libvirt::hypervisor::Hypervisor;
use crate::qemu::block::{leftovers, read_disks, QemuDisk};
use crate::qemu::fleece::{nbd_socket_of, scratch_path, Fleece, FleeceDisk};
use crate::qemu::inspect::inspect;
use crate::qemu::link::{replies, QmpLink};
use crate::{interrupt, repo};

/// Runs `vmstash backup` of the QEMU behind the QMP socket `hv` names; the summary counts from
/// `started`.
pub(super) fn run(
    g: &Global,
    repo: &Repository,
    hv: &Hypervisor,
    a: &BackupArgs,
    started: Instant,
) -> Result<ExitCode> {
    if !a.vms.is_empty() || a.all {
        return Err(usage(
            "--vm and --all choose libvirt domains; a qmp:// URI names one QEMU (its snapshots are named after its -name; --name names them otherwise)",
        ));
    }
    if !hv.is_local() {
        if a.no_helper {
            return Err(usage(
                "--no-helper: a QEMU's QMP socket on a remote host is reached through the helper",
            ));
        }
        hv.start_helper().map_err(|why| anyhow!(why))?;
    }
    let sink = super::sink::Terminal::new(g);
    let say = |m: &str| super::sink::BackupSink::say(&sink, m);
    let link = QmpLink::new(hv)?;
    let cancel = interrupt::cancel_on_signals()?;
    let _lock = repo::lock_for_writing(g, repo, "backup")?;
    let found = inspect(&link)?;
    let left = leftovers(&found.nodes, &found.exports, &found.jobs);
    if !left.is_empty() {
        bail!(
            "QEMU at {} holds what a vmstash backup left, or one is running: {}; if none runs, `vmstash vm-repair --connect {}` removes it",
            link.socket(),
            left.join(", "),
            hv.uri()
        );
    }
    let name = found.vm_name(a.name.as_deref(), link.socket());
    super::check_names(&name, &a.tags)?;
    let (disks, skipped) = read_disks(&found.blocks, &found.nodes, &a.exclude_disks)?;
    for (disk, why) in &skipped {
        say(&format!("{name}: skipping disk {disk} ({why})"));
    }
    if disks.is_empty() {
        bail!("QEMU at {} has no disk vmstash can back up", link.socket());
    }
    let config = QemuConfig {
        qmp_socket: link.socket().to_owned(),
        version: found.output.qemu.clone(),
        cmdline: found.output.cmdline.clone(),
        cwd: found.output.cwd.clone(),
        pve_config: pve_config(hv, link.socket()),
    };
    let defs: Vec<DiskDef> = disks.iter().map(disk_def).collect();
    let v = VmBackup {
        say: &say,
        sink: &sink,
        repo,
        hv,
        name: &name,
        a,
        since: started,
        cancel: &cancel,
        config: VmConfig::Qemu(config),
        dom: DomainDef {
            name: name.clone(),
            uuid: None,
            disks: defs.clone(),
        },
        disks: defs,
    };
    let peer = found.output.peer;
    let (report, summary) = back_up(&v, &link, disks, peer.map(|p| (p.pid, p.uid, p.gid)))?;
    v.summarise(&report, summary.as_ref());
    if let Some(summary) = &summary {
        cbt_verdict(&name, summary)?;
    }
    Ok(exit::ok())
}

/// Proxmox VE's configuration of the VM behind a socket named like Proxmox's
/// (`/var/run/qemu-server/VMID.qmp`), from `qm config`; `None` elsewhere or when `qm` fails.
fn pve_config(hv: &Hypervisor, socket: &str) -> Option<String> {
    let out = hv
        .virsh
        .shell()
        .run(&["qm", "config", pve_vmid(socket)?])
        .ok()?;
    (out.status == 0).then_some(out.stdout)
}

/// The Proxmox VMID of a QMP socket named like Proxmox's (`/var/run/qemu-server/VMID.qmp`).
fn pve_vmid(socket: &str) -> Option<&str> {
    ["/var/run/qemu-server/", "/run/qemu-server/"]
        .iter()
        .find_map(|dir| socket.strip_prefix(dir)?.strip_suffix(".qmp"))
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// A QEMU disk as the libvirt-shaped code that reads disks takes it.
fn disk_def(d: &QemuDisk) -> DiskDef {
    DiskDef {
        target: d.name.clone(),
        device: "disk".to_owned(),
        kind: "file".to_owned(),
        source: Some(d.filename.clone()),
        format: Some(if d.is_qcow2() { "qcow2" } else { "raw" }.to_owned()),
        readonly: false,
        shareable: false,
    }
}

/// The bitmap a disk is read incrementally with: the parent's checkpoint, if the disk was in
/// the parent snapshot and QEMU still records that bitmap on it; else says why not.
fn parent_bitmap(v: &VmBackup<'_>, d: &QemuDisk, since: Option<&Since>) -> Option<String> {
    let since = since?;
    if !d.is_qcow2() {
        return None;
    }
    let name = &since.checkpoint.name;
    let why = if !since.manifest.disks.iter().any(|p| p.name == d.name) {
        "it is not in the last snapshot".to_owned()
    } else {
        match d.bitmap(name) {
            None => format!("QEMU has no bitmap {name} on it (restarted from other images, or the bitmap was removed)"),
            Some(b) if b.inconsistent => format!("its bitmap {name} is inconsistent (QEMU stopped without storing it)"),
            Some(b) if !b.recording || !b.persistent => {
                format!("its bitmap {name} does not record writes (disabled by an interrupted backup?)")
            }
            Some(_) => return Some(name.clone()),
        }
    };
    (v.say)(&format!(
        "{}: disk {}: hashing every chunk: {why}",
        v.name, d.name
    ));
    None
}

/// Fleeces the disks, hashes them through their exports, stores the snapshot and removes the
/// fleecing; `peer` is QEMU's (pid, uid, gid), to name and own the scratch overlays.
fn back_up(
    v: &VmBackup<'_>,
    link: &QmpLink<'_>,
    disks: Vec<QemuDisk>,
    peer: Option<(u32, u32, u32)>,
) -> Result<(BackupReport, Option<CbtSummary>)> {
    let cbt = v.a.cbt != CbtMode::Never;
    if v.a.cbt == CbtMode::Always && !disks.iter().any(QemuDisk::is_qcow2) {
        bail!("cannot back up {} with changed-block tracking (--cbt always): it has no qcow2 disk (dirty bitmaps need qcow2)", v.name);
    }
    let time = v.a.time.clone().unwrap_or_else(now_rfc3339);
    let checkpoint = checkpoint_name(&time);
    let since = if cbt {
        latest_with_checkpoint(v)?
    } else {
        None
    };
    let pid = peer.map_or(0, |p| p.0);
    let fleece = Fleece {
        disks: disks
            .into_iter()
            .enumerate()
            .map(|(i, disk)| FleeceDisk {
                scratch: scratch_path(pid, i),
                new_bitmap: (cbt && disk.is_qcow2()).then(|| checkpoint.clone()),
                parent_bitmap: parent_bitmap(v, &disk, since.as_ref()),
                disk,
            })
            .collect(),
        nbd_socket: nbd_socket_of(link.socket()),
    };
    let since = since.filter(|_| fleece.disks.iter().any(|d| d.parent_bitmap.is_some()));
    let verify = v.a.verify_cbt
        || since
            .as_ref()
            .is_some_and(|s| s.checkpoint.since_full_hash + 1 >= VERIFY_EVERY);
    begin(v, link, &fleece, peer)?;
    let done = read_and_store(
        v,
        &fleece,
        since.as_ref(),
        verify,
        &time,
        cbt.then_some(&checkpoint),
    );
    let ended = end(v, link, &fleece, done.is_ok());
    match (done, ended) {
        (Ok(done), Ok(())) => Ok(done),
        (Ok(done), Err(e)) => {
            v.summarise(&done.0, done.1.as_ref());
            Err(e)
        }
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => Err(e.context(crate::output::describe(&c))),
    }
}

/// Creates the scratch overlays, leaves the helper what undoes the fleecing if vmstash dies,
/// and starts it; on failure undoes what was done.
fn begin(
    v: &VmBackup<'_>,
    link: &QmpLink<'_>,
    fleece: &Fleece,
    peer: Option<(u32, u32, u32)>,
) -> Result<()> {
    let mut on_exit: Vec<Vec<String>> = link
        .command(&fleece.end_steps(false), true)
        .into_iter()
        .collect();
    on_exit.push(remove_command(fleece));
    v.hv.on_exit(&on_exit)?;
    let started = create_scratch(v.hv, fleece, peer).and_then(|()| {
        let steps = fleece.begin_steps();
        let out = link.run(&steps, false)?;
        replies(&out, &steps).map(|_| ())
    });
    if let Err(e) = started {
        let _ = link.run(&fleece.end_steps(false), true);
        let _ = run_checked(v.hv, &remove_command(fleece));
        v.hv.on_exit(&[])?;
        return Err(e.context(format!(
            "starting the backup of {} through QMP (if an interrupted backup left an NBD server in QEMU, `vmstash vm-repair --connect {}` stops it)",
            v.name,
            v.hv.uri()
        )));
    }
    Ok(())
}

/// `rm -f` of the scratch overlays.
fn remove_command(fleece: &Fleece) -> Vec<String> {
    let mut argv = vec!["rm".to_owned(), "-f".to_owned()];
    argv.extend(fleece.scratch_files());
    argv
}

/// Runs `argv` on the hypervisor; a non-zero exit is an error with what it printed.
fn run_checked(hv: &Hypervisor, argv: &[String]) -> Result<()> {
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = hv.virsh.shell().run(&args)?;
    if out.status != 0 {
        bail!("{} failed: {}", argv.join(" "), out.stderr.trim());
    }
    Ok(())
}

/// Creates each disk's empty qcow2 scratch overlay of the disk's size, owned by QEMU's user.
fn create_scratch(hv: &Hypervisor, fleece: &Fleece, peer: Option<(u32, u32, u32)>) -> Result<()> {
    for d in &fleece.disks {
        let size = d.disk.size.to_string();
        let create = ["qemu-img", "create", "-q", "-f", "qcow2", &d.scratch, &size];
        run_checked(hv, &create.map(str::to_owned)).context("creating a scratch overlay")?;
        if let Some((_, uid, gid)) = peer.filter(|p| p.1 != 0) {
            let owner = format!("{uid}:{gid}");
            run_checked(hv, &["chown".to_owned(), owner, d.scratch.clone()])?;
        }
    }
    Ok(())
}

/// Ends the fleecing (see [`Fleece::end_steps`]), removes the overlays, and clears what the
/// helper was left to do on exit.
fn end(v: &VmBackup<'_>, link: &QmpLink<'_>, fleece: &Fleece, saved: bool) -> Result<()> {
    let steps = fleece.end_steps(saved);
    let ended = link.run(&steps, true).and_then(|out| {
        let refused: Vec<String> = steps
            .iter()
            .zip(&out.results)
            .filter_map(|(step, reply)| {
                let desc = reply.get("error")?["desc"].as_str().unwrap_or("?");
                Some(format!("{}: {desc}", step.to_json()))
            })
            .collect();
        if saved && !refused.is_empty() {
            bail!("QEMU refused {}", refused.join("; "));
        }
        Ok(())
    });
    let removed = run_checked(v.hv, &remove_command(fleece));
    let cleared = v.hv.on_exit(&[]);
    ended.and(removed).and(cleared).with_context(|| {
        format!(
            "the backup of {} could not be ended in QEMU; run `vmstash vm-repair --connect {}`",
            v.name,
            v.hv.uri()
        )
    })
}

/// Hashes every disk through its export and stores the snapshot, with the checkpoint
/// `checkpoint` (the new bitmaps' name) when changed-block tracking is on.
fn read_and_store(
    v: &VmBackup<'_>,
    fleece: &Fleece,
    since: Option<&Since>,
    verify: bool,
    time: &str,
    checkpoint: Option<&String>,
) -> Result<(BackupReport, Option<CbtSummary>)> {
    let chunk_size = v.repo.config().chunk_size;
    let mut inputs = Vec::new();
    let (mut bytes_hashed, mut tracked) = (0, false);
    for (i, (fd, def)) in fleece.disks.iter().zip(&v.disks).enumerate() {
        let export = fleece.export(i).context("a disk without an export")?;
        let parent_size = since
            .filter(|_| fd.parent_bitmap.is_some())
            .and_then(|s| s.manifest.disks.iter().find(|p| p.name == fd.disk.name))
            .map(|p| p.size);
        let read = read_disk(v, def, &export, parent_size, verify, chunk_size)?;
        bytes_hashed += read.bytes_hashed;
        if read.disk.reader.size() == 0 {
            (v.say)(&format!(
                "{}: skipping disk {} (it is empty: 0 bytes)",
                v.name, fd.disk.name
            ));
            continue;
        }
        tracked |= !read.disk.unchanged.is_empty() && !read.disk.verify_unchanged;
        inputs.push(read.disk);
    }
    let record = checkpoint.filter(|_| fleece.disks.iter().any(|d| d.new_bitmap.is_some()));
    let recorded = record.map(|name| Checkpoint {
        name: name.clone(),
        xml: String::new(),
        since_full_hash: match since {
            Some(s) if tracked => s.checkpoint.since_full_hash + 1,
            _ => 0,
        },
    });
    let report = v.store(inputs, Some(time.to_owned()), |plan| {
        plan.checkpoint = recorded;
        plan.cbt_parent = since.map(|s| s.id);
    })?;
    let summary = record.map(|name| CbtSummary {
        since: since.map(|s| s.checkpoint.name.clone()),
        checkpoint: name.clone(),
        bytes_hashed,
        verified: verify && since.is_some(),
        missed_chunks: report.disks.iter().map(|c| c.cbt_mismatches).sum(),
    });
    Ok((report, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxmox_sockets_name_their_vmid() {
        assert_eq!(pve_vmid("/var/run/qemu-server/100.qmp"), Some("100"));
        assert_eq!(pve_vmid("/run/qemu-server/9001.qmp"), Some("9001"));
        for other in [
            "/var/run/qemu-server/100.qga",
            "/var/run/qemu-server/.qmp",
            "/var/run/qemu-server/1x.qmp",
            "/var/run/qemu-server/sub/100.qmp",
            "/tmp/100.qmp",
        ] {
            assert_eq!(pve_vmid(other), None, "{other}");
        }
    }
}
