//! `repair packs` and `repair snapshots` on a real repository: a flipped byte in a pack is named
//! by `check` with the command to run; the readable chunks are salvaged; the snapshot that lost a
//! chunk is rewritten to record the lost bytes, which restore refuses unless given --zero-lost;
//! the next backup of the disk heals it.

use std::path::Path;

use crate::util::{describe, overwrite, random_bytes, sha256_file, sparse_image, stderr, Repo};

fn flip_byte(p: &Path, at: u64) {
    let mut bytes = std::fs::read(p).expect("read");
    bytes[usize::try_from(at).expect("offset")] ^= 0x40;
    overwrite(p, &bytes);
}

#[test]
fn a_flipped_byte_is_salvaged_recorded_and_healed() {
    let repo = Repo::init();
    let a = sparse_image(
        repo.dir.path(),
        "a.img",
        32 << 20,
        &[(0, random_bytes(51, 8 << 20))],
    );
    let b = sparse_image(
        repo.dir.path(),
        "b.img",
        32 << 20,
        &[(0, random_bytes(52, 8 << 20))],
    );
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    repo.ok(&["backup", "--disk", &s(&a)]);
    let a_packs = repo.files("data");
    repo.ok(&["backup", "--disk", &s(&b)]);
    // b's data pack: the largest of the packs b's backup wrote.
    let victim = repo
        .files("data")
        .into_iter()
        .filter(|p| !a_packs.contains(p))
        .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .expect("b's pack");
    let name = victim
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    flip_byte(&victim, std::fs::metadata(&victim).expect("meta").len() / 2);

    let out = repo.run(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let hint = format!("vmstash repair packs {}", &name[..16]);
    assert!(stderr(&out).contains(&name), "{}", describe(&out));
    assert!(stderr(&out).contains(&hint), "{}", describe(&out));

    let salvage = repo.json(&["repair", "packs", &name[..16]]);
    assert_eq!(salvage["lost"], 1, "{salvage}");
    assert!(salvage["salvaged"].as_u64().expect("n") > 0, "{salvage}");
    assert!(!victim.exists());
    let out = repo.run(&["check", "--read-data"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "b lost a chunk: {}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("vmstash repair snapshots"),
        "{}",
        describe(&out)
    );

    let fixed = repo.json(&["repair", "snapshots", "--forget"]);
    let repaired = fixed["repaired"].as_array().expect("list");
    assert_eq!(repaired.len(), 1, "{fixed}");
    assert_eq!(repaired[0]["name"], "b");
    assert_eq!(repaired[0]["lost_bytes"], 512 * 1024, "one chunk: {fixed}");
    let out = repo.run(&["check", "--read-data"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("lost"),
        "the recorded loss is a warning: {}",
        describe(&out)
    );

    // a is unaffected; b refuses its lost bytes, or gives zeros there when asked.
    let target = repo.dir.path().join("ra");
    repo.ok(&["restore", "latest", "--vm", "a", "--target", &s(&target)]);
    assert_eq!(sha256_file(&target.join("a.raw")), sha256_file(&a));
    let target = repo.dir.path().join("rb");
    let refused = repo.run(&["restore", "latest", "--vm", "b", "--target", &s(&target)]);
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(
        stderr(&refused).contains("--zero-lost"),
        "{}",
        describe(&refused)
    );
    let target = repo.dir.path().join("rb0");
    repo.ok(&[
        "restore",
        "latest",
        "--vm",
        "b",
        "--zero-lost",
        "--target",
        &s(&target),
    ]);
    let got = std::fs::read(target.join("b.raw")).expect("restored");
    let want = std::fs::read(&b).expect("image");
    let differ: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
    assert!(
        !differ.is_empty() && differ.len() <= 512 * 1024,
        "{} bytes differ",
        differ.len()
    );
    let (first, last) = (differ[0], differ[differ.len() - 1]);
    assert!(last - first < 512 * 1024, "one chunk differs");
    assert!(
        got[first..=last].iter().all(|&x| x == 0),
        "zeros where lost"
    );

    // The next backup of b stores the chunk again: the repaired snapshot restores whole.
    let repaired_id = repaired[0]["id"].as_str().expect("id").to_string();
    repo.ok(&["backup", "--disk", &s(&b)]);
    let target = repo.dir.path().join("rb1");
    repo.ok(&["restore", &repaired_id[..8], "--target", &s(&target)]);
    assert_eq!(sha256_file(&target.join("b.raw")), sha256_file(&b));
}
