//! [`inspect`]: what a QEMU is and holds, asked in one connection at the start of a backup or
//! a repair: its name, disks, block nodes (with their bitmaps), NBD exports and block jobs.

use anyhow::Result;
use serde_json::{json, Value};
use vmstash_hashblocks::qmp::{ScriptOutput, Step};

use super::link::{replies, QmpLink};

/// What a QEMU is, as the first script of a backup finds it.
pub struct Inspected {
    /// QEMU's `-name`, if it has one.
    pub name: Option<String>,
    /// The run state (`query-status`: `running`, `paused`, …).
    pub status: String,
    /// `query-block`.
    pub blocks: Value,
    /// `query-named-block-nodes` (flat).
    pub nodes: Value,
    /// `query-block-exports`.
    pub exports: Value,
    /// `query-block-jobs`.
    pub jobs: Value,
    /// Who QEMU is (version, process, command line).
    pub output: ScriptOutput,
}

/// Asks QEMU what it is and holds (one connection).
pub fn inspect(link: &QmpLink<'_>) -> Result<Inspected> {
    let query = |c: &str, args: Value| Step::Execute(json!({"execute": c, "arguments": args}));
    let steps = [
        query("query-name", json!({})),
        query("query-status", json!({})),
        query("query-block", json!({})),
        query("query-named-block-nodes", json!({"flat": true})),
        query("query-block-exports", json!({})),
        query("query-block-jobs", json!({})),
    ];
    let output = link.run(&steps, false)?;
    let r = replies(&output, &steps)?;
    let ret = |i: usize| r[i]["return"].clone();
    Ok(Inspected {
        name: ret(0)["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(str::to_owned),
        status: ret(1)["status"].as_str().unwrap_or("?").to_owned(),
        blocks: ret(2),
        nodes: ret(3),
        exports: ret(4),
        jobs: ret(5),
        output,
    })
}

impl Inspected {
    /// The name its snapshots get: `chosen` (`--name`), else QEMU's `-name`, else the socket's
    /// file name without extension (`100` for Proxmox's `/var/run/qemu-server/100.qmp`).
    pub fn vm_name(&self, chosen: Option<&str>, socket: &str) -> String {
        chosen
            .map(str::to_owned)
            .or_else(|| self.name.clone())
            .unwrap_or_else(|| socket_stem(socket))
    }
}

/// A socket's file name without extension (`qemu` when it has none).
fn socket_stem(socket: &str) -> String {
    std::path::Path::new(socket)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "qemu".to_owned())
}
