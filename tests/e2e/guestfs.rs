//! Files inside partitions through `vmstash mount`. ext4, FAT and NTFS filesystems in MBR
//! logical partitions must read back as the kernel (ext4), mtools (FAT) and ntfs-3g (NTFS)
//! show the very same filesystem images: names, contents, sizes, mtimes, symlinks, hard links, and for ext4 modes
//! and owners. Damaged filesystems show as raw partitions only, or give EIO on the damaged
//! paths while the rest of the filesystem reads.

mod damaged;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::mount::Mounted;
use crate::util::{have, random_bytes, sh, unique, Repo};

const SECTOR: u64 = 512;

/// A file of `mib` MiB, made a filesystem by `mkfs args... FILE`.
fn fs_image(dir: &Path, name: &str, mib: u64, mkfs: &[&str]) -> PathBuf {
    let img = dir.join(name);
    let f = std::fs::File::create(&img).expect("create");
    f.set_len(mib << 20).expect("size");
    drop(f);
    let mut args = mkfs[1..].to_vec();
    let img_s = img.display().to_string();
    args.push(&img_s);
    sh(mkfs[0], &args);
    img
}

/// The files every filesystem gets: text, a file over several chunks, an empty one, nested
/// directories and a directory of many small files.
fn common_files(root: &Path) {
    let etc = root.join("etc");
    std::fs::create_dir_all(etc.join("deep/er")).expect("mkdir");
    std::fs::write(etc.join("fstab"), b"/dev/vda1 / ext4 defaults 0 1\n").expect("write");
    std::fs::write(etc.join("deep/er/notes.txt"), b"three levels down\n").expect("write");
    std::fs::write(root.join("big.bin"), random_bytes(11, (3 << 20) + 12345)).expect("write");
    std::fs::write(root.join("empty"), b"").expect("write");
    std::fs::create_dir(root.join("many")).expect("mkdir");
    for i in 0..300 {
        std::fs::write(root.join(format!("many/file-{i:04}.txt")), format!("{i}\n"))
            .expect("write");
    }
}

/// Adds what only unix filesystems have: owners, modes, a set mtime, links.
fn unix_files(root: &Path) {
    common_files(root);
    let secret = root.join("etc/shadow");
    std::fs::write(&secret, b"root:*:19000:0:99999:7:::\n").expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    sh("chown", &["1001:42", &secret.display().to_string()]);
    sh(
        "touch",
        &[
            "-h",
            "-d",
            "2021-03-04 05:06:07.123456789",
            &secret.display().to_string(),
        ],
    );
    std::fs::hard_link(root.join("etc/fstab"), root.join("fstab.hardlink")).expect("link");
    std::os::unix::fs::symlink("etc/fstab", root.join("fstab.symlink")).expect("symlink");
    std::os::unix::fs::symlink("/nowhere/absolute", root.join("dangling")).expect("symlink");
    std::fs::write(
        root.join(OsStr::from_bytes(b"caf\xe9-latin1")),
        b"not utf-8\n",
    )
    .expect("non-UTF-8 name");
    // Device nodes as a root filesystem's /dev has them: a major and minor in ext4's old
    // 8-bit encoding, and one that needs the new one (minor above 255).
    let dev = root.join("dev");
    std::fs::create_dir(&dev).expect("mkdir dev");
    for (name, kind, major, minor) in [
        ("null", "c", "1", "3"),
        ("sda1", "b", "8", "1"),
        ("nvme0n1p9", "b", "259", "70000"),
    ] {
        sh(
            "mknod",
            &[&dev.join(name).display().to_string(), kind, major, minor],
        );
    }
}

/// An ext4 image holding `unix_files`, made by `mkfs.ext4 -d` (which keeps owners, modes,
/// mtimes, symlinks and hard links).
fn ext4_image(dir: &Path) -> PathBuf {
    let tree = dir.join(format!("ext4-tree{}", unique()));
    std::fs::create_dir(&tree).expect("mkdir");
    unix_files(&tree);
    let tree_s = tree.display().to_string();
    fs_image(
        dir,
        "ext4.img",
        64,
        &["mkfs.ext4", "-q", "-F", "-d", &tree_s],
    )
}

/// A FAT32 image holding `common_files` (long names included), copied in by mtools with
/// their mtimes.
fn fat_image(dir: &Path) -> PathBuf {
    let tree = dir.join(format!("fat-tree{}", unique()));
    std::fs::create_dir(&tree).expect("mkdir");
    common_files(&tree);
    std::fs::write(tree.join("A Long File Name.text"), b"long names\n").expect("write");
    let img = fs_image(
        dir,
        "fat.img",
        64,
        &["mkfs.vfat", "-F", "32", "-n", "VMSTASH"],
    );
    let img_s = img.display().to_string();
    for entry in std::fs::read_dir(&tree).expect("list") {
        let path = entry.expect("entry").path().display().to_string();
        sh("mcopy", &["-s", "-m", "-i", &img_s, &path, "::/"]);
    }
    img
}

/// An NTFS image made by mkntfs, filled through ntfs-3g (as root) with `common_files`, a hard
/// link and a symlink.
fn ntfs_image(dir: &Path) -> PathBuf {
    let img = fs_image(dir, "ntfs.img", 32, &["mkntfs", "-q", "-F", "-Q"]);
    let mnt = dir.join(format!("ntfs-fill{}", unique()));
    std::fs::create_dir(&mnt).expect("mkdir");
    let mnt_s = mnt.display().to_string();
    sh("ntfs-3g", &[&img.display().to_string(), &mnt_s]);
    let filled = std::panic::catch_unwind(|| {
        common_files(&mnt);
        std::fs::hard_link(mnt.join("etc/fstab"), mnt.join("fstab.hardlink")).expect("link");
        std::os::unix::fs::symlink("etc/fstab", mnt.join("fstab.symlink")).expect("symlink");
    });
    sh("umount", &[&mnt_s]);
    if let Err(e) = filled {
        std::panic::resume_unwind(e);
    }
    img
}

/// A disk with an MBR: FAT32 as primary p1, an extended p2 holding ext4 as logical p5 and NTFS
/// as logical p6. Each filesystem is copied in from its own image.
fn mbr_disk(dir: &Path, fat: &Path, ext4: &Path, ntfs: &Path) -> PathBuf {
    let disk = dir.join("mbr-disk.img");
    let f = std::fs::File::create(&disk).expect("create");
    f.set_len(200 << 20).expect("size");
    drop(f);
    let (p1, p5, p6) = (2048u64, 135_168u64, 268_288u64);
    let table = format!(
        "label: dos\nstart={p1}, size=131072, type=c\nstart=133120, type=5\n\
         start={p5}, size=131072, type=83\nstart={p6}, size=65536, type=7\n"
    );
    sfdisk(&disk, &table);
    for (image, sector) in [(fat, p1), (ext4, p5), (ntfs, p6)] {
        let bytes = std::fs::read(image).expect("image");
        crate::util::write_at(&disk, sector * SECTOR, &bytes);
    }
    disk
}

