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
//! # QEMU pass-through is removed unless asked for
//!
//! Children of `<domain>` in libvirt's QEMU namespace
//! (`http://libvirt.org/schemas/domain/qemu/1.0`: `<qemu:commandline>`,
//! `<qemu:capabilities>`, `<qemu:override>`, `<qemu:deprecation>`) hand
//! QEMU raw arguments, environment variables, capability flags and device
//! properties behind libvirt's back; libvirt marks a domain using them as
//! tainted and does not check them. They routinely name things of the
//! source host only: files (`-fw_cfg file=…`, `-drive file=…`), host
//! devices (`-device vfio-pci,host=…`), sockets and character devices, or
//! flags for the source host's QEMU version. Defined on another host they
//! make the VM fail to start, or make it open whatever carries that name
//! there; and since the XML in a backup is untrusted (the repository or the
//! source host may be hostile), they are also the one place where it could
//! make QEMU do anything at all, outside every check libvirt applies to the
//! rest of the XML. A `-drive` there would even attach the old storage,
//! which the rewrite otherwise guarantees never to do.
//!
//! So by default the rewrite removes them, and [`Defined::removed`] lists
//! each one removed, verbatim, for the caller to show as a warning; with
//! [`DefineOptions::keep_qemu_passthrough`] they are kept byte for byte
//! (restoring onto the same host, or one set up the same way). Other
//! hypervisors' namespaces (`xen:`, `bhyve:`, `lxc:`) and `<metadata>` are
//! application data vmstash does not interpret, and are kept; so are
//! `qemu:` elements anywhere but directly under `<domain>`, which libvirt
//! does not read.
//!
//! # How
//!
//! The rewrite is a list of byte-range edits on the original text
//! ([`crate::edit::XmlEdits`]), found by walking the parsed tree and applied
//! in one pass. Everything not edited (comments, formatting, attribute order
//! and quotes, `<metadata>`) comes out byte for byte as it went in. The walk
//! decides what each element's children are (a restored disk, an
//! interface, …) once per element, so it costs time linear in the size of
//! the XML, which is capped at what `virsh define` reads.
//!
//! The walk never enters a subtree it removes or replaces, so no two edits
//! overlap; the editor still refuses overlapping edits instead of producing
//! a mangled document. The result is parsed again and its disks are read
//! back with [`crate::parse_domain`]'s reading before it is returned: a bug
//! here is an [`Error::Internal`], never a VM defined on the wrong storage.
//!
//! Only elements in no XML namespace are rewritten: libvirt's own elements
//! have none. Inside `<devices>` a namespaced element or attribute is
//! refused ([`Error::Unsupported`]): libvirt never writes one there, and
//! some libvirt versions read `x:type` as `type` or `<x:source>` as
//! `<source>`, so the VM could end up on a disk other than the one the
//! rewrite checked.

mod checks;

use std::collections::HashMap;
use std::fmt;

use roxmltree::{Node, NodeId};

use crate::domain::read_domain;
use crate::edit::{escape, XmlEdits};
use crate::error::{Error, Result};
use crate::nodes::{attr, disk_target, elements, is, is_disk_device, line};
use crate::parse::{parse, MAX_ATTRIBUTES};
use checks::{
    check_devices_namespaces, check_disks_covered, check_name, check_root, check_size,
    index_restored, verify,
};

/// libvirt's namespace for QEMU pass-through (see the module docs).
pub const QEMU_NAMESPACE: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// The largest domain XML the rewrite reads: 10 MiB, what `virsh define`
/// reads from a file (`VSH_MAX_XML_FILE` in libvirt's tools/virsh.h).
/// Larger input could not be defined anyway; the cap also bounds the time
/// and memory the rewrite spends on a hostile one.
pub const MAX_DOMAIN_XML: usize = 10 * 1024 * 1024;

/// Image formats a restored disk can have.
const FORMATS: [&str; 2] = ["raw", "qcow2"];

/// Prefixes of the tap/macvtap names libvirt generates for an `<interface>`
/// (`vnet3`, `macvtap0`); libvirt itself drops these from inactive XML.
const GENERATED_IFNAME_PREFIXES: [&str; 3] = ["vnet", "macvtap", "macvlan"];

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

/// How the VM is to be defined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefineOptions<'a> {
    /// Define a copy under this name: `<name>` becomes it, and `<uuid>` and
    /// the interfaces' `<mac>` are removed so that libvirt generates new
    /// ones. None: the same VM, restored after a loss (name, UUID and MACs
    /// kept).
    pub new_name: Option<&'a str>,
    /// Keep the QEMU pass-through elements (`<qemu:commandline>` and the
    /// other children of `<domain>` in [`QEMU_NAMESPACE`]); by default they
    /// are removed and reported (see the module docs).
    pub keep_qemu_passthrough: bool,
}

