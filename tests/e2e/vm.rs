//! Backups of real libvirt domains on this host (qemu:///system): a
//! running TCG guest is snapshotted, read, and put back on its original
//! disks whatever happens; a killed backup's overlay is repaired.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::fixtures::libvirt::{TestVm, VmOptions, URI};
use crate::util::{assert_raw_images_equal, describe, sh, sha256_file, Repo};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Backs up `vm` and returns the JSON summary and stderr.
fn backup_vm(repo: &Repo, vm: &TestVm) -> (serde_json::Value, String) {
    let out = repo.run(&["--json", "backup", "--connect", URI, "--vm", &vm.name]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let summary = serde_json::from_str(last).unwrap_or_else(|e| panic!("bad JSON {last:?}: {e}"));
    (summary, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `backup --connect qemu:///system --vm NAME --cbt never`: the path without changed-block
/// tracking (an external snapshot of a running VM, the images of a shut-off one).
fn backup_without_cbt(name: &str) -> [&str; 7] {
    ["backup", "--connect", URI, "--vm", name, "--cbt", "never"]
}

/// Restores the latest snapshot and compares both disks with the VM's.
fn assert_restores_identical(repo: &Repo, vm: &TestVm) {
    let out = repo.restore("latest");
    assert_raw_images_equal(&out.join("vda.raw"), &vm.vda_source);
    assert_eq!(sha256_file(&out.join("vdb.raw")), sha256_file(&vm.vdb));
    let xml = std::fs::read_to_string(out.join("domain.xml")).expect("domain.xml restored");
    assert!(xml.contains(&vm.name), "domain XML of another VM: {xml}");
}

#[test]
fn running_vm_is_backed_up_and_left_on_its_original_disks() {
    if !TestVm::available() {
        return;
    }
    let vm = TestVm::create("live");
    let repo = Repo::init();
    let (summary, stderr) = backup_vm(&repo, &vm);
    assert_eq!(summary["disks"], 2, "{summary}");
    assert!(
        stderr.contains("skipping disk hdc"),
        "the CD-ROM must be skipped, said: {stderr}"
    );
    assert!(
        stderr.contains("crash-consistent"),
        "no agent: must say so: {stderr}"
    );
    assert_eq!(vm.state(), "running");
    vm.assert_on_original_disks();
    assert!(
        vm.leftover_files().is_empty(),
        "leftovers: {:?}",
        vm.leftover_files()
    );
    let snaps = repo.json(&["snapshots"]);
    let tags = snaps[0]["tags"].to_string();
    assert!(
        tags.contains(&format!("vm:{}", vm.name)) && tags.contains("host:"),
        "{tags}"
    );
    assert_restores_identical(&repo, &vm);

    // A second backup of the unchanged VM stores next to nothing.
    let (again, _) = backup_vm(&repo, &vm);
    assert_eq!(again["new_chunks"], 0, "{again}");
}

#[test]
fn shut_off_vm_is_backed_up_through_qemu_nbd_or_read_directly() {
    if !TestVm::available() {
        return;
    }
    let vm = TestVm::create_with(
        "off",
        VmOptions {
            start: false,
            ..VmOptions::default()
        },
    );
    let repo = Repo::init();
    // With changed-block tracking (the default): through qemu-nbd on the images.
    let (tracked, _) = backup_vm(&repo, &vm);
    assert!(tracked["cbt"].is_object(), "{tracked}");
    assert_eq!(vm.state(), "shut off");
    assert!(
        vm.leftover_files().is_empty(),
        "leftovers: {:?}",
        vm.leftover_files()
    );
    assert_restores_identical(&repo, &vm);
    // Without it: the images read directly.
    let direct = repo.json(&backup_without_cbt(&vm.name));
    assert!(direct["cbt"].is_null(), "{direct}");
    assert_eq!(direct["new_chunks"], 0, "{direct}");
    assert_restores_identical(&repo, &vm);
    let list = repo.json(&["vms", "--connect", URI]);
    let me = list
        .as_array()
        .expect("array")
        .iter()
        .find(|v| v["name"] == vm.name.as_str())
        .expect("listed");
    assert_eq!(me["state"], "shut off");
    assert_eq!(me["disks"][1]["virtual_size"], 16 << 20);
}

#[test]
fn vanished_disk_gives_a_clear_error() {
    if !TestVm::available() {
        return;
    }
    let vm = TestVm::create_with(
        "gone",
        VmOptions {
            start: false,
            ..VmOptions::default()
        },
    );
    std::fs::remove_file(&vm.vdb).expect("remove vdb");
    let repo = Repo::init();
    let out = repo.run(&["backup", "--connect", URI, "--vm", &vm.name]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&s(&vm.vdb)) && err.contains("No such file"),
        "{err}"
    );
    assert!(repo
        .json(&["snapshots"])
        .as_array()
        .expect("array")
        .is_empty());
}

/// Waits until `vm` has a file vmstash made (an overlay), up to `limit`.
fn wait_for_overlay(vm: &TestVm, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if vm
            .leftover_files()
            .iter()
            .any(|p| s(p).contains(".vmstash-overlay-"))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Kills a backup with `signal` while its overlay exists; returns the
/// backup's output. Retries a few times if the overlay came and went
/// before the signal landed.
/// Waits until no `virsh` command on `vm` runs any more. A backup killed with
/// -9 leaves its `virsh snapshot-create-as` running (libvirtd finishes the
/// snapshot whatever happens to the client), as a user's `vm-repair` would
/// find it minutes later; repairing while it still runs would race with it.
fn wait_for_orphaned_virsh(vm: &TestVm, timeout: Duration) {
    let start = std::time::Instant::now();
    let pattern = format!("virsh.*{}", vm.name);
    while std::process::Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .expect("pgrep")
        .status
        .success()
    {
        assert!(
            start.elapsed() < timeout,
            "a virsh command on {} still runs after {timeout:?}",
            vm.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal_mid_backup(repo: &Repo, vm: &TestVm, signal: &str) -> std::process::Output {
    for _ in 0..5 {
        let child = repo
            .cmd(&backup_without_cbt(&vm.name))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn backup");
        let seen = wait_for_overlay(vm, Duration::from_secs(20));
        sh("kill", &[signal, &child.id().to_string()]);
        let out = child.wait_with_output().expect("wait");
        wait_for_orphaned_virsh(vm, Duration::from_secs(60));
        if seen && !out.status.success() {
            return out;
        }
    }
    panic!("could not catch a backup with its overlay active");
}

#[test]
fn kill_9_leaves_an_overlay_that_the_next_backup_repairs() {
    if !TestVm::available() {
        return;
    }
    let vm = TestVm::create("kill");
    let repo = Repo::init();
    signal_mid_backup(&repo, &vm, "-9");
    let on_overlay = vm
        .domblklist()
        .iter()
        .any(|(_, src)| src.contains(".vmstash-overlay-"));
    let (summary, stderr) = backup_vm(&repo, &vm);
    if on_overlay {
        assert!(
            stderr.contains("committed and removed the leftover overlay"),
            "{stderr}"
        );
    }
    assert!(summary["snapshot_id"].is_string());
    assert_eq!(vm.state(), "running");
    vm.assert_on_original_disks();
    assert!(
        vm.leftover_files().is_empty(),
        "leftovers: {:?}",
        vm.leftover_files()
    );
    repo.ok(&["check"]);
    assert_restores_identical(&repo, &vm);
}

#[test]
fn vm_repair_commits_a_leftover_overlay() {
    if !TestVm::available() {
        return;
    }
    let vm = TestVm::create("repair");
    let repo = Repo::init();
    signal_mid_backup(&repo, &vm, "-9");
    let out = repo.run(&["vm-repair", "--connect", URI, "--vm", &vm.name]);
    assert!(out.status.success(), "{}", describe(&out));
    vm.assert_on_original_disks();
    assert!(
        vm.leftover_files().is_empty(),
        "leftovers: {:?}",
        vm.leftover_files()
    );
    let again = repo.run(&["vm-repair", "--connect", URI, "--vm", &vm.name]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to repair"),
        "{}",
        describe(&again)
    );
}

#[test]
fn sigterm_mid_backup_puts_the_vm_back_and_writes_no_snapshot() {
    if !TestVm::available() {
        return;
    }
    let vm = TestVm::create("term");
    let repo = Repo::init();
    let out = signal_mid_backup(&repo, &vm, "-TERM");
    assert_eq!(out.status.code(), Some(130), "{}", describe(&out));
    vm.assert_on_original_disks();
    assert!(
        vm.leftover_files().is_empty(),
        "leftovers: {:?}",
        vm.leftover_files()
    );
    assert!(repo
        .json(&["snapshots"])
        .as_array()
        .expect("array")
        .is_empty());
    repo.ok(&["check"]);
}

#[test]
fn failed_backup_of_a_running_vm_leaves_it_on_its_original_disks() {
    if !TestVm::available() {
        return;
    }
    let vm = TestVm::create("full");
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).expect("mkdir");
    sh(
        "mount",
        &["-t", "tmpfs", "-o", "size=1m", "tmpfs", &s(&mnt)],
    );
    let result = std::panic::catch_unwind(|| {
        let repo = Repo {
            path: mnt.join("repo"),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        repo.ok(&["init"]);
        let out = repo.run(&["backup", "--connect", URI, "--vm", &vm.name]);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("No space left"),
            "{}",
            describe(&out)
        );
        assert_eq!(vm.state(), "running");
        vm.assert_on_original_disks();
        assert!(
            vm.leftover_files().is_empty(),
            "leftovers: {:?}",
            vm.leftover_files()
        );
    });
    sh("umount", &[&s(&mnt)]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn restore_define_creates_a_bootable_clone_with_new_identity() {
    if !TestVm::available() {
        return;
    }
    let vm = TestVm::create("src");
    let repo = Repo::init();
    backup_vm(&repo, &vm);
    let target = vm.dir.join("restored");
    let t = s(&target);

    let same = repo.run(&["restore", "latest", "--target", &t, "--define"]);
    assert!(
        !same.status.success(),
        "defining over an existing VM must be refused"
    );
    assert!(
        String::from_utf8_lossy(&same.stderr).contains("already exists"),
        "{}",
        describe(&same)
    );

    let clone = format!("{}-clone", vm.name);
    let target2 = vm.dir.join("restored2");
    repo.ok(&[
        "restore",
        "latest",
        "--target",
        &s(&target2),
        "--define",
        "--name",
        &clone,
    ]);
    let result = std::panic::catch_unwind(|| {
        let xml = crate::fixtures::libvirt::virsh(&["dumpxml", &clone]);
        assert!(xml.contains(&s(&target2.join("vda.raw"))), "{xml}");
        assert!(xml.contains(&s(&target2.join("vdb.raw"))), "{xml}");
        let old_uuid = crate::fixtures::libvirt::virsh(&["domuuid", &vm.name]);
        let new_uuid = crate::fixtures::libvirt::virsh(&["domuuid", &clone]);
        assert_ne!(old_uuid.trim(), new_uuid.trim());
        crate::fixtures::libvirt::virsh(&["start", &clone]);
        assert_eq!(
            crate::fixtures::libvirt::virsh(&["domstate", &clone]).trim(),
            "running"
        );
        assert_eq!(sha256_file(&target2.join("vdb.raw")), sha256_file(&vm.vdb));
    });
    let _ = crate::fixtures::libvirt::virsh_output(&["destroy", &clone]);
    let _ = crate::fixtures::libvirt::virsh_output(&["undefine", &clone]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
