//! Parsing a domain XML with roxmltree, in time linear in its size.
//!
//! roxmltree checks each attribute against the element's earlier ones, and
//! copies the namespaces in scope into every element that declares one:
//! an element with 40,000 attributes takes seconds, and 2,000 nested
//! namespace declarations in 45 KiB take minutes (measured with roxmltree
//! 0.21). libvirt writes a handful of either (its widest elements, such as
//! a disk's `<driver>`, have about 20 attributes; a domain declares one
//! namespace per application in `<metadata>`, and `qemu:`). So a linear
//! scan of the raw text refuses more than [`MAX_ATTRIBUTES`] attributes on
//! one element (namespace declarations aside), or more than
//! [`MAX_NAMESPACES`] namespace declarations in the document, before
//! roxmltree sees it. Duplicate checks then cost at most
//! (64 + 64)² comparisons per element, and namespace scopes 64 entries. A DTD is refused by roxmltree
//! itself (its default), which also rules out entity expansion.

use roxmltree::Document;

use crate::error::{Error, Result};

/// The most attributes one element may have, namespace declarations not
/// counted: three times the most libvirt writes. (roxmltree's
/// `Node::attributes` lists the same ones.)
pub const MAX_ATTRIBUTES: usize = 64;

/// The most namespace declarations (`xmlns`, `xmlns:p`) a document may
/// have.
pub const MAX_NAMESPACES: usize = 64;

/// Parses `xml`, refusing what would take roxmltree too long; `context`
/// says what is parsed, for messages.
pub(crate) fn parse<'x>(xml: &'x str, context: &str) -> Result<Document<'x>> {
    check_widths(xml).map_err(|(offset, what)| {
        Error::unsupported(format!(
            "{context}: {what} (line {}); libvirt writes far fewer, so the XML is damaged or \
             not libvirt's",
            line_at(xml, offset)
        ))
    })?;
    Document::parse(xml).map_err(|e| Error::from_parse(context, &e))
}

/// Counts attributes per start tag and namespace declarations in the whole
/// text; on too many, the byte offset of the tag and what is too many.
/// Comments, CDATA sections, processing instructions and declarations are
/// skipped; malformed text is left for the parser to refuse.
fn check_widths(xml: &str) -> Result<(), (usize, String)> {
    let mut rest = xml;
    let mut namespaces = 0_usize;
    while let Some(lt) = rest.find('<') {
        let offset = xml.len().saturating_sub(rest.len()).saturating_add(lt);
        // '<' is one byte: the next character starts right after it.
        let after = rest.get(lt.saturating_add(1)..).unwrap_or("");
        rest = if let Some(comment) = after.strip_prefix("!--") {
            skip_past(comment, "-->")
        } else if let Some(cdata) = after.strip_prefix("![CDATA[") {
            skip_past(cdata, "]]>")
        } else if let Some(pi) = after.strip_prefix('?') {
            skip_past(pi, "?>")
        } else if after.starts_with('!') || after.starts_with('/') {
            skip_past(after, ">")
        } else {
            let tag = scan_tag(after);
            if tag.attributes > MAX_ATTRIBUTES {
                return Err((
                    offset,
                    format!("an element has more than {MAX_ATTRIBUTES} attributes"),
                ));
            }
            namespaces = namespaces.saturating_add(tag.namespaces);
            if namespaces > MAX_NAMESPACES {
                return Err((
                    offset,
                    format!("more than {MAX_NAMESPACES} XML namespace declarations"),
                ));
            }
            tag.rest
        };
    }
    Ok(())
}

/// What [`scan_tag`] found in one start tag.
struct Tag<'x> {
    /// Attributes other than namespace declarations.
    attributes: usize,
    /// Namespace declarations.
    namespaces: usize,
    /// The text after the tag.
    rest: &'x str,
}

