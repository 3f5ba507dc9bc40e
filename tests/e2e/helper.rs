//! The hashblocks helper against a real sshd and a running libvirt guest: shipped once and
//! reused, replaced when the host's copy differs, incremental backups that read only changed
//! chunks and restore bit-identical, a fallback when it cannot run, and a clear error (and no
//! snapshot) when it dies mid-stream.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::fixtures::libvirt::TestVm;
use crate::fixtures::sshd::Sshd;
use crate::util::{describe, random_bytes, sha256_file, write_at, Repo};

/// Where the helper lands on the host: the test sshd logs in as root.
const REMOTE_CACHE: &str = "/root/.cache/vmstash";

/// The static helper `scripts/build-helper.sh` installs beside the vmstash binary; `None`
/// (skip) when it is missing, except under CI where that fails the test.
pub fn helper_binary() -> Option<PathBuf> {
    let p = crate::util::bin().with_file_name("vmstash-hashblocks");
    if p.exists() {
        return Some(p);
    }
    let why = format!(
        "{} is missing: run `bash scripts/build-helper.sh`",
        p.display()
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "prerequisite missing under CI: {why}"
    );
    eprintln!("SKIPPED: {why}");
    None
}

fn remote_copy(helper_bytes: &[u8]) -> PathBuf {
    let digest = hex::encode(Sha256::digest(helper_bytes));
    Path::new(REMOTE_CACHE).join(format!("hashblocks-{digest}"))
}

/// `vmstash --json backup --connect … --vm NAME` with `helper` as the helper to ship.
fn backup(sshd: &Sshd, repo: &Repo, vm: &TestVm, helper: &Path) -> std::process::Output {
    backup_with(sshd, repo, vm, helper, &[])
}

/// [`backup`] with more backup options.
pub fn backup_with(
    sshd: &Sshd,
    repo: &Repo,
    vm: &TestVm,
    helper: &Path,
    extra: &[&str],
) -> std::process::Output {
    backup_command(sshd, repo, vm, helper, extra)
        .output()
        .expect("run vmstash")
}

/// The command [`backup_with`] runs.
pub fn backup_command(
    sshd: &Sshd,
    repo: &Repo,
    vm: &TestVm,
    helper: &Path,
    extra: &[&str],
) -> std::process::Command {
    let uri = format!("qemu+ssh://root@127.0.0.1:{}/system", sshd.port);
    let mut cmd = vmstash_over_ssh(sshd, repo, helper);
    cmd.args(["--json", "backup", "--connect", &uri, "--vm", &vm.name])
        .args(extra);
    cmd
}

/// vmstash with the test sshd's key and known hosts, on `repo`, shipping `helper`; the caller
/// adds the command and its arguments.
pub fn vmstash_over_ssh(sshd: &Sshd, repo: &Repo, helper: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(crate::util::bin());
    cmd.args(["--identity", &sshd.client_key.display().to_string()])
        .args(["--known-hosts", &sshd.known_hosts.display().to_string()])
        .args(["-r", &repo.path.display().to_string()])
        .env("VMSTASH_PASSWORD", crate::util::PASSWORD)
        .env("VMSTASH_HASHBLOCKS", helper)
        // For a repository of the shared moto server (s3.rs); unused by a local one.
        .envs(crate::s3::MOTO_ENV)
        .env("HOME", repo.dir.path())
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("VMSTASH_REPOSITORY")
        .stdin(std::process::Stdio::null());
    cmd
}

pub fn summary(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", describe(out));
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {}", describe(out)))
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Puts `bytes` at `path` through a new file renamed over it: the helper a backup started may
/// still be exiting, and a running executable cannot be written in place (ETXTBSY).
fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("test-tmp");
    std::fs::write(&tmp, bytes).expect("write the replacement");
    std::fs::rename(&tmp, path).expect("rename it over the host's copy");
}

fn snapshot_count(repo: &Repo) -> usize {
    repo.json(&["snapshots"]).as_array().expect("array").len()
}

