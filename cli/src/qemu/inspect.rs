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
        blocks: ret(1),
        nodes: ret(2),
        exports: ret(3),
        jobs: ret(4),
        output,
    })
}
