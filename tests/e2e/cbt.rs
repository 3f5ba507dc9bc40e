//! Changed-block tracking against a real libvirtd and a running TCG guest with qcow2 dirty
//! bitmaps: a full then an incremental backup that reads only what the guest wrote (through
//! QEMU's own block layer, so that the bitmap sees it), bit-exact restores, a fallback with one
//! line for every way the tracking can become untrustworthy, a verify run that catches a bitmap
//! that missed writes, and `kill -9` at several points leaving no backup job behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fixtures::libvirt::{virsh, TestVm, URI};
use crate::fixtures::sshd::Sshd;
use crate::helper::{backup_command, backup_with, helper_binary, stderr, summary};
use crate::util::{assert_raw_images_equal, describe, random_bytes, sh, Repo};

const MIB: u64 = 1 << 20;
const MIB_USIZE: usize = 1 << 20;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Writes `data` at `offset` of the guest disk behind device `alias` (virtio-disk0 is vda)
/// through QEMU (HMP `qemu-io` on the device's backend), as a guest write would go: through
/// the dirty bitmaps and a running backup job's filter.
fn guest_write(vm: &TestVm, alias: &str, offset: u64, data: &[u8]) {
    let file = vm.dir.join(format!("write-{offset}.bin"));
    std::fs::write(&file, data).expect("write the data file");
    // HMP qemu-io runs in QEMU, as the libvirt-qemu user.
    sh("chmod", &["0644", &s(&file)]);
    let command = format!(
        "qemu-io -d {alias}/virtio-backend \"write -s {} {offset} {}\"",
        s(&file),
        data.len()
    );
    virsh(&["qemu-monitor-command", &vm.name, "--hmp", &command]);
    std::fs::remove_file(&file).expect("remove the data file");
}

/// vda as the guest sees it now, as a raw file in `dir`. A running QEMU is flushed first: it
/// may hold the qcow2 metadata of new clusters in its cache, and `qemu-img -U` would read
/// zeros there.
fn live_vda(vm: &TestVm, dir: &Path) -> PathBuf {
    if vm.state() == "running" {
        let flush = "qemu-io -d virtio-disk0/virtio-backend flush";
        virsh(&["qemu-monitor-command", &vm.name, "--hmp", flush]);
    }
    let out = dir.join("vda-live.raw");
    sh(
        "qemu-img",
        &["convert", "-U", "-O", "raw", &s(&vm.vda), &s(&out)],
    );
    out
}