/// A helper (spec §19, protocol 3) that runs commands and takes commands on exit like the real
/// one, then sends half a frame in answer to the first hash request and exits.
const DYING_HELPER: &str = r#"#!/usr/bin/env python3
import struct, subprocess, sys
out, inp = sys.stdout.buffer, sys.stdin.buffer
def send(kind, body):
    out.write(struct.pack(">IB", len(body) + 1, kind) + body)
    out.flush()
send(0x01, b"vmstash-hashblocks" + struct.pack(">HH", 3, 1))
while True:
    head = inp.read(4)
    if len(head) < 4:
        sys.exit(0)
    body = inp.read(struct.unpack(">I", head)[0])
    if body[0] == 0x06:
        send(0x14, struct.pack(">iB", 0, 0))
        continue
    if body[0] != 0x03:
        out.write(b"\x00\x00\x00\x19\x11\x00")
        out.flush()
        sys.stderr.write("hashblocks: simulated crash\n")
        sys.exit(3)
    count, pos, argv = struct.unpack(">H", body[1:3])[0], 3, []
    for _ in range(count):
        n = struct.unpack(">H", body[pos:pos + 2])[0]
        argv.append(body[pos + 2:pos + 2 + n])
        pos += 2 + n
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
    for stream, data in ((1, done.stdout), (2, done.stderr)):
        for at in range(0, len(data), 60000):
            piece = data[at:at + 60000]
            send(0x13, bytes([stream]) + struct.pack(">H", len(piece)) + piece)
    status = done.returncode if done.returncode >= 0 else 128 - done.returncode
    send(0x14, struct.pack(">iB", status, 0))
"#;

