//! `vmstash snapshots`: the list of snapshots, oldest first.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use vmstash_repo::snapshot::Manifest;
use vmstash_repo::Id;

use crate::args::{Global, SnapshotsArgs};
use crate::output::{human, line, print_json};
use crate::{exit, repo};

/// A snapshot's time as the list shows it: to the second, UTC, marked `Z` — the name of the
/// snapshot's directory in the mount (`vms/<vm>/2026-11-26T21:30:05Z`).
fn list_time(time: &str) -> String {
    match humantime::parse_rfc3339_weak(time) {
        Ok(t) => humantime::format_rfc3339_seconds(t).to_string(),
        Err(_) => time.to_string(),
    }
}

/// A snapshot as `--json` shows it.
fn snapshot_json(id: &Id, m: &Manifest) -> serde_json::Value {
    json!({
        "id": id.to_hex(), "short_id": id.short(), "time": m.time, "hostname": m.hostname,
        "username": m.username, "name": m.name, "tags": m.tags, "parent": m.parent,
        "disks": m.disks.iter().map(|d| json!({"name": d.name, "size": d.size, "format": d.format, "source": d.source})).collect::<Vec<_>>(),
        "summary": m.summary,
    })
}

/// Runs `vmstash snapshots`.
pub fn run(g: &Global, a: &SnapshotsArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let all: Vec<_> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, m)| a.name.as_ref().is_none_or(|n| *n == m.name))
        .collect();
    if g.json {
        print_json(&serde_json::Value::Array(
            all.iter().map(|(id, m)| snapshot_json(id, m)).collect(),
        ));
        return Ok(exit::ok());
    }
    line(format_args!(
        "{:<8}  {:<20}  {:<12}  {:<16}  {:>10}  disks / tags",
        "ID", "Time (UTC)", "Host", "Name", "Size"
    ));
    line(format_args!("{}", "-".repeat(90)));
    for (id, m) in &all {
        let disks: Vec<_> = m.disks.iter().map(|d| d.name.as_str()).collect();
        line(format_args!(
            "{:<8}  {:<20}  {:<12}  {:<16}  {:>10}  {}{}",
            id.short(),
            list_time(&m.time),
            m.hostname,
            m.name,
            human(m.summary.disk_bytes),
            disks.join(","),
            if m.tags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", m.tags.join(","))
            }
        ));
    }
    line(format_args!("{} snapshots", all.len()));
    Ok(exit::ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_listed_to_the_second_in_utc_with_the_zone() {
        assert_eq!(
            list_time("2026-11-26T21:30:05.123456Z"),
            "2026-11-26T21:30:05Z"
        );
        assert_eq!(list_time("not a time"), "not a time");
    }
}
