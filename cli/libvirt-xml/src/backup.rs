//! The XML of libvirt's backup API, for changed-block tracking: the `<domainbackup>` that starts
//! a pull-mode backup job (an NBD export of each disk as of that instant, with the dirty bitmap
//! since a checkpoint), the `<domaincheckpoint>` made with it, and reading back which socket a
//! running job exports on (`virsh backup-dumpxml`).
//!
//! libvirt 9.0 needs every disk listed: a disk left out of the checkpoint XML gets a bitmap
//! (and fails for raw images), and `checkpoint='no'` on one disk must not turn the others off.
//! Without a `<scratch>` per disk, 9.0's pull mode fails ("argument key 'filename' must not
//! have null value").

use crate::edit::{escape, XmlEdits};
use crate::error::Result;
use crate::parse::parse;

/// How one disk of the domain takes part in a backup job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobDisk {
    /// Left out of the backup (and of the checkpoint).
    Skip {
        /// Guest device name.
        target: String,
    },
    /// Exported over NBD, every byte of it.
    Full {
        /// Guest device name (also the export's name).
        target: String,
        /// The scratch file libvirt creates for the job's point-in-time view.
        scratch: String,
        /// Whether the new checkpoint gets a bitmap of this disk (qcow2 disks only).
        bitmap: bool,
    },
    /// Exported over NBD with the bitmap `backup-<target>` of what changed since `since`.
    Incremental {
        /// Guest device name (also the export's name).
        target: String,
        /// The scratch file libvirt creates for the job's point-in-time view.
        scratch: String,
        /// The checkpoint the bitmap counts from.
        since: String,
    },
}

impl JobDisk {
    /// Whether the new checkpoint has a bitmap of this disk.
    pub fn gets_bitmap(&self) -> bool {
        matches!(
            self,
            JobDisk::Full { bitmap: true, .. } | JobDisk::Incremental { .. }
        )
    }

    /// The disk's guest device name.
    pub fn target(&self) -> &str {
        match self {
            JobDisk::Skip { target }
            | JobDisk::Full { target, .. }
            | JobDisk::Incremental { target, .. } => target,
        }
    }
}

/// The name of the dirty bitmap a pull-mode export of disk `target` offers.
pub fn export_bitmap(target: &str) -> String {
    format!("backup-{target}")
}

/// The `<domainbackup mode='pull'>` that exports `disks` on the Unix socket `socket`.
pub fn backup_xml(socket: &str, disks: &[JobDisk]) -> String {
    let mut out = String::from("<domainbackup mode='pull'>\n");
    let since = disks.iter().find_map(|d| match d {
        JobDisk::Incremental { since, .. } => Some(since),
        _ => None,
    });
    if let Some(since) = since {
        out.push_str(&format!("  <incremental>{}</incremental>\n", escape(since)));
    }
    out.push_str(&format!(
        "  <server transport='unix' socket='{}'/>\n  <disks>\n",
        escape(socket)
    ));
    for d in disks {
        let target = escape(d.target());
        match d {
            JobDisk::Skip { .. } => {
                out.push_str(&format!("    <disk name='{target}' backup='no'/>\n"));
            }
            JobDisk::Full { scratch, .. } => out.push_str(&format!(
                "    <disk name='{target}' backup='yes' type='file' backupmode='full' exportname='{target}'>\n      <scratch file='{}'/>\n    </disk>\n",
                escape(scratch)
            )),
            JobDisk::Incremental {
                scratch, since, ..
            } => out.push_str(&format!(
                "    <disk name='{target}' backup='yes' type='file' backupmode='incremental' incremental='{}' exportname='{target}' exportbitmap='{}'>\n      <scratch file='{}'/>\n    </disk>\n",
                escape(since),
                escape(&export_bitmap(d.target())),
                escape(scratch)
            )),
        }
    }
    out.push_str("  </disks>\n</domainbackup>\n");
    out
}

/// The `<domaincheckpoint>` named `name` made with the job: a bitmap for each disk that gets
/// one, `checkpoint='no'` for every other.
pub fn checkpoint_xml(name: &str, disks: &[JobDisk]) -> String {
    checkpoint_element(name, None, disks)
}