#[test]
fn hashblocks_helper_ships_once_and_moves_only_changed_chunks() {
    if !Sshd::available() || !TestVm::available() {
        return;
    }
    let Some(helper) = helper_binary() else {
        return;
    };
    let helper_bytes = std::fs::read(&helper).expect("read helper");
    let remote = remote_copy(&helper_bytes);
    let sshd = Sshd::start();
    let vm = TestVm::create("helper");
    let repo = Repo::init();

    // Full backup through the helper: it is uploaded (or found) and runs.
    let first = backup(&sshd, &repo, &vm, &helper);
    let full = summary(&first);
    assert!(
        !stderr(&first).contains("not using the hashblocks helper"),
        "{}",
        describe(&first)
    );
    assert_eq!(
        std::fs::read(&remote).expect("the helper on the host"),
        helper_bytes
    );
    let shipped = std::fs::metadata(&remote)
        .expect("stat")
        .modified()
        .expect("mtime");

    // Change 1 MiB of the raw disk; the next backup reads only the chunks around it, and runs
    // every command on the host (virsh, qemu-img) through the helper: one exec channel, one
    // login shell, for the whole backup.
    write_at(&vm.vdb, 3 << 20, &random_bytes(99, 1 << 20));
    let log_before = sshd.log().len();
    let second = summary(&backup(&sshd, &repo, &vm, &helper));
    let sessions = sshd.log()[log_before..]
        .matches("Starting session: command")
        .count();
    assert_eq!(
        sessions,
        1,
        "exec channels of one backup:\n{}",
        &sshd.log()[log_before..]
    );
    let read = second["bytes_read"].as_u64().expect("bytes_read");
    assert!(
        read > 0 && read <= 2 << 20,
        "read {read} bytes after a 1 MiB change: {second}"
    );
    assert!(
        read * 4 < full["bytes_read"].as_u64().expect("bytes_read"),
        "{second} vs {full}"
    );
    assert_eq!(
        std::fs::metadata(&remote)
            .expect("stat")
            .modified()
            .expect("mtime"),
        shipped,
        "the helper was uploaded again although the host had it"
    );
    let restored = repo.restore("latest");
    assert_eq!(sha256_file(&restored.join("vdb.raw")), sha256_file(&vm.vdb));
    crate::util::assert_raw_images_equal(&restored.join("vda.raw"), &vm.vda_source);

    // A host copy that differs from this vmstash's helper is replaced: one of another size
    // (found by its size), and one of the same size (found by its SHA-256, on the host).
    replace_file(&remote, b"#!/bin/sh\nexit 1\n");
    let third = backup(&sshd, &repo, &vm, &helper);
    summary(&third);
    assert!(
        !stderr(&third).contains("not using the hashblocks helper"),
        "{}",
        describe(&third)
    );
    assert_eq!(std::fs::read(&remote).expect("replaced"), helper_bytes);
    let mut tampered = helper_bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    replace_file(&remote, &tampered);
    let fourth = backup(&sshd, &repo, &vm, &helper);
    summary(&fourth);
    assert!(
        !stderr(&fourth).contains("not using the hashblocks helper"),
        "{}",
        describe(&fourth)
    );
    assert_eq!(std::fs::read(&remote).expect("replaced"), helper_bytes);

    // --no-helper reads every data chunk over SFTP, without a warning.
    let plain = backup_with(&sshd, &repo, &vm, &helper, &["--no-helper"]);
    let without = summary(&plain);
    assert!(
        !stderr(&plain).contains("hashblocks"),
        "{}",
        describe(&plain)
    );
    let read_all = without["bytes_read"].as_u64().expect("bytes_read");
    assert!(
        read_all >= full["bytes_read"].as_u64().expect("bytes_read"),
        "{without} vs {full}"
    );

    let fakes = tempfile::tempdir().expect("tempdir");
    // A helper that cannot run there (not a program for this host): SFTP reads, one warning.
    let garbage = fakes.path().join("garbage");
    std::fs::write(&garbage, random_bytes(5, 4096)).expect("write");
    let fallback = backup(&sshd, &repo, &vm, &garbage);
    let fell_back = summary(&fallback);
    let warning = stderr(&fallback);
    assert_eq!(
        warning.matches("not using the hashblocks helper").count(),
        1,
        "{}",
        describe(&fallback)
    );
    assert_eq!(
        fell_back["bytes_read"].as_u64(),
        Some(read_all),
        "without the helper every data chunk is read: {fell_back}"
    );

    // A helper that dies mid-stream: the backup fails, says why, writes no snapshot, and the
    // VM is back on its disks. It runs the backup's commands (protocol 2's RUN, as the real
    // helper does) and dies in the middle of its answer to the first hash request.
    let dying = fakes.path().join("dying");
    std::fs::write(&dying, DYING_HELPER).expect("write");
    let before = snapshot_count(&repo);
    let died = backup(&sshd, &repo, &vm, &dying);
    assert!(!died.status.success(), "{}", describe(&died));
    assert!(
        stderr(&died).contains("stopped while hashing"),
        "{}",
        describe(&died)
    );
    assert_eq!(snapshot_count(&repo), before, "a snapshot was written");
    assert_eq!(vm.state(), "running");
    vm.assert_on_original_disks();
    assert!(vm.leftover_files().is_empty(), "{:?}", vm.leftover_files());
    repo.ok(&["check"]);

    for fake in [&garbage, &dying] {
        let _ = std::fs::remove_file(remote_copy(&std::fs::read(fake).expect("read")));
    }
}

#[test]
fn running_vm_backup_with_the_helper_into_an_s3_repository() {
    if !Sshd::available() || !TestVm::available() {
        return;
    }
    let Some(helper) = helper_binary() else {
        return;
    };
    let Some(server) = crate::s3::moto() else {
        return;
    };
    let sshd = Sshd::start();
    let vm = TestVm::create("s3");
    let repo = crate::s3::s3_repo(server);
    let first = backup(&sshd, &repo, &vm, &helper);
    summary(&first);
    assert!(
        !stderr(&first).contains("not using the hashblocks helper"),
        "{}",
        describe(&first)
    );
    write_at(&vm.vdb, 5 << 20, &random_bytes(77, 1 << 20));
    let second = summary(&backup(&sshd, &repo, &vm, &helper));
    let read = second["bytes_read"].as_u64().expect("bytes_read");
    assert!(
        read > 0 && read <= 2 << 20,
        "read {read} bytes after a 1 MiB change: {second}"
    );
    assert_eq!(vm.state(), "running");
    vm.assert_on_original_disks();
    let target = repo.restore("latest");
    assert_eq!(sha256_file(&target.join("vdb.raw")), sha256_file(&vm.vdb));
    repo.ok(&["check", "--read-data"]);
}