/// Writes the partition table `table` (sfdisk's script format) onto `disk`.
fn sfdisk(disk: &Path, table: &str) {
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", &disk.display().to_string()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk");
    std::io::Write::write_all(sfdisk.stdin.as_mut().expect("stdin"), table.as_bytes())
        .expect("table");
    assert!(sfdisk.wait().expect("wait").success(), "sfdisk failed");
}

/// A new repository and the directory `src` in it for the source images.
fn repo_and_src() -> (Repo, PathBuf) {
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir(&src).expect("src dir");
    (repo, src)
}

/// What to compare besides names, kinds, sizes, contents, symlink targets and whole seconds
/// of mtimes.
#[derive(Clone, Copy)]
struct Checks {
    /// Modes, owners, link counts of directories and mtimes to the nanosecond.
    unix: bool,
}

/// Compares the tree `ours` (in the vmstash mount) with `reference` (the same filesystem
/// mounted by the kernel or ntfs-3g); returns how many paths were compared.
fn compare_trees(ours: &Path, reference: &Path, checks: Checks) -> usize {
    // By device and inode: each Btrfs subvolume is a device of its own to the kernel.
    let mut inode_map: HashMap<(u64, u64), u64> = HashMap::new();
    let mut compared = 0;
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let names = |root: &Path| -> BTreeSet<Vec<u8>> {
            std::fs::read_dir(root.join(&rel))
                .unwrap_or_else(|e| panic!("listing {}: {e}", root.join(&rel).display()))
                .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
                .collect()
        };
        let theirs = names(reference);
        assert_eq!(names(ours), theirs, "names in {} differ", rel.display());
        for name in theirs {
            let rel = rel.join(OsStr::from_bytes(&name));
            let (o, r) = (ours.join(&rel), reference.join(&rel));
            let om =
                std::fs::symlink_metadata(&o).unwrap_or_else(|e| panic!("{}: {e}", o.display()));
            let rm = std::fs::symlink_metadata(&r).expect("reference stat");
            let what = rel.display();
            assert_eq!(om.file_type(), rm.file_type(), "{what}: kind");
            assert_eq!(om.mtime(), rm.mtime(), "{what}: mtime");
            if checks.unix {
                assert_eq!(om.rdev(), rm.rdev(), "{what}: device number");
                assert_eq!(om.mode() & 0o7777, rm.mode() & 0o7777, "{what}: mode");
                assert_eq!((om.uid(), om.gid()), (rm.uid(), rm.gid()), "{what}: owner");
                assert_eq!(om.mtime_nsec(), rm.mtime_nsec(), "{what}: mtime ns");
            }
            if rm.is_dir() {
                if checks.unix {
                    assert_eq!(om.nlink(), rm.nlink(), "{what}: links");
                }
                dirs.push(rel.clone());
            } else {
                assert_eq!(om.nlink(), rm.nlink(), "{what}: links");
                let mapped = *inode_map.entry((rm.dev(), rm.ino())).or_insert(om.ino());
                assert_eq!(mapped, om.ino(), "{what}: hard links must share an inode");
            }
            if rm.is_symlink() {
                assert_eq!(
                    std::fs::read_link(&o).expect("readlink"),
                    std::fs::read_link(&r).expect("readlink"),
                    "{what}: symlink target"
                );
            } else if rm.is_file() {
                assert_eq!(om.len(), rm.len(), "{what}: size");
                assert!(
                    std::fs::read(&o).expect("read ours") == std::fs::read(&r).expect("read"),
                    "{what}: contents differ"
                );
            }
            compared += 1;
        }
    }
    let distinct: BTreeSet<u64> = inode_map.values().copied().collect();
    assert_eq!(
        distinct.len(),
        inode_map.len(),
        "different files must not share an inode"
    );
    compared
}

/// The files of FAT image `image` as mtools reads them, copied out with their mtimes (FAT's
/// local times read as UTC, as vmstash shows them); kernels without vfat cannot mount it.
fn fat_reference(image: &Path) -> PathBuf {
    let dir = image.with_extension(format!("extracted{}", unique()));
    std::fs::create_dir(&dir).expect("mkdir");
    let out = Command::new("mcopy")
        .args(["-s", "-m", "-n", "-i"])
        .arg(image)
        .arg("::/*")
        .arg(&dir)
        .env("TZ", "UTC")
        .output()
        .expect("mcopy");
    assert!(out.status.success(), "{}", crate::util::describe(&out));
    dir
}

/// Mounts `image` read-only with `how` (`mount -o loop,ro,...` or `ntfs-3g -o ro`), runs `f`
/// with the mountpoint, unmounts.
fn with_reference<R>(image: &Path, how: &[&str], f: impl FnOnce(&Path) -> R) -> R {
    let dir = image.with_extension(format!("ref{}", unique()));
    std::fs::create_dir(&dir).expect("mkdir");
    let dir_s = dir.display().to_string();
    let image_s = image.display().to_string();
    let mut args: Vec<&str> = how[1..].to_vec();
    args.extend([image_s.as_str(), dir_s.as_str()]);
    sh(how[0], &args);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&dir)));
    let _ = Command::new("umount").arg(&dir).output();
    match result {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e),
    }
}

