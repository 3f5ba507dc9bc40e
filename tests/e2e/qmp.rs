//! A QEMU without libvirt, backed up through its QMP socket (`qmp+ssh://`, `qmp:///`): a full
//! then an incremental backup that reads only what the guest wrote, bit-exact restores with
//! QEMU's command line beside the disks, nothing left in QEMU or on the host afterwards (nodes,
//! jobs, exports, NBD server, scratch overlays; only the newest bitmap), a fallback with one
//! line when the bitmap is gone, and `kill -9` of vmstash mid-backup cleaned up by the helper on
//! the host (or, on this host, by `vm-repair`).

use std::path::Path;

use serde_json::json;

use crate::fixtures::qemu::TestQemu;
use crate::fixtures::sshd::Sshd;
use crate::helper::{helper_binary, stderr, summary, vmstash_over_ssh};
use crate::util::{assert_raw_images_equal, describe, random_bytes, Repo};

const MIB: u64 = 1 << 20;
const MIB_USIZE: usize = 1 << 20;

/// `vmstash --json backup --connect qmp+ssh://root@127.0.0.1:PORT/…/qmp.sock EXTRA…`.
fn ssh_backup(
    sshd: &Sshd,
    repo: &Repo,
    qemu: &TestQemu,
    helper: &Path,
    extra: &[&str],
) -> std::process::Command {
    let uri = format!(
        "qmp+ssh://root@127.0.0.1:{}{}",
        sshd.port,
        qemu.qmp.display()
    );
    let mut cmd = vmstash_over_ssh(sshd, repo, helper);
    cmd.args(["--json", "backup", "--connect", &uri])
        .args(extra);
    cmd
}

/// `vmstash --json backup --connect qmp:///…/qmp.sock EXTRA…`.
fn local_backup(repo: &Repo, qemu: &TestQemu, extra: &[&str]) -> std::process::Output {
    let uri = format!("qmp://{}", qemu.qmp.display());
    let mut args = vec!["--json", "backup", "--connect", &uri];
    args.extend_from_slice(extra);
    repo.run(&args)
}

fn run(mut cmd: std::process::Command) -> std::process::Output {
    cmd.output().expect("run vmstash")
}

fn cbt_of(summary: &serde_json::Value) -> &serde_json::Value {
    let cbt = &summary["cbt"];
    assert!(cbt.is_object(), "no changed-block tracking: {summary}");
    cbt
}

/// Asserts nothing of a backup is left in QEMU or beside it, its nodes are those of
/// `nodes_before`, and vda carries exactly the bitmap `checkpoint`, recording.
fn assert_clean(qemu: &TestQemu, nodes_before: &[String], checkpoint: &str) {
    assert_eq!(qemu.leftovers(), Vec::<String>::new(), "leftovers");
    assert_eq!(qemu.node_names(), nodes_before, "block nodes changed");
    assert_eq!(
        qemu.bitmaps("virtio0"),
        [(checkpoint.to_owned(), true)],
        "vda's bitmaps"
    );
    assert!(
        qemu.bitmaps("virtio1").is_empty(),
        "a raw disk has no bitmap"
    );
}