/// The rewritten domain XML, and what was removed from it that the user
/// should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defined {
    /// The domain XML to pass to `virsh define`.
    pub xml: String,
    /// The QEMU pass-through elements removed, in document order (empty
    /// with [`DefineOptions::keep_qemu_passthrough`]).
    pub removed: Vec<Removed>,
}

/// An element removed from the backed-up domain XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Its name as written, with its prefix (`qemu:commandline`).
    pub element: String,
    /// The 1-based line of the backed-up XML it started on.
    pub line: u32,
    /// The element as it was written, verbatim, so that it can be put back
    /// by hand.
    pub xml: String,
}

impl fmt::Display for Removed {
    /// `<qemu:commandline> (line 120 of the backed-up domain XML):` and the
    /// element on the lines after, with control characters escaped so that
    /// the backup's XML cannot drive the terminal it is printed on.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<{}> (line {} of the backed-up domain XML):\n{}",
            printable(&self.element),
            self.line,
            printable(&self.xml)
        )
    }
}

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
/// - With [`DefineOptions::new_name`], `<name>` becomes it and `<uuid>` and
///   the interfaces' `<mac>` are removed, so libvirt generates new ones (a
///   clone next to the original). Without it, name, UUID and MACs are kept
///   (the same VM, restored after a loss).
/// - QEMU pass-through is removed and reported unless
///   [`DefineOptions::keep_qemu_passthrough`] (see the module docs).
///
/// The input comes from a repository snapshot: anything malformed is an
/// error saying what is wrong and where, never a panic.
pub fn rewrite_for_define(
    xml: &str,
    disks: &[RestoredDisk],
    options: &DefineOptions<'_>,
) -> Result<Defined> {
    check_size(xml)?;
    if let Some(name) = options.new_name {
        check_name(name)?;
    }
    let restored = index_restored(disks)?;
    let doc = parse(xml, "parsing the backed-up domain XML")?;
    let root = doc.root_element();
    check_root(root)?;
    // What `verify` reads back must be readable in the input already.
    read_domain(root)?;
    check_devices_namespaces(root)?;
    check_disks_covered(root, &restored)?;

    let mut rewriter = Rewriter {
        edits: XmlEdits::new(xml),
        new_name: options.new_name,
        restored,
    };
    rewriter.walk(root)?;
    let removed = match options.keep_qemu_passthrough {
        true => Vec::new(),
        false => rewriter.remove_passthrough(root)?,
    };
    let out = rewriter.edits.apply()?;
    verify(&out, options, disks)?;
    Ok(Defined { xml: out, removed })
}

/// What an element's parent is, as far as the rewrite cares: worked out
/// once per parent and handed to each child, so that the walk is linear.
#[derive(Debug, Clone, Copy)]
enum Parent<'a> {
    /// `<domain>`.
    Domain,
    /// The domain's `<devices>`.
    Devices,
    /// A `<disk device='disk'>` that is restored.
    RestoredDisk(DiskParts<'a>),
    /// An `<interface>`; `network` if `type='network'`.
    Interface {
        /// The interface is `type='network'`.
        network: bool,
    },
    /// Anything else.
    Other,
}

/// A restored disk and the children its rewrite depends on.
#[derive(Debug, Clone, Copy)]
struct DiskParts<'a> {
    /// The image it is restored to.
    restored: &'a RestoredDisk,
    /// Its first `<source>`, the one replaced (later ones are removed).
    first_source: Option<NodeId>,
    /// Its first `<target>`, before which a missing source is inserted.
    first_target: Option<NodeId>,
    /// Whether it has a `<driver>` (else one is inserted).
    has_driver: bool,
}

impl<'a> DiskParts<'a> {
    /// Looks at a disk's children once.
    fn new(disk: Node<'_, '_>, restored: &'a RestoredDisk) -> Self {
        let mut parts = DiskParts {
            restored,
            first_source: None,
            first_target: None,
            has_driver: false,
        };
        for c in elements(disk) {
            match c.tag_name().name() {
                "source" if parts.first_source.is_none() => parts.first_source = Some(c.id()),
                "target" if parts.first_target.is_none() => parts.first_target = Some(c.id()),
                "driver" => parts.has_driver = true,
                _ => {}
            }
        }
        parts
    }
}