#[test]
fn files_of_ext4_fat_and_ntfs_in_logical_partitions_read_as_in_the_guest() {
    let tools = [
        "fusermount3",
        "sfdisk",
        "mkfs.ext4",
        "mkfs.vfat",
        "mcopy",
        "mkntfs",
        "ntfs-3g",
        "mount",
    ];
    if !have(&tools, true) {
        return;
    }
    let (repo, src) = repo_and_src();
    let ext4 = ext4_image(&src);
    let fat = fat_image(&src);
    let ntfs = ntfs_image(&src);
    let disk = mbr_disk(&src, &fat, &ext4, &ntfs);
    repo.backup(&[&disk]);
    let mnt = repo.dir.path().join("mnt");
    let mounted = Mounted::start(&repo, &mnt);
    let parts = mnt.join("vms/mbr-disk/latest/mbr-disk");
    let shown: BTreeSet<String> = std::fs::read_dir(&parts)
        .expect("partitions")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let expected = ["p1", "p1.raw", "p5", "p5.raw", "p6", "p6.raw"];
    assert_eq!(
        shown,
        expected.iter().map(|s| (*s).to_owned()).collect(),
        "partitions and their filesystems (the extended container p2 is not shown)"
    );
    for (part, image) in [("p1.raw", &fat), ("p5.raw", &ext4), ("p6.raw", &ntfs)] {
        assert!(
            std::fs::read(parts.join(part)).expect("partition")
                == std::fs::read(image).expect("image"),
            "{part} is not the filesystem image"
        );
    }

    let ext4_seen = with_reference(&ext4, &["mount", "-o", "loop,ro"], |r| {
        compare_trees(&parts.join("p5"), r, Checks { unix: true })
    });
    let fat_seen = compare_trees(
        &parts.join("p1"),
        &fat_reference(&fat),
        Checks { unix: false },
    );
    let ntfs_seen = with_reference(&ntfs, &["ntfs-3g", "-o", "ro"], |r| {
        compare_trees(&parts.join("p6"), r, Checks { unix: false })
    });
    assert!(
        ext4_seen > 310 && fat_seen > 305 && ntfs_seen > 305,
        "{ext4_seen} {fat_seen} {ntfs_seen}"
    );

    // Hard links and symlinks as in the guest, spelled out.
    let p5 = parts.join("p5");
    let a = std::fs::metadata(p5.join("etc/fstab")).expect("stat");
    let b = std::fs::metadata(p5.join("fstab.hardlink")).expect("stat");
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    assert_eq!(
        std::fs::read_link(p5.join("fstab.symlink")).expect("readlink"),
        Path::new("etc/fstab")
    );
    let shadow = std::fs::symlink_metadata(p5.join("etc/shadow")).expect("stat");
    assert_eq!(
        (shadow.mode() & 0o7777, shadow.uid(), shadow.gid()),
        (0o640, 1001, 42)
    );
    assert!(
        std::fs::write(p5.join("etc/fstab"), b"x").is_err(),
        "read-only"
    );

    let (status, stderr) = mounted.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn damaged_filesystems_show_raw_partitions_or_eio_where_damaged() {
    if !have(&["fusermount3", "sfdisk", "mkfs.ext4", "debugfs"], true) {
        return;
    }
    let (repo, src) = repo_and_src();
    // p1: an ext4 whose superblock claims an impossible block size.
    let tree = src.join("tree");
    std::fs::create_dir(&tree).expect("mkdir");
    common_files(&tree);
    let tree_s = tree.display().to_string();
    let broken_sb = fs_image(
        &src,
        "sb.img",
        16,
        &["mkfs.ext4", "-q", "-F", "-d", &tree_s],
    );
    crate::util::write_at(&broken_sb, 1024 + 24, &[30, 0, 0, 0]);
    // p2: a healthy ext4 but for one directory whose inode is wiped.
    let inode_img = fs_image(
        &src,
        "inode.img",
        16,
        &["mkfs.ext4", "-q", "-F", "-d", &tree_s],
    );
    let inode_s = inode_img.display().to_string();
    sh("debugfs", &["-w", "-R", "clri /etc/deep", &inode_s]);

    let disk = src.join("damaged.img");
    let f = std::fs::File::create(&disk).expect("create");
    f.set_len(40 << 20).expect("size");
    drop(f);
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", &disk.display().to_string()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk");
    std::io::Write::write_all(
        sfdisk.stdin.as_mut().expect("stdin"),
        b"label: dos\nstart=2048, size=32768, type=83\nstart=36864, size=32768, type=83\n",
    )
    .expect("table");
    assert!(sfdisk.wait().expect("wait").success());
    crate::util::write_at(
        &disk,
        2048 * SECTOR,
        &std::fs::read(&broken_sb).expect("img"),
    );
    crate::util::write_at(
        &disk,
        36_864 * SECTOR,
        &std::fs::read(&inode_img).expect("img"),
    );
    repo.backup(&[&disk]);

    let mnt = repo.dir.path().join("mnt");
    let mounted = Mounted::start(&repo, &mnt);
    let parts = mnt.join("vms/damaged/latest/damaged");
    assert!(parts.join("p1.raw").is_file());
    assert!(
        !parts.join("p1").exists(),
        "a damaged superblock shows no directory"
    );
    let p2 = parts.join("p2");
    let err = std::fs::metadata(p2.join("etc/deep")).expect_err("wiped inode");
    assert_eq!(
        err.raw_os_error(),
        Some(5),
        "EIO on the damaged path: {err}"
    );
    assert_eq!(
        std::fs::read(p2.join("etc/fstab")).expect("the rest still reads"),
        std::fs::read(tree.join("etc/fstab")).expect("source")
    );
    assert_eq!(
        std::fs::read(p2.join("big.bin")).expect("big file"),
        std::fs::read(tree.join("big.bin")).expect("source")
    );
    let listed = std::fs::read_dir(p2.join("etc"))
        .expect("the parent lists")
        .count();
    assert_eq!(listed, 2, "fstab and the damaged deep are both listed");

    let (status, stderr) = mounted.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("disk damaged p1 of snapshot") && stderr.contains("showing p1.raw only"),
        "no log line for the damaged superblock: {stderr}"
    );
    assert!(
        stderr.contains("disk damaged p2 of snapshot") && stderr.contains("[ext4]"),
        "no log line for the damaged inode: {stderr}"
    );
    // Both say whose fault it is: the guest's filesystem, not the backup.
    let line = |part: &str| {
        stderr
            .lines()
            .find(|l| l.contains(&format!("disk damaged {part} of snapshot")))
            .unwrap_or_default()
    };
    for part in ["p1", "p2"] {
        assert!(
            line(part).contains("damaged ext4 metadata: "),
            "{part} is not called damaged ext4 metadata: {stderr}"
        );
    }
}

/// What the tests of guest disks with LVM need besides their filesystem's tools.
const LVM_TOOLS: &[&str] = &[
    "fusermount3",
    "sfdisk",
    "mount",
    "losetup",
    "pvcreate",
    "vgcreate",
    "vgcfgbackup",
    "vgcfgrestore",
];

/// One linear segment of a logical volume in LVM's metadata syntax.
fn lvm_segment(n: u32, start: u64, count: u64, pv_extent: u64) -> String {
    lvm_segment_on("pv0", n, start, count, pv_extent)
}

