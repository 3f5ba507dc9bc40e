//! Image fleecing over QMP (spec/FORMAT.md §19.8): a point-in-time view of a running QEMU's
//! disks, exported over NBD with the dirty bitmaps since the last backup, and everything it
//! took removed afterwards.
//!
//! For each disk a qcow2 scratch overlay (a file on the host) is added as a node whose backing
//! is the disk's node; one transaction starts a `blockdev-backup` with `sync: none` from the
//! disk onto it (from then on QEMU copies each block the guest overwrites into the overlay
//! first, so the overlay reads as the disk at that instant), adds the new persistent bitmap and
//! disables the parent's, on every disk at once. An NBD server on a Unix socket beside the QMP
//! socket exports each overlay with the parent's bitmap. Ending cancels the jobs and removes
//! the nodes; after a saved snapshot the parent's (and any older vmstash) bitmap goes, after a
//! failure the new bitmap is merged back into the parent's, which records again: the next
//! backup still counts from the last saved snapshot.

use serde_json::{json, Value};
use vmstash_hashblocks::qmp::Step;

use super::block::{QemuDisk, PREFIX};
use crate::libvirt::nbd_disk::NbdExport;

/// Where scratch overlays go on the host: a disk-backed directory every host has (they hold
/// the blocks the guest overwrites while the backup runs).
pub const SCRATCH_DIR: &str = "/var/tmp";

/// What starts the file name of every scratch overlay made for the QEMU process `pid`.
pub fn scratch_prefix(pid: u32) -> String {
    format!("{PREFIX}qmp-{pid}-")
}

/// The scratch overlay of disk `i` of the QEMU process `pid`.
pub fn scratch_path(pid: u32, i: usize) -> String {
    format!("{SCRATCH_DIR}/{}{i}.qcow2", scratch_prefix(pid))
}

/// One disk in the fleecing.
#[derive(Debug, Clone)]
pub struct FleeceDisk {
    /// The disk.
    pub disk: QemuDisk,
    /// The scratch overlay's path on the host.
    pub scratch: String,
    /// The bitmap to make for the next backup (`None`: a raw disk, or `--cbt never`).
    pub new_bitmap: Option<String>,
    /// The bitmap to export (the parent snapshot's checkpoint), for an incremental read.
    pub parent_bitmap: Option<String>,
}

/// The fleecing of a QEMU's disks.
#[derive(Debug, Clone)]
pub struct Fleece {
    /// The disks, in order; their objects in QEMU are named by their position.
    pub disks: Vec<FleeceDisk>,
    /// The NBD server's socket on the host.
    pub nbd_socket: String,
}

/// The node of disk `i`'s overlay.
fn overlay_node(i: usize) -> String {
    format!("{PREFIX}fleece-{i}")
}

/// The backup job of disk `i`.
fn job_id(i: usize) -> String {
    format!("{PREFIX}backup-{i}")
}

/// The NBD export of disk `i`.
fn export_id(i: usize) -> String {
    format!("{PREFIX}export-{i}")
}

fn execute(command: &str, arguments: Value) -> Step {
    Step::Execute(json!({"execute": command, "arguments": arguments}))
}

/// The NBD socket of a backup through the QMP socket `qmp_socket`: beside it, where QEMU can
/// create files.
pub fn nbd_socket_of(qmp_socket: &str) -> String {
    format!("{qmp_socket}.vmstash-nbd")
}

