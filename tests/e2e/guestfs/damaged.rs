//! Damaged metadata in the layouts vmstash reads beyond ext4, FAT and NTFS: an XFS with one
//! directory's inode wiped, a Btrfs with one subvolume's tree block corrupted (every copy),
//! an LVM physical volume whose metadata text no longer matches its checksum, and a LUKS2
//! volume with both header copies damaged. Each gives EIO on the damaged path (or shows the
//! raw bytes only) with a log line naming the damage, and the rest of the disk still reads.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{
    common_files, fs_image, luks2, lvm_segment, new_group, repo_and_src, sfdisk, xfs_image,
    LVM_TOOLS, SECTOR,
};
use crate::mount::Mounted;
use crate::util::{have, sh, unique, write_at};

/// Flips every bit of the byte at `offset` of `path`.
fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, offset).expect("read");
    f.write_all_at(&[!byte[0]], offset).expect("write");
}

/// A 32 MiB XFS with the common files, the inode of `/etc/deep` overwritten with garbage
/// through xfs_db (its magic zeroed; `-d` writes past xfs_db's own verifier).
fn xfs_with_a_wiped_directory(dir: &Path) -> PathBuf {
    let mut deep_ino = 0;
    let img = xfs_image(dir, "damaged.xfs", 32, |root| {
        common_files(root);
        deep_ino = std::fs::metadata(root.join("etc/deep"))
            .expect("stat")
            .ino();
    });
    sh(
        "xfs_db",
        &[
            "-x",
            "-c",
            &format!("inode {deep_ino}"),
            "-c",
            "write -d core.magic 0",
            &img.display().to_string(),
        ],
    );
    img
}

/// A Btrfs whose top level holds the common files and whose subvolume `home` holds a note;
/// then every copy of `home`'s tree block is corrupted (its checksum no longer matches).
fn btrfs_with_a_corrupted_subvolume(dir: &Path) -> PathBuf {
    let img = fs_image(dir, "damaged.btrfs", 128, &["mkfs.btrfs", "-q", "-f"]);
    super::with_reference(&img, &["mount", "-o", "loop"], |top| {
        common_files(top);
        let home = top.join("home");
        sh(
            "btrfs",
            &["-q", "subvolume", "create", &home.display().to_string()],
        );
        std::fs::write(home.join("notes.txt"), b"home's notes\n").expect("write");
    });
    let img_s = img.display().to_string();
    let roots = sh(
        "btrfs",
        &["inspect-internal", "dump-tree", "-t", "root", &img_s],
    );
    // The first subvolume gets id 256: its ROOT_ITEM's line is followed by one with `bytenr`.
    let after_key = roots
        .split("key (256 ROOT_ITEM")
        .nth(1)
        .expect("home's root item");
    let bytenr = after_key
        .split_whitespace()
        .skip_while(|w| *w != "bytenr")
        .nth(1)
        .expect("home's tree root");
    let mirrors = sh("btrfs-map-logical", &["-l", bytenr, &img_s]);
    let physical: Vec<u64> = mirrors
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip_while(|w| *w != "physical");
            words.nth(1)?.parse().ok()
        })
        .collect();
    assert!(!physical.is_empty(), "no copy of home's tree: {mirrors}");
    for at in physical {
        flip_byte(&img, at + 200);
    }
    img
}

/// A 16 MiB LVM physical volume of group `vg` holding one 4 MiB volume `data`, then a byte
/// in the middle of its newest metadata text flipped (the text no longer matches the
/// checksum in the metadata area's header).
fn lvm_with_damaged_metadata(dir: &Path, vg: &str) -> PathBuf {
    let pv = dir.join("damaged.pv");
    let lvs = format!(
        "logical_volumes {{\ndata {{ id = \"datadt-0000-0000-0000-0000-0000-000001\" \
         status = [\"READ\", \"WRITE\", \"VISIBLE\"] segment_count = 1\n{} }}\n}}\n",
        lvm_segment(1, 0, 1, 0)
    );
    new_group(dir, std::slice::from_ref(&pv), 16 << 20, vg, &lvs);
    // The metadata area starts at 4 KiB; its header's first location (offset 40) names where
    // the newest text is, relative to the area, and how long it is.
    let bytes = std::fs::read(&pv).expect("read the PV");
    let le64 = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let (offset, size) = (le64(4096 + 40), le64(4096 + 48));
    assert!(size > 0, "no metadata text");
    flip_byte(&pv, 4096 + offset + size / 2);
    pv
}