/// [`lvm_segment`] on physical volume `pv` of the group.
fn lvm_segment_on(pv: &str, n: u32, start: u64, count: u64, pv_extent: u64) -> String {
    format!(
        "segment{n} {{ start_extent = {start} extent_count = {count} type = \"striped\" \
         stripe_count = 1 stripes = [\"{pv}\", {pv_extent}] }}\n"
    )
}

/// Puts `volumes` (a `logical_volumes { … }` section) into the metadata of group `vg`: its
/// text from vgcfgbackup, the section added, vgcfgrestore (`--force`: a thin pool's metadata
/// is restored only when asked). Returns where the physical volumes' extents start, in bytes.
fn restore_group_with(dir: &Path, vg: &str, volumes: &str) -> u64 {
    let backup = dir.join(format!("{vg}.txt"));
    let backup_s = backup.display().to_string();
    sh("vgcfgbackup", &["-q", "-f", &backup_s, vg]);
    let text = std::fs::read_to_string(&backup).expect("vg backup");
    let pe_start: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("pe_start = "))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .expect("pe_start");
    let end = text.rfind('}').expect("the group's end");
    std::fs::write(
        &backup,
        format!("{}{volumes}{}", &text[..end], &text[end..]),
    )
    .expect("write");
    sh("vgcfgrestore", &["-q", "--force", "-f", &backup_s, vg]);
    pe_start * SECTOR
}