impl Fleece {
    /// The steps that start it (run stopping at the first refused one).
    pub fn begin_steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut actions = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            steps.push(execute(
                "blockdev-add",
                json!({"driver": "qcow2", "node-name": overlay_node(i),
                       "file": {"driver": "file", "filename": d.scratch},
                       "backing": d.disk.node}),
            ));
            actions.push(json!({"type": "blockdev-backup", "data": {
                "device": d.disk.node, "target": overlay_node(i), "sync": "none",
                "job-id": job_id(i)}}));
            if let Some(new) = &d.new_bitmap {
                actions.push(json!({"type": "block-dirty-bitmap-add", "data": {
                    "node": d.disk.node, "name": new, "persistent": true}}));
            }
            if let Some(parent) = &d.parent_bitmap {
                actions.push(json!({"type": "block-dirty-bitmap-disable", "data": {
                    "node": d.disk.node, "name": parent}}));
            }
        }
        steps.push(execute("transaction", json!({ "actions": actions })));
        steps.push(execute(
            "nbd-server-start",
            json!({"addr": {"type": "unix", "data": {"path": self.nbd_socket}}}),
        ));
        for (i, d) in self.disks.iter().enumerate() {
            let bitmaps: Vec<&String> = d.parent_bitmap.iter().collect();
            steps.push(execute(
                "block-export-add",
                json!({"type": "nbd", "id": export_id(i), "node-name": overlay_node(i),
                       "name": d.disk.name, "writable": false, "bitmaps": bitmaps}),
            ));
        }
        steps
    }

    /// Where disk `i` is read, with the parent's bitmap when it is incremental.
    pub fn export(&self, i: usize) -> Option<NbdExport> {
        let d = self.disks.get(i)?;
        Some(NbdExport {
            socket: self.nbd_socket.clone(),
            name: d.disk.name.clone(),
            bitmap: d.parent_bitmap.clone(),
        })
    }

    /// The steps that end it (run to the end whatever each answers, so that they also end a
    /// fleecing that only partly started). After a `saved` snapshot every vmstash bitmap but
    /// the new one is removed; otherwise the new one is merged back into the parent's.
    pub fn end_steps(&self, saved: bool) -> Vec<Step> {
        let count = self.disks.len();
        let mut steps: Vec<Step> = (0..count)
            .map(|i| {
                execute(
                    "block-export-del",
                    json!({"id": export_id(i), "mode": "hard"}),
                )
            })
            .collect();
        steps.push(execute("nbd-server-stop", json!({})));
        for i in 0..count {
            steps.push(execute(
                "block-job-cancel",
                json!({"device": job_id(i), "force": true}),
            ));
        }
        steps.extend((0..count).map(|i| Step::AwaitJobGone(job_id(i))));
        steps.extend(
            (0..count).map(|i| execute("blockdev-del", json!({"node-name": overlay_node(i)}))),
        );
        for d in &self.disks {
            if saved {
                steps.extend(stale_bitmaps(d).map(|name| remove_bitmap(&d.disk.node, name)));
            } else {
                steps.extend(merge_back(d));
            }
        }
        steps
    }

    /// The scratch overlays' paths.
    pub fn scratch_files(&self) -> Vec<String> {
        self.disks.iter().map(|d| d.scratch.clone()).collect()
    }
}

/// The vmstash bitmaps of a disk that a saved snapshot makes useless: all but the new one.
fn stale_bitmaps(d: &FleeceDisk) -> impl Iterator<Item = &str> {
    d.disk
        .bitmaps
        .iter()
        .map(|b| b.name.as_str())
        .filter(|name| name.starts_with(PREFIX) && Some(*name) != d.new_bitmap.as_deref())
}

fn remove_bitmap(node: &str, name: &str) -> Step {
    execute(
        "block-dirty-bitmap-remove",
        json!({"node": node, "name": name}),
    )
}

/// After a failed backup: the writes the new bitmap recorded go back into the parent's, which
/// records again, in one transaction (if the new bitmap was never made, nothing changes).
fn merge_back(d: &FleeceDisk) -> Option<Step> {
    let new = d.new_bitmap.as_deref()?;
    let node = &d.disk.node;
    let Some(parent) = &d.parent_bitmap else {
        return Some(remove_bitmap(node, new));
    };
    Some(execute(
        "transaction",
        json!({"actions": [
            {"type": "block-dirty-bitmap-enable", "data": {"node": node, "name": parent}},
            {"type": "block-dirty-bitmap-merge", "data": {"node": node, "target": parent, "bitmaps": [new]}},
            {"type": "block-dirty-bitmap-remove", "data": {"node": node, "name": new}},
        ]}),
    ))
}

