//! A QEMU's disks as `query-block` and `query-named-block-nodes` show them: which to back up
//! (and why not the others), their names in the snapshot, the node that holds their data and
//! dirty bitmaps, and what a backup left behind in QEMU.

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// What names vmstash's objects in QEMU (nodes, jobs, exports, bitmaps): found again by a
/// later backup or `vm-repair`.
pub const PREFIX: &str = "vmstash-";

/// One disk of the QEMU, as a backup reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuDisk {
    /// Its name in the snapshot: the drive's id without Proxmox's `drive-` (`scsi0`,
    /// `virtio0`), else the device's id, else the node's name.
    pub name: String,
    /// The block node the guest writes to: bitmaps go there, the fleecing overlay reads it.
    pub node: String,
    /// The node's driver: `qcow2` (dirty bitmaps) or another (read whole).
    pub driver: String,
    /// The image file (informational; may be relative to QEMU's working directory).
    pub filename: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// The dirty bitmaps on the node.
    pub bitmaps: Vec<Bitmap>,
}

/// A named dirty bitmap on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    /// Its name.
    pub name: String,
    /// Recording writes (not disabled).
    pub recording: bool,
    /// Stored in the qcow2 image (survives QEMU's restart).
    pub persistent: bool,
    /// Marked inconsistent (QEMU stopped without storing it): not to be trusted.
    pub inconsistent: bool,
}

impl QemuDisk {
    /// True when the guest's writes can be tracked in a persistent bitmap.
    pub fn is_qcow2(&self) -> bool {
        self.driver == "qcow2"
    }

    /// The bitmap `name`, if the node has it.
    pub fn bitmap(&self, name: &str) -> Option<&Bitmap> {
        self.bitmaps.iter().find(|b| b.name == name)
    }
}

/// Disks left out of a backup: (name, why).
pub type Skipped = Vec<(String, String)>;

/// The disks of `query-block` (`blocks`) with the bitmaps of `query-named-block-nodes`
/// (`nodes`, flat): those to back up, and the others with why not.
pub fn read_disks(
    blocks: &Value,
    nodes: &Value,
    excluded: &[String],
) -> Result<(Vec<QemuDisk>, Skipped)> {
    let blocks = blocks.as_array().context("query-block returned no list")?;
    let mut disks: Vec<QemuDisk> = Vec::new();
    let mut skipped = Vec::new();
    for (no, block) in blocks.iter().enumerate() {
        let name = unique(disk_name(block, no), &disks);
        let skip = |why: &str| (name.clone(), why.to_owned());
        let Some(inserted) = block.get("inserted") else {
            skipped.push(skip("no medium"));
            continue;
        };
        if excluded.contains(&name) {
            skipped.push(skip("--exclude-disk"));
        } else if block["removable"].as_bool() == Some(true) {
            skipped.push(skip("removable media, such as a CD-ROM"));
        } else if inserted["ro"].as_bool() == Some(true) {
            skipped.push(skip("read-only"));
        } else {
            disks.push(read_disk(name, inserted, nodes)?);
        }
    }
    Ok((disks, skipped))
}

/// One inserted medium as a [`QemuDisk`].
fn read_disk(name: String, inserted: &Value, nodes: &Value) -> Result<QemuDisk> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let node = text(&inserted["node-name"]);
    let driver = text(&inserted["drv"]);
    if node.is_empty() || driver.is_empty() {
        bail!("query-block shows disk {name} without a node name or driver");
    }
    if driver == "copy-before-write" {
        bail!("disk {name} is being backed up (a copy-before-write filter is on it): another backup runs, or one was interrupted");
    }
    let size = inserted["image"]["virtual-size"]
        .as_u64()
        .with_context(|| format!("query-block shows disk {name} without a size"))?;
    Ok(QemuDisk {
        bitmaps: bitmaps_of(nodes, &node),
        name,
        node,
        driver,
        filename: text(&inserted["file"]),
        size,
    })
}

/// The named dirty bitmaps of node `node`.
fn bitmaps_of(nodes: &Value, node: &str) -> Vec<Bitmap> {
    let flag = |b: &Value, key: &str| b[key].as_bool() == Some(true);
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["node-name"].as_str() == Some(node))
        .flat_map(|n| n["dirty-bitmaps"].as_array().into_iter().flatten())
        .filter_map(|b| {
            Some(Bitmap {
                name: b["name"].as_str()?.to_owned(),
                recording: flag(b, "recording"),
                persistent: flag(b, "persistent"),
                inconsistent: flag(b, "inconsistent"),
            })
        })
        .collect()
}