/// A 20 MiB LUKS2 volume (the passphrase in `key_file`) with both header copies damaged:
/// a byte of each JSON area flipped, so neither checksum matches.
fn luks_with_damaged_headers(dir: &Path, key_file: &Path) -> PathBuf {
    let img = dir.join("damaged.luks");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(20 << 20))
        .expect("create");
    luks2(
        &[
            "luksFormat",
            "--luks2-metadata-size",
            "16k",
            "--luks2-keyslots-size",
            "1m",
        ],
        key_file,
        &img,
    );
    // Each copy is a 4 KiB binary header and its JSON; the secondary starts at 16 KiB.
    flip_byte(&img, 4096 + 2);
    flip_byte(&img, (16 << 10) + 4096 + 2);
    img
}

#[test]
fn damaged_xfs_btrfs_lvm_and_luks_give_eio_or_raw_bytes_and_the_rest_reads() {
    let tools = [
        &[
            "fusermount3",
            "sfdisk",
            "mkfs.xfs",
            "xfs_db",
            "mkfs.btrfs",
            "btrfs",
            "btrfs-map-logical",
            "cryptsetup",
            "mount",
        ][..],
        LVM_TOOLS,
    ]
    .concat();
    if !have(&tools, true) {
        return;
    }
    let (repo, src) = repo_and_src();
    let xfs = xfs_with_a_wiped_directory(&src);
    let btrfs = btrfs_with_a_corrupted_subvolume(&src);
    let vg = format!("vmstash-damaged-{}-{}", std::process::id(), unique());
    let pv = lvm_with_damaged_metadata(&src, &vg);
    let key_file = src.join("key");
    std::fs::write(&key_file, "a passphrase").expect("write");
    let luks = luks_with_damaged_headers(&src, &key_file);

    let disk = src.join("broken.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(200 << 20))
        .expect("create the disk");
    sfdisk(
        &disk,
        "label: gpt\nstart=2048, size=65536\nstart=67584, size=262144\n\
         start=329728, size=32768, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n\
         start=362496, size=40960\n",
    );
    for (start, image) in [
        (2048, &xfs),
        (67_584, &btrfs),
        (329_728, &pv),
        (362_496, &luks),
    ] {
        write_at(&disk, start * SECTOR, &std::fs::read(image).expect("image"));
    }
    repo.backup(&[&disk]);

    let mnt = repo.dir.path().join("mnt");
    let key = key_file.display().to_string();
    let mounted = Mounted::start_with(&repo, &mnt, &["--luks-passphrase-file", &key]);
    let parts = mnt.join("vms/broken/latest/broken");
    let eio = |path: &Path| {
        let err = std::fs::metadata(path)
            .and_then(|_| std::fs::read_dir(path).map(|_| ()))
            .expect_err("damaged");
        assert_eq!(
            err.raw_os_error(),
            Some(5),
            "EIO on {}: {err}",
            path.display()
        );
    };
    // XFS: the wiped directory fails, its siblings read.
    eio(&parts.join("p1/etc/deep"));
    assert_eq!(
        std::fs::read(parts.join("p1/etc/fstab")).expect("the rest of the XFS"),
        b"/dev/vda1 / ext4 defaults 0 1\n"
    );
    assert_eq!(
        std::fs::read_dir(parts.join("p1/many"))
            .expect("many")
            .count(),
        300
    );
    // Btrfs: the corrupted subvolume fails, the top level reads.
    eio(&parts.join("p2/home/notes.txt"));
    assert_eq!(
        std::fs::read(parts.join("p2/etc/deep/er/notes.txt")).expect("the rest of the Btrfs"),
        b"three levels down\n"
    );
    // LVM and LUKS: the raw partition only; its bytes are those of the source.
    for (part, image) in [("p3", &pv), ("p4", &luks)] {
        assert!(!parts.join(part).exists(), "{part} shows no directory");
        assert_eq!(
            std::fs::read(parts.join(format!("{part}.raw"))).expect("raw"),
            std::fs::read(image).expect("source"),
            "{part}.raw"
        );
    }
    let (status, log) = mounted.stop();
    assert!(status.success(), "{log}");
    for (what, needle) in [
        ("XFS", "[xfs]: inode"),
        ("Btrfs", "damaged btrfs metadata: node at logical"),
        ("LVM", "damaged LVM metadata"),
        (
            "LUKS",
            "secondary: checksum mismatch of the LUKS2 header at 16384",
        ),
    ] {
        assert!(
            log.contains(needle),
            "no log line for the {what} damage: {log}"
        );
    }
}
