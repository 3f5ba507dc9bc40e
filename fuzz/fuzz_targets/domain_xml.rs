//! The domain XML stored in a backup, read and rewritten for `restore
//! --define` (`vmstash-libvirt-xml`): arbitrary bytes never panic, and
//! whatever the rewrite accepts it rewrites as it promises.
//!
//! Input: byte 0 holds flags, byte 1 seeds the editor's choices, the rest is
//! the XML (as UTF-8, invalid sequences replaced, so that every input
//! reaches the parser). Flags: bit 0 defines a copy under a new name, bit 1
//! keeps QEMU pass-through, bit 2 restores the fixed disks vda and vdb
//! instead of the domain's own disks.
//!
//! Properties:
//! - `parse_domain` and `rewrite_for_define` return; an error is never
//!   `Internal` (the rewrite contradicting itself), and when the restored
//!   disks are exactly the domain's own it is `Malformed` or `Unsupported`
//!   (the input's fault), never `InvalidArgument`.
//! - An accepted rewrite reads back: every restored disk is a file on its
//!   restored path in its format, the name is the new one (and the UUID
//!   gone) or the old one (and the UUID kept), no QEMU pass-through is left
//!   unless kept, each element reported removed was in the input verbatim,
//!   and rewriting the output again changes nothing.
//! - The byte-range editor, driven directly with edits chosen by byte 1
//!   (remove an element, set or remove an attribute, insert an element):
//!   it refuses overlapping edits, and otherwise its output is the input
//!   with exactly the edited ranges replaced, still well-formed, with the
//!   number of elements the edits imply.
//! - The backup API's XML (`vmstash_libvirt_xml::backup`), from the same
//!   input: a checkpoint's XML as recorded in a snapshot, made fit to be
//!   redefined, is a `<domaincheckpoint>` without a `<parent>` that
//!   redefines the same again; a running job's XML reads or is an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roxmltree::{Document, Node};
use vmstash_libvirt_xml::backup::{checkpoint_for_redefine, running_job};
use vmstash_libvirt_xml::edit::XmlEdits;
use vmstash_libvirt_xml::{
    parse_domain, rewrite_for_define, DefineOptions, Error, RestoredDisk, QEMU_NAMESPACE,
};

fuzz_target!(|data: &[u8]| {
    let [flags, seed, xml @ ..] = data else {
        return;
    };
    let xml = String::from_utf8_lossy(xml);
    let options = DefineOptions {
        new_name: (flags & 1 != 0).then_some("web1 copy & 'co'"),
        keep_qemu_passthrough: flags & 2 != 0,
    };
    let own_disks = flags & 4 == 0;
    let disks = if own_disks {
        restore_own_disks(&xml)
    } else {
        vec![restored(0, "vda"), restored(1, "vdb")]
    };
    check_rewrite(&xml, &disks, &options, own_disks);
    check_editor(&xml, *seed);
    check_backup_xml(&xml);
});

/// The backup API's properties (see the module docs).
fn check_backup_xml(xml: &str) {
    let _ = running_job(xml);
    let Ok(redefinable) = checkpoint_for_redefine(xml) else {
        return;
    };
    let doc = Document::parse(&redefinable).expect("a redefinable checkpoint parses");
    let root = doc.root_element();
    assert!(root.has_tag_name("domaincheckpoint"));
    assert!(
        !root.children().any(|n| n.has_tag_name("parent")),
        "a parent is left"
    );
    let again = checkpoint_for_redefine(&redefinable).expect("redefinable again");
    assert_eq!(again, redefinable, "not a fixed point");
}

/// A restored disk `target`, the `i`-th: raw and qcow2 in turn, on a path
/// that needs escaping.
fn restored(i: usize, target: &str) -> RestoredDisk {
    let format = if i % 2 == 0 { "qcow2" } else { "raw" };
    RestoredDisk {
        target: target.to_string(),
        path: format!("/srv/restore/a&b'<\"{i}\">.{format}"),
        format: format.to_string(),
    }
}

/// Every `device='disk'` disk of the domain (each target once), as a
/// restore of the whole snapshot would pass them.
fn restore_own_disks(xml: &str) -> Vec<RestoredDisk> {
    let Ok(domain) = parse_domain(xml) else {
        return Vec::new();
    };
    let mut targets: Vec<&str> = Vec::new();
    for disk in domain.disks.iter().filter(|d| d.device == "disk") {
        if !targets.contains(&disk.target.as_str()) {
            targets.push(&disk.target);
        }
    }
    targets
        .iter()
        .enumerate()
        .map(|(i, t)| restored(i, t))
        .collect()
}