/// The snapshot name of block device number `no`.
fn disk_name(block: &Value, no: usize) -> String {
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let candidates = [
        text(&block["device"]).map(|d| d.strip_prefix("drive-").unwrap_or(&d).to_owned()),
        text(&block["qdev"]).filter(|q| !q.contains('/')),
        text(&block["inserted"]["node-name"]).filter(|n| !n.starts_with('#')),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|n| n.replace(['/', '\0'], "_"))
        .find(|n| n != "." && n != "..")
        .unwrap_or_else(|| format!("disk{no}"))
}

/// `name`, or `name-2`, `name-3`… when a disk already has it.
fn unique(name: String, disks: &[QemuDisk]) -> String {
    let taken = |n: &str| disks.iter().any(|d| d.name == n);
    if !taken(&name) {
        return name;
    }
    (2..)
        .map(|k| format!("{name}-{k}"))
        .find(|n| !taken(n))
        .unwrap_or(name)
}

/// What of a backup is still in QEMU (`query-named-block-nodes`, `query-block-exports`,
/// `query-block-jobs`): vmstash's nodes, exports and jobs, described.
pub fn leftovers(nodes: &Value, exports: &Value, jobs: &Value) -> Vec<String> {
    let ours = |list: &Value, key: &str, what: &str| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x[key].as_str())
            .filter(|id| id.starts_with(PREFIX))
            .map(|id| format!("{what} {id}"))
            .collect()
    };
    let mut out = ours(jobs, "device", "block job");
    out.extend(ours(exports, "id", "NBD export"));
    out.extend(ours(nodes, "node-name", "node"));
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn block(device: &str, node: &str, drv: &str, extra: Value) -> Value {
        let mut b = json!({
            "device": device, "qdev": "/machine/peripheral-anon/device[0]/virtio-backend",
            "removable": false,
            "inserted": {"node-name": node, "drv": drv, "ro": false, "file": "d.img",
                         "image": {"virtual-size": 1048576}}
        });
        if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(extra.clone());
        }
        b
    }

    #[test]
    fn reads_disks_names_bitmaps_and_skips() {
        let blocks = json!([
            block("virtio0", "#block1", "qcow2", json!({})),
            block("drive-scsi0", "#block2", "raw", json!({})),
            block("ide1-cd0", "#block3", "raw", json!({"removable": true})),
            {"device": "floppy0", "removable": true},
            block("", "data", "qcow2", json!({"qdev": "vdz"})),
            block("virtio0", "#block5", "qcow2", json!({})),
        ]);
        let nodes = json!([{"node-name": "#block1", "dirty-bitmaps": [
            {"name": "vmstash-1", "recording": true, "persistent": true},
            {"recording": false, "persistent": false},
        ]}]);
        let (disks, skipped) = read_disks(&blocks, &nodes, &[]).expect("disks");
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["virtio0", "scsi0", "vdz", "virtio0-2"]);
        assert!(disks[0].is_qcow2() && !disks[1].is_qcow2());
        assert_eq!(
            disks[0].bitmap("vmstash-1"),
            Some(&Bitmap {
                name: "vmstash-1".into(),
                recording: true,
                persistent: true,
                inconsistent: false
            })
        );
        assert_eq!(disks[0].bitmaps.len(), 1, "unnamed bitmaps are QEMU's own");
        assert_eq!(skipped.len(), 2);
        let (_, skipped) = read_disks(&blocks, &nodes, &["scsi0".into()]).expect("disks");
        assert!(skipped.contains(&("scsi0".into(), "--exclude-disk".into())));
    }

    #[test]
    fn a_disk_under_a_backup_filter_is_refused() {
        let blocks = json!([block("virtio0", "#block9", "copy-before-write", json!({}))]);
        assert!(read_disks(&blocks, &json!([]), &[]).is_err());
    }

    #[test]
    fn finds_what_a_backup_left() {
        let left = leftovers(
            &json!([{"node-name": "vmstash-fleece-0"}, {"node-name": "#block1"}]),
            &json!([{"id": "vmstash-export-0"}, {"id": "migration"}]),
            &json!([{"device": "vmstash-backup-0"}]),
        );
        assert_eq!(
            left,
            [
                "block job vmstash-backup-0",
                "NBD export vmstash-export-0",
                "node vmstash-fleece-0"
            ]
        );
    }
}