#[test]
fn qemu_without_libvirt_full_then_incremental_over_ssh() {
    if !Sshd::available() || !TestQemu::available() {
        return;
    }
    let Some(helper) = helper_binary() else {
        return;
    };
    let sshd = Sshd::start();
    let qemu = TestQemu::start("qmp");
    let repo = Repo::init();
    let work = tempfile::tempdir().expect("tempdir");
    let nodes = qemu.node_names();

    let first_out = run(ssh_backup(&sshd, &repo, &qemu, &helper, &[]));
    let first = summary(&first_out);
    assert_eq!(first["name"], qemu.name.as_str(), "named after -name");
    assert_eq!(first["disks"], 2, "the CD-ROM is skipped: {first}");
    assert!(
        stderr(&first_out).contains("skipping disk ide0-cd0"),
        "{}",
        describe(&first_out)
    );
    let c1 = cbt_of(&first)["checkpoint"]
        .as_str()
        .expect("c1")
        .to_owned();
    assert!(cbt_of(&first)["since"].is_null());
    assert_clean(&qemu, &nodes, &c1);
    let live1 = qemu.live_vda(work.path());

    // Two 1 MiB writes, chunk-aligned: the bitmap marks exactly 2 MiB of vda.
    qemu.guest_write("virtio0", 8 * MIB, &random_bytes(71, MIB_USIZE));
    qemu.guest_write("virtio0", 40 * MIB, &random_bytes(72, MIB_USIZE));
    let log_before = sshd.log().len();
    let second = summary(&run(ssh_backup(&sshd, &repo, &qemu, &helper, &[])));
    let sessions = sshd.log()[log_before..]
        .matches("Starting session: command")
        .count();
    assert_eq!(
        sessions,
        1,
        "one exec channel: {}",
        &sshd.log()[log_before..]
    );
    let inc = cbt_of(&second);
    assert_eq!(inc["since"].as_str(), Some(c1.as_str()), "{second}");
    let c2 = inc["checkpoint"].as_str().expect("c2").to_owned();
    assert_clean(&qemu, &nodes, &c2);
    let live2 = qemu.live_vda(work.path());

    // Nothing written: vda reads nothing; the raw disk is read whole each time, so the
    // incremental's reading of vda was exactly the 2 MiB written.
    let third = summary(&run(ssh_backup(&sshd, &repo, &qemu, &helper, &[])));
    let raw_disk = cbt_of(&third)["bytes_hashed"].as_u64().expect("bytes");
    assert!(raw_disk <= 16 * MIB, "{third}");
    assert_eq!(
        inc["bytes_hashed"].as_u64(),
        Some(raw_disk + 2 * MIB),
        "vda's incremental must read exactly the written chunks: {second} / {third}"
    );
    assert_eq!(third["new_chunks"], 0, "{third}");
    let c3 = cbt_of(&third)["checkpoint"]
        .as_str()
        .expect("c3")
        .to_owned();
    assert_clean(&qemu, &nodes, &c3);

    // Every snapshot restores bit-exact, with QEMU's command line beside the disks.
    let snapshots = repo.json(&["snapshots"]);
    let ids: Vec<&str> = snapshots
        .as_array()
        .expect("snapshots")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3);
    for (id, live) in ids.iter().zip([&live1, &live2, &live2]) {
        let out = repo.restore(id);
        assert_raw_images_equal(&out.join("virtio0.raw"), live);
        assert_raw_images_equal(&out.join("virtio1.raw"), &qemu.vdb);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("qemu.json")).expect("qemu.json"))
                .expect("JSON");
        let cmdline: Vec<&str> = config["cmdline"]
            .as_array()
            .expect("cmdline")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(cmdline.contains(&"-qmp"), "{config}");
        assert_eq!(config["qmp_socket"], qemu.qmp.display().to_string());
    }
    repo.ok(&["check", "--read-data"]);
}