/// Collects the edits while walking the domain tree.
struct Rewriter<'s, 'a> {
    edits: XmlEdits<'s>,
    new_name: Option<&'a str>,
    restored: HashMap<&'a str, &'a RestoredDisk>,
}

impl<'s, 'a> Rewriter<'s, 'a> {
    /// Records the edits for the whole domain, whose root is `root`.
    fn walk(&mut self, root: Node<'_, '_>) -> Result<()> {
        // The id of the running process.
        self.edits.remove_attr(root, "id")?;
        let mut stack: Vec<_> = elements(root).map(|c| (c, Parent::Domain)).collect();
        while let Some((node, parent)) = stack.pop() {
            if let Some(scope) = self.visit(node, parent)? {
                stack.extend(elements(node).map(|c| (c, scope)));
            }
        }
        Ok(())
    }

    /// Records the edits for one element below the root; returns what it is
    /// to its children, or None if they are not to be visited.
    fn visit(&mut self, node: Node<'_, '_>, parent: Parent<'a>) -> Result<Option<Parent<'a>>> {
        if is(node, "alias") {
            self.edits.remove_element(node)?;
            return Ok(None);
        }
        match parent {
            Parent::Domain => self.visit_domain_child(node),
            Parent::Devices => self.visit_device(node),
            Parent::RestoredDisk(disk) => self.visit_disk_child(node, disk),
            Parent::Interface { network } => self.visit_interface_child(node, network),
            Parent::Other => {
                if is(node, "source") {
                    self.edits.remove_attr(node, "index")?;
                }
                Ok(Some(Parent::Other))
            }
        }
    }

    /// A child of `<domain>`.
    fn visit_domain_child(&mut self, node: Node<'_, '_>) -> Result<Option<Parent<'a>>> {
        match (node.tag_name().name(), self.new_name) {
            ("seclabel", _) if attr(node, "type") != Some("static") => {
                self.edits.remove_element(node)?;
                Ok(None)
            }
            ("name", Some(name)) => {
                let text = format!("<name>{}</name>", escape(name));
                self.edits.replace_element(node, text)?;
                Ok(None)
            }
            ("uuid", Some(_)) => {
                self.edits.remove_element(node)?;
                Ok(None)
            }
            // Application data: not libvirt's to interpret, kept verbatim.
            ("metadata", _) => Ok(None),
            ("devices", _) => Ok(Some(Parent::Devices)),
            _ => Ok(Some(Parent::Other)),
        }
    }

