//! [`QmpLink`]: where a QMP script runs: in this process for a socket on this host, or by the
//! hashblocks helper on the hypervisor (`qmp` command, spec §19.8), one short connection per
//! script, so that the VM's manager is never kept from its socket for long.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use vmstash_hashblocks::qmp::{run_script, ScriptOutput, Step};

use crate::libvirt::hypervisor::Hypervisor;

/// A QEMU's monitor socket and how to reach it.
pub struct QmpLink<'a> {
    hv: &'a Hypervisor,
    socket: String,
    /// The helper's path on a remote hypervisor.
    helper: Option<String>,
}

impl<'a> QmpLink<'a> {
    /// The socket the hypervisor's URI names; a remote one needs the helper running there.
    pub fn new(hv: &'a Hypervisor) -> Result<QmpLink<'a>> {
        let socket = hv
            .qmp_socket()
            .context("the URI names no QMP socket")?
            .to_owned();
        let helper = hv.helper_path();
        if !hv.is_local() && helper.is_none() {
            bail!("backing up a QEMU through its QMP socket on a remote host needs the hashblocks helper there (do not give --no-helper)");
        }
        Ok(QmpLink { hv, socket, helper })
    }

    /// The socket's path on the hypervisor.
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// Runs `steps` over one connection; see [`run_script`] for `keep_going`.
    pub fn run(&self, steps: &[Step], keep_going: bool) -> Result<ScriptOutput> {
        let Some(argv) = self.command(steps, keep_going) else {
            return run_script(Path::new(&self.socket), steps, keep_going)
                .with_context(|| format!("talking to QEMU at {}", self.socket));
        };
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = self.hv.virsh.shell().run(&argv)?;
        if out.status != 0 {
            return Err(anyhow!("{}", out.stderr.trim())).with_context(|| {
                format!(
                    "talking to QEMU at {} on {}",
                    self.socket,
                    self.hv.host_label()
                )
            });
        }
        serde_json::from_str(&out.stdout).with_context(|| {
            format!(
                "the helper's answer about QEMU at {} is not what it should print",
                self.socket
            )
        })
    }

    /// The command that runs `steps` on a remote hypervisor (for the helper to run on exit,
    /// spec §19.7); `None` on this host.
    pub fn command(&self, steps: &[Step], keep_going: bool) -> Option<Vec<String>> {
        let helper = self.helper.clone()?;
        let mut argv = vec![helper, "qmp".to_owned()];
        if keep_going {
            argv.push("--keep-going".to_owned());
        }
        argv.push(self.socket.clone());
        argv.extend(steps.iter().map(|s| s.to_json().to_string()));
        Some(argv)
    }
}

/// The replies of a script that stops at the first refused step, or the error that names it.
pub fn replies<'o>(out: &'o ScriptOutput, steps: &[Step]) -> Result<&'o [serde_json::Value]> {
    for (step, reply) in steps.iter().zip(&out.results) {
        if let Some(error) = reply.get("error") {
            bail!(
                "QEMU refused {}: {}",
                step.to_json(),
                error["desc"].as_str().unwrap_or("(no description)")
            );
        }
    }
    if out.results.len() != steps.len() {
        bail!(
            "QEMU answered {} of {} commands",
            out.results.len(),
            steps.len()
        );
    }
    Ok(&out.results)
}