#[test]
fn qemu_without_libvirt_falls_back_and_cleans_up_after_kill_9() {
    if !Sshd::available() || !TestQemu::available() {
        return;
    }
    let Some(helper) = helper_binary() else {
        return;
    };
    let sshd = Sshd::start();
    let qemu = TestQemu::start("qmpkill");
    let repo = Repo::init();
    let work = tempfile::tempdir().expect("tempdir");
    let nodes = qemu.node_names();

    // Local (qmp:///): vmstash talks to the socket itself.
    let first = summary(&local_backup(&repo, &qemu, &[]));
    let c1 = cbt_of(&first)["checkpoint"]
        .as_str()
        .expect("c1")
        .to_owned();
    assert_clean(&qemu, &nodes, &c1);

    // The bitmap removed behind vmstash's back: the next backup says so and hashes vda whole.
    let node = qemu.execute("query-block", json!({}))[0]["inserted"]["node-name"]
        .as_str()
        .expect("node")
        .to_owned();
    qemu.execute(
        "block-dirty-bitmap-remove",
        json!({"node": node, "name": c1}),
    );
    qemu.guest_write("virtio0", 20 * MIB, &random_bytes(81, MIB_USIZE));
    let out = local_backup(&repo, &qemu, &[]);
    let fallback = summary(&out);
    assert!(
        stderr(&out).contains(&format!(
            "disk virtio0: hashing every chunk: QEMU has no bitmap {c1}"
        )),
        "{}",
        describe(&out)
    );
    assert!(cbt_of(&fallback)["since"].is_null(), "{fallback}");
    let c2 = cbt_of(&fallback)["checkpoint"]
        .as_str()
        .expect("c2")
        .to_owned();
    assert_clean(&qemu, &nodes, &c2);
    assert_raw_images_equal(
        &repo.restore("latest").join("virtio0.raw"),
        &qemu.live_vda(work.path()),
    );

    // kill -9 of vmstash while the fleecing runs (after its 2nd and 3rd change to the
    // repository): the helper on the host ends it and merges the new bitmap back into the
    // parent's, so the next backup is still incremental from the last saved snapshot.
    let mut parent = c2;
    for (n, writes) in ["2", "3"].into_iter().enumerate() {
        let seed = 30 + u64::try_from(n).expect("n");
        qemu.guest_write("virtio0", seed * MIB, &random_bytes(seed, MIB_USIZE));
        let mut cmd = ssh_backup(&sshd, &repo, &qemu, &helper, &[]);
        let out = run({
            cmd.env("VMSTASH_TEST_KILL_AFTER_WRITES", writes);
            cmd
        });
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "{}",
            describe(&out)
        );
        wait_until(|| qemu.leftovers().is_empty() && qemu.node_names() == nodes);
        assert_clean(&qemu, &nodes, &parent);
        let next_out = run(ssh_backup(&sshd, &repo, &qemu, &helper, &[]));
        let next = summary(&next_out);
        assert_eq!(
            cbt_of(&next)["since"].as_str(),
            Some(parent.as_str()),
            "{next}"
        );
        assert!(
            !stderr(&next_out).contains("hashing every chunk"),
            "{}",
            describe(&next_out)
        );
        parent = cbt_of(&next)["checkpoint"].as_str().expect("c").to_owned();
        assert_clean(&qemu, &nodes, &parent);
        assert_raw_images_equal(
            &repo.restore("latest").join("virtio0.raw"),
            &qemu.live_vda(work.path()),
        );
    }

    // On this host no helper is left to clean up: the next backup refuses to touch what the
    // killed one left and names vm-repair, which removes it; the parent's bitmap, disabled by
    // the killed backup, is not trusted: vda is hashed whole once, and is right.
    let uri = format!("qmp://{}", qemu.qmp.display());
    qemu.guest_write("virtio0", 50 * MIB, &random_bytes(91, MIB_USIZE));
    let killed = repo
        .cmd(&["--json", "backup", "--connect", &uri])
        .env("VMSTASH_TEST_KILL_AFTER_WRITES", "2")
        .output()
        .expect("run vmstash");
    assert!(!killed.status.success(), "{}", describe(&killed));
    assert!(
        !qemu.leftovers().is_empty(),
        "the killed backup left its fleecing"
    );
    let refused = local_backup(&repo, &qemu, &[]);
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(
        stderr(&refused).contains("vm-repair"),
        "{}",
        describe(&refused)
    );
    let repair = repo.run(&["vm-repair", "--connect", &uri]);
    assert!(repair.status.success(), "{}", describe(&repair));
    assert!(
        String::from_utf8_lossy(&repair.stdout).contains("removed"),
        "{}",
        describe(&repair)
    );
    assert!(qemu.leftovers().is_empty(), "{:?}", qemu.leftovers());
    assert_eq!(qemu.node_names(), nodes);
    let out = local_backup(&repo, &qemu, &[]);
    let after = summary(&out);
    assert!(
        stderr(&out).contains("does not record writes"),
        "{}",
        describe(&out)
    );
    let last = cbt_of(&after)["checkpoint"].as_str().expect("c").to_owned();
    assert_clean(&qemu, &nodes, &last);
    assert_raw_images_equal(
        &repo.restore("latest").join("virtio0.raw"),
        &qemu.live_vda(work.path()),
    );
    let repair = repo.run(&["vm-repair", "--connect", &uri]);
    assert!(
        String::from_utf8_lossy(&repair.stdout).contains("nothing to repair"),
        "{}",
        describe(&repair)
    );

    // `vms` shows the QEMU as a backup sees it; `restore --define` has no domain XML to define
    // and says so before writing anything.
    let vms = repo.json(&["vms", "--connect", &uri]);
    assert_eq!(vms[0]["name"], qemu.name.as_str(), "{vms}");
    assert_eq!(vms[0]["state"], "running", "{vms}");
    let targets: Vec<&str> = vms[0]["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .filter_map(|d| d["target"].as_str())
        .collect();
    assert_eq!(targets, ["virtio0", "virtio1"], "{vms}");
    let target = work.path().join("define");
    let define = repo.run(&[
        "restore",
        "latest",
        "--target",
        &target.display().to_string(),
        "--define",
    ]);
    assert_eq!(define.status.code(), Some(2), "{}", describe(&define));
    assert!(
        stderr(&define).contains("qemu.json"),
        "{}",
        describe(&define)
    );
    assert!(!target.join("virtio0.raw").exists(), "nothing is restored");
    repo.ok(&["check", "--read-data"]);
}

/// Waits up to 10 s for `done`.
fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
