//! What the rewrite checks before it edits anything (its arguments, and
//! that the input is a domain it can rewrite safely) and after (that the
//! output reads back as asked).

use std::collections::{HashMap, HashSet};

use roxmltree::{Document, Node};

use super::{is_passthrough, DefineOptions, RestoredDisk, FORMATS, MAX_DOMAIN_XML};
use crate::domain::{read_domain, DiskDef};
use crate::error::{Error, Result};
use crate::nodes::{attr, child, devices, disk_target, disks, is_disk_device, line};

/// Refuses an XML larger than `virsh define` reads.
pub(super) fn check_size(xml: &str) -> Result<()> {
    if xml.len() > MAX_DOMAIN_XML {
        return Err(Error::unsupported(format!(
            "the backed-up domain XML is {} bytes, more than virsh define reads ({MAX_DOMAIN_XML} \
             bytes); no domain libvirt wrote is that large, so it is damaged or not a domain",
            xml.len()
        )));
    }
    Ok(())
}

/// Rejects a new domain name libvirt would refuse or XML cannot carry.
pub(super) fn check_name(name: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(Error::invalid(format!(
            "the new domain name {name:?} {why}; choose another name"
        )))
    };
    if name.trim().is_empty() {
        return Err(Error::invalid(
            "the new domain name is empty; choose another name",
        ));
    }
    if name.trim() != name {
        return refuse("starts or ends with spaces");
    }
    if name.contains('/') {
        return refuse("contains '/', which libvirt does not allow");
    }
    if name.chars().any(unwritable) {
        return refuse("contains control characters");
    }
    Ok(())
}

/// Checks the restored disks and indexes them by target.
pub(super) fn index_restored(disks: &[RestoredDisk]) -> Result<HashMap<&str, &RestoredDisk>> {
    let mut by_target = HashMap::with_capacity(disks.len());
    for disk in disks {
        let refuse = |why: String| {
            Err(Error::invalid(format!(
                "restored disk {}: {why}",
                disk.target
            )))
        };
        if !FORMATS.contains(&disk.format.as_str()) {
            return refuse(format!(
                "image format {:?} is not raw or qcow2",
                disk.format
            ));
        }
        if !disk.path.starts_with('/') {
            return refuse(format!("image path {:?} is not absolute", disk.path));
        }
        if disk.path.chars().any(unwritable) {
            return refuse(format!(
                "image path {:?} contains control characters, which libvirt's XML cannot carry",
                disk.path
            ));
        }
        if by_target.insert(disk.target.as_str(), disk).is_some() {
            return Err(Error::invalid(format!(
                "disk {} is restored twice",
                disk.target
            )));
        }
    }
    Ok(by_target)
}

/// Whether a character cannot go into the XML: a control character (XML
/// 1.0 allows only tab, LF and CR, and libvirt refuses those in names and
/// paths too) or a noncharacter XML does not allow (U+FFFE, U+FFFF).
fn unwritable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}')
}

/// Errors unless the root element is libvirt's `<domain>`.
pub(super) fn check_root(root: Node<'_, '_>) -> Result<()> {
    let name = root.tag_name();
    match (name.namespace(), name.name()) {
        (None, "domain") => Ok(()),
        (None, other) => Err(Error::malformed(format!(
            "the backed-up XML is not a domain: its root element is <{other}>"
        ))),
        (Some(ns), other) => Err(Error::malformed(format!(
            "the backed-up XML is not a domain: its root element is <{other}> in XML namespace {ns}, \
             and libvirt's <domain> is in none"
        ))),
    }
}

/// Refuses a namespaced element or attribute inside `<devices>` (see the
/// module docs: libvirt writes none, and might read one as its own).
pub(super) fn check_devices_namespaces(root: Node<'_, '_>) -> Result<()> {
    for node in devices(root).flat_map(|d| d.descendants()) {
        if !node.is_element() {
            continue;
        }
        let found = match (
            node.tag_name().namespace(),
            node.attributes().find(|a| a.namespace().is_some()),
        ) {
            (Some(ns), _) => format!("element <{}> in XML namespace {ns}", node.tag_name().name()),
            (None, Some(a)) => format!(
                "attribute {} of <{}> in XML namespace {}",
                a.name(),
                node.tag_name().name(),
                a.namespace().unwrap_or_default()
            ),
            (None, None) => continue,
        };
        return Err(Error::unsupported(format!(
            "line {}: {found} among the devices; libvirt writes none there and may read it as its \
             own, so vmstash cannot tell which storage the VM would use; remove it and define the \
             VM by hand",
            line(node)
        )));
    }
    Ok(())
}

