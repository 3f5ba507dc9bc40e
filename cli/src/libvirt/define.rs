//! Turning a backed-up domain XML into one that `virsh define` accepts on
//! the restore host (`vmstash restore SNAPSHOT --target DIR --define`).
//!
//! The XML stored in a snapshot is what `virsh dumpxml` printed while the VM
//! ran: its disks point at the storage of the backed-up host, and it carries
//! values that only mean something for that one running process (the domain
//! `id`, device aliases, tap device names, VNC ports, the security labels
//! libvirt generated). [`rewrite_for_define`] points every disk at its
//! restored image and drops the live-only values, the way
//! `virsh dumpxml --inactive` would have printed them.
//!
//! # How
//!
//! roxmltree only reads, so the rewrite is a list of byte-range edits on the
//! original text ("remove this element", "replace this attribute", "insert
//! this text here"), found by walking the parsed tree and applied in one pass.
//! Everything not edited (comments, formatting, attribute order and quotes,
//! `qemu:commandline`, `<metadata>`) comes out byte for byte as it went in.
//! Each removed element or attribute takes the whitespace before it along,
//! so the indentation stays tidy.
//!
//! The walk never enters a subtree it removes or replaces, so no two edits
//! overlap; [`apply`] still refuses overlapping edits with an error instead
//! of producing a mangled document. The result is parsed again and its disks
//! are checked with [`parse_domain`] before it is returned: a bug here is an
//! error, never a VM defined on the wrong storage.
//!
//! Only elements in no XML namespace are rewritten: libvirt's own elements
//! have none, and application data (`<metadata>` children, `qemu:` elements)
//! is kept verbatim.

use std::collections::HashMap;
use std::ops::Range;

use anyhow::{bail, ensure, Context, Result};
use roxmltree::{Document, Node};

use crate::libvirt::xml::parse_domain;

/// One restored disk: the guest device (target dev), the new image path and
/// its format ("raw" or "qcow2").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredDisk {
    /// Guest device name, the `<target dev>` of the disk (`vda`).
    pub target: String,
    /// Absolute path of the restored image on the restore host.
    pub path: String,
    /// Image format of the restored image: `raw` or `qcow2`.
    pub format: String,
}

/// Image formats a restored disk can have.
const FORMATS: [&str; 2] = ["raw", "qcow2"];

/// Prefixes of the tap/macvtap names libvirt generates for an `<interface>`
/// (`vnet3`, `macvtap0`); libvirt itself drops these from inactive XML.
const GENERATED_IFNAME_PREFIXES: [&str; 3] = ["vnet", "macvtap", "macvlan"];

/// Rewrites a backed-up domain XML so that it can be `virsh define`d on the
/// restore host.
///
/// - Every `<disk device='disk'>` becomes `type='file'` with
///   `<source file='PATH'/>` and `<driver type='FORMAT'>` from `disks`
///   (matched by `<target dev>`); its `<backingStore>` chain and any
///   `<mirror>` are removed, as the restored images are standalone. A disk
///   that `disks` does not cover is an error: a VM defined with some disks
///   still pointing at the old storage is a trap. CD-ROMs, floppies and LUNs
///   are kept as they are.
/// - Live-only values are removed: the domain `id`, domain-level
///   `<seclabel>`s (except `type='static'` ones, which an administrator
///   wrote), `<alias>` elements, generated interface `<target dev='vnetN'/>`,
///   the `portid` of interface sources (and the `bridge` libvirt adds to
///   `type='network'` ones), `<source index>`, and for graphics with
///   `autoport='yes'` the allocated `port`/`tlsPort` (a `websocket` port
///   becomes `-1`, auto-allocated, so the websocket stays enabled).
/// - With `new_name`, `<name>` becomes it and `<uuid>` and the interfaces'
///   `<mac>` are removed, so libvirt generates new ones (a clone next to the
///   original). Without it, name, UUID and MACs are kept (the same VM,
///   restored after a loss).
///
/// The input comes from a repository snapshot: anything malformed is an
/// error saying what is wrong, never a panic.
pub fn rewrite_for_define(
    xml: &str,
    new_name: Option<&str>,
    disks: &[RestoredDisk],
) -> Result<String> {
    if let Some(name) = new_name {
        check_name(name)?;
    }
    let restored = index_restored(disks)?;
    let doc = Document::parse(xml).context("parsing the backed-up domain XML")?;
    let root = doc.root_element();
    ensure!(
        root.tag_name().namespace().is_none() && root.tag_name().name() == "domain",
        "the backed-up XML is not a domain: its root element is <{}>",
        root.tag_name().name()
    );
    // What `verify` reads back must be readable in the input already.
    parse_domain(xml).context("reading the backed-up domain XML")?;
    check_disks_covered(root, &restored)?;

    let mut rewriter = Rewriter {
        src: xml,
        new_name,
        restored,
        edits: Vec::new(),
    };
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        if rewriter.visit(node)? {
            stack.extend(libvirt_children(node));
        }
    }
    let out = apply(xml, rewriter.edits)?;
    verify(&out, new_name, disks)?;
    Ok(out)
}

