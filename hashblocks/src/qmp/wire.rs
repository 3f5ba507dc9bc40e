//! One QMP message off the stream (QEMU's `docs/interop/qmp-spec.rst`): each is a JSON object
//! on a line of its own (QEMU ends lines with CR LF). The decoder is pure and bounded: a line
//! longer than [`MAX_MESSAGE`] is an error before it is all read, and JSON nesting is limited by
//! `serde_json` (128 levels).

use std::io::{BufRead, Read};

use serde_json::Value;

use super::QmpError;

/// The longest message read: `query-named-block-nodes` of a VM with dozens of disks and deep
/// backing chains stays well under a mebibyte; 16 MiB leaves room and bounds memory.
pub const MAX_MESSAGE: usize = 16 << 20;

/// A message QEMU sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The greeting (`{"QMP": {"version": …, "capabilities": […]}}`), first on every connection.
    Greeting {
        /// `major.minor.micro`, or `?` when QEMU did not say.
        version: String,
    },
    /// A command's success (`{"return": …}`).
    Return(Value),
    /// A command's failure (`{"error": {"class": …, "desc": …}}`).
    Error {
        /// The error class (`GenericError`, `DeviceNotFound`, …).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// An asynchronous event (`{"event": NAME, "data": …, "timestamp": …}`).
    Event {
        /// The event's name (`JOB_STATUS_CHANGE`, …).
        name: String,
    },
}

/// Reads the next message; [`QmpError::Closed`] when the stream ends before one starts.
pub fn read_message(input: &mut impl BufRead) -> Result<Message, QmpError> {
    let mut line = Vec::new();
    let limit = u64::try_from(MAX_MESSAGE).unwrap_or(u64::MAX) + 1;
    input
        .take(limit)
        .read_until(b'\n', &mut line)
        .map_err(|source| QmpError::Io {
            action: "reading a message".to_owned(),
            source,
        })?;
    if line.is_empty() {
        return Err(QmpError::Closed);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_MESSAGE {
            QmpError::Protocol(format!("a message longer than {MAX_MESSAGE} bytes"))
        } else {
            QmpError::Closed
        });
    }
    decode(&line)
}

/// Classifies one line (without or with its line ending).
pub fn decode(line: &[u8]) -> Result<Message, QmpError> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| QmpError::Protocol(format!("a message that is not JSON ({e})")))?;
    let Value::Object(object) = value else {
        return Err(QmpError::Protocol(
            "a message that is not a JSON object".to_owned(),
        ));
    };
    if let Some(greeting) = object.get("QMP") {
        return Ok(Message::Greeting {
            version: version_of(greeting),
        });
    }
    if let Some(value) = object.get("return") {
        return Ok(Message::Return(value.clone()));
    }
    if let Some(error) = object.get("error") {
        let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_owned);
        return match (text("class"), text("desc")) {
            (Some(class), Some(desc)) => Ok(Message::Error { class, desc }),
            _ => Err(QmpError::Protocol(
                "an error without a class and a description".to_owned(),
            )),
        };
    }
    if let Some(name) = object.get("event") {
        let name = name
            .as_str()
            .ok_or_else(|| QmpError::Protocol("an event whose name is not a string".to_owned()))?;
        return Ok(Message::Event {
            name: name.to_owned(),
        });
    }
    Err(QmpError::Protocol(
        "a message that is neither a greeting, a reply nor an event".to_owned(),
    ))
}

/// `major.minor.micro` of a greeting's `version.qemu`.
fn version_of(greeting: &Value) -> String {
    let qemu = &greeting["version"]["qemu"];
    match (
        qemu["major"].as_u64(),
        qemu["minor"].as_u64(),
        qemu["micro"].as_u64(),
    ) {
        (Some(major), Some(minor), Some(micro)) => format!("{major}.{minor}.{micro}"),
        _ => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_what_qemu_sends() {
        let greeting = br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;
        assert_eq!(
            decode(greeting).expect("greeting"),
            Message::Greeting {
                version: "7.2.22".into()
            }
        );
        assert_eq!(
            decode(b"{\"return\": {}}\r\n").expect("return"),
            Message::Return(serde_json::json!({}))
        );
        assert_eq!(
            decode(br#"{"error": {"class": "GenericError", "desc": "no such node"}}"#)
                .expect("error"),
            Message::Error {
                class: "GenericError".into(),
                desc: "no such node".into()
            }
        );
        assert_eq!(
            decode(br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#)
                .expect("event"),
            Message::Event {
                name: "STOP".into()
            }
        );
    }

    #[test]
    fn refuses_what_is_not_qmp() {
        for bad in [
            &b"not json\n"[..],
            b"[1, 2]\n",
            b"{}\n",
            b"{\"error\": {\"class\": 1}}\n",
            b"{\"event\": 5}\n",
        ] {
            assert!(
                matches!(decode(bad), Err(QmpError::Protocol(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_stream_that_ends_is_closed_and_a_huge_line_is_refused() {
        assert!(matches!(read_message(&mut &b""[..]), Err(QmpError::Closed)));
        assert!(matches!(
            read_message(&mut &b"{\"return\": {}"[..]),
            Err(QmpError::Closed)
        ));
        let huge = vec![b' '; MAX_MESSAGE + 10];
        assert!(matches!(
            read_message(&mut huge.as_slice()),
            Err(QmpError::Protocol(_))
        ));
    }
}
