//! libvirt's view of a parsed domain XML: its own elements and attributes
//! are in no XML namespace.
//!
//! roxmltree's `has_tag_name("disk")` and `attribute("type")` match a name
//! in any namespace, so `<x:disk>` or `x:type='block'` would count as
//! libvirt's. Reading and rewriting the domain go through these helpers
//! instead, so that both see the same elements, the ones libvirt reads.

use roxmltree::{Attribute, Node};

/// The element children in no namespace, i.e. libvirt's own elements.
pub(crate) fn elements<'a, 'i>(node: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children()
        .filter(|c| c.is_element() && c.tag_name().namespace().is_none())
}

/// The first libvirt child element named `name`.
pub(crate) fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    elements(node).find(|c| c.tag_name().name() == name)
}

/// The text of the first libvirt child element named `name`, trimmed.
pub(crate) fn child_text(node: Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name)
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
}

/// Whether a node is a libvirt element named `name`.
pub(crate) fn is(node: Node<'_, '_>, name: &str) -> bool {
    node.is_element() && node.tag_name().namespace().is_none() && node.tag_name().name() == name
}

/// An attribute in no namespace.
pub(crate) fn find_attr<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Attribute<'a, 'i>> {
    node.attributes()
        .find(|a| a.namespace().is_none() && a.name() == name)
}

/// The value of an attribute in no namespace.
pub(crate) fn attr<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    find_attr(node, name).map(|a| a.value())
}

/// The `<devices>` elements of the domain whose root is `root`.
pub(crate) fn devices<'a, 'i>(root: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    elements(root).filter(|c| c.tag_name().name() == "devices")
}

/// The `<disk>` elements of the domain whose root is `root`, in document
/// order.
pub(crate) fn disks<'a, 'i>(root: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    devices(root)
        .flat_map(elements)
        .filter(|c| c.tag_name().name() == "disk")
}

/// Whether a `<disk>` holds a guest disk (`device` defaults to `disk`), as
/// opposed to a CD-ROM, floppy or LUN.
pub(crate) fn is_disk_device(disk: Node<'_, '_>) -> bool {
    attr(disk, "device").unwrap_or("disk") == "disk"
}

/// A disk's `<target dev>`: the guest device name (`vda`).
pub(crate) fn disk_target<'a>(disk: Node<'a, '_>) -> Option<&'a str> {
    attr(child(disk, "target")?, "dev")
}

/// The 1-based line of the document on which a node starts, for messages.
pub(crate) fn line(node: Node<'_, '_>) -> u32 {
    node.document().text_pos_at(node.range().start).row
}
