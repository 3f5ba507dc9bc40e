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
