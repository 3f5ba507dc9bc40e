//! One damaged file does not take the rest down: a snapshot file that cannot be read is named
//! and skipped (and can be forgotten by id), a lock file that cannot be read counts as held
//! until it is old and then as stale; `unlock`, `tag` and `--no-lock` on read-only storage.

use std::path::Path;

use crate::util::{
    describe, have, overwrite, random_bytes, sh, sha256_file, sparse_image, stderr, Repo,
};

fn ids(repo: &Repo) -> Vec<String> {
    let out = repo.run(&["--json", "snapshots"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let list: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or("[]")).expect("JSON");
    list.as_array()
        .expect("list")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn a_damaged_snapshot_file_is_skipped_named_and_forgettable() {
    let repo = Repo::init();
    let a = sparse_image(
        repo.dir.path(),
        "a.img",
        1 << 20,
        &[(0, random_bytes(31, 65536))],
    );
    let b = sparse_image(
        repo.dir.path(),
        "b.img",
        1 << 20,
        &[(0, random_bytes(32, 65536))],
    );
    let d = |p: &Path| p.to_str().expect("utf8").to_string();
    repo.ok(&["backup", "--disk", &d(&a), "--time", "2026-01-01 10:00:00"]);
    repo.ok(&["backup", "--disk", &d(&b), "--time", "2026-01-02 10:00:00"]);
    let before = ids(&repo);
    // Damage the newest (b's) snapshot file.
    let damaged = repo
        .files("snapshots")
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy() == before[1])
        })
        .expect("b's file");
    overwrite(&damaged, b"not a snapshot");

    let out = repo.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr(&out).contains(&before[1]), "{}", describe(&out));
    assert!(
        stderr(&out).contains("vmstash forget"),
        "{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&before[0][..8]),
        "{}",
        describe(&out)
    );

    // Restore of the other one, by id and as latest, works (with a warning).
    for spec in [&before[0][..8], "latest"] {
        let target = repo.dir.path().join(format!("r-{spec}"));
        let out = repo.run(&["restore", spec, "--target", target.to_str().expect("utf8")]);
        assert!(out.status.success(), "{spec}: {}", describe(&out));
        assert_eq!(sha256_file(&target.join("a.raw")), sha256_file(&a));
    }
    // Naming the damaged one is an error that says it is damaged.
    let out = repo.run(&[
        "restore",
        &before[1][..8],
        "--target",
        "/nonexistent-target",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("cannot be read"),
        "{}",
        describe(&out)
    );
    // A backup still finds its way (a damaged file is not its parent).
    repo.ok(&["backup", "--disk", &d(&b)]);
    // forget by id removes the damaged file; then the listing is whole again.
    repo.ok(&["forget", &before[1][..8]]);
    let out = repo.run(&["snapshots"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(ids(&repo).len(), 2);
    repo.ok(&["check", "--read-data"]);
}

#[test]
fn an_unreadable_lock_is_held_until_old_then_stale_and_unlock_clears_it() {
    let repo = Repo::init();
    let img = sparse_image(
        repo.dir.path(),
        "d.img",
        1 << 20,
        &[(0, random_bytes(33, 4096))],
    );
    let d = img.to_str().expect("utf8");
    let lock = repo.path.join("locks").join("ab".repeat(32));
    std::fs::write(&lock, b"garbage").expect("write lock");

    let out = repo.run(&["backup", "--disk", d]);
    assert_eq!(out.status.code(), Some(11), "{}", describe(&out));
    assert!(
        stderr(&out).contains("unlock --remove-all"),
        "{}",
        describe(&out)
    );
    // Plain unlock keeps it (it may be live); the listing still works without a lock.
    repo.ok(&["unlock"]);
    assert!(lock.exists());
    repo.ok(&["snapshots"]);

    // 31 minutes old: stale. Backups go on, and unlock removes it.
    sh(
        "touch",
        &["-d", "31 minutes ago", lock.to_str().expect("utf8")],
    );
    repo.ok(&["backup", "--disk", d]);
    assert!(lock.exists(), "a backup does not remove other locks");
    let out = repo.json(&["unlock"]);
    assert_eq!(out["removed"].as_array().map(Vec::len), Some(1), "{out}");
    assert!(!lock.exists());

    // --remove-all removes a fresh unreadable lock too, with a warning.
    std::fs::write(&lock, b"garbage").expect("write lock");
    let out = repo.run(&["unlock", "--remove-all"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("may belong to a running process"),
        "{}",
        describe(&out)
    );
    assert!(!lock.exists());
    repo.ok(&["check"]);
}

#[test]
fn tag_rewrites_snapshots_and_filters_see_the_new_tags() {
    let repo = Repo::init();
    let img = sparse_image(
        repo.dir.path(),
        "d.img",
        1 << 20,
        &[(0, random_bytes(34, 4096))],
    );
    let d = img.to_str().expect("utf8");
    repo.ok(&["backup", "--disk", d, "--tag", "nightly,keep"]);
    repo.ok(&["backup", "--disk", d, "--tag", "nightly"]);
    let kept = repo.json(&["snapshots", "--tag", "keep"])[0]["id"].clone();
    let out = repo.json(&[
        "tag", "--tag", "keep", "--add", "monthly", "--remove", "nightly",
    ]);
    assert_eq!(out["changed"].as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(
        out["changed"][0]["tags"],
        serde_json::json!(["keep", "monthly"])
    );
    let monthly = repo.json(&["snapshots", "--tag", "monthly"]);
    assert_eq!(monthly.as_array().map(Vec::len), Some(1));
    assert_eq!(
        monthly[0]["original"], kept,
        "the rewritten snapshot names its original"
    );
    assert_eq!(repo.files("snapshots").len(), 2, "the old file is gone");
    let id = ids(&repo)[1].clone();
    repo.ok(&["tag", &id[..8], "--set", ""]);
    let untagged = repo.json(&["snapshots", "--tag", "nightly"]);
    assert_eq!(untagged.as_array().map(Vec::len), Some(0), "{untagged}");
    let nothing = repo.run(&["tag", "--add", "x", "--set", "y"]);
    assert_eq!(nothing.status.code(), Some(2), "{}", describe(&nothing));
    let none = repo.run(&["tag"]);
    assert_eq!(none.status.code(), Some(2), "{}", describe(&none));
    repo.ok(&["check", "--read-data"]);
}

#[test]
fn no_lock_reads_a_repository_on_read_only_storage() {
    if !have(&["mount", "umount"], true) {
        return;
    }
    let repo = Repo::init();
    let img = sparse_image(
        repo.dir.path(),
        "d.img",
        1 << 20,
        &[(0, random_bytes(35, 65536))],
    );
    repo.ok(&["backup", "--disk", img.to_str().expect("utf8")]);
    let ro = repo.dir.path().join("ro");
    std::fs::create_dir(&ro).expect("mkdir");
    let ro_s = ro.to_str().expect("utf8").to_string();
    sh(
        "mount",
        &["--bind", repo.path.to_str().expect("utf8"), &ro_s],
    );
    sh("mount", &["-o", "remount,bind,ro", &ro_s]);
    let result = std::panic::catch_unwind(|| {
        let ro_repo = Repo {
            path: ro.clone(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let target = ro_repo.dir.path().join("out");
        let restore = [
            "restore",
            "latest",
            "--target",
            target.to_str().expect("utf8"),
        ];
        let out = ro_repo.run(&restore);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(stderr(&out).contains("--no-lock"), "{}", describe(&out));
        let mut with = vec!["--no-lock"];
        with.extend(restore);
        ro_repo.ok(&with);
        assert_eq!(sha256_file(&target.join("d.raw")), sha256_file(&img));
        ro_repo.ok(&["--no-lock", "check", "--read-data"]);
        ro_repo.ok(&["--no-lock", "snapshots"]);
        ro_repo.ok(&["--no-lock", "stats"]);
        let out = ro_repo.run(&["--no-lock", "backup", "--disk", img.to_str().expect("utf8")]);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    });
    sh("umount", &[&ro_s]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A deleted pack: `check` names it and `repair index`; after the repair `check` names the lost
/// chunks; the next backup of the same disk stores them again and the old snapshot restores.
#[test]
fn repair_index_after_a_lost_pack_and_the_next_backup_heals() {
    let repo = Repo::init();
    let img = sparse_image(
        repo.dir.path(),
        "d.img",
        64 << 20,
        &[(0, random_bytes(36, 40 << 20))],
    );
    let d = img.to_str().expect("utf8");
    repo.ok(&["backup", "--disk", d]);
    let first = ids(&repo)[0].clone();
    let pack = repo.files("data").remove(0);
    std::fs::remove_file(&pack).expect("rm pack");

    let out = repo.run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let name = pack
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(stderr(&out).contains(&name), "{}", describe(&out));
    assert!(
        stderr(&out).contains("vmstash repair index"),
        "{}",
        describe(&out)
    );

    let report = repo.json(&["repair", "index"]);
    assert_eq!(report["lost_packs"], serde_json::json!([name]), "{report}");
    let out = repo.run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("missing or damaged"),
        "{}",
        describe(&out)
    );
    assert!(
        !stderr(&out).contains(&name),
        "the index no longer lists it: {}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("back up the disks"),
        "{}",
        describe(&out)
    );

    repo.ok(&["backup", "--disk", d]);
    repo.ok(&["check", "--read-data"]);
    let target = repo.dir.path().join("healed");
    repo.ok(&[
        "restore",
        &first[..8],
        "--target",
        target.to_str().expect("utf8"),
    ]);
    assert_eq!(sha256_file(&target.join("d.raw")), sha256_file(&img));
}

/// `check --read-data-subset n/t` reads each pack in exactly one of the t runs, and the run
/// holding a damaged pack finds it; `N%` and sizes read part of the packs.
#[test]
fn read_data_subsets_cover_every_pack_once_and_find_damage() {
    let repo = Repo::init();
    let img = sparse_image(
        repo.dir.path(),
        "d.img",
        96 << 20,
        &[(0, random_bytes(37, 80 << 20))],
    );
    repo.ok(&["backup", "--disk", img.to_str().expect("utf8")]);
    let packs = repo.files("data");
    assert!(packs.len() >= 4, "{packs:?}");
    let read = |subset: &str| {
        let out = repo.run(&["--json", "check", "--read-data-subset", subset]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let report: serde_json::Value =
            serde_json::from_str(text.lines().last().unwrap_or("{}")).expect("JSON");
        (
            out.status.code(),
            report["packs_read"].as_u64().expect("packs_read"),
        )
    };
    let total: u64 = (1..=3).map(|n| read(&format!("{n}/3")).1).sum();
    assert_eq!(total, u64::try_from(packs.len()).expect("n"));
    assert_eq!(read("100%").1, total);
    assert!(read("1%").1 >= 1);
    assert_eq!(
        read("1").1,
        1,
        "a size reads packs until it is reached: one here"
    );
    let bad = repo.run(&["check", "--read-data-subset", "4/3"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));

    // A data pack (the largest): damage in the map pack would fail every run, since each
    // reads the map to check the snapshot.
    let victim = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .expect("a pack");
    let mut bytes = std::fs::read(victim).expect("read pack");
    bytes[100] ^= 0x40;
    overwrite(victim, &bytes);
    let failing: Vec<u32> = (1..=3)
        .filter(|n| read(&format!("{n}/3")).0 == Some(1))
        .collect();
    assert_eq!(
        failing.len(),
        1,
        "exactly the run holding the damaged pack fails: {failing:?}"
    );
}

/// Temporary files of killed writes: `unlock` removes those not written to for 30 minutes,
/// keeps recent ones (a live write, maybe) and never touches anything else.
#[test]
fn unlock_removes_old_temporary_files_only() {
    let repo = Repo::init();
    let old_pack = repo.path.join("data/7c/.tmp-0123abcd");
    let old_index = repo.path.join("index/.tmp-deadbeef");
    let recent = repo.path.join("snapshots/.tmp-feedface");
    let other = repo.path.join("index/notes.txt");
    std::fs::create_dir_all(repo.path.join("data/7c")).expect("mkdir");
    for p in [&old_pack, &old_index, &recent, &other] {
        std::fs::write(p, vec![7u8; 4096]).expect("write");
    }
    for p in [&old_pack, &old_index, &other] {
        sh("touch", &["-d", "2 hours ago", p.to_str().expect("utf8")]);
    }
    let out = repo.json(&["unlock"]);
    assert_eq!(
        out["temporary_files_removed"],
        serde_json::json!(["data/7c/.tmp-0123abcd", "index/.tmp-deadbeef"]),
        "{out}"
    );
    assert!(!old_pack.exists() && !old_index.exists());
    assert!(
        recent.exists(),
        "a recent temporary file may be a live write"
    );
    assert!(other.exists(), "only .tmp-* files are removed");
    let out = repo.json(&["unlock", "--remove-all"]);
    assert_eq!(
        out["temporary_files_removed"],
        serde_json::json!(["snapshots/.tmp-feedface"])
    );
    assert!(other.exists());
    repo.ok(&["check"]);
}
