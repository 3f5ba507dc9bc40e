//! Bad input and damage: clear errors, documented exit codes, nothing lost.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::{describe, have, random_bytes, sh, sha256_file, sparse_image, Repo};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn wrong_password_is_refused_with_exit_12() {
    let repo = Repo::init();
    let out = repo
        .cmd(&["snapshots"])
        .env("VMSTASH_PASSWORD", "wrong")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(12), "{}", describe(&out));
    assert!(
        stderr(&out).contains("wrong password"),
        "{}",
        describe(&out)
    );
}

#[test]
fn missing_repository_exits_10() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repo {
        path: dir.path().join("nothing"),
        dir,
    };
    let out = repo.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(10), "{}", describe(&out));
    assert!(stderr(&out).contains("vmstash init"));
}

fn make_writable(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

#[test]
fn newer_format_version_is_refused_with_exit_13() {
    let repo = Repo::init();
    let key = repo.files("keys").remove(0);
    let text = std::fs::read_to_string(&key).expect("key");
    make_writable(&key);
    std::fs::write(&key, text.replace("\"version\": 1", "\"version\": 2")).expect("write");
    let out = repo.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(13), "{}", describe(&out));
    assert!(
        stderr(&out).contains("newer than this vmstash supports"),
        "{}",
        describe(&out)
    );
}

#[test]
fn newer_config_version_byte_is_refused() {
    let repo = Repo::init();
    let cfg = repo.path.join("config");
    let mut bytes = std::fs::read(&cfg).expect("config");
    bytes[0] = 2;
    make_writable(&cfg);
    std::fs::write(&cfg, bytes).expect("write");
    let out = repo.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(13), "{}", describe(&out));
    assert!(stderr(&out).contains("version 2"), "{}", describe(&out));
}

/// The largest pack (the one holding data blobs).
fn data_pack(repo: &Repo) -> std::path::PathBuf {
    let mut packs = repo.files("data");
    packs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    packs.pop().expect("a pack")
}

#[test]
fn flipped_byte_in_pack_fails_check_and_restore_loudly() {
    let repo = Repo::init();
    let img = sparse_image(
        repo.dir.path(),
        "d.img",
        8 << 20,
        &[(0, random_bytes(5, 2 << 20))],
    );
    repo.backup(&[&img]);
    repo.ok(&["check", "--read-data"]);
    let pack = data_pack(&repo);
    let mut bytes = std::fs::read(&pack).expect("pack");
    bytes[1000] ^= 0x01;
    make_writable(&pack);
    std::fs::write(&pack, &bytes).expect("write");
    let pack_name = pack
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();

    let check = repo.run(&["check", "--read-data"]);
    assert_eq!(check.status.code(), Some(1), "{}", describe(&check));
    let err = stderr(&check);
    assert!(err.contains(&pack_name), "check must name the pack: {err}");
    assert!(
        err.contains("snapshot "),
        "check must name the snapshot: {err}"
    );

    let target = repo.dir.path().join("out");
    let restore = repo.run(&[
        "restore",
        "latest",
        "--target",
        &target.display().to_string(),
    ]);
    assert!(!restore.status.success(), "{}", describe(&restore));
    assert!(
        stderr(&restore).contains(&pack_name),
        "{}",
        describe(&restore)
    );
    let left: Vec<_> = std::fs::read_dir(&target)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a failed restore must leave no image: {left:?}"
    );
}

#[test]
fn truncated_pack_is_reported_without_read_data() {
    let repo = Repo::init();
    let img = sparse_image(
        repo.dir.path(),
        "d.img",
        4 << 20,
        &[(0, random_bytes(6, 1 << 20))],
    );
    repo.backup(&[&img]);
    let pack = data_pack(&repo);
    make_writable(&pack);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .expect("open");
    f.set_len(100).expect("truncate");
    let check = repo.run(&["check"]);
    assert_eq!(check.status.code(), Some(1), "{}", describe(&check));
    assert!(stderr(&check).contains("truncated"), "{}", describe(&check));
}

#[test]
fn truncated_snapshot_file_is_an_error_naming_it() {
    let repo = Repo::init();
    let img = sparse_image(repo.dir.path(), "d.img", 1 << 20, &[(0, b"x".to_vec())]);
    repo.backup(&[&img]);
    let snap = repo.files("snapshots").remove(0);
    make_writable(&snap);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&snap)
        .expect("open");
    f.set_len(40).expect("truncate");
    let out = repo.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let name = snap
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(stderr(&out).contains(&name), "{}", describe(&out));
}

#[test]
fn disk_full_fails_cleanly_and_keeps_the_repository_intact() {
    if !have(&["mount", "umount"], true) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mnt_s = mnt.display().to_string();
    sh("mount", &["-t", "tmpfs", "-o", "size=6m", "tmpfs", &mnt_s]);
    let result = std::panic::catch_unwind(|| {
        let repo = Repo {
            path: mnt.join("repo"),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        repo.ok(&["init"]);
        let small = sparse_image(
            repo.dir.path(),
            "small.img",
            1 << 20,
            &[(0, random_bytes(8, 512 << 10))],
        );
        repo.backup(&[&small]);
        let big = sparse_image(
            repo.dir.path(),
            "big.img",
            64 << 20,
            &[(0, random_bytes(9, 32 << 20))],
        );
        let out = repo.run(&["backup", "--disk", &big.display().to_string()]);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(stderr(&out).contains("No space left"), "{}", describe(&out));
        repo.ok(&["check", "--read-data"]);
        let snaps = repo.json(&["snapshots"]);
        assert_eq!(snaps.as_array().expect("array").len(), 1);
        let restored = repo.restore("latest");
        assert_eq!(
            sha256_file(&restored.join("small.raw")),
            sha256_file(&small)
        );
    });
    sh("umount", &[&mnt_s]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A qcow2 image cut short (the user's report: `head -c 100000 base.qcow2 > t.qcow2` backed up
/// as 512 MiB of zeros with exit 0) is damage: the backup fails naming the file, and no snapshot
/// is saved. Cut in its metadata (the L1 table is gone) or in its data (clusters past the cut).
#[test]
fn truncated_qcow2_fails_the_backup_and_saves_no_snapshot() {
    if !have(&["qemu-img", "qemu-io"], false) {
        return;
    }
    let repo = Repo::init();
    let base = repo.dir.path().join("base.qcow2");
    let base_s = base.display().to_string();
    sh(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &base_s, "512M"],
    );
    sh("qemu-io", &["-c", "write -P 0x5a 0 30M", &base_s]);
    // Whole, the image backs up.
    repo.backup(&[&base]);
    let bytes = std::fs::read(&base).expect("image");

    for (name, len) in [("t.qcow2", 100_000), ("t20.qcow2", 20 << 20)] {
        let cut = repo.dir.path().join(name);
        std::fs::write(&cut, bytes.get(..len).expect("image longer than the cut")).expect("cut");
        let out = repo.run(&["backup", "--disk", &cut.display().to_string()]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", describe(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&cut.display().to_string()) && err.contains("damaged"),
            "{name}: {}",
            describe(&out)
        );
    }
    let snaps = repo.json(&["snapshots"]);
    assert_eq!(snaps.as_array().expect("array").len(), 1, "{snaps}");
}