/// Makes a volume group `vg` over new physical volumes `pvs` (files of `size` bytes, each on
/// a loop device while LVM's tools write them) holding `volumes` (see [`restore_group_with`]).
/// Returns where the physical volumes' extents start, in bytes.
fn new_group(dir: &Path, pvs: &[PathBuf], size: u64, vg: &str, volumes: &str) -> u64 {
    let loops: Vec<String> = pvs
        .iter()
        .map(|pv| {
            std::fs::File::create(pv)
                .and_then(|f| f.set_len(size))
                .expect("create the PV");
            sh("losetup", &["-f", "--show", &pv.display().to_string()])
                .trim()
                .to_owned()
        })
        .collect();
    let made = std::panic::catch_unwind(|| {
        for l in &loops {
            sh("pvcreate", &["-q", l]);
        }
        let mut args = vec!["-q", vg];
        args.extend(loops.iter().map(String::as_str));
        sh("vgcreate", &args);
        restore_group_with(dir, vg, volumes)
    });
    for l in &loops {
        sh("losetup", &["-d", l]);
    }
    made.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A 100 MiB LVM physical volume of a new volume group `vg` (4 MiB extents) holding `ext4`
/// as logical volume `root` in two segments (its first 32 MiB at the PV's extent 10, the rest
/// at extent 0), an 8 MiB `swap`, and a thin pool (with its hidden metadata and data volumes)
/// that vmstash does not read. Made with LVM's own
/// tools on a loop device; there is no device-mapper here, so the volumes go into the
/// metadata through vgcfgrestore, and ext4's bytes where the segments put them.
fn lvm_physical_volume(dir: &Path, vg: &str, root_fs: &Path) -> PathBuf {
    let pv = dir.join("pv.img");
    let visible = "status = [\"READ\", \"WRITE\", \"VISIBLE\"]";
    let hidden = "status = [\"READ\", \"WRITE\"]";
    let lvs = format!(
        "logical_volumes {{\n\
         root {{ id = \"rootrt-0000-0000-0000-0000-0000-000001\" {visible} segment_count = 2\n{}{} }}\n\
         swap {{ id = \"swapsw-0000-0000-0000-0000-0000-000002\" {visible} segment_count = 1\n{} }}\n\
         pool {{ id = \"poolpl-0000-0000-0000-0000-0000-000003\" {visible} segment_count = 1\n\
         segment1 {{ start_extent = 0 extent_count = 1 type = \"thin-pool\" \
         metadata = \"pool_tmeta\" pool = \"pool_tdata\" transaction_id = 0 \
         chunk_size = 128 discards = \"passdown\" zero_new_blocks = 1 }} }}\n\
         pool_tmeta {{ id = \"poolmt-0000-0000-0000-0000-0000-000004\" {hidden} segment_count = 1\n{} }}\n\
         pool_tdata {{ id = \"pooldt-0000-0000-0000-0000-0000-000005\" {hidden} segment_count = 1\n{} }}\n}}\n",
        lvm_segment(1, 0, 8, 10),
        lvm_segment(2, 8, 8, 0),
        lvm_segment(1, 0, 2, 20),
        lvm_segment(1, 0, 1, 22),
        lvm_segment(1, 0, 1, 23),
    );
    let pe_start = new_group(dir, std::slice::from_ref(&pv), 100 << 20, vg, &lvs);
    let bytes = std::fs::read(root_fs).expect("root filesystem image");
    let (first, rest) = bytes.split_at(32 << 20);
    crate::util::write_at(&pv, pe_start + 10 * (4 << 20), first);
    crate::util::write_at(&pv, pe_start, rest);
    pv
}

#[test]
fn ext4_on_lvm_in_a_gpt_partition_reads_as_in_the_guest() {
    if !have(&[&["mkfs.ext4"][..], LVM_TOOLS].concat(), true) {
        return;
    }
    let (repo, src) = repo_and_src();
    let ext4 = ext4_image(&src);
    // A name no other test (or the host) uses while the loop device is attached.
    let vg = format!("vmstash-test-{}-{}", std::process::id(), unique());
    let pv = lvm_physical_volume(&src, &vg, &ext4);
    // Ubuntu's layout: GPT, an EFI partition, the rest an LVM physical volume.
    let disk = src.join("lvm-disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(120 << 20))
        .expect("create the disk");
    let (p2, pv_sectors) = (18_432u64, (100u64 << 20) / SECTOR);
    let table = format!(
        "label: gpt\nstart=2048, size=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n\
         start={p2}, size={pv_sectors}, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n"
    );
    sfdisk(&disk, &table);
    crate::util::write_at(&disk, p2 * SECTOR, &std::fs::read(&pv).expect("pv"));
    repo.backup(&[&disk]);

    let mnt = repo.dir.path().join("mnt");
    let mounted = Mounted::start(&repo, &mnt);
    let shown = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    let disk_dir = mnt.join("vms/lvm-disk/latest/lvm-disk");
    let want: BTreeSet<String> = ["p1.raw", "p2.raw", vg.as_str()]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(
        shown(&disk_dir),
        want,
        "the PV shows as its volume group, not as p2/"
    );
    let vg_dir = disk_dir.join(&vg);
    let want: BTreeSet<String> = ["root", "root.raw", "swap.raw"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(
        shown(&vg_dir),
        want,
        "the thin pool is not shown; swap has no filesystem"
    );
    assert!(
        std::fs::read(vg_dir.join("root.raw")).expect("root.raw")
            == std::fs::read(&ext4).expect("ext4"),
        "root.raw must be the volume's bytes, put together from its two segments"
    );
    assert_eq!(
        std::fs::metadata(vg_dir.join("swap.raw"))
            .expect("swap")
            .len(),
        8 << 20
    );
    let compared = with_reference(&ext4, &["mount", "-o", "loop,ro"], |reference| {
        compare_trees(&vg_dir.join("root"), reference, Checks { unix: true })
    });
    assert!(compared > 10, "only {compared} paths compared");
    let (status, log) = mounted.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains(&format!("volume {vg}/pool")) && log.contains("thin-pool"),
        "the unsupported volume gets a log line: {log}"
    );
    without_a_mount(&repo, &vg, &ext4);
}

/// `vmstash ls` and `dump` read the same files as the mount, without one: listings, `ls -l`
/// of device nodes, a file's bytes, and a directory as a tar stream that extracts to the
/// guest's tree.
fn without_a_mount(repo: &Repo, vg: &str, ext4: &Path) {
    let lines = |out: String| -> BTreeSet<String> { out.lines().map(str::to_owned).collect() };
    let want: BTreeSet<String> = ["p1.raw", "p2.raw", vg]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(lines(repo.ok(&["ls", "latest:lvm-disk"])), want);
    let root = format!("latest:lvm-disk/{vg}/root");
    with_reference(ext4, &["mount", "-o", "loop,ro"], |reference| {
        let names: BTreeSet<String> = std::fs::read_dir(reference.join("etc"))
            .expect("list etc")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        let listed = repo.json(&["ls", &format!("{root}/etc")]);
        let listed: BTreeSet<String> = listed
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|e| e["name"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(listed, names);
        let long = repo.ok(&["ls", "-l", &format!("{root}/dev")]);
        assert!(
            long.lines()
                .any(|l| l.starts_with("crw") && l.contains("1, 3") && l.ends_with(" null")),
            "{long}"
        );
        let fstab = repo
            .cmd(&["dump", &format!("{root}/etc/fstab")])
            .output()
            .expect("dump");
        assert!(fstab.status.success(), "{}", crate::util::describe(&fstab));
        assert_eq!(
            fstab.stdout,
            std::fs::read(reference.join("etc/fstab")).expect("fstab")
        );
        let tar = repo
            .cmd(&["dump", &root])
            .output()
            .expect("dump a directory");
        assert!(tar.status.success(), "{}", crate::util::describe(&tar));
        let out = repo.dir.path().join(format!("extracted{}", unique()));
        std::fs::create_dir(&out).expect("mkdir");
        let mut untar = Command::new("tar")
            .args(["-x", "-p", "-C", &out.display().to_string()])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("tar");
        std::io::Write::write_all(untar.stdin.as_mut().expect("stdin"), &tar.stdout)
            .expect("feed tar");
        assert!(untar.wait().expect("tar").success(), "tar -x failed");
        compare_trees(&out.join("root"), reference, Checks { unix: false });
        let shadow = std::fs::symlink_metadata(out.join("root/etc/shadow")).expect("shadow");
        assert_eq!(
            (shadow.uid(), shadow.gid(), shadow.mode() & 0o7777),
            (1001, 42, 0o640)
        );
        let null = std::fs::symlink_metadata(out.join("root/dev/null")).expect("null");
        assert_eq!(
            null.rdev(),
            std::fs::symlink_metadata(reference.join("dev/null"))
                .expect("ref")
                .rdev()
        );
        // restore SNAPSHOT:PATH: the whole root, then one file, as the kernel shows them.
        let target = repo.dir.path().join(format!("restored{}", unique()));
        repo.ok(&["restore", &root, "--target", &target.display().to_string()]);
        let compared = compare_trees(&target.join("root"), reference, Checks { unix: true });
        assert!(compared > 300, "only {compared} paths compared");
        repo.ok(&[
            "restore",
            &format!("{root}/etc/shadow"),
            "--target",
            &target.display().to_string(),
        ]);
        let shadow = std::fs::symlink_metadata(target.join("shadow")).expect("shadow");
        let theirs = std::fs::symlink_metadata(reference.join("etc/shadow")).expect("ref");
        assert_eq!(
            (
                shadow.uid(),
                shadow.gid(),
                shadow.mode(),
                shadow.mtime(),
                shadow.mtime_nsec()
            ),
            (
                theirs.uid(),
                theirs.gid(),
                theirs.mode(),
                theirs.mtime(),
                theirs.mtime_nsec()
            )
        );
        let again = repo.run(&[
            "restore",
            &format!("{root}/etc/shadow"),
            "--target",
            &target.display().to_string(),
        ]);
        assert!(
            !again.status.success(),
            "an existing file is never overwritten"
        );
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("exists"),
            "{}",
            crate::util::describe(&again)
        );
    });
}

/// An XFS image of `mib` MiB (mkfs.xfs refuses under 300 MB unless told it makes a test
/// filesystem), filled through the kernel by `fill` with the image mounted at its argument,
/// then cleanly unmounted.
fn xfs_image(dir: &Path, name: &str, mib: u64, fill: impl FnOnce(&Path)) -> PathBuf {
    let img = dir.join(name);
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(mib << 20))
        .expect("create");
    let out = Command::new("mkfs.xfs")
        .args(["-q", "-f"])
        .arg(&img)
        .envs([("TEST_DEV", "1"), ("TEST_DIR", "1"), ("QA_CHECK_FS", "1")])
        .output()
        .expect("mkfs.xfs");
    assert!(out.status.success(), "{}", crate::util::describe(&out));
    with_reference(&img, &["mount", "-o", "loop"], fill);
    img
}

/// What a RHEL root holds for these tests: `unix_files` copied in by `cp -a` (owners, modes,
/// times, hard links, device nodes), a directory of 3,000 names (node format), a sparse file,
/// an fallocated range, a setuid file and a symlink kept in a block.
fn rhel_root(root: &Path) {
    let tree = root.with_extension(format!("tree{}", unique()));
    std::fs::create_dir(&tree).expect("mkdir");
    unix_files(&tree);
    sh(
        "cp",
        &[
            "-a",
            &format!("{}/.", tree.display()),
            &root.display().to_string(),
        ],
    );
    let big = root.join("usr/share/doc");
    std::fs::create_dir_all(&big).expect("mkdir");
    for i in 0..3000 {
        std::fs::write(big.join(format!("package-{i:05}-README")), format!("{i}\n"))
            .expect("write");
    }
    let sparse = std::fs::File::create(root.join("sparse.img")).expect("create");
    sparse.set_len(40 << 20).expect("size");
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"in the middle", 20 << 20).expect("write");
    sh(
        "fallocate",
        &[
            "-o",
            "1M",
            "-l",
            "2M",
            &root.join("sparse.img").display().to_string(),
        ],
    );
    let setuid = root.join("usr/bin-sudo");
    std::fs::write(&setuid, b"#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&setuid, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    std::os::unix::fs::symlink("x".repeat(600), root.join("long-symlink")).expect("symlink");
}

#[test]
fn xfs_on_lvm_and_xfs_boot_in_a_gpt_disk_read_as_in_the_guest() {
    if !have(&[&["mkfs.xfs", "xfs_io"][..], LVM_TOOLS].concat(), true) {
        return;
    }
    let (repo, src) = repo_and_src();
    let root_fs = xfs_image(&src, "root.xfs", 64, rhel_root);
    // /boot: cleanly unmounted once, then changed and shut down without writing back, so its
    // log is dirty (as in a backup of a running guest).
    let boot = xfs_image(&src, "boot.xfs", 32, |b| {
        std::fs::write(b.join("vmlinuz-6.1"), random_bytes(7, 3 << 20)).expect("write");
    });
    with_reference(&boot, &["mount", "-o", "loop"], |b| {
        std::fs::write(b.join("initramfs-new.img"), b"only in the log").expect("write");
        sh(
            "xfs_io",
            &["-x", "-c", "shutdown -f", &b.display().to_string()],
        );
    });
    let vg = format!("vmstash-test-{}-{}", std::process::id(), unique());
    let pv = lvm_physical_volume(&src, &vg, &root_fs);
    // RHEL's layout: GPT, an EFI partition, /boot, the rest an LVM physical volume.
    let disk = src.join("rhel-disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(160 << 20))
        .expect("create the disk");
    let (p2, p3, pv_sectors) = (18_432u64, 18_432 + 65_536, (100u64 << 20) / SECTOR);
    let table = format!(
        "label: gpt\nstart=2048, size=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n\
         start={p2}, size=65536, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n\
         start={p3}, size={pv_sectors}, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n"
    );
    sfdisk(&disk, &table);
    crate::util::write_at(&disk, p2 * SECTOR, &std::fs::read(&boot).expect("boot"));
    crate::util::write_at(&disk, p3 * SECTOR, &std::fs::read(&pv).expect("pv"));
    repo.backup(&[&disk]);

    let mnt = repo.dir.path().join("mnt");
    let mounted = Mounted::start(&repo, &mnt);
    let disk_dir = mnt.join("vms/rhel-disk/latest/rhel-disk");
    let started = std::time::Instant::now();
    let first = std::fs::read(disk_dir.join(&vg).join("root/etc/deep/er/notes.txt")).expect("read");
    assert_eq!(first, b"three levels down\n");
    eprintln!(
        "first file deep in the XFS-on-LVM root: {:?} after the mount",
        started.elapsed()
    );
    let compared = with_reference(&root_fs, &["mount", "-o", "loop,ro"], |reference| {
        compare_trees(
            &disk_dir.join(&vg).join("root"),
            reference,
            Checks { unix: true },
        )
    });
    assert!(compared > 3300, "only {compared} paths compared");
    let boot_dir = disk_dir.join("p2");
    assert!(
        std::fs::read(boot_dir.join("vmlinuz-6.1")).expect("vmlinuz") == random_bytes(7, 3 << 20),
        "/boot's kernel, written back before the shutdown, reads as written"
    );
    let (status, log) = mounted.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("rhel-disk p2") && log.contains("(xfs): its log was not clean"),
        "the dirty log of /boot gets a line: {log}"
    );
    assert_eq!(
        log.matches("its log was not clean").count(),
        1,
        "the root's log was clean: {log}"
    );
}

#[test]
fn find_across_twenty_snapshots_gives_exactly_the_versions_that_changed() {
    if !have(&["sfdisk", "mkfs.ext4", "mount"], true) {
        return;
    }
    let (repo, src) = repo_and_src();
    let ext4 = fs_image(&src, "fs.img", 32, &["mkfs.ext4", "-q", "-F"]);
    let disk = src.join("web1.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(40 << 20))
        .expect("create the disk");
    sfdisk(&disk, "label: gpt\nstart=2048, size=65536\n");
    let changes = [3, 7, 8, 15];
    for round in 0..20u32 {
        with_reference(&ext4, &["mount", "-o", "loop"], |root| {
            std::fs::create_dir_all(root.join("etc/nginx")).expect("mkdir");
            if round == 0 || changes.contains(&round) {
                std::fs::write(
                    root.join("etc/nginx/nginx.conf"),
                    format!("version {round}\n"),
                )
                .expect("write");
            }
            if round == 0 {
                std::fs::write(root.join("etc/old.conf"), b"gone at 11\n").expect("write");
            }
            if round == 11 {
                std::fs::remove_file(root.join("etc/old.conf")).expect("rm");
            }
            // Churn elsewhere every round, as a running guest has.
            std::fs::write(root.join("log"), format!("{round}\n")).expect("write");
        });
        crate::util::write_at(&disk, 2048 * SECTOR, &std::fs::read(&ext4).expect("fs"));
        repo.backup(&[&disk]);
    }
    let versions = |args: &[&str]| -> Vec<(String, String)> {
        let out = repo.json(&[&["find", "--vm", "web1"][..], args].concat());
        out.as_array()
            .expect("array")
            .iter()
            .flat_map(|f| {
                let path = f["path"].as_str().expect("path").to_owned();
                f["versions"]
                    .as_array()
                    .expect("versions")
                    .iter()
                    .map(move |v| {
                        (
                            path.clone(),
                            v["status"].as_str().expect("status").to_owned(),
                        )
                    })
            })
            .collect()
    };
    let conf = versions(&["--changed", "/etc/nginx/nginx.conf"]);
    let statuses: Vec<&str> = conf.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        statuses,
        ["new", "changed", "changed", "changed", "changed"],
        "{conf:?}"
    );
    let all = versions(&["/etc/nginx/nginx.conf"]);
    assert_eq!(all.len(), 20, "every snapshot holds it");
    let globbed = versions(&["--changed", "*.conf"]);
    let old: Vec<&str> = globbed
        .iter()
        .filter(|(p, _)| p == "/etc/old.conf")
        .map(|(_, s)| s.as_str())
        .collect();
    assert_eq!(old, ["new", "deleted"], "{globbed:?}");
    assert_eq!(
        globbed
            .iter()
            .filter(|(p, _)| p == "/etc/nginx/nginx.conf")
            .count(),
        5,
        "{globbed:?}"
    );
    let text = repo.ok(&["find", "--vm", "web1", "--changed", "/etc/nginx/nginx.conf"]);
    assert!(
        text.starts_with("web1: web1/p1/etc/nginx/nginx.conf\n"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 6, "{text}");
    let started = std::time::Instant::now();
    let out = repo.run(&["find", "-v", "--vm", "web1", "*.conf"]);
    eprintln!("find *.conf over 20 snapshots: {:?}", started.elapsed());
    // Only /etc changed its entries after the first round (in round 11): the 19 later
    // snapshots' other directories (/, /etc/nginx, /lost+found) were not listed again.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reused: usize = stderr
        .lines()
        .find_map(|l| l.strip_suffix(" unchanged directories were not listed again"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of unchanged directories: {stderr}"));
    assert!(reused >= 19 * 3, "{reused} directories reused: {stderr}");
}

/// Runs cryptsetup `action` for a LUKS2 volume on `image` with the passphrase in
/// `key_file`, its key derived by a fast PBKDF2 (the tests need no brute-force resistance).
fn luks2(action: &[&str], key_file: &Path, image: &Path) {
    let mut args = action.to_vec();
    let key = key_file.display().to_string();
    let image = image.display().to_string();
    args.extend([
        "--type",
        "luks2",
        "--batch-mode",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        &key,
        &image,
    ]);
    sh("cryptsetup", &args);
}

#[test]
fn a_luks2_partition_stays_locked_without_a_passphrase_and_opens_with_one() {
    if !have(
        &["fusermount3", "sfdisk", "mkfs.ext4", "mount", "cryptsetup"],
        true,
    ) {
        return;
    }
    let (repo, src) = repo_and_src();
    let ext4 = ext4_image(&src);
    let passphrase = format!("correct horse {}", unique());
    let pass_file = src.join("pass");
    std::fs::write(&pass_file, format!("{passphrase}\n")).expect("write");
    let key_file = src.join("key");
    std::fs::write(&key_file, &passphrase).expect("write");
    // cryptsetup encrypts the filesystem in place, offline (no device-mapper here); the 2 MiB
    // added make room for the header.
    let luks = src.join("luks.img");
    std::fs::copy(&ext4, &luks).expect("copy");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&luks)
        .and_then(|f| f.set_len((64 << 20) + (2 << 20)))
        .expect("grow");
    luks2(
        &["reencrypt", "--encrypt", "--reduce-device-size", "2M"],
        &key_file,
        &luks,
    );
    let disk = src.join("crypt-disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(80 << 20))
        .expect("create the disk");
    sfdisk(&disk, "label: gpt\nstart=2048, size=135168\n");
    crate::util::write_at(&disk, 2048 * SECTOR, &std::fs::read(&luks).expect("luks"));
    repo.backup(&[&disk]);
    let disk_dir = |mnt: &Path| mnt.join("vms/crypt-disk/latest/crypt-disk");

    let mnt = repo.dir.path().join("locked");
    let mounted = Mounted::start(&repo, &mnt);
    let names: BTreeSet<String> = std::fs::read_dir(disk_dir(&mnt))
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["p1.raw".to_owned()]),
        "locked: raw bytes only"
    );
    let (status, log) = mounted.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("LUKS2 volume") && log.contains("is locked"),
        "{log}"
    );

    let wrong = src.join("wrong");
    std::fs::write(&wrong, "not it\n").expect("write");
    let mnt = repo.dir.path().join("wrong");
    let mounted = Mounted::start_with(
        &repo,
        &mnt,
        &["--luks-passphrase-file", &wrong.display().to_string()],
    );
    assert!(
        !disk_dir(&mnt).join("p1").exists(),
        "a wrong passphrase opens nothing"
    );
    let (status, log) = mounted.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("no key slot opens with this passphrase"),
        "{log}"
    );

    let mnt = repo.dir.path().join("open");
    let mounted = Mounted::start_with(
        &repo,
        &mnt,
        &[
            "--luks-passphrase-file",
            &wrong.display().to_string(),
            "--luks-passphrase-file",
            &pass_file.display().to_string(),
        ],
    );
    let compared = with_reference(&ext4, &["mount", "-o", "loop,ro"], |reference| {
        compare_trees(&disk_dir(&mnt).join("p1"), reference, Checks { unix: true })
    });
    assert!(compared > 300, "only {compared} paths compared");
    let (status, log) = mounted.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("unlocked"), "{log}");
    assert!(
        !log.contains(&passphrase),
        "the passphrase never reaches the log: {log}"
    );
    // Without a mount: the same passphrase files for ls, dump and find.
    let pass = pass_file.display().to_string();
    assert_eq!(
        repo.ok(&["ls", "latest:crypt-disk"]).trim(),
        "p1.raw",
        "locked"
    );
    let etc = repo.ok(&[
        "ls",
        "--luks-passphrase-file",
        &pass,
        "latest:crypt-disk/p1/etc",
    ]);
    assert!(etc.lines().any(|l| l == "fstab"), "{etc}");
    let fstab = repo
        .cmd(&[
            "dump",
            "--luks-passphrase-file",
            &pass,
            "latest:crypt-disk/p1/etc/fstab",
        ])
        .output()
        .expect("dump");
    assert_eq!(fstab.stdout, b"/dev/vda1 / ext4 defaults 0 1\n");
    let found = repo.ok(&[
        "find",
        "--luks-passphrase-file",
        &pass,
        "--vm",
        "crypt-disk",
        "/etc/fstab",
    ]);
    assert!(
        found.starts_with("crypt-disk: crypt-disk/p1/etc/fstab\n"),
        "{found}"
    );
}

