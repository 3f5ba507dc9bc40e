//! Backups restore bit for bit: partitioned images, qcow2 chains, dedup.

use std::path::Path;

use crate::util::{
    have, partitioned_image, random_bytes, sh, sha256_file, sparse_image, write_at, Repo,
};

#[test]
fn partitioned_ext4_image_round_trips_and_stays_sparse() {
    if !have(&["sgdisk", "mkfs.ext4", "losetup", "mount"], true) {
        return;
    }
    let repo = Repo::init();
    let img = partitioned_image(repo.dir.path(), 64);
    let summary = repo.backup(&[&img]);
    assert_eq!(summary["disk_bytes"], 64 << 20);
    let read = summary["bytes_read"].as_u64().expect("bytes_read");
    assert!(read < 40 << 20, "holes must not be read, read {read}");
    assert!(summary["zero_chunks"].as_u64().expect("zero") > 0);

    let out = repo.restore("latest");
    let name = img
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    let restored = out.join(format!("{name}.raw"));
    assert_eq!(sha256_file(&restored), sha256_file(&img));
    let meta = std::fs::metadata(&restored).expect("meta");
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 < meta.len() / 2,
        "restored image is not sparse"
    );
    let listing = sh("sgdisk", &["-p", &restored.display().to_string()]);
    assert!(listing.contains("8300"), "partition table lost: {listing}");
}

#[test]
fn identical_second_backup_adds_almost_nothing() {
    let repo = Repo::init();
    let img = sparse_image(
        repo.dir.path(),
        "d.img",
        32 << 20,
        &[(0, random_bytes(1, 8 << 20))],
    );
    let first = repo.backup(&[&img]);
    let second = repo.backup(&[&img]);
    let a = first["bytes_added"].as_u64().expect("added");
    let b = second["bytes_added"].as_u64().expect("added");
    assert!(a > 8 << 20, "first backup stored {a}");
    assert!(b * 100 < a, "second backup added {b} of {a}");
    assert_eq!(second["new_chunks"], 0);
    let snaps = repo.json(&["snapshots"]);
    assert_eq!(snaps.as_array().expect("array").len(), 2);
    assert_eq!(snaps[1]["parent"], snaps[0]["id"]);
}

#[test]
fn dedup_across_two_disks_of_one_snapshot() {
    let repo = Repo::init();
    let data = random_bytes(7, 4 << 20);
    let a = sparse_image(
        repo.dir.path(),
        "a.img",
        16 << 20,
        &[(1 << 20, data.clone())],
    );
    let b = sparse_image(repo.dir.path(), "b.img", 16 << 20, &[(1 << 20, data)]);
    write_at(&b, 12 << 20, b"only in b");
    let s = repo.backup(&[&a, &b]);
    let chunk = 512 * 1024;
    // 4 MiB of shared data = 8 chunks, plus one chunk only in b.
    assert_eq!(s["new_chunks"], (4 << 20) / chunk + 1, "{s}");
    let out = repo.restore("latest");
    assert_eq!(sha256_file(&out.join("a.raw")), sha256_file(&a));
    assert_eq!(sha256_file(&out.join("b.raw")), sha256_file(&b));
    let stats = repo.json(&["stats"]);
    assert!(
        stats["dedup_ratio"].as_f64().expect("ratio") > 1.8,
        "{stats}"
    );
}

#[test]
fn qcow2_with_backing_chain_round_trips() {
    if !have(&["qemu-img"], false) {
        return;
    }
    let repo = Repo::init();
    let dir = repo.dir.path();
    let base_raw = sparse_image(
        dir,
        "base.raw",
        24 << 20,
        &[(0, random_bytes(3, 3 << 20)), (20 << 20, b"tail".to_vec())],
    );
    let s = |p: &Path| p.display().to_string();
    let base = dir.join("base.qcow2");
    sh(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &s(&base_raw),
            &s(&base),
        ],
    );
    let mid_raw = dir.join("mid.raw");
    std::fs::copy(&base_raw, &mid_raw).expect("copy");
    write_at(&mid_raw, 1 << 20, &random_bytes(4, 1 << 20));
    write_at(&mid_raw, 10 << 20, b"written in the overlay");
    let top = dir.join("top.qcow2");
    sh(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-B",
            &s(&base),
            "-F",
            "qcow2",
            &s(&mid_raw),
            &s(&top),
        ],
    );
    let info = sh("qemu-img", &["info", &s(&top)]);
    assert!(info.contains("backing file"), "no chain: {info}");

    let summary = repo.backup(&[&top]);
    assert_eq!(summary["disk_bytes"], 24 << 20);
    let snap = repo.json(&["snapshots"]);
    assert_eq!(snap[0]["disks"][0]["format"], "qcow2");
    let out = repo.restore("latest");
    assert_eq!(sha256_file(&out.join("top.raw")), sha256_file(&mid_raw));

    let q = dir.join("q");
    repo.ok(&["restore", "latest", "--target", &s(&q), "--format", "qcow2"]);
    sh(
        "qemu-img",
        &["compare", "-q", &s(&q.join("top.qcow2")), &s(&mid_raw)],
    );
}

#[test]
fn restore_refuses_to_overwrite_and_unknown_disk() {
    let repo = Repo::init();
    let img = sparse_image(repo.dir.path(), "x.img", 1 << 20, &[(0, b"hello".to_vec())]);
    repo.backup(&[&img]);
    let out = repo.restore("latest");
    let again = repo.run(&["restore", "latest", "--target", &out.display().to_string()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bad = repo.run(&[
        "restore",
        "latest",
        "--target",
        "/tmp/none",
        "--disk",
        "vdz",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("has no disk \"vdz\""));
}

/// `diff` counts the chunks that changed between two backups and the bytes on each side.
#[test]
fn diff_counts_changed_chunks_and_bytes() {
    let repo = Repo::init();
    let img = sparse_image(
        repo.dir.path(),
        "d.img",
        16 << 20,
        &[(0, random_bytes(51, 4 << 20))],
    );
    repo.backup(&[&img]);
    // 1 MiB rewritten inside the data, 1 MiB written where there was a hole: 4 chunks of 512 KiB.
    crate::util::write_at(&img, 1 << 20, &random_bytes(52, 1 << 20));
    crate::util::write_at(&img, 8 << 20, &random_bytes(53, 1 << 20));
    repo.backup(&[&img]);
    let ids: Vec<String> = repo
        .json(&["snapshots"])
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    let d = repo.json(&["diff", &ids[0], &ids[1]]);
    let disk = &d["disks"][0];
    assert_eq!(disk["chunks_changed"], 4, "{d}");
    assert_eq!(disk["bytes_added"], 2 << 20, "{d}");
    assert_eq!(disk["bytes_removed"], 1 << 20, "{d}");
    let same = repo.json(&["diff", &ids[1], "latest"]);
    assert_eq!(same["disks"][0]["chunks_changed"], 0, "{same}");
}
