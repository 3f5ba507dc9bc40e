//! `vmstash snapshots`: the list of snapshots, oldest first.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use vmstash_repo::selection;
use vmstash_repo::snapshot::Manifest;
use vmstash_repo::Id;

use crate::args::{Global, SnapshotsArgs};
use crate::output::{human, line, print_json, snapshot_time};
use crate::{exit, repo};

/// A snapshot as `--json` shows it (and the daemon's API).
pub fn snapshot_json(id: &Id, m: &Manifest) -> serde_json::Value {
    json!({
        "id": id.to_hex(), "short_id": id.short(), "time": m.time, "hostname": m.hostname,
        "username": m.username, "name": m.name, "tags": m.tags, "parent": m.parent,
        "original": m.original,
        "disks": m.disks.iter().map(|d| json!({"name": d.name, "size": d.size, "format": d.format, "source": d.source, "lost": d.lost})).collect::<Vec<_>>(),
        "summary": m.summary,
    })
}

/// Runs `vmstash snapshots`.
pub fn run(g: &Global, a: &SnapshotsArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let filter = a.filter.filter();
    let (listing, damaged) = repo::snapshots_warning_of_damage(&repo)?;
    // A listing that had to leave files out has not done its whole job: exit 1 after it.
    let code = if damaged {
        ExitCode::from(exit::FAILURE)
    } else {
        exit::ok()
    };
    let all: Vec<_> = listing
        .snapshots
        .into_iter()
        .filter(|(_, m)| filter.matches(m))
        .collect();
    if a.group_by.is_none() && a.latest.is_none() {
        if g.json {
            print_json(&serde_json::Value::Array(
                all.iter().map(|(id, m)| snapshot_json(id, m)).collect(),
            ));
        } else {
            print_table(&all);
            line(format_args!("{} snapshots", all.len()));
        }
        return Ok(code);
    }
    let mut groups = selection::group(all, &a.group_by.unwrap_or_default());
    if let Some(n) = a.latest {
        for (_, snapshots) in &mut groups {
            let older = snapshots.len().saturating_sub(n);
            snapshots.drain(..older);
        }
    }
    if g.json {
        print_json(&serde_json::Value::Array(
            groups
                .iter()
                .map(|(key, snapshots)| {
                    json!({"group_key": key, "snapshots": snapshots.iter().map(|(id, m)| snapshot_json(id, m)).collect::<Vec<_>>()})
                })
                .collect(),
        ));
        return Ok(code);
    }
    for (key, snapshots) in &groups {
        line(format_args!("snapshots of {key}:"));
        print_table(snapshots);
        line(format_args!("{} snapshots\n", snapshots.len()));
    }
    Ok(code)
}

/// The snapshot table, one line per snapshot, in the order given.
fn print_table(snapshots: &[(Id, Manifest)]) {
    line(format_args!(
        "{:<8}  {:<20}  {:<12}  {:<16}  {:>10}  disks / tags",
        "ID", "Time (UTC)", "Host", "Name", "Size"
    ));
    line(format_args!("{}", "-".repeat(90)));
    for (id, m) in snapshots {
        let disks: Vec<_> = m.disks.iter().map(|d| d.name.as_str()).collect();
        line(format_args!(
            "{:<8}  {:<20}  {:<12}  {:<16}  {:>10}  {}{}",
            id.short(),
            snapshot_time(&m.time),
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
}
