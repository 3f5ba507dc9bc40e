//! What the user reads: result lines and JSON on stdout, sizes in human units, and errors as one
//! line each.
//!
//! Results go through [`line`] and [`print_json`], which end the command quietly when stdout is
//! closed (`vmstash snapshots | head -3`), like other Unix tools killed by SIGPIPE, instead of
//! panicking as `println!` does.

use std::fmt::Display;
use std::io::{ErrorKind, Write};

/// Exit status of a command whose stdout was closed under it: 128 + SIGPIPE, what a shell
/// reports for a Unix tool that stopped writing into a closed pipe.
pub const CLOSED_STDOUT: i32 = 141;

/// Prints one line of results on stdout.
pub fn line(text: impl Display) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(CLOSED_STDOUT);
        }
        eprintln!("vmstash: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Prints `v` as one line of JSON.
pub fn print_json(v: &serde_json::Value) {
    line(v);
}

/// Bytes in binary units ("1.50 GiB").
pub fn human(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

/// An error and its causes as one line, each cause once: a cause whose text its parent already
/// shows (an OS error quoted in the message that wraps it) is not repeated.
pub fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// A snapshot's time as lists show it: to the second, UTC, marked `Z` — the name of the
/// snapshot's directory in the mount (`vms/<vm>/2026-11-26T21:30:05Z`).
pub fn snapshot_time(time: &str) -> String {
    match humantime::parse_rfc3339_weak(time) {
        Ok(t) => humantime::format_rfc3339_seconds(t).to_string(),
        Err(_) => time.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_quoted_by_its_wrapper_is_shown_once() {
        let os = std::io::Error::from_raw_os_error(2);
        let err = anyhow::Error::new(vmstash_repo::Error::io("/r/config", os))
            .context("opening repository /r");
        let text = describe(&err);
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
        assert!(text.starts_with("opening repository /r: "), "{text}");
    }

    #[test]
    fn times_are_listed_to_the_second_in_utc_with_the_zone() {
        assert_eq!(
            snapshot_time("2026-11-26T21:30:05.123456Z"),
            "2026-11-26T21:30:05Z"
        );
        assert_eq!(snapshot_time("not a time"), "not a time");
    }
}
