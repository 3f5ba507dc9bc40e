//! `vmstash vm-repair`: end a backup job a killed backup left on a VM (and its checkpoint),
//! commit overlays it left, and delete orphaned ones.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use vmstash_libvirt_xml::parse_domain;

use crate::args::{Global, VmRepairArgs};
use crate::exit;
use crate::libvirt::backup_job::end_leftover_job;
use crate::libvirt::hypervisor::Hypervisor;
use crate::libvirt::offline_job::end_leftovers;
use crate::libvirt::overlay::repair_domain;
use crate::output::{line, print_json};

/// Runs `vmstash vm-repair`.
pub fn run(g: &Global, a: &VmRepairArgs) -> Result<ExitCode> {
    let hv = Hypervisor::connect(&a.connect, &g.ssh_options())?;
    let say = |m: &str| {
        if !g.quiet {
            eprintln!("{m}");
        }
    };
    let running = matches!(hv.virsh.state(&a.vm)?.as_str(), "running" | "paused");
    let job = if running {
        end_leftover_job(&hv.virsh, &a.vm)?
    } else {
        None
    };
    if let Some(checkpoint) = &job {
        say(&format!(
            "{}: ended the backup job an interrupted backup had left, and deleted its checkpoint {checkpoint}",
            a.vm
        ));
    }
    let repaired = repair_domain(&say, &hv.virsh, &a.vm)?;
    let done = repaired.done;
    let mut removed = Vec::new();
    if !running {
        let dom = parse_domain(&repaired.xml)?;
        let key = dom.uuid.as_deref().unwrap_or(&a.vm);
        for what in end_leftovers(&hv.virsh, &a.vm, key, &dom.disks)? {
            say(&format!(
                "{}: removed {what}, left by an interrupted backup",
                a.vm
            ));
            removed.push(what);
        }
    }
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
