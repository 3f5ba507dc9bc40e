//! LVM's configuration syntax, as metadata text uses it (`lib/config/config.c`): `key = value`
//! and `name { … }` sections; values are integers, floating-point numbers (kept as their
//! text), double-quoted strings (`\"` and `\\` escapes) and `[ … ]` lists of them; `#` starts
//! a comment to the end of the line.

use super::LvmError;

/// The deepest nesting of sections and lists accepted (a volume group needs 5).
pub const MAX_DEPTH: usize = 32;

/// A value of the syntax.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A string, or a floating-point number as written.
    Str(String),
    /// A list.
    List(Vec<Value>),
    /// A section: its items in order.
    Section(Vec<(String, Value)>),
}

impl Value {
    /// The item `key` of a section.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items of a section (empty for anything else).
    pub fn items(&self) -> &[(String, Value)] {
        match self {
            Value::Section(items) => items,
            _ => &[],
        }
    }
}

/// Parses a whole text: the top-level items.
pub fn parse(text: &[u8]) -> Result<Value, LvmError> {
    let mut p = Parser { text, at: 0 };
    let items = p.items(0)?;
    p.skip_blank();
    if p.at < text.len() {
        return Err(p.error("a '}' without a section to end"));
    }
    Ok(Value::Section(items))
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> LvmError {
        let line = self.text[..self.at.min(self.text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        LvmError::Corrupt(format!("metadata text, line {line}: {what}"))
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    /// Skips white space and comments.
    fn skip_blank(&mut self) {
        while let Some(b) = self.peek() {
            if b == b'#' {
                while self.peek().is_some_and(|b| b != b'\n') {
                    self.at += 1;
                }
            } else if b.is_ascii_whitespace() {
                self.at += 1;
            } else {
                break;
            }
        }
    }

    /// Items up to a `}` (not consumed) or the end.
    fn items(&mut self, depth: usize) -> Result<Vec<(String, Value)>, LvmError> {
        if depth > MAX_DEPTH {
            return Err(self.error("sections nested too deep"));
        }
        let mut items = Vec::new();
        loop {
            self.skip_blank();
            match self.peek() {
                None | Some(b'}') => return Ok(items),
                Some(_) => {}
            }
            let key = self.word().ok_or_else(|| self.error("expected a name"))?;
            self.skip_blank();
            match self.peek() {
                Some(b'=') => {
                    self.at += 1;
                    let value = self.value(depth)?;
                    items.push((key, value));
                }
                Some(b'{') => {
                    self.at += 1;
                    let inner = self.items(depth + 1)?;
                    self.skip_blank();
                    if self.peek() != Some(b'}') {
                        return Err(self.error("a section that does not end"));
                    }
                    self.at += 1;
                    items.push((key, Value::Section(inner)));
                }
                _ => return Err(self.error("expected '=' or '{' after a name")),
            }
        }
    }

    /// A name or number: letters, digits and `_.+-`.
    fn word(&mut self) -> Option<String> {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b))
        {
            self.at += 1;
        }
        (self.at > start).then(|| String::from_utf8_lossy(&self.text[start..self.at]).into_owned())
    }

    fn value(&mut self, depth: usize) -> Result<Value, LvmError> {
        self.skip_blank();
        match self.peek() {
            Some(b'"') => self.string().map(Value::Str),
            Some(b'[') => {
                if depth >= MAX_DEPTH {
                    return Err(self.error("lists nested too deep"));
                }
                self.at += 1;
                let mut list = Vec::new();
                self.skip_blank();
                if self.peek() == Some(b']') {
                    self.at += 1;
                    return Ok(Value::List(list));
                }
                loop {
                    list.push(self.value(depth + 1)?);
                    self.skip_blank();
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Value::List(list));
                        }
                        None => return Err(self.error("a list that does not end")),
                        Some(_) => return Err(self.error("expected ',' or ']' in a list")),
                    }
                }
            }
            Some(b) if b == b'-' || b.is_ascii_digit() => {
                let word = self.word().ok_or_else(|| self.error("expected a number"))?;
                Ok(word.parse().map_or(Value::Str(word), Value::Int))
            }
            _ => Err(self.error("expected a value")),
        }
    }

    /// A double-quoted string with `\` escapes.
    fn string(&mut self) -> Result<String, LvmError> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.error("a string that does not end")),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(b'\\') => {
                    self.at += 1;
                    let escaped = self
                        .peek()
                        .ok_or_else(|| self.error("a string that does not end"))?;
                    out.push(escaped);
                    self.at += 1;
                }
                Some(b) => {
                    out.push(b);
                    self.at += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_lists_strings_and_comments() {
        let text = br#"vg0 {
    id = "abc-def"	# a comment
    seqno = 7
    status = ["READ", "WRITE"]
    flags = []
    ratio = 1.5
    pvs {
        pv0 { pe_start = 2048 stripes = [ "pv0", 0, "pv1", -3 ] }
    }
}
contents = "Text \"Format\""
"#;
        let top = parse(text).expect("parse");
        let vg = top.get("vg0").expect("vg0");
        assert_eq!(vg.get("id").and_then(Value::str), Some("abc-def"));
        assert_eq!(vg.get("seqno").and_then(Value::int), Some(7));
        assert_eq!(
            vg.get("status"),
            Some(&Value::List(vec![
                Value::Str("READ".into()),
                Value::Str("WRITE".into())
            ]))
        );
        assert_eq!(vg.get("flags"), Some(&Value::List(vec![])));
        assert_eq!(vg.get("ratio"), Some(&Value::Str("1.5".into())));
        let pv0 = vg.get("pvs").and_then(|p| p.get("pv0")).expect("pv0");
        assert_eq!(
            pv0.get("stripes"),
            Some(&Value::List(vec![
                Value::Str("pv0".into()),
                Value::Int(0),
                Value::Str("pv1".into()),
                Value::Int(-3)
            ]))
        );
        assert_eq!(
            top.get("contents").and_then(Value::str),
            Some("Text \"Format\"")
        );
    }

    #[test]
    fn refuses_what_is_not_the_syntax() {
        for bad in [
            &b"a {"[..],
            b"a = ",
            b"a = [1, 2",
            b"a = [1 2]",
            b"a = [,1]",
            b"a = \"open",
            b"}",
            b"= 3",
            b"a b",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = "a { ".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).is_err());
        let deep_list = format!("a = {}", "[".repeat(MAX_DEPTH + 2));
        assert!(parse(deep_list.as_bytes()).is_err());
    }
}
