//! Edits to an XML text that keep everything else byte for byte.
//!
//! roxmltree only reads. To change a document without reformatting it, an
//! [`XmlEdits`] collects changes to spans of the original text ("remove
//! this element", "set this attribute", "insert this text before that
//! element"), each found through a node of the parsed tree, and
//! [`XmlEdits::apply`] splices them into the text in one pass. What no edit
//! touches (comments, formatting, attribute order and quotes, CDATA,
//! entity references) comes out as it went in.
//!
//! A removed element or attribute takes the whitespace before it along, so
//! the indentation stays tidy. Text put in through [`escape`] cannot break
//! the markup, so a well-formed document stays well-formed.
//!
//! This module knows XML, not libvirt: what to change is
//! [`crate::define`]'s business.

use std::ops::Range;

use roxmltree::{Attribute, Node};

use crate::error::{Error, Result};

/// One change to the original text: `range` is replaced by `text` (an empty
/// range inserts, an empty text removes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The bytes of the original text that are replaced.
    pub range: Range<usize>,
    /// What replaces them.
    pub text: String,
}

/// The edits to one text, made through nodes of a document parsed from it.
#[derive(Debug)]
pub struct XmlEdits<'s> {
    src: &'s str,
    edits: Vec<Edit>,
}

impl<'s> XmlEdits<'s> {
    /// No edits yet to `src`; every node passed in later must come from a
    /// document parsed from this very string.
    pub fn new(src: &'s str) -> Self {
        XmlEdits {
            src,
            edits: Vec::new(),
        }
    }

    /// The edits made so far, in the order they were made.
    pub fn edits(&self) -> &[Edit] {
        &self.edits
    }

    /// Removes an element with its subtree and the whitespace before it.
    pub fn remove_element(&mut self, node: Node<'_, '_>) -> Result<()> {
        let range = self.node_range(node)?;
        let start = whitespace_start(self.src, range.start);
        self.push(start..range.end, String::new());
        Ok(())
    }

    /// Replaces an element with its subtree by `text`, which the caller has
    /// made well-formed (with [`escape`]).
    pub fn replace_element(&mut self, node: Node<'_, '_>, text: String) -> Result<()> {
        let range = self.node_range(node)?;
        self.push(range, text);
        Ok(())
    }

    /// Inserts `text` just before an element (after the whitespace that
    /// precedes it).
    pub fn insert_before(&mut self, node: Node<'_, '_>, text: String) -> Result<()> {
        let start = self.node_range(node)?.start;
        self.push(start..start, text);
        Ok(())
    }

    /// Removes an attribute (in no namespace), if present, with the
    /// whitespace before it.
    pub fn remove_attr(&mut self, node: Node<'_, '_>, name: &str) -> Result<()> {
        if let Some(attr) = find_attr(node, name) {
            let range = self.attr_range(node, &attr)?;
            let start = whitespace_start(self.src, range.start);
            self.push(start..range.end, String::new());
        }
        Ok(())
    }

    /// Sets an attribute (in no namespace): replaced where it is (unless it
    /// already has this value), or added after the last attribute.
    pub fn set_attr(&mut self, node: Node<'_, '_>, name: &str, value: &str) -> Result<()> {
        let text = format!("{name}='{}'", escape(value));
        if let Some(attr) = find_attr(node, name) {
            if attr.value() != value {
                let range = self.attr_range(node, &attr)?;
                self.push(range, text);
            }
            return Ok(());
        }
        let at = match node.attributes().next_back() {
            Some(last) => self.attr_range(node, &last)?.end,
            None => self.tag_name_end(node)?,
        };
        self.push(at..at, format!(" {text}"));
        Ok(())
    }

