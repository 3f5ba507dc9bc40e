//! [`run_script`]: a list of steps over one QMP connection, as the helper's `qmp` command runs
//! them on the hypervisor (spec/FORMAT.md §19.8) and vmstash runs them on its own host.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::client::{Peer, QmpClient};
use super::QmpError;

/// The pseudo-command of a step that waits for a block job to be gone: `{"vmstash-await-job-gone":
/// ID}`. Not sent to QEMU.
pub const AWAIT_JOB_GONE: &str = "vmstash-await-job-gone";

/// The most of `/proc/PID/cmdline` kept (QEMU command lines of Proxmox VMs run to a few KiB).
const MAX_CMDLINE: u64 = 1 << 20;

/// One step of a script.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A QMP command, sent as is: `{"execute": NAME, "arguments": {…}}`.
    Execute(Value),
    /// Wait until the block job of this id is gone (after `block-job-cancel`).
    AwaitJobGone(String),
}

impl Step {
    /// A step from its JSON form (a command, or `{"vmstash-await-job-gone": ID}`).
    pub fn from_json(value: Value) -> Result<Step, String> {
        if let Some(id) = value.get(AWAIT_JOB_GONE) {
            let id = id
                .as_str()
                .ok_or_else(|| format!("{AWAIT_JOB_GONE} takes a job id (a string)"))?;
            return Ok(Step::AwaitJobGone(id.to_owned()));
        }
        match value.get("execute") {
            Some(Value::String(_)) => Ok(Step::Execute(value)),
            _ => Err(format!(
                "a step is {{\"execute\": NAME, …}} or {{\"{AWAIT_JOB_GONE}\": ID}}, not {value}"
            )),
        }
    }

    /// The step's JSON form.
    pub fn to_json(&self) -> Value {
        match self {
            Step::Execute(command) => command.clone(),
            Step::AwaitJobGone(id) => json!({ AWAIT_JOB_GONE: id }),
        }
    }
}

/// What a script found and got: who QEMU is, and one reply per step run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptOutput {
    /// QEMU's version (`7.2.22`).
    pub qemu: String,
    /// The QEMU process, when the socket could say.
    pub peer: Option<Peer>,
    /// Its command line (`/proc/PID/cmdline`), empty when it could not be read.
    pub cmdline: Vec<String>,
    /// Its working directory (`/proc/PID/cwd`), which relative image paths are relative to.
    pub cwd: Option<String>,
    /// One reply per step run, as QEMU writes them: `{"return": …}` or `{"error": {"class":
    /// …, "desc": …}}` (a job still there after waiting: class `Timeout`).
    pub results: Vec<Value>,
}

/// Connects to `socket` and runs `steps`, stopping after the first refused one unless
/// `keep_going` (cleaning up: every step runs whatever the ones before answered).
pub fn run_script(
    socket: &Path,
    steps: &[Step],
    keep_going: bool,
) -> Result<ScriptOutput, QmpError> {
    let (mut client, peer) = QmpClient::connect(socket)?;
    let mut results = Vec::with_capacity(steps.len());
    for step in steps {
        let reply = match step {
            Step::Execute(command) => client.execute(command)?.to_json(),
            Step::AwaitJobGone(id) if client.await_job_gone(id)? => json!({"return": {}}),
            Step::AwaitJobGone(id) => json!({"error": {
                "class": "Timeout", "desc": format!("block job {id} is still there after 30 s")
            }}),
        };
        let refused = reply.get("error").is_some();
        results.push(reply);
        if refused && !keep_going {
            break;
        }
    }
    Ok(ScriptOutput {
        qemu: client.version().to_owned(),
        peer,
        cmdline: peer.map(|p| cmdline(p.pid)).unwrap_or_default(),
        cwd: peer
            .and_then(|p| std::fs::read_link(format!("/proc/{}/cwd", p.pid)).ok())
            .map(|p| p.display().to_string()),
        results,
    })
}

/// The command line of process `pid`, lossily decoded; empty when it cannot be read.
fn cmdline(pid: u32) -> Vec<String> {
    let Ok(file) = std::fs::File::open(format!("/proc/{pid}/cmdline")) else {
        return Vec::new();
    };
    let mut bytes = Vec::new();
    if file.take(MAX_CMDLINE).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}