/// Rejects a new domain name libvirt would refuse or XML cannot carry.
fn check_name(name: &str) -> Result<()> {
    ensure!(!name.trim().is_empty(), "the new domain name is empty");
    ensure!(
        name.trim() == name,
        "the new domain name {name:?} starts or ends with spaces"
    );
    ensure!(
        !name.contains('/'),
        "the new domain name {name:?} contains '/', which libvirt does not allow"
    );
    ensure!(
        !name.chars().any(char::is_control),
        "the new domain name {name:?} contains control characters"
    );
    Ok(())
}

/// Checks the restored disks and indexes them by target.
fn index_restored(disks: &[RestoredDisk]) -> Result<HashMap<&str, &RestoredDisk>> {
    let mut by_target = HashMap::with_capacity(disks.len());
    for disk in disks {
        ensure!(
            FORMATS.contains(&disk.format.as_str()),
            "restored disk {}: image format {:?} is not raw or qcow2",
            disk.target,
            disk.format
        );
        ensure!(
            disk.path.starts_with('/'),
            "restored disk {}: image path {:?} is not absolute",
            disk.target,
            disk.path
        );
        ensure!(
            !disk.path.chars().any(char::is_control),
            "restored disk {}: image path {:?} contains control characters",
            disk.target,
            disk.path
        );
        if by_target.insert(disk.target.as_str(), disk).is_some() {
            bail!("disk {} is restored twice", disk.target);
        }
    }
    Ok(by_target)
}

/// Errors unless every `<disk device='disk'>` of the domain is restored, and
/// every restored disk is one of them.
fn check_disks_covered(root: Node<'_, '_>, restored: &HashMap<&str, &RestoredDisk>) -> Result<()> {
    let mut targets: Vec<&str> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for disk in devices(root).flat_map(libvirt_children) {
        if !is_disk_device(disk) {
            continue;
        }
        let target = disk_target(disk).with_context(|| {
            format!(
                "a disk of the domain ({}) has no <target dev>",
                describe_source(disk)
            )
        })?;
        ensure!(
            !targets.contains(&target),
            "the domain has two disks with target {target}"
        );
        targets.push(target);
        if !restored.contains_key(target) {
            missing.push(format!("{target} ({})", describe_source(disk)));
        }
    }
    ensure!(
        missing.is_empty(),
        "disks of the domain that were not restored: {}; defining it would leave them on the old storage",
        missing.join(", ")
    );
    let mut unknown: Vec<&str> = restored
        .keys()
        .copied()
        .filter(|target| !targets.contains(target))
        .collect();
    unknown.sort_unstable();
    ensure!(
        unknown.is_empty(),
        "restored disks that are not disks of the domain: {} (its disks: {})",
        unknown.join(", "),
        targets.join(", ")
    );
    Ok(())
}

/// Where a disk's data lived, for error messages.
fn describe_source(disk: Node<'_, '_>) -> String {
    let source = child(disk, "source");
    let attr = |name| source.and_then(|s| s.attribute(name));
    match (attr("file"), attr("dev"), attr("name"), attr("volume")) {
        (Some(path), ..) | (None, Some(path), ..) => path.to_string(),
        (None, None, Some(name), _) => format!("{} {name}", attr("protocol").unwrap_or("network")),
        (None, None, None, Some(volume)) => {
            format!("volume {volume} in pool {}", attr("pool").unwrap_or("?"))
        }
        (None, None, None, None) => "no source".to_string(),
    }
}

/// One change to the original text: `range` is replaced by `text` (an empty
/// range inserts, an empty text removes).
#[derive(Debug)]
struct Edit {
    range: Range<usize>,
    text: String,
}

/// Collects the edits while walking the domain tree.
struct Rewriter<'a> {
    src: &'a str,
    new_name: Option<&'a str>,
    restored: HashMap<&'a str, &'a RestoredDisk>,
    edits: Vec<Edit>,
}

impl<'a> Rewriter<'a> {
    /// Records the edits for one element; true if its children are to be
    /// visited too.
    fn visit(&mut self, node: Node<'_, '_>) -> Result<bool> {
        let Some(parent) = node.parent_element() else {
            // <domain>: the id of the running process.
            self.remove_attr(node, "id")?;
            return Ok(true);
        };
        if is(node, "alias") {
            self.remove_element(node)?;
            return Ok(false);
        }
        if parent.parent_element().is_none() {
            return self.visit_domain_child(node);
        }
        if is_devices(parent) {
            return self.visit_device(node);
        }
        if let Some(restored) = self.restored_disk(parent) {
            return self.visit_disk_child(node, parent, restored);
        }
        if is_device(parent, "interface") {
            return self.visit_interface_child(node, parent);
        }
        if is(node, "source") {
            self.remove_attr(node, "index")?;
        }
        Ok(true)
    }