/// The complete `<domaincheckpoint>` that `virsh checkpoint-create --redefine` takes for a
/// checkpoint made outside libvirt (a shut-off domain's bitmaps added with `qemu-img bitmap`):
/// its parent, its creation time (seconds since the epoch), and each bitmap named as the
/// checkpoint.
pub fn redefine_xml(name: &str, parent: Option<&str>, created: u64, disks: &[JobDisk]) -> String {
    let mut head = String::new();
    if let Some(parent) = parent {
        head.push_str(&format!(
            "  <parent>\n    <name>{}</name>\n  </parent>\n",
            escape(parent)
        ));
    }
    head.push_str(&format!("  <creationTime>{created}</creationTime>\n"));
    checkpoint_element(name, Some(&head), disks)
}

/// A `<domaincheckpoint>`; with `head` (redefining), `head` follows the name and each bitmap
/// is named after the checkpoint.
fn checkpoint_element(name: &str, head: Option<&str>, disks: &[JobDisk]) -> String {
    let name = escape(name);
    let mut out = format!("<domaincheckpoint>\n  <name>{name}</name>\n");
    out.push_str(head.unwrap_or_default());
    out.push_str("  <disks>\n");
    for d in disks {
        let target = escape(d.target());
        if !d.gets_bitmap() {
            out.push_str(&format!("    <disk name='{target}' checkpoint='no'/>\n"));
        } else if head.is_some() {
            out.push_str(&format!(
                "    <disk name='{target}' checkpoint='bitmap' bitmap='{name}'/>\n"
            ));
        } else {
            out.push_str(&format!(
                "    <disk name='{target}' checkpoint='bitmap'/>\n"
            ));
        }
    }
    out.push_str("  </disks>\n</domaincheckpoint>\n");
    out
}

/// A checkpoint's XML as recorded in a snapshot (`checkpoint-dumpxml --no-domain`), made fit
/// for `checkpoint-create --redefine` after libvirt lost the checkpoint: its `<parent>` (long
/// deleted, as vmstash keeps one checkpoint) is dropped, so that it is redefined as a root.
/// Fails on XML that is no `<domaincheckpoint>`.
pub fn checkpoint_for_redefine(xml: &str) -> Result<String> {
    let doc = parse(xml, "parsing the checkpoint XML")?;
    let root = doc.root_element();
    if !root.has_tag_name("domaincheckpoint") {
        return Err(crate::Error::Malformed {
            what: format!("<{}> is not a <domaincheckpoint>", root.tag_name().name()),
        });
    }
    let mut edits = XmlEdits::new(xml);
    for parent in root.children().filter(|n| n.has_tag_name("parent")) {
        edits.remove_element(parent)?;
    }
    edits.apply()
}

/// What `virsh backup-dumpxml` says of a running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    /// The Unix socket a pull-mode job exports on; `None` for a push-mode job or one exporting
    /// over TCP.
    pub socket: Option<String>,
    /// The scratch files of its disks.
    pub scratch: Vec<String>,
}