/// The rewrite's properties (see the module docs).
fn check_rewrite(xml: &str, disks: &[RestoredDisk], options: &DefineOptions<'_>, own: bool) {
    let defined = match rewrite_for_define(xml, disks, options) {
        Ok(defined) => defined,
        Err(err) => {
            match &err {
                Error::Internal { .. } => panic!("{err}"),
                Error::InvalidArgument { .. } if own => panic!("own disks refused: {err}"),
                _ => {}
            }
            return;
        }
    };
    let before = parse_domain(xml).expect("an accepted input reads");
    let after = parse_domain(&defined.xml).expect("the output reads");
    for disk in disks {
        let found = after
            .disks
            .iter()
            .find(|d| d.target == disk.target)
            .expect("a restored disk is in the output");
        assert_eq!(found.kind, "file");
        assert_eq!(found.source.as_deref(), Some(disk.path.as_str()));
        assert_eq!(found.format.as_deref(), Some(disk.format.as_str()));
    }
    match options.new_name {
        Some(name) => {
            assert_eq!(after.name, name);
            assert_eq!(after.uuid, None);
        }
        None => {
            assert_eq!(after.name, before.name);
            assert_eq!(after.uuid, before.uuid);
        }
    }
    let doc = Document::parse(&defined.xml).expect("the output parses");
    let passthrough = doc
        .root_element()
        .children()
        .filter(|c| c.tag_name().namespace() == Some(QEMU_NAMESPACE))
        .count();
    if options.keep_qemu_passthrough {
        assert!(defined.removed.is_empty());
    } else {
        assert_eq!(passthrough, 0, "pass-through left in the output");
    }
    for removed in &defined.removed {
        assert!(
            xml.contains(&removed.xml),
            "a removed element not in the input"
        );
        assert!(removed.xml.starts_with(&format!("<{}", removed.element)));
    }
    let again = rewrite_for_define(&defined.xml, disks, options).expect("the output rewrites");
    assert_eq!(again.xml, defined.xml, "not a fixed point");
    assert!(again.removed.is_empty());
}

/// What the editor is told to do with one element.
enum Choice {
    Keep,
    Remove,
    SetAttr,
    RemoveFirstAttr,
    InsertBefore,
}

/// The choice for the `i`-th element, from the seed.
fn choice(seed: u8, i: usize) -> Choice {
    let mix = usize::from(seed)
        .wrapping_mul(31)
        .wrapping_add(i.wrapping_mul(7))
        % 11;
    match mix {
        0 => Choice::Remove,
        1 => Choice::SetAttr,
        2 => Choice::RemoveFirstAttr,
        3 => Choice::InsertBefore,
        _ => Choice::Keep,
    }
}

/// The editor's properties (see the module docs).
fn check_editor(xml: &str, seed: u8) {
    let Ok(doc) = Document::parse(xml) else {
        return;
    };
    let root = doc.root_element();
    let mut edits = XmlEdits::new(xml);
    // Elements the edits remove, and elements they add.
    let (mut removed, mut inserted) = (0_usize, 0_usize);
    for (i, node) in doc.descendants().filter(Node::is_element).enumerate() {
        let top = node == root;
        let result = match choice(seed, i) {
            Choice::Keep => Ok(()),
            Choice::Remove if top => Ok(()),
            Choice::Remove => {
                removed += node.descendants().filter(Node::is_element).count();
                edits.remove_element(node)
            }
            Choice::SetAttr => edits.set_attr(node, "v", "<&'\"\u{e9}>"),
            Choice::RemoveFirstAttr => match node.attributes().find(|a| a.namespace().is_none()) {
                Some(a) => edits.remove_attr(node, a.name()),
                None => Ok(()),
            },
            Choice::InsertBefore if top => Ok(()),
            Choice::InsertBefore => {
                inserted += 1;
                let indent = edits.indent_before(node);
                edits.insert_before(node, format!("<new/>{indent}"))
            }
        };
        result.expect("edits through the document's own nodes are accepted");
    }
    let mut sorted = edits.edits().to_vec();
    sorted.sort_by_key(|e| (e.range.start, e.range.end));
    let overlap = sorted
        .windows(2)
        .any(|w| matches!(w, [a, b] if b.range.start < a.range.end));
    let out = match edits.apply() {
        Ok(out) => out,
        Err(Error::Internal { what }) if overlap && what.contains("overlapping") => return,
        Err(err) => panic!(
            "apply refused {} edits (overlap: {overlap}): {err}",
            sorted.len()
        ),
    };
    assert!(!overlap, "overlapping edits were applied");
    let mut expected = String::new();
    let mut pos = 0;
    for edit in &sorted {
        expected.push_str(&xml[pos..edit.range.start]);
        expected.push_str(&edit.text);
        pos = edit.range.end;
    }
    expected.push_str(&xml[pos..]);
    assert_eq!(out, expected, "text outside the edits changed");
    let again = Document::parse(&out).expect("edits keep the document well-formed");
    let elements = again.descendants().filter(Node::is_element).count();
    let before = doc.descendants().filter(Node::is_element).count();
    assert_eq!(elements + removed, before + inserted);
}