/// The domain's checkpoints.
fn checkpoints(vm: &TestVm) -> Vec<String> {
    virsh(&["checkpoint-list", &vm.name, "--name"])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Asserts the VM runs on its own disks with no job, and that nothing of a backup is left in
/// its directory (scratch files, XML files).
fn assert_clean(vm: &TestVm) {
    assert_eq!(vm.state(), "running");
    vm.assert_on_original_disks();
    assert_eq!(vm.job_type(), "None", "a backup job is left");
    assert!(
        vm.leftover_files().is_empty(),
        "leftovers: {:?}",
        vm.leftover_files()
    );
}

/// Restores the latest snapshot and asserts vda equals `want` (a raw image).
fn assert_latest_vda_is(repo: &Repo, want: &Path) {
    assert_raw_images_equal(&repo.restore("latest").join("vda.raw"), want);
}

/// `vmstash --json backup --connect qemu:///system --vm NAME EXTRA…`.
fn local_backup(repo: &Repo, vm: &TestVm, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--json", "backup", "--connect", URI, "--vm", &vm.name];
    args.extend_from_slice(extra);
    repo.run(&args)
}

fn cbt_of(summary: &serde_json::Value) -> &serde_json::Value {
    let cbt = &summary["cbt"];
    assert!(cbt.is_object(), "no changed-block tracking: {summary}");
    cbt
}

#[test]
fn incremental_of_a_running_vm_reads_only_what_the_guest_wrote() {
    if !Sshd::available() || !TestVm::available() {
        return;
    }
    let Some(helper) = helper_binary() else {
        return;
    };
    let sshd = Sshd::start();
    let vm = TestVm::create("cbt");
    let repo = Repo::init();
    let work = tempfile::tempdir().expect("tempdir");
    let only_vda = ["--exclude-disk", "vdb"];

    let first = summary(&backup_with(&sshd, &repo, &vm, &helper, &only_vda));
    let full = cbt_of(&first);
    assert!(full["since"].is_null(), "{first}");
    let c1 = full["checkpoint"].as_str().expect("checkpoint").to_owned();
    assert_eq!(checkpoints(&vm), std::slice::from_ref(&c1));
    assert_clean(&vm);

    // Two scattered 1 MiB writes, chunk-aligned: the bitmap marks exactly 2 MiB.
    guest_write(&vm, "virtio-disk0", 8 * MIB, &random_bytes(41, MIB_USIZE));
    guest_write(&vm, "virtio-disk0", 40 * MIB, &random_bytes(42, MIB_USIZE));
    let log_before = sshd.log().len();
    let second_out = backup_with(&sshd, &repo, &vm, &helper, &only_vda);
    let second = summary(&second_out);
    let sessions = sshd.log()[log_before..]
        .matches("Starting session: command")
        .count();
    assert_eq!(sessions, 1, "exec channels: {}", &sshd.log()[log_before..]);
    let inc = cbt_of(&second);
    assert_eq!(inc["since"].as_str(), Some(c1.as_str()), "{second}");
    assert_eq!(
        inc["bytes_hashed"].as_u64(),
        Some(2 * MIB),
        "the helper must read exactly the written chunks: {second}"
    );
    let read = second["bytes_read"].as_u64().expect("bytes_read");
    assert!(read <= 2 * MIB, "{second}");
    assert!(second["new_chunks"].as_u64() >= Some(4), "{second}");
    let c2 = inc["checkpoint"].as_str().expect("checkpoint").to_owned();
    assert_eq!(checkpoints(&vm), [c2], "the old checkpoint must go");
    assert_clean(&vm);
    let live = live_vda(&vm, work.path());
    let image = std::fs::read(&live).expect("read live vda");
    let at = 40 * MIB_USIZE;
    assert_eq!(
        &image[at..at + 4096],
        &random_bytes(42, MIB_USIZE)[..4096],
        "the guest write did not reach the disk"
    );
    assert_latest_vda_is(&repo, &live);

    // Nothing written: nothing read on the host, nothing new.
    let third = summary(&backup_with(&sshd, &repo, &vm, &helper, &only_vda));
    assert_eq!(cbt_of(&third)["bytes_hashed"].as_u64(), Some(0), "{third}");
    assert_eq!(third["new_chunks"].as_u64(), Some(0), "{third}");
    assert!(
        !stderr(&backup_with(&sshd, &repo, &vm, &helper, &only_vda)).contains("hashing every"),
        "no fallback expected"
    );
    repo.ok(&["check", "--read-data"]);
}

/// The QEMU node name of the disk behind device `alias`, from QMP `query-block`.
fn node_name(vm: &TestVm, alias: &str) -> String {
    let out = virsh(&[
        "qemu-monitor-command",
        &vm.name,
        r#"{"execute":"query-block"}"#,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("QMP JSON");
    v["return"]
        .as_array()
        .expect("array")
        .iter()
        .find(|d| d["qdev"].as_str().is_some_and(|q| q.contains(alias)))
        .and_then(|d| d["inserted"]["node-name"].as_str())
        .unwrap_or_else(|| panic!("no node for {alias}: {out}"))
        .to_owned()
}

/// Runs a QMP command on the domain's dirty bitmap `bitmap` of `node`.
fn qmp_bitmap(vm: &TestVm, command: &str, node: &str, bitmap: &str) {
    let qmp =
        format!(r#"{{"execute":"{command}","arguments":{{"node":"{node}","name":"{bitmap}"}}}}"#);
    virsh(&["qemu-monitor-command", &vm.name, &qmp]);
}

/// One backup after a guest write, expected to fall back with a line containing `says`, and
/// to restore bit-exact.
fn falls_back(repo: &Repo, vm: &TestVm, work: &Path, seed: u64, says: &str) {
    guest_write(
        vm,
        "virtio-disk0",
        seed * MIB,
        &random_bytes(seed, MIB_USIZE),
    );
    let out = local_backup(repo, vm, &[]);
    let summary = summary(&out);
    assert!(stderr(&out).contains(says), "{}", describe(&out));
    assert_eq!(
        cbt_of(&summary)["since"],
        serde_json::Value::Null,
        "{summary}"
    );
    assert_clean(vm);
    assert_latest_vda_is(repo, &live_vda(vm, work));
}

#[test]
fn cbt_falls_back_when_it_cannot_be_trusted_and_verify_finds_missed_writes() {
    if !TestVm::available() {
        return;
    }
    let vm = TestVm::create("cbtfall");
    let repo = Repo::init();
    let work = tempfile::tempdir().expect("tempdir");
    let first = summary(&local_backup(&repo, &vm, &[]));
    let c1 = cbt_of(&first)["checkpoint"].as_str().expect("c").to_owned();

    // The checkpoint's metadata is gone from libvirt (a VM redefined, a transient VM), its
    // bitmap still in the image: redefined from the snapshot, and the backup stays incremental.
    virsh(&["checkpoint-delete", &vm.name, &c1, "--metadata"]);
    guest_write(&vm, "virtio-disk0", 2 * MIB, &random_bytes(2, MIB_USIZE));
    let out = local_backup(&repo, &vm, &[]);
    let redefined = summary(&out);
    assert!(
        stderr(&out).contains("redefined it from the snapshot"),
        "{}",
        describe(&out)
    );
    assert_eq!(cbt_of(&redefined)["since"].as_str(), Some(c1.as_str()));
    assert_clean(&vm);
    assert_latest_vda_is(&repo, &live_vda(&vm, work.path()));

    // Metadata and bitmap both gone (the images were replaced): hashed whole.
    let c = checkpoints(&vm).pop().expect("a checkpoint");
    virsh(&["checkpoint-delete", &vm.name, &c, "--metadata"]);
    qmp_bitmap(
        &vm,
        "block-dirty-bitmap-remove",
        &node_name(&vm, "virtio-disk0"),
        &c,
    );
    falls_back(&repo, &vm, work.path(), 3, "is gone from libvirt");

    // The bitmap is gone from the image (removed by hand, lost in a crash).
    let c2 = checkpoints(&vm).pop().expect("a checkpoint");
    qmp_bitmap(
        &vm,
        "block-dirty-bitmap-remove",
        &node_name(&vm, "virtio-disk0"),
        &c2,
    );
    falls_back(&repo, &vm, work.path(), 5, "hashing every chunk");

    // The parent snapshot is forgotten: the latest one left has a checkpoint libvirt no
    // longer has.
    let snaps = repo.json(&["snapshots"]);
    let latest = snaps.as_array().and_then(|a| a.last()).expect("a snapshot")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    repo.ok(&["forget", &latest]);
    falls_back(&repo, &vm, work.path(), 7, "is gone from libvirt");

    // A disk added to the VM (the machine has no PCI hotplug: powered off with SIGTERM, which
    // stores the persistent bitmaps, and started again): read whole, the others incrementally.
    virsh(&["destroy", &vm.name, "--graceful"]);
    let vdc = vm.dir.join("vdc.qcow2");
    sh(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &s(&vdc), "16M"],
    );
    sh("chmod", &["0644", &s(&vdc)]);
    virsh(&[
        "attach-disk",
        &vm.name,
        &s(&vdc),
        "vdc",
        "--driver",
        "qemu",
        "--subdriver",
        "qcow2",
        "--targetbus",
        "virtio",
        "--config",
    ]);
    vm.start();
    guest_write(&vm, "virtio-disk0", 9 * MIB, &random_bytes(9, MIB_USIZE));
    let added = summary(&local_backup(&repo, &vm, &[]));
    assert!(cbt_of(&added)["since"].is_string(), "{added}");
    assert_eq!(added["disks"], 3, "{added}");
    assert_latest_vda_is(&repo, &live_vda(&vm, work.path()));
    let vdc_bytes = std::fs::read(repo.restore("latest").join("vdc.raw")).expect("vdc");
    assert_eq!(vdc_bytes.len(), 16 << 20);
    assert!(vdc_bytes.iter().all(|&b| b == 0), "vdc was created empty");
    virsh(&["detach-disk", &vm.name, "vdc", "--config"]);
    virsh(&["destroy", &vm.name, "--graceful"]);
    vm.start();
    std::fs::remove_file(&vdc).expect("remove vdc");

    // A bitmap that missed a write (cleared after it): the verify run hashes everything,
    // finds the chunk, says so loudly, exits 3, and stores the truth.
    let current = checkpoints(&vm).pop().expect("a checkpoint");
    guest_write(&vm, "virtio-disk0", 11 * MIB, &random_bytes(11, MIB_USIZE));
    qmp_bitmap(
        &vm,
        "block-dirty-bitmap-clear",
        &node_name(&vm, "virtio-disk0"),
        &current,
    );
    let verified = local_backup(&repo, &vm, &["--verify-cbt"]);
    assert_eq!(verified.status.code(), Some(3), "{}", describe(&verified));
    assert!(
        stderr(&verified).contains("missed writes"),
        "{}",
        describe(&verified)
    );
    let last = String::from_utf8_lossy(&verified.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&last).expect("summary");
    assert_eq!(v["cbt"]["missed_chunks"].as_u64(), Some(2), "{v}");
    assert_eq!(v["cbt"]["verified"], true, "{v}");
    assert_clean(&vm);
    assert_latest_vda_is(&repo, &live_vda(&vm, work.path()));
    assert_eq!(checkpoints(&vm).len(), 1, "{:?}", checkpoints(&vm));
    repo.ok(&["check", "--read-data"]);
}

/// Waits until the domain has no job and its checkpoints are `want`, for up to 20 s.
fn wait_for_cleanup(vm: &TestVm, want: &[String]) {
    let start = Instant::now();
    loop {
        let (job, now) = (vm.job_type(), checkpoints(vm));
        if job == "None" && now == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "after kill -9: job {job:?}, checkpoints {now:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kill_9_mid_cbt_backup_leaves_no_job_and_the_next_backup_succeeds() {
    if !Sshd::available() || !TestVm::available() {
        return;
    }
    let Some(helper) = helper_binary() else {
        return;
    };
    let sshd = Sshd::start();
    let vm = TestVm::create("cbtkill");
    let repo = Repo::init();
    let work = tempfile::tempdir().expect("tempdir");
    summary(&backup_with(&sshd, &repo, &vm, &helper, &[]));
    // Killed after its 2nd, 3rd and 4th change to the repository: the lock, then packs, the
    // index and the snapshot, all while the job runs. The helper on the host ends the job and
    // deletes the checkpoint the killed backup made, by itself.
    for (n, writes) in ["2", "3", "4"].into_iter().enumerate() {
        let before = checkpoints(&vm);
        let seed = 20 + u64::try_from(n).expect("n");
        guest_write(
            &vm,
            "virtio-disk0",
            seed * MIB,
            &random_bytes(seed, MIB_USIZE),
        );
        let out = backup_command(&sshd, &repo, &vm, &helper, &[])
            .env("VMSTASH_TEST_KILL_AFTER_WRITES", writes)
            .output()
            .expect("run vmstash");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "{}",
            describe(&out)
        );
        wait_for_cleanup(&vm, &before);
        assert_clean(&vm);
        let repair = repo.run(&["vm-repair", "--connect", URI, "--vm", &vm.name]);
        assert!(
            String::from_utf8_lossy(&repair.stdout).contains("nothing to repair"),
            "{}",
            describe(&repair)
        );
        let next = summary(&backup_with(&sshd, &repo, &vm, &helper, &[]));
        cbt_of(&next);
        assert_clean(&vm);
        assert_latest_vda_is(&repo, &live_vda(&vm, work.path()));
    }
    repo.ok(&["check"]);

    // On this host there is no helper to end the job: the next backup ends it, and so does
    // vm-repair.
    let killed = local_backup_command(&repo, &vm)
        .env("VMSTASH_TEST_KILL_AFTER_WRITES", "2")
        .output()
        .expect("run vmstash");
    assert!(!killed.status.success(), "{}", describe(&killed));
    assert_ne!(vm.job_type(), "None", "the killed backup's job runs on");
    let repair = repo.run(&["vm-repair", "--connect", URI, "--vm", &vm.name]);
    assert!(repair.status.success(), "{}", describe(&repair));
    assert!(
        stderr(&repair).contains("ended the backup job"),
        "{}",
        describe(&repair)
    );
    assert_clean(&vm);
    let killed = local_backup_command(&repo, &vm)
        .env("VMSTASH_TEST_KILL_AFTER_WRITES", "2")
        .output()
        .expect("run vmstash");
    assert!(!killed.status.success(), "{}", describe(&killed));
    let next = local_backup(&repo, &vm, &[]);
    summary(&next);
    assert!(
        stderr(&next).contains("ended the backup job"),
        "{}",
        describe(&next)
    );
    assert_clean(&vm);
    assert_eq!(checkpoints(&vm).len(), 1, "{:?}", checkpoints(&vm));
}

fn local_backup_command(repo: &Repo, vm: &TestVm) -> std::process::Command {
    repo.cmd(&["--json", "backup", "--connect", URI, "--vm", &vm.name])
}

#[test]
fn cbt_always_fails_where_it_cannot_be_used_and_never_keeps_the_overlay_flow() {
    if !TestVm::available() {
        return;
    }
    let vm = TestVm::create("cbtmode");
    let repo = Repo::init();
    let raw_only = local_backup(&repo, &vm, &["--exclude-disk", "vda", "--cbt", "always"]);
    assert!(!raw_only.status.success(), "{}", describe(&raw_only));
    assert!(
        stderr(&raw_only).contains("no qcow2 disk"),
        "{}",
        describe(&raw_only)
    );
    let never = summary(&local_backup(&repo, &vm, &["--cbt", "never"]));
    assert!(never["cbt"].is_null(), "{never}");
    assert!(checkpoints(&vm).is_empty());
    assert_clean(&vm);
}

/// The names of the persistent bitmaps in a qcow2 image.
fn image_bitmaps(image: &Path) -> Vec<String> {
    let info = sh("qemu-img", &["info", "-U", "--output=json", &s(image)]);
    let v: serde_json::Value = serde_json::from_str(&info).expect("qemu-img info JSON");
    v["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|b| b["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `data` at `offset` of a shut-off VM's qcow2 image with qemu-io, which keeps the
/// image's enabled persistent bitmaps up to date as QEMU would.
fn offline_write(image: &Path, offset: u64, data: &[u8], dir: &Path) {
    let file = dir.join("offline-write.bin");
    std::fs::write(&file, data).expect("write the data file");
    let command = format!("write -s {} {offset} {}", s(&file), data.len());
    sh("qemu-io", &["-f", "qcow2", "-c", &command, &s(image)]);
}

/// No `qemu-nbd` serving anything of `vm` is left, nor its sockets and pid files.
fn assert_no_servers(vm: &TestVm) {
    let key = virsh(&["domuuid", &vm.name]).trim().to_owned();
    let running = std::process::Command::new("pgrep")
        .args(["-f", &format!("qemu-nbd.*{key}")])
        .output()
        .expect("pgrep");
    assert!(
        !running.status.success(),
        "a qemu-nbd of {} runs on",
        vm.name
    );
    let left: Vec<_> = std::fs::read_dir("/tmp")
        .expect("list /tmp")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&key))
        .collect();
    assert!(left.is_empty(), "left in /tmp: {left:?}");
}

#[test]
fn shut_off_vm_incremental_reads_only_what_changed_through_qemu_nbd() {
    if !TestVm::available() || !crate::util::have(&["qemu-io", "qemu-nbd"], true) {
        return;
    }
    let vm = TestVm::create_with(
        "cbtoff",
        crate::fixtures::libvirt::VmOptions {
            start: false,
            ..Default::default()
        },
    );
    let repo = Repo::init();
    let work = tempfile::tempdir().expect("tempdir");
    let only_vda = ["--exclude-disk", "vdb"];

    let first = summary(&local_backup(&repo, &vm, &only_vda));
    let c1 = cbt_of(&first)["checkpoint"].as_str().expect("c").to_owned();
    assert!(cbt_of(&first)["since"].is_null(), "{first}");
    assert_eq!(checkpoints(&vm), std::slice::from_ref(&c1));
    assert_eq!(image_bitmaps(&vm.vda), std::slice::from_ref(&c1));
    assert_no_servers(&vm);

    offline_write(&vm.vda, 8 * MIB, &random_bytes(81, MIB_USIZE), work.path());
    let second = summary(&local_backup(&repo, &vm, &only_vda));
    let inc = cbt_of(&second);
    assert_eq!(inc["since"].as_str(), Some(c1.as_str()), "{second}");
    assert_eq!(inc["bytes_hashed"].as_u64(), Some(MIB), "{second}");
    let c2 = inc["checkpoint"].as_str().expect("c").to_owned();
    assert_eq!(checkpoints(&vm), std::slice::from_ref(&c2));
    assert_eq!(image_bitmaps(&vm.vda), std::slice::from_ref(&c2));
    assert_no_servers(&vm);
    assert_latest_vda_is(&repo, &live_vda(&vm, work.path()));

    // The VM starts; a live incremental counts from the checkpoint made while it was off.
    vm.start();
    guest_write(&vm, "virtio-disk0", 24 * MIB, &random_bytes(82, MIB_USIZE));
    let third = summary(&local_backup(&repo, &vm, &only_vda));
    assert_eq!(
        cbt_of(&third)["since"].as_str(),
        Some(c2.as_str()),
        "{third}"
    );
    assert_eq!(
        cbt_of(&third)["bytes_hashed"].as_u64(),
        Some(MIB),
        "{third}"
    );
    assert_clean(&vm);
    assert_latest_vda_is(&repo, &live_vda(&vm, work.path()));

    // Off again, with the bitmap gone from the image: hashed whole, one line says why.
    virsh(&["destroy", &vm.name, "--graceful"]);
    let c3 = checkpoints(&vm).pop().expect("a checkpoint");
    sh("qemu-img", &["bitmap", "--remove", &s(&vm.vda), &c3]);
    offline_write(&vm.vda, 30 * MIB, &random_bytes(83, MIB_USIZE), work.path());
    let fourth = local_backup(&repo, &vm, &only_vda);
    let fell = summary(&fourth);
    assert!(
        stderr(&fourth).contains("has no usable bitmap"),
        "{}",
        describe(&fourth)
    );
    assert!(
        cbt_of(&fell)["bytes_hashed"].as_u64() > Some(MIB),
        "hashed whole: {fell}"
    );
    assert_latest_vda_is(&repo, &live_vda(&vm, work.path()));
    assert_no_servers(&vm);

    // Killed mid-backup (no helper on this host): its qemu-nbd and its new bitmap are left;
    // vm-repair removes both, and the next backup is incremental again.
    let before = image_bitmaps(&vm.vda);
    offline_write(&vm.vda, 40 * MIB, &random_bytes(84, MIB_USIZE), work.path());
    let killed = local_backup_command(&repo, &vm)
        .args(only_vda)
        .env("VMSTASH_TEST_KILL_AFTER_WRITES", "2")
        .output()
        .expect("run vmstash");
    assert!(!killed.status.success(), "{}", describe(&killed));
    let repair = repo.run(&["vm-repair", "--connect", URI, "--vm", &vm.name]);
    assert!(repair.status.success(), "{}", describe(&repair));
    assert!(
        stderr(&repair).contains("left by an interrupted backup"),
        "{}",
        describe(&repair)
    );
    assert_no_servers(&vm);
    assert_eq!(image_bitmaps(&vm.vda), before);
    let next = summary(&local_backup(&repo, &vm, &only_vda));
    assert!(cbt_of(&next)["since"].is_string(), "{next}");
    assert_latest_vda_is(&repo, &live_vda(&vm, work.path()));
    repo.ok(&["check", "--read-data"]);
}

/// The pid of the QEMU running `vm` (libvirt's pid file).
fn qemu_pid(vm: &TestVm) -> String {
    let file = format!("/run/libvirt/qemu/{}.pid", vm.name);
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .trim()
        .to_owned()
}

#[test]
fn qemu_killed_mid_backup_fails_it_cleanly_and_the_next_backup_falls_back() {
    if !TestVm::available() {
        return;
    }
    let vm = TestVm::create("cbtcrash");
    let repo = Repo::init();
    let work = tempfile::tempdir().expect("tempdir");
    summary(&local_backup(&repo, &vm, &[]));
    let snapshots = || repo.json(&["snapshots"]).as_array().map_or(0, Vec::len);
    let before = snapshots();
    // Catch a backup with its job running (a few tries: a backup of this VM is short), and
    // kill its QEMU with SIGKILL: the persistent bitmaps are never stored.
    let mut caught = None;
    for _ in 0..10 {
        guest_write(&vm, "virtio-disk0", 12 * MIB, &random_bytes(12, MIB_USIZE));
        let child = local_backup_command(&repo, &vm)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn backup");
        let start = Instant::now();
        while vm.job_type() == "None" && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed = vm.job_type() != "None";
        if killed {
            sh("kill", &["-9", &qemu_pid(&vm)]);
        }
        let out = child.wait_with_output().expect("wait");
        if killed && !out.status.success() {
            caught = Some(out);
            break;
        }
        if vm.state() != "running" {
            vm.start();
        }
    }
    let out = caught.expect("no backup was caught with its job running");
    assert!(
        !stderr(&out).contains("vm-repair"),
        "nothing should be left to repair: {}",
        describe(&out)
    );
    assert_eq!(snapshots(), before, "a failed backup wrote a snapshot");
    assert!(
        vm.leftover_files().is_empty(),
        "leftovers: {:?}",
        vm.leftover_files()
    );
    vm.start();
    guest_write(&vm, "virtio-disk0", 13 * MIB, &random_bytes(13, MIB_USIZE));
    let next = local_backup(&repo, &vm, &[]);
    let next_summary = summary(&next);
    assert!(
        stderr(&next).contains("hashing every chunk"),
        "the bitmaps of a killed QEMU are not to be trusted: {}",
        describe(&next)
    );
    assert!(cbt_of(&next_summary)["since"].is_null(), "{next_summary}");
    assert_clean(&vm);
    assert_latest_vda_is(&repo, &live_vda(&vm, work.path()));
    repo.ok(&["check"]);
}
