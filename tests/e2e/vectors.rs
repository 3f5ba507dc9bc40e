//! The test vectors of spec/test-vectors decode to the plaintext they promise.

use std::path::PathBuf;

use crate::util::{bin, describe, sha256_file};

#[test]
fn test_vectors_decode() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/test-vectors");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("expected.json")).expect("expected.json"))
            .expect("json");
    let out_dir = tempfile::tempdir().expect("tempdir");
    // Read from a copy: the restore takes a lock, and the committed files stay untouched.
    let repo = out_dir.path().join("repo");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(root.join("repo"))
        .arg(&repo)
        .status()
        .expect("cp");
    assert!(status.success());
    let snapshot = expected["snapshot_id"].as_str().expect("snapshot_id");
    let target = out_dir.path().join("out");
    let out = std::process::Command::new(bin())
        .arg("-r")
        .arg(&repo)
        .arg("--password-file")
        .arg(root.join("password"))
        .args(["restore", snapshot, "--target"])
        .arg(&target)
        .env_remove("VMSTASH_PASSWORD")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", describe(&out));
    for (disk, sha) in expected["disks"].as_object().expect("disks") {
        let got = sha256_file(&target.join(format!("{disk}.raw")));
        assert_eq!(got, sha.as_str().expect("sha"), "disk {disk}");
        assert_eq!(
            got,
            sha256_file(&root.join("expected").join(format!("{disk}.raw")))
        );
    }
}
