//! Killed and concurrent backups never damage the repository.

use std::time::Duration;

use crate::util::{describe, random_bytes, sha256_file, sparse_image, Repo};

#[test]
fn kill_9_at_several_points_leaves_a_checkable_repository() {
    let repo = Repo::init();
    // 96 MiB of random data: long enough to be killed mid-way.
    let img = sparse_image(
        repo.dir.path(),
        "big.img",
        128 << 20,
        &[(0, random_bytes(11, 96 << 20))],
    );
    for delay_ms in [30u64, 150, 400, 900] {
        let mut child = repo.spawn_backup(&img);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let check = repo.run(&["check"]);
        assert!(
            check.status.success(),
            "after kill at {delay_ms} ms: {}",
            describe(&check)
        );
    }
    let summary = repo.backup(&[&img]);
    assert!(summary["snapshot_id"].is_string());
    repo.ok(&["check", "--read-data"]);
    let out = repo.restore("latest");
    assert_eq!(sha256_file(&out.join("big.raw")), sha256_file(&img));
}

#[test]
fn two_concurrent_backups_into_one_repository() {
    let repo = Repo::init();
    let shared = random_bytes(21, 8 << 20);
    let a = sparse_image(
        repo.dir.path(),
        "a.img",
        32 << 20,
        &[(0, shared.clone()), (16 << 20, random_bytes(22, 8 << 20))],
    );
    let b = sparse_image(
        repo.dir.path(),
        "b.img",
        32 << 20,
        &[(0, shared), (16 << 20, random_bytes(23, 8 << 20))],
    );
    let ca = repo.spawn_backup(&a);
    let cb = repo.spawn_backup(&b);
    let oa = ca.wait_with_output().expect("wait a");
    let ob = cb.wait_with_output().expect("wait b");
    assert!(oa.status.success(), "{}", describe(&oa));
    assert!(ob.status.success(), "{}", describe(&ob));
    repo.ok(&["check", "--read-data"]);
    let snaps = repo.json(&["snapshots"]);
    assert_eq!(snaps.as_array().expect("array").len(), 2);
    for s in snaps.as_array().expect("array") {
        let id = s["id"].as_str().expect("id");
        let name = s["name"].as_str().expect("name");
        let out = repo.restore(id);
        let src = if name == "a" { &a } else { &b };
        assert_eq!(
            sha256_file(&out.join(format!("{name}.raw"))),
            sha256_file(src)
        );
    }
    assert!(repo.files("locks").is_empty(), "locks must be released");
}

/// Bytes of the durable pack files under `data/` (temporary files left out).
fn pack_bytes(repo: &Repo) -> u64 {
    repo.files("data")
        .iter()
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))
        })
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

/// A backup stopped by SIGINT, SIGTERM or SIGKILL once several packs are durable: the next
/// backup of the same disk stores again less than 10 % of what the stopped one had stored
/// (SIGINT/SIGTERM: the stopped backup indexed its packs; SIGKILL: the next one adopts them).
#[test]
fn a_stopped_backups_packs_are_reused_by_the_next_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = sparse_image(
        dir.path(),
        "big.img",
        320 << 20,
        &[(0, random_bytes(41, 256 << 20))],
    );
    let clean = Repo::init();
    let clean_added = clean.backup(&[&img])["bytes_added"]
        .as_u64()
        .expect("bytes_added");
    for signal in ["INT", "TERM", "KILL"] {
        let repo = Repo::init();
        let child = repo.spawn_backup(&img);
        let pid = child.id().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while pack_bytes(&repo) < 64 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "{signal}: no packs appeared"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        crate::util::sh("kill", &[&format!("-{signal}"), &pid]);
        let out = child.wait_with_output().expect("wait");
        assert!(
            !out.status.success(),
            "{signal}: the backup finished before the signal"
        );
        let stored = pack_bytes(&repo);
        let added = repo.backup(&[&img])["bytes_added"]
            .as_u64()
            .expect("bytes_added");
        let again = added.saturating_sub(clean_added.saturating_sub(stored));
        assert!(
            again * 10 < stored,
            "{signal}: the stopped backup had stored {stored} bytes; the next one added {added} of {clean_added}, {again} again"
        );
        repo.ok(&["check", "--read-data"]);
        let out = repo.restore("latest");
        assert_eq!(
            sha256_file(&out.join("big.raw")),
            sha256_file(&img),
            "{signal}"
        );
    }
}