    /// A child of `<domain>`.
    fn visit_domain_child(&mut self, node: Node<'_, '_>) -> Result<bool> {
        match (node.tag_name().name(), self.new_name) {
            ("seclabel", _) if node.attribute("type") != Some("static") => {
                self.remove_element(node)?;
                Ok(false)
            }
            ("name", Some(name)) => {
                self.replace_element(node, format!("<name>{}</name>", escape(name)))?;
                Ok(false)
            }
            ("uuid", Some(_)) => {
                self.remove_element(node)?;
                Ok(false)
            }
            // Application data: not libvirt's to interpret, kept verbatim.
            ("metadata", _) => Ok(false),
            _ => Ok(true),
        }
    }

    /// A child of `<devices>`.
    fn visit_device(&mut self, node: Node<'_, '_>) -> Result<bool> {
        if self.restored_disk(node).is_some() {
            self.set_attr(node, "type", "file")?;
        } else if is(node, "graphics") && node.attribute("autoport") == Some("yes") {
            self.remove_attr(node, "port")?;
            self.remove_attr(node, "tlsPort")?;
            if node.attribute("websocket").is_some() {
                self.set_attr(node, "websocket", "-1")?;
            }
        }
        Ok(true)
    }

    /// A child of a restored `<disk>`.
    fn visit_disk_child(
        &mut self,
        node: Node<'_, '_>,
        disk: Node<'_, '_>,
        restored: &RestoredDisk,
    ) -> Result<bool> {
        match node.tag_name().name() {
            "source" => {
                if child(disk, "source") == Some(node) {
                    let text = self.new_source(node, disk, restored);
                    self.replace_element(node, text)?;
                } else {
                    self.remove_element(node)?;
                }
                Ok(false)
            }
            "backingStore" | "mirror" => {
                self.remove_element(node)?;
                Ok(false)
            }
            "driver" => {
                self.set_attr(node, "type", &restored.format)?;
                Ok(true)
            }
            "target" if child(disk, "source").is_none() && child(disk, "target") == Some(node) => {
                // A disk without a source (an empty drive): the source goes
                // before the target.
                let text = self.new_source(node, disk, restored);
                let indent = self.indent_before(node);
                let start = node.range().start;
                self.edits.push(Edit {
                    range: start..start,
                    text: format!("{text}{indent}"),
                });
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    /// The `<source>` of a restored disk, preceded by a `<driver>` if the disk
    /// has none; `anchor` is the element whose indentation it takes.
    fn new_source(
        &self,
        anchor: Node<'_, '_>,
        disk: Node<'_, '_>,
        restored: &RestoredDisk,
    ) -> String {
        let source = format!("<source file='{}'/>", escape(&restored.path));
        if child(disk, "driver").is_some() {
            return source;
        }
        format!(
            "<driver name='qemu' type='{}'/>{}{source}",
            escape(&restored.format),
            self.indent_before(anchor)
        )
    }

    /// A child of an `<interface>`.
    fn visit_interface_child(&mut self, node: Node<'_, '_>, iface: Node<'_, '_>) -> Result<bool> {
        match node.tag_name().name() {
            "target" if is_generated_ifname(node) => {
                self.remove_element(node)?;
                Ok(false)
            }
            "mac" if self.new_name.is_some() => {
                self.remove_element(node)?;
                Ok(false)
            }
            "source" => {
                self.remove_attr(node, "portid")?;
                if iface.attribute("type") == Some("network") {
                    self.remove_attr(node, "bridge")?;
                }
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    /// The restored disk a node is, if it is a `<disk device='disk'>` of the
    /// domain (all of which are restored, see [`check_disks_covered`]).
    fn restored_disk(&self, node: Node<'_, '_>) -> Option<&'a RestoredDisk> {
        if !is_disk_device(node) || !node.parent_element().is_some_and(is_devices) {
            return None;
        }
        self.restored.get(disk_target(node)?).copied()
    }

    /// Removes an element with its subtree and the whitespace before it.
    fn remove_element(&mut self, node: Node<'_, '_>) -> Result<()> {
        let range = self.checked(node.range())?;
        let start = whitespace_start(self.src, range.start);
        self.edits.push(Edit {
            range: start..range.end,
            text: String::new(),
        });
        Ok(())
    }

    /// Replaces an element with its subtree by `text`.
    fn replace_element(&mut self, node: Node<'_, '_>, text: String) -> Result<()> {
        let range = self.checked(node.range())?;
        self.edits.push(Edit { range, text });
        Ok(())
    }

    /// Removes an attribute (in no namespace), if present, with the
    /// whitespace before it.
    fn remove_attr(&mut self, node: Node<'_, '_>, name: &str) -> Result<()> {
        if let Some(attr) = find_attr(node, name) {
            let range = self.checked(attr.range())?;
            let start = whitespace_start(self.src, range.start);
            self.edits.push(Edit {
                range: start..range.end,
                text: String::new(),
            });
        }
        Ok(())
    }

    /// Sets an attribute (in no namespace): replaced where it is, or added
    /// after the last attribute.
    fn set_attr(&mut self, node: Node<'_, '_>, name: &str, value: &str) -> Result<()> {
        let text = format!("{name}='{}'", escape(value));
        if let Some(attr) = find_attr(node, name) {
            if attr.value() != value {
                let range = self.checked(attr.range())?;
                self.edits.push(Edit { range, text });
            }
            return Ok(());
        }
        let at = match node.attributes().next_back() {
            Some(last) => self.checked(last.range())?.end,
            None => self.tag_name_end(node)?,
        };
        self.edits.push(Edit {
            range: at..at,
            text: format!(" {text}"),
        });
        Ok(())
    }

    /// The position just after an element's `<name`.
    fn tag_name_end(&self, node: Node<'_, '_>) -> Result<usize> {
        let start = self.checked(node.range())?.start;
        let tag = self
            .src
            .get(start..)
            .filter(|rest| rest.starts_with('<'))
            .with_context(|| format!("no start tag at byte {start} of the domain XML"))?;
        let len = tag
            .find(|c: char| is_xml_space(c) || c == '/' || c == '>')
            .with_context(|| format!("unterminated start tag at byte {start} of the domain XML"))?;
        start
            .checked_add(len)
            .context("start tag position overflows")
    }

    /// The whitespace between an element and whatever precedes it.
    fn indent_before(&self, node: Node<'_, '_>) -> &'a str {
        let end = node.range().start;
        let start = whitespace_start(self.src, end);
        self.src.get(start..end).unwrap_or("")
    }

    /// A range roxmltree reported, checked to lie within the text on
    /// character boundaries.
    fn checked(&self, range: Range<usize>) -> Result<Range<usize>> {
        ensure!(
            self.src.get(range.clone()).is_some(),
            "position {range:?} is outside the domain XML"
        );
        Ok(range)
    }
}

/// Applies non-overlapping edits to `src`.
fn apply(src: &str, mut edits: Vec<Edit>) -> Result<String> {
    // Stable: insertions at one position stay in the order they were made.
    edits.sort_by_key(|edit| (edit.range.start, edit.range.end));
    let mut out = String::with_capacity(src.len());
    let mut pos = 0;
    for edit in &edits {
        // `get` is None when this edit starts before the last one ended.
        let kept = src.get(pos..edit.range.start).with_context(|| {
            format!("internal error: overlapping edits at byte {pos} of the domain XML")
        })?;
        out.push_str(kept);
        out.push_str(&edit.text);
        pos = edit.range.end;
    }
    out.push_str(
        src.get(pos..)
            .context("internal error: edit past the end of the domain XML")?,
    );
    Ok(out)
}

/// Checks the rewritten XML the way the restore will use it: well-formed,
/// named as asked, every restored disk pointing at its new image. The input
/// passed the same reading, so a failure here is a bug in the rewrite.
fn verify(out: &str, new_name: Option<&str>, disks: &[RestoredDisk]) -> Result<()> {
    let bug =
        "the rewritten domain XML is wrong (a vmstash bug, or a domain XML it does not understand)";
    let domain = parse_domain(out).context(bug)?;
    if let Some(name) = new_name {
        ensure!(
            domain.name == name,
            "{bug}: it is named {:?}, not {name:?}",
            domain.name
        );
    }
    for restored in disks {
        let disk = domain
            .disks
            .iter()
            .find(|d| d.target == restored.target)
            .with_context(|| format!("{bug}: disk {} is missing", restored.target))?;
        ensure!(
            disk.kind == "file"
                && disk.source.as_deref() == Some(restored.path.as_str())
                && disk.format.as_deref() == Some(restored.format.as_str()),
            "{bug}: disk {} is {} {:?} {:?}",
            restored.target,
            disk.kind,
            disk.source,
            disk.format
        );
    }
    Ok(())
}

/// The element children in no namespace, i.e. libvirt's own elements.
fn libvirt_children<'a, 'i>(node: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children()
        .filter(|c| c.is_element() && c.tag_name().namespace().is_none())
}

/// The first libvirt child element named `name`.
fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    libvirt_children(node).find(|c| c.tag_name().name() == name)
}

/// Whether a node is a libvirt element named `name`.
fn is(node: Node<'_, '_>, name: &str) -> bool {
    node.is_element() && node.tag_name().namespace().is_none() && node.tag_name().name() == name
}

/// The `<devices>` elements of the domain.
fn devices<'a, 'i>(root: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    libvirt_children(root).filter(|c| c.tag_name().name() == "devices")
}

/// Whether a node is the domain's `<devices>`.
fn is_devices(node: Node<'_, '_>) -> bool {
    is(node, "devices")
        && node
            .parent_element()
            .is_some_and(|p| p.parent_element().is_none())
}

/// Whether a node is a device named `name` (a child of `<devices>`).
fn is_device(node: Node<'_, '_>, name: &str) -> bool {
    is(node, name) && node.parent_element().is_some_and(is_devices)
}

/// Whether a node is a `<disk>` holding a guest disk (`device` defaults to
/// `disk`), as opposed to a CD-ROM, floppy or LUN.
fn is_disk_device(node: Node<'_, '_>) -> bool {
    is(node, "disk") && node.attribute("device").unwrap_or("disk") == "disk"
}

/// A disk's `<target dev>`.
fn disk_target<'a>(disk: Node<'a, '_>) -> Option<&'a str> {
    child(disk, "target")?.attribute("dev")
}

/// Whether an interface `<target>` names a device libvirt generated (and
/// will generate again), rather than one the administrator chose.
fn is_generated_ifname(target: Node<'_, '_>) -> bool {
    target.attribute("managed") != Some("no")
        && target.attribute("dev").is_some_and(|dev| {
            GENERATED_IFNAME_PREFIXES
                .iter()
                .any(|prefix| dev.starts_with(prefix))
        })
}

/// An attribute in no namespace.
fn find_attr<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<roxmltree::Attribute<'a, 'i>> {
    node.attributes()
        .find(|a| a.namespace().is_none() && a.name() == name)
}

/// XML's whitespace characters.
fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// The start of the run of whitespace that ends at `end` (`end` itself if
/// there is none, or if `end` is not a position in `src`).
fn whitespace_start(src: &str, end: usize) -> usize {
    src.get(..end)
        .map_or(end, |before| before.trim_end_matches(is_xml_space).len())
}

/// Escapes text for an XML attribute value (either quote) or element text.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `virsh dumpxml` of a running domain: a qcow2 system disk on a backing
    /// chain, a raw LVM data disk, a CD-ROM, two interfaces, VNC and SPICE,
    /// generated security labels and QEMU pass-through arguments.
    const RUNNING: &str = r#"<domain type='kvm' id='7' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web1</name>
  <uuid>6f1c3a52-8d0b-4c55-9a51-0e7d2b1c9f44</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>4194304</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <resource>
    <partition>/machine</partition>
  </resource>
  <os>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <!-- system disk: an overlay on the golden image -->
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' discard='unmap'/>
      <source file='/var/lib/libvirt/images/web1.qcow2' index='3'>
        <seclabel model='dac' relabel='no'/>
      </source>
      <backingStore type='file' index='2'>
        <format type='qcow2'/>
        <source file='/var/lib/libvirt/images/debian12-base.qcow2'/>
        <backingStore type='file' index='1'>
          <format type='raw'/>
          <source file='/var/lib/libvirt/images/debian12.raw'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='/dev/vg0/web1-data' index='4'/>
      <backingStore/>
      <target dev='vdb' bus='virtio'/>
      <alias name='virtio-disk1'/>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/iso/debian-12.iso' index='5'/>
      <backingStore/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <alias name='sata0-0-0'/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci' ports='15'>
      <alias name='usb'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </controller>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:58'/>
      <source network='default' portid='0f4e5d7a-31c2-4d5e-8f3b-2a1c9e7d6b54' bridge='virbr0'/>
      <target dev='vnet3'/>
      <model type='virtio'/>
      <alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:1e:77:a0'/>
      <source bridge='br-lan'/>
      <target dev='web1-lan'/>
      <model type='virtio'/>
      <alias name='net1'/>
    </interface>
    <serial type='pty'>
      <source path='/dev/pts/3'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
      <alias name='serial0'/>
    </serial>
    <graphics type='vnc' port='5903' autoport='yes' websocket='5703' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <graphics type='spice' port='5930' autoport='no'>
      <listen type='address'/>
    </graphics>
    <video>
      <model type='virtio' heads='1' primary='yes'/>
      <alias name='video0'/>
    </video>
  </devices>
  <seclabel type='dynamic' model='selinux' relabel='yes'>
    <label>system_u:system_r:svirt_t:s0:c12,c345</label>
    <imagelabel>system_u:object_r:svirt_image_t:s0:c12,c345</imagelabel>
  </seclabel>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+107:+107</label>
    <imagelabel>+107:+107</imagelabel>
  </seclabel>
  <qemu:commandline>
    <qemu:arg value='-fw_cfg'/>
    <qemu:arg value='name=opt/web1,string=1'/>
  </qemu:commandline>
</domain>
"#;

    fn restored(target: &str, path: &str, format: &str) -> RestoredDisk {
        RestoredDisk {
            target: target.to_string(),
            path: path.to_string(),
            format: format.to_string(),
        }
    }

    /// The sample's two disks, restored into /srv/restore.
    fn both_disks() -> Vec<RestoredDisk> {
        vec![
            restored("vda", "/srv/restore/web1-vda.qcow2", "qcow2"),
            restored("vdb", "/srv/restore/web1-vdb.raw", "raw"),
        ]
    }

    /// What `rewrite_for_define(RUNNING, None, both_disks())` must print: the
    /// disks on their restored images, the live-only values gone, everything
    /// else byte for byte.
    const SAME_VM: &str = r#"<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web1</name>
  <uuid>6f1c3a52-8d0b-4c55-9a51-0e7d2b1c9f44</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>4194304</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <resource>
    <partition>/machine</partition>
  </resource>
  <os>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <!-- system disk: an overlay on the golden image -->
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' discard='unmap'/>
      <source file='/srv/restore/web1-vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source file='/srv/restore/web1-vdb.raw'/>
      <target dev='vdb' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/iso/debian-12.iso'/>
      <backingStore/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci' ports='15'>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </controller>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:58'/>
      <source network='default'/>
      <model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:1e:77:a0'/>
      <source bridge='br-lan'/>
      <target dev='web1-lan'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <source path='/dev/pts/3'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
    </serial>
    <graphics type='vnc' autoport='yes' websocket='-1' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <graphics type='spice' port='5930' autoport='no'>
      <listen type='address'/>
    </graphics>
    <video>
      <model type='virtio' heads='1' primary='yes'/>
    </video>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-fw_cfg'/>
    <qemu:arg value='name=opt/web1,string=1'/>
  </qemu:commandline>
</domain>
"#;

    #[test]
    fn same_vm_restore_is_exact() {
        let out = rewrite_for_define(RUNNING, None, &both_disks()).expect("rewrite");
        assert_eq!(out, SAME_VM);
    }

    #[test]
    fn clone_gets_new_name_and_no_uuid_or_macs() {
        let out = rewrite_for_define(RUNNING, Some("web1-copy"), &both_disks()).expect("rewrite");
        let expected = SAME_VM
            .replace("<name>web1</name>", "<name>web1-copy</name>")
            .replace("\n  <uuid>6f1c3a52-8d0b-4c55-9a51-0e7d2b1c9f44</uuid>", "")
            .replace("\n      <mac address='52:54:00:6b:3c:58'/>", "")
            .replace("\n      <mac address='52:54:00:1e:77:a0'/>", "");
        assert_eq!(out, expected);
        let domain = parse_domain(&out).expect("parse");
        assert_eq!(domain.name, "web1-copy");
        assert_eq!(domain.uuid, None);
    }

    #[test]
    fn rewritten_disks_parse_back() {
        let out = rewrite_for_define(RUNNING, None, &both_disks()).expect("rewrite");
        let domain = parse_domain(&out).expect("parse");
        assert_eq!(domain.name, "web1");
        assert_eq!(
            domain.uuid.as_deref(),
            Some("6f1c3a52-8d0b-4c55-9a51-0e7d2b1c9f44")
        );
        let summary: Vec<_> = domain
            .disks
            .iter()
            .map(|d| {
                (
                    d.target.as_str(),
                    d.device.as_str(),
                    d.kind.as_str(),
                    d.source.as_deref(),
                    d.format.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "vda",
                    "disk",
                    "file",
                    Some("/srv/restore/web1-vda.qcow2"),
                    Some("qcow2")
                ),
                (
                    "vdb",
                    "disk",
                    "file",
                    Some("/srv/restore/web1-vdb.raw"),
                    Some("raw")
                ),
                (
                    "sda",
                    "cdrom",
                    "file",
                    Some("/var/lib/libvirt/iso/debian-12.iso"),
                    Some("raw")
                ),
            ]
        );

        let doc = Document::parse(&out).expect("well-formed");
        let root = doc.root_element();
        assert_eq!(root.attribute("id"), None);
        assert!(!root.children().any(|c| c.has_tag_name("seclabel")));
        let all = || root.descendants().filter(|n| n.is_element());
        assert_eq!(all().filter(|n| n.has_tag_name("alias")).count(), 0);
        assert!(all()
            .filter(|n| n.has_tag_name("source"))
            .all(|s| s.attribute("index").is_none()));
        // Only the CD-ROM's empty <backingStore/> is left.
        let backing: Vec<_> = all().filter(|n| n.has_tag_name("backingStore")).collect();
        assert_eq!(backing.len(), 1);
        assert_eq!(
            backing[0].parent().and_then(|d| d.attribute("device")),
            Some("cdrom")
        );
        let vnc = all()
            .find(|n| n.has_tag_name("graphics"))
            .expect("graphics");
        assert_eq!(vnc.attribute("port"), None);
        assert_eq!(vnc.attribute("autoport"), Some("yes"));
        assert_eq!(vnc.attribute("websocket"), Some("-1"));
    }

    #[test]
    fn unrestored_disk_is_an_error_naming_it() {
        let only_vda = &both_disks()[..1];
        let err = rewrite_for_define(RUNNING, None, only_vda).expect_err("vdb is missing");
        let msg = format!("{err:#}");
        assert!(msg.contains("vdb (/dev/vg0/web1-data)"), "{msg}");
        assert!(!msg.contains("vda"), "{msg}");
        assert!(!msg.contains("sda"), "{msg}");
        let err = rewrite_for_define(RUNNING, None, &[]).expect_err("both missing");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("vda (/var/lib/libvirt/images/web1.qcow2), vdb (/dev/vg0/web1-data)"),
            "{msg}"
        );
    }

    #[test]
    fn restored_disk_not_in_domain_is_an_error() {
        let mut disks = both_disks();
        disks.push(restored("vdz", "/srv/restore/vdz.raw", "raw"));
        // The CD-ROM is not a disk that can be restored either.
        disks.push(restored("sda", "/srv/restore/sda.raw", "raw"));
        let err = rewrite_for_define(RUNNING, None, &disks).expect_err("vdz is unknown");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("not disks of the domain: sda, vdz (its disks: vda, vdb)"),
            "{msg}"
        );
    }