/// Scans a start tag from just after its `<` to its `>` (outside quoted
/// values), counting `=` signs by the names before them.
fn scan_tag(text: &str) -> Tag<'_> {
    let mut tag = Tag {
        attributes: 0,
        namespaces: 0,
        rest: "",
    };
    let mut quote = None;
    // The name being read, and the last one read (for `name = 'value'`).
    let (mut token_start, mut last_token) = (0, "");
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                token_start = i.saturating_add(1);
            }
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '>') => {
                tag.rest = text.get(i.saturating_add(1)..).unwrap_or("");
                return tag;
            }
            // Malformed (a '<' inside a tag): the parser will say so.
            (None, '<') => {
                tag.rest = text.get(i..).unwrap_or("");
                return tag;
            }
            (None, '=') => {
                let token = text.get(token_start..i).unwrap_or("");
                let name = if token.is_empty() { last_token } else { token };
                if name == "xmlns" || name.starts_with("xmlns:") {
                    tag.namespaces = tag.namespaces.saturating_add(1);
                } else {
                    tag.attributes = tag.attributes.saturating_add(1);
                }
                token_start = i.saturating_add(1);
            }
            (None, ' ' | '\t' | '\r' | '\n') => {
                let token = text.get(token_start..i).unwrap_or("");
                if !token.is_empty() {
                    last_token = token;
                }
                token_start = i.saturating_add(1);
            }
            (None, _) => {}
        }
    }
    tag
}

/// The text after the first `end` in `text`; empty if there is none.
fn skip_past<'x>(text: &'x str, end: &str) -> &'x str {
    text.find(end)
        .and_then(|i| text.get(i.saturating_add(end.len())..))
        .unwrap_or("")
}

/// The 1-based line of a byte offset, for messages.
fn line_at(xml: &str, offset: usize) -> usize {
    let before = xml.get(..offset).unwrap_or(xml);
    before.matches('\n').count().saturating_add(1)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// An element with `n` attributes `a0=''`, …
    fn wide(n: usize) -> String {
        let attrs: String = (0..n).map(|i| format!(" a{i}=''")).collect();
        format!("<domain>\n<name{attrs}>x</name></domain>")
    }

    #[test]
    fn attributes_up_to_the_cap_parse() {
        let xml = wide(MAX_ATTRIBUTES);
        let doc = parse(&xml, "test").expect("at the cap");
        assert_eq!(
            doc.descendants().map(|n| n.attributes().len()).max(),
            Some(MAX_ATTRIBUTES)
        );
        let err = parse(&wide(MAX_ATTRIBUTES + 1), "test").expect_err("over the cap");
        assert_eq!(
            err,
            Error::Unsupported {
                what: format!(
                    "test: an element has more than {MAX_ATTRIBUTES} attributes (line 2); libvirt \
                     writes far fewer, so the XML is damaged or not libvirt's"
                )
            }
        );
    }

    #[test]
    fn quoted_and_commented_signs_are_not_attributes() {
        let eq = "=".repeat(MAX_ATTRIBUTES * 2);
        let xml = format!(
            "<?xml version='1.0'?><!-- <a {eq}> --><domain a='{eq}>' b = \"{eq}\"><![CDATA[<x {eq}>]]>{eq}</domain>"
        );
        let doc = parse(&xml, "test").expect("few attributes");
        assert_eq!(doc.root_element().attributes().len(), 2);
    }

    #[test]
    fn namespace_declarations_are_capped_in_the_whole_document() {
        let nested = |n: usize| {
            let open: String = (0..n)
                .map(|i| format!("<a xmlns:n{i} = 'urn:{i}'>"))
                .collect();
            format!("<domain>{open}{}</domain>", "</a>".repeat(n))
        };
        parse(&nested(MAX_NAMESPACES), "test").expect("at the cap");
        let err = parse(&nested(MAX_NAMESPACES + 1), "test").expect_err("over the cap");
        assert!(
            matches!(&err, Error::Unsupported { what } if what.contains("namespace declarations")),
            "{err:?}"
        );
        let default = format!(
            "<domain>{}</domain>",
            "<a xmlns='urn:x'/>".repeat(MAX_NAMESPACES + 1)
        );
        assert!(parse(&default, "test").is_err());
    }

    /// What took roxmltree minutes is refused at once.
    #[test]
    fn nested_namespaces_are_refused_quickly() {
        let open: String = (0..100_000)
            .map(|i| format!("<a xmlns:n{i}='u'>"))
            .collect();
        let xml = format!("<domain>{open}</domain>");
        let started = Instant::now();
        assert!(matches!(
            parse(&xml, "test"),
            Err(Error::Unsupported { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
