//! `vmstash vms`: the domains of a hypervisor, their state and disks.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use vmstash_libvirt_xml::parse_domain;

use crate::args::{Global, VmsArgs};
use crate::exit;
use crate::libvirt::hypervisor::Hypervisor;
use crate::output::{human, line, print_json};

/// Runs `vmstash vms`.
pub fn run(g: &Global, a: &VmsArgs) -> Result<ExitCode> {
    let hv = Hypervisor::connect(&a.connect, &g.ssh_options())?;
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