    #[test]
    fn driver_source_and_type_are_added_when_absent() {
        let xml = "<domain type='kvm'><name>a</name><devices>\n  <disk>\n    <target dev='vda'/>\n  </disk>\n  <disk device='disk'>\n    <source file='/old/b.img'/>\n    <target dev='vdb'/>\n  </disk>\n</devices></domain>";
        let disks = [
            restored("vda", "/new/a.qcow2", "qcow2"),
            restored("vdb", "/new/b.raw", "raw"),
        ];
        let out = rewrite_for_define(xml, None, &disks).expect("rewrite");
        assert_eq!(
            out,
            "<domain type='kvm'><name>a</name><devices>\n  <disk type='file'>\n    <driver name='qemu' type='qcow2'/>\n    <source file='/new/a.qcow2'/>\n    <target dev='vda'/>\n  </disk>\n  <disk device='disk' type='file'>\n    <driver name='qemu' type='raw'/>\n    <source file='/new/b.raw'/>\n    <target dev='vdb'/>\n  </disk>\n</devices></domain>"
        );
    }

    #[test]
    fn network_and_volume_disks_become_files() {
        let xml = r#"<domain type='kvm'>
  <name>db</name>
  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='writeback'/>
      <auth username='libvirt'>
        <secret type='ceph' uuid='2a5b08e4-3dcc-4ff4-8da0-2d0e6d1b8c1e'/>
      </auth>
      <source protocol='rbd' name='pool/db-root' index='2'>
        <host name='ceph1' port='6789'/>
        <host name='ceph2' port='6789'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='default' volume='db-data.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>"#;
        let disks = [
            restored("vda", "/srv/db-vda.raw", "raw"),
            restored("vdb", "/srv/db-vdb.raw", "raw"),
        ];
        let out = rewrite_for_define(xml, None, &disks).expect("rewrite");
        assert!(out.contains(
            "<disk type='file' device='disk'>\n      <driver name='qemu' type='raw' cache='writeback'/>"
        ));
        assert!(out.contains("<source file='/srv/db-vda.raw'/>\n      <target dev='vda'"));
        assert!(out.contains(
            "<disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='/srv/db-vdb.raw'/>"
        ));
        assert!(!out.contains("<host"));
        assert!(!out.contains("pool="));
    }

