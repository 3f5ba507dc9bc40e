//! `vmstash vms`: the domains of a hypervisor, their state and disks (or the one QEMU behind a
//! QMP socket).

use std::process::ExitCode;

use anyhow::Result;
use serde_json::{json, Value};
use vmstash_libvirt_xml::parse_domain;

use crate::args::{Global, VmsArgs};
use crate::exit;
use crate::libvirt::hypervisor::Hypervisor;
use crate::output::{human, line, print_json};
use crate::qemu::block::read_disks;
use crate::qemu::inspect::inspect;
use crate::qemu::link::QmpLink;

/// Runs `vmstash vms`.
pub fn run(g: &Global, a: &VmsArgs) -> Result<ExitCode> {
    let hv = Hypervisor::connect(&a.connect, &g.ssh_options())?;
    let out = match hv.qmp_socket() {
        Some(_) => vec![qemu_vm(&hv)?],
        None => libvirt_vms(&hv)?,
    };
    if g.json {
        print_json(&serde_json::Value::Array(out));
        return Ok(exit::ok());
    }
    for vm in &out {
        line(format_args!(
            "{} ({})",
            vm["name"].as_str().unwrap_or(""),
            vm["state"].as_str().unwrap_or("")
        ));
        for d in vm["disks"].as_array().into_iter().flatten() {
            let size = d["virtual_size"].as_u64().map_or_else(|| "-".into(), human);
            line(format_args!(
                "  {:<6} {:<6} {:<6} {:>10}  {}",
                d["target"].as_str().unwrap_or(""),
                d["device"].as_str().unwrap_or(""),
                d["format"].as_str().unwrap_or("-"),
                size,
                d["source"].as_str().unwrap_or("-")
            ));
        }
    }
    Ok(exit::ok())
}

/// Each libvirt domain: name, state, UUID, disks.
fn libvirt_vms(hv: &Hypervisor) -> Result<Vec<Value>> {
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
    Ok(out)
}

/// The QEMU behind a QMP socket, in the same shape: the name its snapshots get, its run state,
/// and the disks a backup reads.
fn qemu_vm(hv: &Hypervisor) -> Result<Value> {
    if !hv.is_local() {
        hv.start_helper().map_err(|why| anyhow::anyhow!(why))?;
    }
    let link = QmpLink::new(hv)?;
    let found = inspect(&link)?;
    let (disks, _) = read_disks(&found.blocks, &found.nodes, &[])?;
    let disks: Vec<_> = disks
        .iter()
        .map(|d| {
            json!({"target": d.name, "device": "disk", "type": "file", "source": d.filename,
                   "format": if d.is_qcow2() { "qcow2" } else { "raw" },
                   "virtual_size": d.size, "readonly": false})
        })
        .collect();
    Ok(
        json!({"name": found.vm_name(None, link.socket()), "state": found.status,
              "uuid": null, "disks": disks}),
    )
}
