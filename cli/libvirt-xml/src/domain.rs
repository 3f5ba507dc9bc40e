//! The parts of a libvirt domain XML that a backup needs: the name, the
//! UUID and the disks.
//!
//! Only libvirt's own elements and attributes (those in no XML namespace)
//! are read, so this reading and the rewrite in [`crate::define`] agree on
//! which `<disk>` is which.

use roxmltree::Node;

use crate::error::{Error, Result};
use crate::nodes::{attr, child, child_text, disk_target, disks};
use crate::parse::parse;

/// A `<disk>` of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDef {
    /// Guest device name (`vda`).
    pub target: String,
    /// `disk`, `cdrom`, `floppy` or `lun`.
    pub device: String,
    /// `file`, `block`, `network`, `volume`, …
    pub kind: String,
    /// The image path (file or block device), if any.
    pub source: Option<String>,
    /// The image format libvirt was told (`raw`, `qcow2`), if any.
    pub format: Option<String>,
    /// Attached read-only.
    pub readonly: bool,
    /// Shared between domains.
    pub shareable: bool,
}

/// What vmstash does with a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskPlan {
    /// Back it up.
    Include,
    /// Leave it out, and say why.
    Skip(String),
}

impl DiskDef {
    /// Whether a backup reads this disk.
    pub fn plan(&self, excluded: &[String]) -> DiskPlan {
        let skip = |why: &str| DiskPlan::Skip(why.to_string());
        if excluded.contains(&self.target) {
            return skip("excluded with --exclude-disk");
        }
        if self.device != "disk" {
            return DiskPlan::Skip(format!("a {} device", self.device));
        }
        if self.readonly {
            return skip("read-only");
        }
        if self.shareable {
            return skip("shareable (shared with other domains)");
        }
        if self.kind != "file" && self.kind != "block" {
            return DiskPlan::Skip(format!("{}-backed disks are not supported", self.kind));
        }
        if self.source.is_none() {
            return skip("no source");
        }
        match self.format.as_deref() {
            Some("raw") | Some("qcow2") | None => DiskPlan::Include,
            Some(other) => DiskPlan::Skip(format!("image format {other} is not supported")),
        }
    }
}

/// A domain's name, UUID and disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDef {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: Option<String>,
    /// Disks in document order; a `<disk>` without a `<target dev>` is left
    /// out (libvirt refuses one).
    pub disks: Vec<DiskDef>,
}

/// Parses the output of `virsh dumpxml`.
pub fn parse_domain(xml: &str) -> Result<DomainDef> {
    let doc = parse(xml, "parsing the domain XML")?;
    read_domain(doc.root_element())
}

/// Reads a parsed domain whose root element is `root`.
pub(crate) fn read_domain(root: Node<'_, '_>) -> Result<DomainDef> {
    let name = child_text(root, "name").ok_or_else(|| {
        Error::malformed("the domain XML has no <name> (libvirt writes one for every domain)")
    })?;
    Ok(DomainDef {
        name,
        uuid: child_text(root, "uuid"),
        disks: disks(root).filter_map(read_disk).collect(),
    })
}

/// Reads one `<disk>`; None if it has no `<target dev>`.
fn read_disk(disk: Node<'_, '_>) -> Option<DiskDef> {
    let target = disk_target(disk)?.to_string();
    let source = child(disk, "source")
        .and_then(|s| attr(s, "file").or_else(|| attr(s, "dev")))
        .map(str::to_string);
    Some(DiskDef {
        target,
        device: attr(disk, "device").unwrap_or("disk").to_string(),
        kind: attr(disk, "type").unwrap_or("file").to_string(),
        source,
        format: child(disk, "driver")
            .and_then(|d| attr(d, "type"))
            .map(str::to_string),
        readonly: child(disk, "readonly").is_some(),
        shareable: child(disk, "shareable").is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='qemu' id='3'>
  <name>web1</name><uuid>4d1c-aa</uuid>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2' index='1'/><backingStore/>
      <target dev='vda' bus='virtio'/></disk>
    <disk type='block' device='disk'><driver name='qemu' type='raw'/>
      <source dev='/dev/vg/web1-data'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sda' bus='sata'/><readonly/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vdc' bus='virtio'/></disk>
    <disk type='file' device='disk'><source file='/shared.img'/><target dev='vdd'/><shareable/></disk>
  </devices></domain>"#;

    #[test]
    fn disks_and_plans() {
        let d = parse_domain(XML).expect("parse");
        assert_eq!(d.name, "web1");
        assert_eq!(d.disks.len(), 5);
        assert_eq!(
            d.disks[0].source.as_deref(),
            Some("/var/lib/libvirt/images/web1.qcow2")
        );
        assert_eq!(d.disks[0].format.as_deref(), Some("qcow2"));
        assert_eq!(d.disks[1].source.as_deref(), Some("/dev/vg/web1-data"));
        let plans: Vec<_> = d.disks.iter().map(|x| x.plan(&["vdb".into()])).collect();
        assert_eq!(plans[0], DiskPlan::Include);
        assert!(matches!(&plans[1], DiskPlan::Skip(w) if w.contains("excluded")));
        assert!(matches!(&plans[2], DiskPlan::Skip(w) if w.contains("cdrom")));
        assert!(matches!(&plans[3], DiskPlan::Skip(w) if w.contains("network")));
        assert!(matches!(&plans[4], DiskPlan::Skip(w) if w.contains("shareable")));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_domain("<domain>").is_err());
        assert!(parse_domain("<domain></domain>").is_err());
        assert!(matches!(
            parse_domain("<domain>"),
            Err(Error::Malformed { what }) if what.contains("parsing the domain XML: not well-formed XML")
        ));
        assert!(matches!(
            parse_domain("<domain></domain>"),
            Err(Error::Malformed { what }) if what.contains("has no <name>")
        ));
    }

    /// Elements and attributes in another namespace are not libvirt's: a
    /// `<x:disk>` is no disk and `x:type` is not the disk's type, as for
    /// libvirt and for the rewrite.
    #[test]
    fn namespaced_names_are_not_libvirts() {
        let xml = "<domain xmlns:x='urn:x'><name>a</name><x:name>b</x:name><devices>\
            <x:disk><target dev='vdz'/></x:disk>\
            <disk x:type='block' type='file'><x:source file='/x'/><source file='/a'/><target dev='vda'/></disk>\
            </devices></domain>";
        let d = parse_domain(xml).expect("parse");
        assert_eq!(d.name, "a");
        assert_eq!(d.disks.len(), 1);
        assert_eq!(d.disks[0].kind, "file");
        assert_eq!(d.disks[0].source.as_deref(), Some("/a"));
    }
}