/// Errors unless every `<disk device='disk'>` of the domain is restored, and
/// every restored disk is one of them; also refuses two disks with the same
/// target, as libvirt does.
pub(super) fn check_disks_covered(
    root: Node<'_, '_>,
    restored: &HashMap<&str, &RestoredDisk>,
) -> Result<()> {
    let mut all_targets: HashSet<&str> = HashSet::new();
    // The targets of the disks proper (not CD-ROMs…), in document order.
    let mut targets: Vec<&str> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for disk in disks(root) {
        let target = disk_target(disk);
        if let Some(target) = target {
            if !all_targets.insert(target) {
                return Err(Error::malformed(format!(
                    "the domain has two disks with target {target} (the second on line {}); \
                     libvirt refuses that",
                    line(disk)
                )));
            }
        }
        if !is_disk_device(disk) {
            continue;
        }
        let Some(target) = target else {
            return Err(Error::malformed(format!(
                "a disk of the domain ({}) has no <target dev> (line {}); libvirt requires one",
                describe_source(disk),
                line(disk)
            )));
        };
        targets.push(target);
        if !restored.contains_key(target) {
            missing.push(format!("{target} ({})", describe_source(disk)));
        }
    }
    if !missing.is_empty() {
        return Err(Error::invalid(format!(
            "disks of the domain that were not restored: {}; defining it would leave them on the \
             old storage: restore every disk of the snapshot, or define the VM by hand",
            missing.join(", ")
        )));
    }
    let disk_targets: HashSet<&str> = targets.iter().copied().collect();
    let mut unknown: Vec<&str> = restored
        .keys()
        .copied()
        .filter(|target| !disk_targets.contains(target))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(Error::invalid(format!(
            "restored disks that are not disks of the domain: {} (its disks: {})",
            unknown.join(", "),
            targets.join(", ")
        )));
    }
    Ok(())
}

/// Where a disk's data lived, for error messages.
fn describe_source(disk: Node<'_, '_>) -> String {
    let source = child(disk, "source");
    let get = |name| source.and_then(|s| attr(s, name));
    match (get("file"), get("dev"), get("name"), get("volume")) {
        (Some(path), ..) | (None, Some(path), ..) => path.to_string(),
        (None, None, Some(name), _) => format!("{} {name}", get("protocol").unwrap_or("network")),
        (None, None, None, Some(volume)) => {
            format!("volume {volume} in pool {}", get("pool").unwrap_or("?"))
        }
        (None, None, None, None) => "no source".to_string(),
    }
}

/// Checks the rewritten XML the way the restore will use it: well-formed,
/// named as asked, every restored disk pointing at its new image, no QEMU
/// pass-through unless kept. The input passed the same reading, so a
/// failure here is a bug in the rewrite.
pub(super) fn verify(out: &str, options: &DefineOptions<'_>, disks: &[RestoredDisk]) -> Result<()> {
    let bug = |what: String| Err(Error::internal(format!("the rewritten domain XML {what}")));
    let doc = match Document::parse(out) {
        Ok(doc) => doc,
        Err(e) => return bug(format!("does not parse: {e}")),
    };
    let root = doc.root_element();
    let domain = match read_domain(root) {
        Ok(domain) => domain,
        Err(e) => return bug(format!("does not read back: {e}")),
    };
    if let Some(name) = options.new_name {
        if domain.name != name {
            return bug(format!("is named {:?}, not {name:?}", domain.name));
        }
    }
    let mut by_target: HashMap<&str, &DiskDef> = HashMap::with_capacity(domain.disks.len());
    for disk in &domain.disks {
        by_target.entry(disk.target.as_str()).or_insert(disk);
    }
    for restored in disks {
        let Some(disk) = by_target.get(restored.target.as_str()) else {
            return bug(format!("has no disk {}", restored.target));
        };
        if disk.kind != "file"
            || disk.source.as_deref() != Some(restored.path.as_str())
            || disk.format.as_deref() != Some(restored.format.as_str())
        {
            return bug(format!(
                "has disk {} as {} {:?} {:?}",
                restored.target, disk.kind, disk.source, disk.format
            ));
        }
    }
    if !options.keep_qemu_passthrough && root.children().any(is_passthrough) {
        return bug("still has QEMU pass-through".to_string());
    }
    Ok(())
}
