//! Several passwords per repository; changing one rewrites one file.

use crate::util::{describe, Repo, PASSWORD};

#[test]
fn add_list_passwd_remove() {
    let repo = Repo::init();
    let added = repo
        .cmd(&["--json", "key", "add"])
        .env("VMSTASH_NEW_PASSWORD", "second")
        .output()
        .expect("run");
    assert!(added.status.success(), "{}", describe(&added));
    let keys = repo.json(&["key", "list"]);
    assert_eq!(keys.as_array().expect("array").len(), 2);

    let with_second = repo
        .cmd(&["snapshots"])
        .env("VMSTASH_PASSWORD", "second")
        .output()
        .expect("run");
    assert!(with_second.status.success(), "{}", describe(&with_second));

    let out = repo
        .cmd(&["key", "passwd"])
        .env("VMSTASH_NEW_PASSWORD", "third")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", describe(&out));
    let old = repo.run(&["snapshots"]);
    assert_eq!(
        old.status.code(),
        Some(12),
        "the old password must stop working"
    );
    let third = repo
        .cmd(&["--json", "key", "list"])
        .env("VMSTASH_PASSWORD", "third")
        .output()
        .expect("run");
    let list: serde_json::Value = serde_json::from_slice(&third.stdout).expect("json");
    let current = list
        .as_array()
        .expect("array")
        .iter()
        .find(|k| k["current"] == true)
        .expect("current");
    let cur_id = current["id"].as_str().expect("id").to_string();
    let refuse = repo
        .cmd(&["key", "remove", &cur_id])
        .env("VMSTASH_PASSWORD", "third")
        .output()
        .expect("run");
    assert!(
        !refuse.status.success(),
        "removing the key in use must be refused"
    );
    let other = list
        .as_array()
        .expect("array")
        .iter()
        .find(|k| k["current"] == false)
        .expect("other");
    let other_id = other["id"].as_str().expect("id").to_string();
    let rm = repo
        .cmd(&["key", "remove", &other_id[..8]])
        .env("VMSTASH_PASSWORD", "third")
        .output()
        .expect("run");
    assert!(rm.status.success(), "{}", describe(&rm));
    let gone = repo
        .cmd(&["snapshots"])
        .env("VMSTASH_PASSWORD", "second")
        .output()
        .expect("run");
    assert_eq!(gone.status.code(), Some(12));
    assert_ne!(PASSWORD, "third");
}

#[test]
fn password_file_and_command() {
    let repo = Repo::init();
    let pw = repo.dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).expect("write");
    let f = repo
        .cmd(&["snapshots", "--password-file", &pw.display().to_string()])
        .env_remove("VMSTASH_PASSWORD")
        .output()
        .expect("run");
    assert!(f.status.success(), "{}", describe(&f));
    let c = repo
        .cmd(&[
            "snapshots",
            "--password-command",
            &format!("cat {}", pw.display()),
        ])
        .env_remove("VMSTASH_PASSWORD")
        .output()
        .expect("run");
    assert!(c.status.success(), "{}", describe(&c));
    let none = repo
        .cmd(&["snapshots"])
        .env_remove("VMSTASH_PASSWORD")
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no password given"),
        "{}",
        describe(&none)
    );
}
