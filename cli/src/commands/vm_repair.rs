//! `vmstash vm-repair`: commit overlays a killed backup left on a VM, and delete orphaned ones.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use crate::args::{Global, VmRepairArgs};
use crate::exit;
use crate::libvirt::hypervisor::Hypervisor;
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
    let done = repair_domain(&say, &hv.virsh, &a.vm)?.done;
    if g.json {
        print_json(&json!({"message_type": "repaired", "vm": a.vm, "overlays_committed": done}));
    } else if done.is_empty() && !g.quiet {
        line(format_args!(
            "{}: no leftover overlays; nothing to repair",
            a.vm
        ));
    }
    Ok(exit::ok())
}
