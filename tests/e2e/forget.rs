//! `vmstash forget` against the real restic 0.14 binary: the same history of snapshot times
//! (ISO week 53, new year, month ends, a leap day, several snapshots an hour, one in the
//! future) in both tools, the same policies, the same snapshots kept. Then a real forget:
//! only what the policy names goes, filters confine it, and what is kept still restores.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::util::{describe, have, random_bytes, sha256_file, sparse_image, Repo};

/// The history, in backup order (not time order), `time|tags`.
const HISTORY: &[&str] = &[
    "2020-12-27 23:30:00|",
    "2020-12-28 00:10:00|a",
    "2020-12-31 23:59:00|",
    "2021-01-01 00:00:00|a,b",
    "2021-01-03 12:00:00|",
    "2021-01-04 08:00:00|c",
    "2021-01-04 09:15:00|",
    "2021-01-04 09:45:00|",
    "2021-01-04 22:00:00|",
    "2021-01-05 03:00:00|b",
    "2021-01-11 10:00:00|",
    "2024-01-31 23:00:00|",
    "2024-02-01 01:00:00|",
    "2024-02-28 10:00:00|a,b,c",
    "2024-02-29 10:00:00|",
    "2024-02-29 18:00:00|",
    "2024-03-01 09:00:00|",
    "2024-03-31 10:00:00|",
    "2025-12-28 10:00:00|",
    "2025-12-29 10:00:00|",
    "2026-01-31 23:00:00|c",
    "2026-02-28 10:00:00|",
    "2026-03-01 00:30:00|",
    "2026-03-28 10:00:00|",
    "2026-03-29 08:00:00|",
    "2026-03-29 09:00:00|",
    "2099-06-01 12:00:00|a",
    "2026-03-30 07:00:00|",
    "2026-03-30 06:59:00|",
];

/// Policies both tools get, word for word. Not `--keep-yearly=-1`: restic 0.14 takes -1 as
/// a count that keeps nothing and removes every snapshot; later restic (and vmstash) read -1
/// and `unlimited` as every period (the policy unit tests cover that).
const POLICIES: &[&[&str]] = &[
    &["--keep-last", "5"],
    &["--keep-hourly", "6"],
    &["--keep-daily", "7"],
    &["--keep-weekly", "6"],
    &["--keep-monthly", "4", "--keep-yearly", "3"],
    &["--keep-yearly", "100"],
    &["--keep-within", "2d"],
    &["--keep-within", "2y1m"],
    &["--keep-within-daily", "40d", "--keep-within-weekly", "3m"],
    &["--keep-within-monthly", "1y", "--keep-within-yearly", "10y"],
    &["--keep-within-hourly", "3d"],
    &["--keep-tag", "a,b", "--keep-tag", "c", "--keep-last", "2"],
    &[
        "--keep-daily",
        "3",
        "--keep-weekly",
        "3",
        "--keep-monthly",
        "3",
        "--keep-yearly",
        "3",
    ],
];

fn restic(repo: &Path, args: &[&str]) -> std::process::Output {
    Command::new("restic")
        .args(args)
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", "restic-test")
        .env("RESTIC_CACHE_DIR", repo.with_extension("cache"))
        .env("TZ", "UTC")
        .output()
        .expect("run restic")
}