/// A Fedora-like Btrfs: subvolumes `root` and `home`, a read-only snapshot of `root`, files
/// written with zstd compression, a reflinked copy, filled through the kernel.
fn fedora_btrfs(dir: &Path) -> PathBuf {
    let img = fs_image(dir, "btrfs.img", 128, &["mkfs.btrfs", "-q", "-f"]);
    with_reference(&img, &["mount", "-o", "loop,compress=zstd"], |top| {
        sh(
            "btrfs",
            &[
                "-q",
                "subvolume",
                "create",
                &top.join("root").display().to_string(),
            ],
        );
        sh(
            "btrfs",
            &[
                "-q",
                "subvolume",
                "create",
                &top.join("home").display().to_string(),
            ],
        );
        unix_files(&top.join("root"));
        let text: String = (0..20_000)
            .map(|i| format!("line {i} of a compressible file\n"))
            .collect();
        std::fs::write(top.join("root/etc/services"), &text).expect("write");
        std::fs::create_dir(top.join("home/alice")).expect("mkdir");
        std::fs::write(top.join("home/alice/notes.txt"), b"alice's notes\n").expect("write");
        sh(
            "cp",
            &[
                "--reflink=always",
                &top.join("root/big.bin").display().to_string(),
                &top.join("home/alice/big-copy.bin").display().to_string(),
            ],
        );
        std::fs::create_dir(top.join("snapshots")).expect("mkdir");
        sh(
            "btrfs",
            &[
                "-q",
                "subvolume",
                "snapshot",
                "-r",
                &top.join("root").display().to_string(),
                &top.join("snapshots/root-1").display().to_string(),
            ],
        );
        std::fs::write(top.join("root/etc/fstab"), b"changed after the snapshot\n").expect("write");
    });
    img
}