/// The steps that remove what an interrupted backup left in QEMU: its exports, the NBD server
/// (when an export of it, or its socket, is still there), its jobs and overlay nodes. Bitmaps
/// are left: the next backup trusts only the one its parent snapshot names, if it records.
pub fn leftover_steps(
    nodes: &Value,
    exports: &Value,
    jobs: &Value,
    nbd_socket_exists: bool,
) -> Vec<Step> {
    let ours = |list: &Value, key: &str| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x[key].as_str())
            .filter(|id| id.starts_with(PREFIX))
            .map(str::to_owned)
            .collect()
    };
    let exports = ours(exports, "id");
    let jobs = ours(jobs, "device");
    let nodes = ours(nodes, "node-name");
    let mut steps: Vec<Step> = exports
        .iter()
        .map(|id| execute("block-export-del", json!({"id": id, "mode": "hard"})))
        .collect();
    if nbd_socket_exists || !exports.is_empty() {
        steps.push(execute("nbd-server-stop", json!({})));
    }
    for id in &jobs {
        steps.push(execute(
            "block-job-cancel",
            json!({"device": id, "force": true}),
        ));
    }
    steps.extend(jobs.iter().map(|id| Step::AwaitJobGone(id.clone())));
    steps.extend(
        nodes
            .iter()
            .map(|n| execute("blockdev-del", json!({ "node-name": n }))),
    );
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::block::Bitmap;

    fn disk(name: &str, bitmaps: &[&str]) -> QemuDisk {
        QemuDisk {
            name: name.into(),
            node: format!("#{name}"),
            driver: "qcow2".into(),
            filename: format!("{name}.qcow2"),
            size: 1 << 20,
            bitmaps: bitmaps
                .iter()
                .map(|b| Bitmap {
                    name: (*b).into(),
                    recording: true,
                    persistent: true,
                    inconsistent: false,
                })
                .collect(),
        }
    }

    fn commands(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Execute(c) => c["execute"].as_str().unwrap_or("?").to_owned(),
                Step::AwaitJobGone(id) => format!("await {id}"),
            })
            .collect()
    }

    fn fleece() -> Fleece {
        Fleece {
            disks: vec![
                FleeceDisk {
                    disk: disk("vda", &["vmstash-1", "other", "vmstash-0"]),
                    scratch: "/var/tmp/s0.qcow2".into(),
                    new_bitmap: Some("vmstash-2".into()),
                    parent_bitmap: Some("vmstash-1".into()),
                },
                FleeceDisk {
                    disk: disk("vdb", &[]),
                    scratch: "/var/tmp/s1.qcow2".into(),
                    new_bitmap: None,
                    parent_bitmap: None,
                },
            ],
            nbd_socket: "/run/q.sock.vmstash-nbd".into(),
        }
    }

    #[test]
    fn begins_with_one_transaction_for_every_disk() {
        let steps = fleece().begin_steps();
        assert_eq!(
            commands(&steps),
            [
                "blockdev-add",
                "blockdev-add",
                "transaction",
                "nbd-server-start",
                "block-export-add",
                "block-export-add"
            ]
        );
        let Step::Execute(tx) = &steps[2] else {
            panic!("not a command")
        };
        let types: Vec<&str> = tx["arguments"]["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .filter_map(|a| a["type"].as_str())
            .collect();
        assert_eq!(
            types,
            [
                "blockdev-backup",
                "block-dirty-bitmap-add",
                "block-dirty-bitmap-disable",
                "blockdev-backup"
            ]
        );
        let Step::Execute(export) = &steps[4] else {
            panic!("not a command")
        };
        assert_eq!(export["arguments"]["bitmaps"], json!(["vmstash-1"]));
        assert_eq!(export["arguments"]["name"], "vda");
    }

    #[test]
    fn ends_removing_stale_bitmaps_or_merging_back() {
        let f = fleece();
        let saved = f.end_steps(true);
        let removed: Vec<&str> = saved
            .iter()
            .filter_map(|s| match s {
                Step::Execute(c) if c["execute"] == "block-dirty-bitmap-remove" => {
                    c["arguments"]["name"].as_str()
                }
                _ => None,
            })
            .collect();
        assert_eq!(removed, ["vmstash-1", "vmstash-0"]);
        let failed = commands(&f.end_steps(false));
        assert_eq!(
            failed,
            [
                "block-export-del",
                "block-export-del",
                "nbd-server-stop",
                "block-job-cancel",
                "block-job-cancel",
                "await vmstash-backup-0",
                "await vmstash-backup-1",
                "blockdev-del",
                "blockdev-del",
                "transaction"
            ]
        );
    }

    #[test]
    fn leftovers_are_removed_in_order() {
        let steps = leftover_steps(
            &json!([{"node-name": "vmstash-fleece-0"}, {"node-name": "#block1"}]),
            &json!([]),
            &json!([{"device": "vmstash-backup-0"}]),
            true,
        );
        assert_eq!(
            commands(&steps),
            [
                "nbd-server-stop",
                "block-job-cancel",
                "await vmstash-backup-0",
                "blockdev-del"
            ]
        );
        assert!(leftover_steps(&json!([]), &json!([]), &json!([]), false).is_empty());
    }
}