fn restic_ok(repo: &Path, args: &[&str]) -> String {
    let out = restic(repo, args);
    assert!(out.status.success(), "restic {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `YYYY-MM-DDTHH:MM:SS` of every snapshot a forget --json output keeps, over all groups.
fn kept_times(groups: &serde_json::Value) -> BTreeSet<String> {
    groups
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["keep"].as_array().map_or(&[][..], Vec::as_slice))
        .map(|s| s["time"].as_str().expect("time")[..19].to_string())
        .collect()
}

fn history_repo(disk: &Path) -> Repo {
    let repo = Repo::init();
    for item in HISTORY {
        let (time, tags) = item.split_once('|').expect("time|tags");
        let mut args = vec![
            "backup",
            "-q",
            "--disk",
            disk.to_str().expect("utf8"),
            "--time",
            time,
        ];
        if !tags.is_empty() {
            args.extend(["--tag", tags]);
        }
        repo.ok(&args);
    }
    repo
}

#[test]
fn forget_keeps_exactly_what_restic_keeps() {
    if !have(&["restic"], false) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = sparse_image(dir.path(), "d.img", 1 << 20, &[(0, random_bytes(1, 4096))]);
    let repo = history_repo(&disk);
    let rrepo = dir.path().join("restic-repo");
    restic_ok(&rrepo, &["init"]);
    for item in HISTORY {
        let (time, tags) = item.split_once('|').expect("time|tags");
        let mut args = vec!["backup", "-q", "--time", time, disk.to_str().expect("utf8")];
        if !tags.is_empty() {
            args.extend(["--tag", tags]);
        }
        restic_ok(&rrepo, &args);
    }
    for policy in POLICIES {
        let mut ours = vec!["forget", "--dry-run"];
        ours.extend_from_slice(policy);
        let mut theirs = vec!["forget", "--dry-run", "--json"];
        theirs.extend_from_slice(policy);
        let ours_kept = kept_times(&repo.json(&ours)["groups"]);
        let restic_out = restic_ok(&rrepo, &theirs);
        let line = restic_out
            .lines()
            .find(|l| l.starts_with('['))
            .expect("restic JSON");
        let theirs_kept = kept_times(&serde_json::from_str(line).expect("restic JSON"));
        assert_eq!(ours_kept, theirs_kept, "policy {policy:?}");
        assert!(!ours_kept.is_empty(), "policy {policy:?} kept nothing");
        assert!(
            ours_kept.len() < HISTORY.len() || policy[0] == "--keep-within",
            "policy {policy:?} removes something, so the comparison means something"
        );
    }
    let ours = kept_times(&repo.json(&["forget", "--dry-run", "--keep-daily", "2"])["groups"]);
    assert_eq!(
        repo.json(&["snapshots"]).as_array().map(Vec::len),
        Some(HISTORY.len()),
        "a dry run removes nothing"
    );
    // Walking from the newest, the future snapshot's day is the first of the two days.
    assert_eq!(
        ours,
        BTreeSet::from([
            "2026-03-30T07:00:00".to_string(),
            "2099-06-01T12:00:00".to_string()
        ])
    );
}

#[test]
fn forget_removes_what_the_policy_names_and_only_in_the_filtered_vm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = sparse_image(dir.path(), "d.img", 1 << 20, &[(0, random_bytes(2, 8192))]);
    let repo = Repo::init();
    let d = disk.to_str().expect("utf8");
    for (vm, day) in [
        ("web1", 1),
        ("web1", 2),
        ("web1", 3),
        ("db1", 1),
        ("db1", 2),
    ] {
        let time = format!("2026-05-0{day} 10:00:00");
        repo.ok(&["backup", "-q", "--disk", d, "--name", vm, "--time", &time]);
    }
    // No policy, and ids with a policy: refused, nothing removed.
    for args in [
        &["forget"][..],
        &["forget", "--keep-last", "0"],
        &["forget", "abcd", "--keep-last", "1"],
    ] {
        let out = repo.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was removed"));
    }
    let bad = repo.run(&["forget", "--keep-daily", "many"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert_eq!(repo.json(&["snapshots"]).as_array().map(Vec::len), Some(5));

    // A filter that matches nothing removes nothing.
    let none = repo.json(&["forget", "--keep-last", "1", "--vm", "mail"]);
    assert_eq!(none["removed"], 0, "{none}");

    let out = repo.json(&["forget", "--keep-last", "1", "--vm", "web1"]);
    assert_eq!(out["removed"], 2, "{out}");
    let left: Vec<(String, String)> = repo
        .json(&["snapshots"])
        .as_array()
        .expect("list")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name").into(),
                s["time"].as_str().expect("t")[..10].into(),
            )
        })
        .collect();
    assert_eq!(
        left,
        [
            ("db1".to_string(), "2026-05-01".to_string()),
            ("db1".into(), "2026-05-02".into()),
            ("web1".into(), "2026-05-03".into()),
        ]
    );
    // `latest` narrowed by --vm restores that VM's newest, not the newest overall.
    let target = dir.path().join("r");
    repo.ok(&[
        "restore",
        "latest",
        "--vm",
        "db1",
        "--target",
        target.to_str().expect("utf8"),
    ]);
    assert_eq!(sha256_file(&target.join("d.raw")), sha256_file(&disk));
    let db1 = repo.json(&["snapshots", "--vm", "db1", "--latest", "1"]);
    assert_eq!(
        db1[0]["snapshots"][0]["time"], "2026-05-02T10:00:00Z",
        "{db1}"
    );
    let out = repo.run(&[
        "restore",
        "latest",
        "--vm",
        "mail",
        "--target",
        "/nonexistent",
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));

    // By id: exactly that snapshot.
    let id = repo.json(&["snapshots", "--vm", "db1"])[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    repo.ok(&["forget", &id[..10]]);
    let names: Vec<_> = repo
        .json(&["snapshots"])
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(!names.contains(&id));
    assert!(
        repo.run(&["forget", &id[..10]]).status.code() != Some(0),
        "a forgotten id is gone"
    );
    repo.ok(&["check", "--read-data"]);
}