/// Reads the XML of a running backup job.
pub fn running_job(xml: &str) -> Result<RunningJob> {
    let doc = parse(xml, "parsing the backup job XML")?;
    let root = doc.root_element();
    let socket = root
        .children()
        .find(|n| n.has_tag_name("server"))
        .filter(|n| n.attribute("transport") == Some("unix"))
        .and_then(|n| n.attribute("socket"))
        .map(str::to_owned);
    let scratch = root
        .descendants()
        .filter(|n| n.has_tag_name("scratch"))
        .filter_map(|n| n.attribute("file"))
        .map(str::to_owned)
        .collect();
    Ok(RunningJob { socket, scratch })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disks() -> Vec<JobDisk> {
        vec![
            JobDisk::Incremental {
                target: "vda".into(),
                scratch: "/img/vda.qcow2.scratch".into(),
                since: "vmstash-1".into(),
            },
            JobDisk::Full {
                target: "vdb".into(),
                scratch: "/img/vdb.raw.scratch".into(),
                bitmap: false,
            },
            JobDisk::Skip {
                target: "vdc".into(),
            },
        ]
    }

    #[test]
    fn backup_xml_lists_every_disk_with_its_mode() {
        let xml = backup_xml("/var/lib/libvirt/qemu/vmstash-2.sock", &disks());
        let doc = roxmltree::Document::parse(&xml).expect("well-formed");
        let root = doc.root_element();
        assert_eq!(root.attribute("mode"), Some("pull"));
        let modes: Vec<_> = root
            .descendants()
            .filter(|n| n.has_tag_name("disk"))
            .map(|n| {
                (
                    n.attribute("name").unwrap_or_default(),
                    n.attribute("backupmode").unwrap_or("-"),
                    n.attribute("exportbitmap").unwrap_or("-"),
                )
            })
            .collect();
        assert_eq!(
            modes,
            [
                ("vda", "incremental", "backup-vda"),
                ("vdb", "full", "-"),
                ("vdc", "-", "-")
            ]
        );
        let job = running_job(&xml).expect("parse");
        assert_eq!(
            job.socket.as_deref(),
            Some("/var/lib/libvirt/qemu/vmstash-2.sock")
        );
        assert_eq!(
            job.scratch,
            ["/img/vda.qcow2.scratch", "/img/vdb.raw.scratch"]
        );
    }

    #[test]
    fn checkpoint_xml_turns_bitmaps_on_only_where_asked() {
        let xml = checkpoint_xml("vmstash-2", &disks());
        assert!(
            xml.contains("<disk name='vda' checkpoint='bitmap'/>"),
            "{xml}"
        );
        assert!(xml.contains("<disk name='vdb' checkpoint='no'/>"), "{xml}");
        assert!(xml.contains("<disk name='vdc' checkpoint='no'/>"), "{xml}");
    }

    #[test]
    fn redefined_checkpoints_name_their_bitmaps_and_parent() {
        let xml = redefine_xml("vmstash-2", Some("vmstash-1"), 1_796_345_847, &disks());
        let doc = roxmltree::Document::parse(&xml).expect("well-formed");
        let root = doc.root_element();
        let parent = root.children().find(|n| n.has_tag_name("parent"));
        assert_eq!(
            parent
                .and_then(|p| p.first_element_child())
                .and_then(|n| n.text()),
            Some("vmstash-1")
        );
        assert!(
            xml.contains("<creationTime>1796345847</creationTime>"),
            "{xml}"
        );
        assert!(
            xml.contains("<disk name='vda' checkpoint='bitmap' bitmap='vmstash-2'/>"),
            "{xml}"
        );
        assert!(xml.contains("<disk name='vdb' checkpoint='no'/>"), "{xml}");
        assert!(!redefine_xml("c", None, 0, &[]).contains("<parent>"));
    }

    #[test]
    fn a_recorded_checkpoint_is_redefined_without_its_parent() {
        let recorded = "<domaincheckpoint>\n  <name>vmstash-2</name>\n  <parent>\n    <name>vmstash-1</name>\n  </parent>\n  <creationTime>1796345847</creationTime>\n  <disks>\n    <disk name='vda' checkpoint='bitmap' bitmap='vmstash-2'/>\n  </disks>\n</domaincheckpoint>\n";
        let xml = checkpoint_for_redefine(recorded).expect("redefinable");
        assert!(
            !xml.contains("parent") && !xml.contains("vmstash-1"),
            "{xml}"
        );
        assert!(
            xml.contains("bitmap='vmstash-2'") && xml.contains("<creationTime>"),
            "{xml}"
        );
        assert!(checkpoint_for_redefine("<domain/>").is_err());
        assert!(checkpoint_for_redefine("<domaincheckpoint>").is_err());
    }

    #[test]
    fn names_are_escaped_and_damaged_job_xml_is_an_error() {
        let xml = checkpoint_xml("a'<b", &[]);
        assert!(xml.contains("<name>a&apos;&lt;b</name>"), "{xml}");
        assert!(running_job("<domainbackup").is_err());
        let push = running_job("<domainbackup mode='push'><disks/></domainbackup>").expect("parse");
        assert_eq!(push.socket, None);
    }
}