    /// The whitespace between an element and whatever precedes it: the
    /// indentation an element inserted before it should get.
    pub fn indent_before(&self, node: Node<'_, '_>) -> &'s str {
        let end = node.range().start;
        let start = whitespace_start(self.src, end);
        self.src.get(start..end).unwrap_or("")
    }

    /// The element's name as written in its start tag, with its prefix
    /// (`qemu:commandline`).
    pub fn qualified_name(&self, node: Node<'_, '_>) -> Result<&'s str> {
        let start = self.node_range(node)?.start;
        let end = self.tag_name_end(node)?;
        // Past the '<', which `tag_name_end` checked is there.
        self.src
            .get(start.saturating_add(1)..end)
            .ok_or_else(|| Error::internal(format!("no element name at byte {start}")))
    }

    /// The original text of an element with its subtree.
    pub fn element_text(&self, node: Node<'_, '_>) -> Result<&'s str> {
        let range = self.node_range(node)?;
        self.src
            .get(range)
            .ok_or_else(|| Error::internal("an element outside the text"))
    }

    /// Applies the edits: the original text with each edited range replaced.
    /// Overlapping edits are refused, never spliced into a mangled text.
    pub fn apply(mut self) -> Result<String> {
        // Stable: insertions at one position stay in the order they were made.
        self.edits
            .sort_by_key(|edit| (edit.range.start, edit.range.end));
        let capacity = self.edits.iter().map(|e| e.text.len()).sum::<usize>();
        let mut out = String::with_capacity(self.src.len().saturating_add(capacity));
        let mut pos = 0;
        for edit in &self.edits {
            // `get` is None when this edit starts before the last one ended.
            let kept = self.src.get(pos..edit.range.start).ok_or_else(|| {
                Error::internal(format!(
                    "overlapping edits at byte {} of the XML (the previous one ends at byte {pos})",
                    edit.range.start
                ))
            })?;
            out.push_str(kept);
            out.push_str(&edit.text);
            pos = edit.range.end;
        }
        let rest = self
            .src
            .get(pos..)
            .ok_or_else(|| Error::internal(format!("an edit ends past the text, at byte {pos}")))?;
        out.push_str(rest);
        Ok(out)
    }

    /// Records one edit.
    fn push(&mut self, range: Range<usize>, text: String) {
        self.edits.push(Edit { range, text });
    }

    /// The position just after an element's `<name`.
    fn tag_name_end(&self, node: Node<'_, '_>) -> Result<usize> {
        let start = self.node_range(node)?.start;
        let tag = self
            .src
            .get(start..)
            .filter(|rest| rest.starts_with('<'))
            .ok_or_else(|| Error::internal(format!("no start tag at byte {start}")))?;
        let len = tag
            .find(|c: char| is_xml_space(c) || c == '/' || c == '>')
            .ok_or_else(|| Error::internal(format!("unterminated start tag at byte {start}")))?;
        start
            .checked_add(len)
            .ok_or_else(|| Error::internal("start tag position overflows"))
    }

    /// The range of an element, checked to be one of this text's.
    fn node_range(&self, node: Node<'_, '_>) -> Result<Range<usize>> {
        if !node.is_element() {
            return Err(Error::internal("an edit on a node that is not an element"));
        }
        self.checked(node, node.range())
    }

    /// The range of one of an element's attributes.
    fn attr_range(&self, node: Node<'_, '_>, attr: &Attribute<'_, '_>) -> Result<Range<usize>> {
        self.checked(node, attr.range())
    }

    /// A range roxmltree reported for `node`'s document, checked to be a
    /// range of this text (the document was parsed from it, and the range
    /// lies on character boundaries).
    fn checked(&self, node: Node<'_, '_>, range: Range<usize>) -> Result<Range<usize>> {
        if !std::ptr::eq(node.document().input_text(), self.src) {
            return Err(Error::internal(
                "an edit through a node of another document",
            ));
        }
        match self.src.get(range.clone()) {
            Some(_) => Ok(range),
            None => Err(Error::internal(format!(
                "position {range:?} is outside the XML"
            ))),
        }
    }
}

