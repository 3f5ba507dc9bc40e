//! `vmstash vm-repair`: end a backup job a killed backup left on a VM (and its checkpoint),
//! commit overlays it left, and delete orphaned ones; behind a QMP socket, remove the exports,
//! jobs, nodes, NBD server and scratch overlays a killed backup left in and beside QEMU.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use vmstash_libvirt_xml::parse_domain;

use crate::args::{Global, VmRepairArgs};
use crate::exit::{self, usage};
use crate::libvirt::backup_job::end_leftover_job;
use crate::libvirt::hypervisor::Hypervisor;
use crate::libvirt::offline_job::end_leftovers;
use crate::libvirt::overlay::repair_domain;
use crate::output::{line, print_json};
use crate::qemu::fleece::{leftover_steps, nbd_socket_of, scratch_prefix, SCRATCH_DIR};
use crate::qemu::inspect::inspect;
use crate::qemu::link::QmpLink;

/// Runs `vmstash vm-repair`.
pub fn run(g: &Global, a: &VmRepairArgs) -> Result<ExitCode> {
    let hv = Hypervisor::connect(&a.connect, &g.ssh_options())?;
    let say = |m: &str| {
        if !g.quiet {
            eprintln!("{m}");
        }
    };
    if hv.qmp_socket().is_some() {
        return repair_qemu(g, &hv, a);
    }
    if a.vm.is_empty() {
        return Err(usage("--vm NAME: which libvirt domain to repair"));
    }
    let Repaired { job, done, removed } = repair_libvirt_vm(&hv, &a.vm, &say)?;
    if g.json {
        print_json(&json!({
            "message_type": "repaired", "vm": a.vm, "overlays_committed": done,
            "backup_job_ended": job, "leftovers_removed": removed,
        }));
    } else if done.is_empty() && job.is_none() && removed.is_empty() && !g.quiet {
        line(format_args!(
            "{}: no leftover overlays or backup job; nothing to repair",
            a.vm
        ));
    }
    Ok(exit::ok())
}

/// What [`repair_libvirt_vm`] did.
pub struct Repaired {
    /// The checkpoint of the backup job it ended.
    pub job: Option<String>,
    /// The overlays it committed.
    pub done: Vec<String>,
    /// What else it removed (qemu-nbd servers, bitmaps, scratch files).
    pub removed: Vec<String>,
}

/// Ends the backup job a killed backup left on libvirt domain `vm`, commits its overlays
/// and removes its other leftovers, saying each in `say`.
pub fn repair_libvirt_vm(hv: &Hypervisor, vm: &str, say: &dyn Fn(&str)) -> Result<Repaired> {
    let running = matches!(hv.virsh.state(vm)?.as_str(), "running" | "paused");
    let job = if running {
        end_leftover_job(&hv.virsh, vm)?
    } else {
        None
    };
    if let Some(checkpoint) = &job {
        say(&format!(
            "{vm}: ended the backup job an interrupted backup had left, and deleted its checkpoint {checkpoint}"
        ));
    }
    let repaired = repair_domain(say, &hv.virsh, vm)?;
    let done = repaired.done;
    let mut removed = Vec::new();
    if !running {
        let dom = parse_domain(&repaired.xml)?;
        let key = dom.uuid.as_deref().unwrap_or(vm);
        for what in end_leftovers(&hv.virsh, vm, key, &dom.disks)? {
            say(&format!(
                "{vm}: removed {what}, left by an interrupted backup"
            ));
            removed.push(what);
        }
    }
    Ok(Repaired { job, done, removed })
}

/// `vm-repair` of the QEMU behind a QMP socket: what an interrupted backup left in QEMU (see
/// [`leftover_steps`]) and its scratch overlays on the host.
fn repair_qemu(g: &Global, hv: &Hypervisor, a: &VmRepairArgs) -> Result<ExitCode> {
    if !a.vm.is_empty() {
        return Err(usage(
            "--vm names a libvirt domain; a qmp:// URI names its QEMU already",
        ));
    }
    if !hv.is_local() {
        hv.start_helper().map_err(|why| anyhow::anyhow!(why))?;
    }
    let link = QmpLink::new(hv)?;
    let found = inspect(&link)?;
    let nbd_socket = nbd_socket_of(link.socket());
    let (dir, file) = nbd_socket.rsplit_once('/').unwrap_or((".", &nbd_socket));
    let shell = hv.virsh.shell();
    let socket_left = shell
        .list_dir(if dir.is_empty() { "/" } else { dir })?
        .iter()
        .any(|f| f == file);
    let steps = leftover_steps(&found.nodes, &found.exports, &found.jobs, socket_left);
    let mut removed: Vec<String> =
        crate::qemu::block::leftovers(&found.nodes, &found.exports, &found.jobs);
    if !steps.is_empty() {
        link.run(&steps, true)?;
        if socket_left {
            removed.push("the NBD server".to_owned());
        }
    }
    if let Some(peer) = found.output.peer {
        let prefix = scratch_prefix(peer.pid);
        for f in shell.list_dir(SCRATCH_DIR)? {
            if f.starts_with(&prefix) {
                let path = format!("{}/{f}", SCRATCH_DIR);
                shell.remove_file(&path)?;
                removed.push(format!("scratch overlay {path}"));
            }
        }
    }
    let after = inspect(&link)?;
    let still = crate::qemu::block::leftovers(&after.nodes, &after.exports, &after.jobs);
    if !still.is_empty() {
        anyhow::bail!(
            "QEMU at {} still holds {} after repair",
            link.socket(),
            still.join(", ")
        );
    }
    if g.json {
        print_json(
            &json!({"message_type": "repaired", "qmp_socket": link.socket(), "leftovers_removed": removed}),
        );
    } else if !g.quiet {
        if removed.is_empty() {
            line(format_args!(
                "{}: nothing a backup left; nothing to repair",
                link.socket()
            ));
        }
        for what in &removed {
            line(format_args!(
                "{}: removed {what}, left by an interrupted backup",
                link.socket()
            ));
        }
    }
    Ok(exit::ok())
}