    #[test]
    fn unrestored_network_disk_error_says_where_it_was() {
        let xml = "<domain><name>db</name><devices><disk type='network'><source protocol='rbd' name='pool/img'/><target dev='vda'/></disk><disk type='volume'><source pool='p' volume='v'/><target dev='vdb'/></disk></devices></domain>";
        let err = rewrite_for_define(xml, None, &[]).expect_err("missing");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("vda (rbd pool/img), vdb (volume v in pool p)"),
            "{msg}"
        );
    }

    #[test]
    fn administrator_settings_are_kept() {
        let xml = r#"<domain type='kvm' id='3'>
  <name>fw</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/old/fw.raw'/>
      <target dev='vda'/>
    </disk>
    <interface type='ethernet'>
      <mac address='52:54:00:00:00:01'/>
      <target dev='vnet-fw0' managed='no'/>
    </interface>
    <interface type='bridge'>
      <source bridge='br0'/>
      <target dev='macvtap7'/>
    </interface>
    <graphics type='vnc' port='5901' autoport='no' websocket='5701'/>
  </devices>
  <seclabel type='static' model='selinux' relabel='yes'>
    <label>system_u:system_r:svirt_t:s0:c1,c2</label>
  </seclabel>
</domain>"#;
        let disks = [restored("vda", "/new/fw.raw", "raw")];
        let out = rewrite_for_define(xml, None, &disks).expect("rewrite");
        assert!(out.starts_with("<domain type='kvm'>\n"));
        assert!(out.contains("<target dev='vnet-fw0' managed='no'/>"));
        assert!(!out.contains("macvtap7"));
        assert!(out.contains("<source bridge='br0'/>"));
        assert!(out.contains("<graphics type='vnc' port='5901' autoport='no' websocket='5701'/>"));
        assert!(out.contains("<seclabel type='static' model='selinux' relabel='yes'>"));
        assert!(out.contains("<mac address='52:54:00:00:00:01'/>"));
    }

    #[test]
    fn names_and_paths_are_escaped() {
        let disks = [
            restored("vda", "/srv/a&b's \"vm\" <1>.qcow2", "qcow2"),
            restored("vdb", "/srv/caf\u{e9}.raw", "raw"),
        ];
        let out = rewrite_for_define(RUNNING, Some("web<1> & 'co'"), &disks).expect("rewrite");
        let domain = parse_domain(&out).expect("parse");
        assert_eq!(domain.name, "web<1> & 'co'");
        assert_eq!(
            domain.disks[0].source.as_deref(),
            Some("/srv/a&b's \"vm\" <1>.qcow2")
        );
        assert_eq!(
            domain.disks[1].source.as_deref(),
            Some("/srv/caf\u{e9}.raw")
        );
    }

    #[test]
    fn bad_arguments_are_errors() {
        let check = |new_name: Option<&str>, disks: &[RestoredDisk], expected: &str| {
            let err = rewrite_for_define(RUNNING, new_name, disks).expect_err(expected);
            let msg = format!("{err:#}");
            assert!(msg.contains(expected), "{msg} does not say {expected}");
        };
        let vda = restored("vda", "/srv/vda.qcow2", "qcow2");
        let vdb = |path: &str, format: &str| restored("vdb", path, format);
        let good = [vda.clone(), vdb("/srv/vdb.raw", "raw")];
        check(
            None,
            &[vda.clone(), vdb("/srv/vdb", "vmdk")],
            "\"vmdk\" is not raw or qcow2",
        );
        check(
            None,
            &[vda.clone(), vdb("srv/vdb", "raw")],
            "\"srv/vdb\" is not absolute",
        );
        check(
            None,
            &[vda.clone(), vdb("/srv/a\nb", "raw")],
            "contains control characters",
        );
        check(
            None,
            &[vda.clone(), vda.clone()],
            "disk vda is restored twice",
        );
        check(Some(""), &good, "the new domain name is empty");
        check(Some("  "), &good, "the new domain name is empty");
        check(Some(" web1"), &good, "starts or ends with spaces");
        check(Some("a/b"), &good, "contains '/'");
        check(Some("a\u{0}b"), &good, "contains control characters");
    }

    #[test]
    fn malformed_domains_are_errors() {
        let vda = [restored("vda", "/srv/vda.raw", "raw")];
        let check = |xml: &str, expected: &str| {
            let err = rewrite_for_define(xml, None, &vda).expect_err(expected);
            let msg = format!("{err:#}");
            assert!(msg.contains(expected), "{msg} does not say {expected}");
        };
        check("", "parsing the backed-up domain XML");
        check("<domain>", "parsing the backed-up domain XML");
        check(
            "<domain><name/><devices/></domain>",
            "the domain XML has no <name>",
        );
        check(
            "<network><name>default</name></network>",
            "its root element is <network>",
        );
        check(
            "<!DOCTYPE domain [<!ENTITY e 'x'>]><domain><name>&e;</name></domain>",
            "parsing the backed-up domain XML",
        );
        check(
            "<domain><name>a</name><devices><disk><source file='/a'/></disk></devices></domain>",
            "a disk of the domain (/a) has no <target dev>",
        );
        check(
            "<domain><name>a</name><devices><disk><target dev='vda'/></disk><disk><target dev='vda'/></disk></devices></domain>",
            "two disks with target vda",
        );
    }

    /// Every strict prefix of the sample is malformed (the root element is
    /// not closed), and must be an error, not a panic.
    #[test]
    fn truncations_are_errors() {
        let disks = both_disks();
        let end = RUNNING.trim_end().len();
        for len in (0..RUNNING.len()).filter(|&len| RUNNING.is_char_boundary(len)) {
            let result = rewrite_for_define(&RUNNING[..len], None, &disks);
            assert_eq!(result.is_ok(), len >= end, "prefix of {len} bytes");
        }
    }

    /// Fuzz-style property: for every prefix and single-byte mutations of the
    /// sample, the rewrite returns instead of panicking, its own consistency
    /// check never fires, and whenever it succeeds, its output is well-formed, points the disks at the
    /// restored images, and is a fixed point (rewriting it again changes
    /// nothing).
    #[test]
    fn mutations_never_panic_and_successes_are_stable() {
        let disks = both_disks();
        let check = |xml: &str, new_name: Option<&str>| -> bool {
            let out = match rewrite_for_define(xml, new_name, &disks) {
                Ok(out) => out,
                Err(err) => {
                    let msg = format!("{err:#}");
                    assert!(
                        !msg.contains("internal error") && !msg.contains("vmstash bug"),
                        "{msg}; input:\n{xml}"
                    );
                    return false;
                }
            };
            let domain = parse_domain(&out).expect("the output parses");
            for restored in &disks {
                let disk = domain
                    .disks
                    .iter()
                    .find(|d| d.target == restored.target)
                    .expect("restored disk present");
                assert_eq!(disk.source.as_deref(), Some(restored.path.as_str()));
                assert_eq!(disk.format.as_deref(), Some(restored.format.as_str()));
            }
            let again = rewrite_for_define(&out, new_name, &disks).expect("rewrite again");
            assert_eq!(again, out, "not a fixed point; input:\n{xml}");
            true
        };
        let bytes = RUNNING.as_bytes();
        let mut successes = 0_usize;
        for len in 0..=bytes.len() {
            if let Some(prefix) = RUNNING.get(..len) {
                successes += usize::from(check(prefix, None));
            }
        }
        for pos in 0..bytes.len() {
            let deleted = [&bytes[..pos], &bytes[pos + 1..]].concat();
            let variants = b"<'/x"
                .iter()
                .map(|&b| {
                    let mut mutated = bytes.to_vec();
                    mutated[pos] = b;
                    mutated
                })
                .chain(std::iter::once(deleted));
            for variant in variants {
                if let Ok(xml) = String::from_utf8(variant) {
                    successes += usize::from(check(&xml, Some("web1-copy")));
                }
            }
        }
        // Many mutations hit text or values and still parse: the property
        // was checked on real successes, not only on errors.
        assert!(successes > 1000, "only {successes} successes");
    }
}