#[test]
fn btrfs_subvolumes_snapshots_and_compressed_files_read_as_in_the_guest() {
    if !have(
        &["fusermount3", "sfdisk", "mkfs.btrfs", "btrfs", "mount"],
        true,
    ) {
        return;
    }
    let (repo, src) = repo_and_src();
    let btrfs = fedora_btrfs(&src);
    let disk = src.join("fedora.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(140 << 20))
        .expect("create the disk");
    sfdisk(&disk, "label: gpt\nstart=2048, size=262144\n");
    crate::util::write_at(&disk, 2048 * SECTOR, &std::fs::read(&btrfs).expect("btrfs"));
    repo.backup(&[&disk]);
    let mnt = repo.dir.path().join("mnt");
    let mounted = Mounted::start(&repo, &mnt);
    let p1 = mnt.join("vms/fedora/latest/fedora/p1");
    let compared = with_reference(
        &btrfs,
        &["mount", "-o", "loop,ro,subvolid=5"],
        |reference| compare_trees(&p1, reference, Checks { unix: true }),
    );
    assert!(compared > 600, "only {compared} paths compared");
    assert_eq!(
        std::fs::read(p1.join("snapshots/root-1/etc/fstab")).expect("the snapshot's fstab"),
        b"/dev/vda1 / ext4 defaults 0 1\n"
    );
    assert_eq!(
        std::fs::read(p1.join("root/etc/fstab")).expect("fstab"),
        b"changed after the snapshot\n"
    );
    let (status, log) = mounted.stop();
    assert!(status.success(), "{log}");
    let found = repo.ok(&[
        "find",
        "--vm",
        "fedora",
        "/root/etc/fstab",
        "/snapshots/root-1/etc/fstab",
    ]);
    assert_eq!(
        found.lines().filter(|l| l.starts_with("fedora: ")).count(),
        2,
        "{found}"
    );
}

/// Two 64 MiB LVM physical volumes of group `vg` (made on loop devices, one group over both):
/// volume `root` has its first 32 MiB on the first and the rest on the second, and holds
/// `root_fs` (64 MiB). Returns the two PV images.
fn two_disk_group(dir: &Path, vg: &str, root_fs: &Path) -> (PathBuf, PathBuf) {
    let pvs = [dir.join("pv0.img"), dir.join("pv1.img")];
    let lvs = format!(
        "logical_volumes {{\nroot {{ id = \"rootrt-0000-0000-0000-0000-0000-000009\" status = [\"READ\", \"WRITE\", \"VISIBLE\"] segment_count = 2\n{}{} }}\n}}\n",
        lvm_segment_on("pv0", 1, 0, 8, 0),
        lvm_segment_on("pv1", 2, 8, 8, 0),
    );
    let pe_start = new_group(dir, &pvs, 64 << 20, vg, &lvs);
    let bytes = std::fs::read(root_fs).expect("root filesystem image");
    let (first, rest) = bytes.split_at(32 << 20);
    crate::util::write_at(&pvs[0], pe_start, first);
    crate::util::write_at(&pvs[1], pe_start, rest);
    let [pv0, pv1] = pvs;
    (pv0, pv1)
}

#[test]
fn a_volume_group_over_two_disks_is_put_together_under_the_first() {
    if !have(&[&["mkfs.ext4"][..], LVM_TOOLS].concat(), true) {
        return;
    }
    let (repo, src) = repo_and_src();
    let ext4 = ext4_image(&src);
    let vg = format!("vmstash-test-{}-{}", std::process::id(), unique());
    let (pv0, pv1) = two_disk_group(&src, &vg, &ext4);
    // vda: GPT with the first PV in p1; vdb: the second PV on the whole disk, no table.
    let vda = src.join("vda.img");
    std::fs::File::create(&vda)
        .and_then(|f| f.set_len(80 << 20))
        .expect("create vda");
    sfdisk(
        &vda,
        "label: gpt\nstart=2048, size=131072, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
    );
    crate::util::write_at(&vda, 2048 * SECTOR, &std::fs::read(&pv0).expect("pv0"));
    let vdb = src.join("vdb.img");
    std::fs::copy(&pv1, &vdb).expect("vdb");
    repo.backup(&[&vda, &vdb]);
    let listed = repo.ok(&["ls", "latest:"]);
    assert!(
        listed.lines().any(|l| l == "vda") && listed.lines().any(|l| l == "vdb.raw"),
        "{listed}"
    );
    let root = format!("latest:vda/{vg}/root");
    let names: BTreeSet<String> = repo.ok(&["ls", &root]).lines().map(str::to_owned).collect();
    with_reference(&ext4, &["mount", "-o", "loop,ro"], |reference| {
        let theirs: BTreeSet<String> = std::fs::read_dir(reference)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, theirs, "the root put together from both disks");
        assert_eq!(
            repo.ok(&["dump", &format!("{root}/etc/fstab")]),
            std::fs::read_to_string(reference.join("etc/fstab")).expect("fstab")
        );
    });
    let raw = repo
        .cmd(&["dump", &format!("latest:vda/{vg}/root.raw")])
        .output()
        .expect("dump root.raw");
    assert!(
        raw.status.success() && raw.stdout == std::fs::read(&ext4).expect("ext4"),
        "root.raw is the volume's bytes, its halves from both disks"
    );
    // vdb holds no table and no filesystem: at most an empty directory, never the group again.
    let vdb = repo.run(&["ls", "latest:vdb"]);
    let vdb_entries = String::from_utf8_lossy(&vdb.stdout);
    assert!(
        !vdb_entries.lines().any(|l| l == vg),
        "shown once, under vda: {vdb_entries}"
    );
}