    /// A child of `<devices>`.
    fn visit_device(&mut self, node: Node<'_, '_>) -> Result<Option<Parent<'a>>> {
        match node.tag_name().name() {
            "disk" => match self.restored_disk(node) {
                Some(restored) => {
                    self.set_attr(node, "type", "file")?;
                    Ok(Some(Parent::RestoredDisk(DiskParts::new(node, restored))))
                }
                None => Ok(Some(Parent::Other)),
            },
            "graphics" => {
                if attr(node, "autoport") == Some("yes") {
                    self.edits.remove_attr(node, "port")?;
                    self.edits.remove_attr(node, "tlsPort")?;
                    if attr(node, "websocket").is_some() {
                        self.set_attr(node, "websocket", "-1")?;
                    }
                }
                Ok(Some(Parent::Other))
            }
            "interface" => Ok(Some(Parent::Interface {
                network: attr(node, "type") == Some("network"),
            })),
            _ => Ok(Some(Parent::Other)),
        }
    }

    /// A child of a restored `<disk>`.
    fn visit_disk_child(
        &mut self,
        node: Node<'_, '_>,
        disk: DiskParts<'a>,
    ) -> Result<Option<Parent<'a>>> {
        match node.tag_name().name() {
            "source" => {
                if disk.first_source == Some(node.id()) {
                    let text = self.new_source(node, &disk);
                    self.edits.replace_element(node, text)?;
                } else {
                    self.edits.remove_element(node)?;
                }
                Ok(None)
            }
            "backingStore" | "mirror" => {
                self.edits.remove_element(node)?;
                Ok(None)
            }
            "driver" => {
                self.set_attr(node, "type", &disk.restored.format)?;
                Ok(Some(Parent::Other))
            }
            "target" if disk.first_source.is_none() && disk.first_target == Some(node.id()) => {
                // A disk without a source (an empty drive): the source goes
                // before the target.
                let text = self.new_source(node, &disk);
                let indent = self.edits.indent_before(node);
                self.edits.insert_before(node, format!("{text}{indent}"))?;
                Ok(Some(Parent::Other))
            }
            _ => Ok(Some(Parent::Other)),
        }
    }

    /// The `<source>` of a restored disk, preceded by a `<driver>` if the disk
    /// has none; `anchor` is the element whose indentation it takes.
    fn new_source(&self, anchor: Node<'_, '_>, disk: &DiskParts<'_>) -> String {
        let source = format!("<source file='{}'/>", escape(&disk.restored.path));
        if disk.has_driver {
            return source;
        }
        format!(
            "<driver name='qemu' type='{}'/>{}{source}",
            escape(&disk.restored.format),
            self.edits.indent_before(anchor)
        )
    }

    /// A child of an `<interface>`.
    fn visit_interface_child(
        &mut self,
        node: Node<'_, '_>,
        network: bool,
    ) -> Result<Option<Parent<'a>>> {
        match node.tag_name().name() {
            "target" if is_generated_ifname(node) => {
                self.edits.remove_element(node)?;
                Ok(None)
            }
            "mac" if self.new_name.is_some() => {
                self.edits.remove_element(node)?;
                Ok(None)
            }
            "source" => {
                self.edits.remove_attr(node, "portid")?;
                if network {
                    self.edits.remove_attr(node, "bridge")?;
                }
                Ok(Some(Parent::Other))
            }
            _ => Ok(Some(Parent::Other)),
        }
    }

    /// Sets an attribute; refuses to add one to an element that already has
    /// as many as [`parse`] accepts, since the output must read back.
    fn set_attr(&mut self, node: Node<'_, '_>, name: &str, value: &str) -> Result<()> {
        if attr(node, name).is_none() && node.attributes().len() >= MAX_ATTRIBUTES {
            return Err(Error::unsupported(format!(
                "line {}: <{}> has {MAX_ATTRIBUTES} attributes, the most vmstash reads, and no \
                 {name}, which the rewrite has to add",
                line(node),
                node.tag_name().name()
            )));
        }
        self.edits.set_attr(node, name, value)
    }

    /// The restored disk a `<disk>` of `<devices>` is, if it is a
    /// `device='disk'` (all of which are restored, see
    /// [`check_disks_covered`]).
    fn restored_disk(&self, disk: Node<'_, '_>) -> Option<&'a RestoredDisk> {
        if !is_disk_device(disk) {
            return None;
        }
        self.restored.get(disk_target(disk)?).copied()
    }

    /// Removes the QEMU pass-through elements (children of `<domain>` in
    /// [`QEMU_NAMESPACE`]) and says what they were.
    fn remove_passthrough(&mut self, root: Node<'_, '_>) -> Result<Vec<Removed>> {
        let mut lines = Lines::new(root.document().input_text());
        let mut removed = Vec::new();
        for node in root.children().filter(|c| is_passthrough(*c)) {
            removed.push(Removed {
                element: self.edits.qualified_name(node)?.to_string(),
                line: lines.at(node.range().start),
                xml: self.edits.element_text(node)?.to_string(),
            });
            self.edits.remove_element(node)?;
        }
        Ok(removed)
    }
}

/// Whether a node is a QEMU pass-through element (when it is a child of
/// `<domain>`).
fn is_passthrough(node: Node<'_, '_>) -> bool {
    node.is_element() && node.tag_name().namespace() == Some(QEMU_NAMESPACE)
}

/// Whether an interface `<target>` names a device libvirt generated (and
/// will generate again), rather than one the administrator chose.
fn is_generated_ifname(target: Node<'_, '_>) -> bool {
    attr(target, "managed") != Some("no")
        && attr(target, "dev").is_some_and(|dev| {
            GENERATED_IFNAME_PREFIXES
                .iter()
                .any(|prefix| dev.starts_with(prefix))
        })
}

/// 1-based line numbers of increasing positions in a text, counted in one
/// pass (roxmltree's `text_pos_at` counts from the start on every call).
struct Lines<'s> {
    text: &'s str,
    pos: usize,
    line: u32,
}

impl<'s> Lines<'s> {
    /// Line 1, at the start of `text`.
    fn new(text: &'s str) -> Self {
        Lines {
            text,
            pos: 0,
            line: 1,
        }
    }

    /// The line `pos` is on; `pos` must not be before the previous one.
    fn at(&mut self, pos: usize) -> u32 {
        if let Some(between) = self.text.get(self.pos..pos) {
            let newlines = between.bytes().filter(|&b| b == b'\n').count();
            self.line = self
                .line
                .saturating_add(u32::try_from(newlines).unwrap_or(u32::MAX));
            self.pos = pos;
        }
        self.line
    }
}

/// Text with its control characters other than newline and tab escaped.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