/// An attribute in no namespace.
fn find_attr<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Attribute<'a, 'i>> {
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
pub fn escape(text: &str) -> String {
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
    use roxmltree::Document;

    use super::*;

    const XML: &str =
        "<a x='1'>\n  <!-- kept -->\n  <b  y=\"2\"\tz='3'/>\n  <c>text &amp; more</c>\n</a>";

    fn element<'a, 'i>(doc: &'a Document<'i>, name: &str) -> Node<'a, 'i> {
        doc.descendants()
            .find(|n| n.has_tag_name(name))
            .expect("element")
    }

    #[test]
    fn untouched_text_is_kept_byte_for_byte() {
        let doc = Document::parse(XML).expect("parse");
        let edits = XmlEdits::new(XML);
        assert_eq!(edits.apply().expect("apply"), XML);
        let mut edits = XmlEdits::new(XML);
        edits.remove_element(element(&doc, "c")).expect("remove");
        edits
            .set_attr(element(&doc, "b"), "y", "2")
            .expect("same value");
        assert_eq!(edits.edits().len(), 1);
        assert_eq!(
            edits.apply().expect("apply"),
            "<a x='1'>\n  <!-- kept -->\n  <b  y=\"2\"\tz='3'/>\n</a>"
        );
    }

    #[test]
    fn attributes_are_replaced_removed_and_added() {
        let doc = Document::parse(XML).expect("parse");
        let mut edits = XmlEdits::new(XML);
        let b = element(&doc, "b");
        edits.remove_attr(b, "z").expect("remove");
        edits.set_attr(b, "y", "<'\">&").expect("replace");
        edits.set_attr(b, "w", "new").expect("add");
        edits
            .set_attr(element(&doc, "c"), "v", "")
            .expect("add first");
        edits.remove_attr(b, "absent").expect("nothing to remove");
        let out = edits.apply().expect("apply");
        assert_eq!(
            out,
            "<a x='1'>\n  <!-- kept -->\n  <b  y='&lt;&apos;&quot;&gt;&amp;' w='new'/>\n  <c v=''>text &amp; more</c>\n</a>"
        );
        let again = Document::parse(&out).expect("still well-formed");
        assert_eq!(element(&again, "b").attribute("y"), Some("<'\">&"));
    }

    #[test]
    fn insertions_take_the_indentation_and_keep_their_order() {
        let doc = Document::parse(XML).expect("parse");
        let mut edits = XmlEdits::new(XML);
        let c = element(&doc, "c");
        let indent = edits.indent_before(c);
        assert_eq!(indent, "\n  ");
        edits
            .insert_before(c, format!("<first/>{indent}"))
            .expect("insert");
        edits
            .insert_before(c, format!("<second/>{indent}"))
            .expect("insert");
        edits
            .replace_element(c, "<c>new</c>".to_string())
            .expect("replace");
        assert_eq!(
            edits.apply().expect("apply"),
            "<a x='1'>\n  <!-- kept -->\n  <b  y=\"2\"\tz='3'/>\n  <first/>\n  <second/>\n  <c>new</c>\n</a>"
        );
    }

    #[test]
    fn names_and_text_are_read_as_written() {
        let xml = "<r xmlns:q='urn:q'><q:cmd  a='1'><q:arg/></q:cmd><e/></r>";
        let doc = Document::parse(xml).expect("parse");
        let edits = XmlEdits::new(xml);
        let cmd = element(&doc, "cmd");
        assert_eq!(edits.qualified_name(cmd), Ok("q:cmd"));
        assert_eq!(edits.qualified_name(element(&doc, "e")), Ok("e"));
        assert_eq!(
            edits.element_text(cmd),
            Ok("<q:cmd  a='1'><q:arg/></q:cmd>")
        );
    }

    #[test]
    fn overlapping_edits_are_refused() {
        let doc = Document::parse(XML).expect("parse");
        let mut edits = XmlEdits::new(XML);
        let b = element(&doc, "b");
        edits.remove_element(b).expect("remove");
        edits.set_attr(b, "y", "9").expect("replace");
        let err = edits.apply().expect_err("overlap");
        assert!(matches!(&err, Error::Internal { what } if what.contains("overlapping edits")));
    }

    #[test]
    fn nodes_of_another_document_are_refused() {
        let copy = XML.to_string();
        let doc = Document::parse(&copy).expect("parse");
        let mut edits = XmlEdits::new(XML);
        let err = edits
            .remove_element(element(&doc, "b"))
            .expect_err("another text");
        assert!(matches!(&err, Error::Internal { what } if what.contains("another document")));
        let root = doc.root();
        assert!(matches!(
            XmlEdits::new(&copy).remove_element(root),
            Err(Error::Internal { .. })
        ));
    }
}
