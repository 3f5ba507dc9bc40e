//! The LVM reader on a real physical volume (`testdata/lvm-pv-head.bin`, made by
//! `testdata/make-lvm.sh` with LVM's own tools), damaged copies of it, and striped volumes
//! described in metadata text.

use std::sync::Arc;

use super::metadata::parse_volume_group;
use super::*;

const MIB: u64 = 1 << 20;
const EXTENT: u64 = 4 * MIB;
/// Where pv0's extents start (pe_start 2048 sectors).
const PE_START: u64 = MIB;

/// The 64 MiB PV: the real head, then each 4 MiB extent `e` filled with byte `e + 1`.
fn pv_bytes() -> Vec<u8> {
    let head = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/lvm-pv-head.bin"
    ))
    .expect("testdata/lvm-pv-head.bin");
    let mut pv = vec![0u8; 64 << 20];
    pv[..head.len()].copy_from_slice(&head);
    for e in 0..15u64 {
        let start = usize::try_from(PE_START + e * EXTENT).expect("fits");
        let fill = u8::try_from(e + 1).expect("byte");
        pv[start..start + usize::try_from(EXTENT).expect("fits")].fill(fill);
    }
    pv
}

fn found(pv: Vec<u8>, disk: usize) -> Found {
    let device: SharedDevice = Arc::new(pv);
    let read = read_physical_volume(device.as_ref())
        .expect("read the PV")
        .expect("a PV");
    Found {
        pv: read,
        device,
        disk,
        place: format!("disk {disk}"),
    }
}

fn byte_at(dev: &dyn Device, offset: u64) -> u8 {
    let mut b = [0u8; 1];
    dev.read_at(offset, &mut b).expect("read");
    b[0]
}

#[test]
fn reads_a_real_physical_volume_and_maps_its_volumes() {
    let f = found(pv_bytes(), 0);
    assert_eq!(f.pv.uuid.len(), 32);
    let vg = parse_volume_group(f.pv.metadata.as_deref().expect("metadata")).expect("vg");
    assert_eq!(vg.name, "vgt");
    assert_eq!(vg.seqno, 2, "the restore's copy is the newest");
    assert_eq!(vg.extent_size, EXTENT);
    assert_eq!(vg.pvs[0].uuid, f.pv.uuid);
    assert_eq!(vg.pvs[0].pe_start, PE_START);
    let (groups, problems) = assemble(std::slice::from_ref(&f));
    assert!(problems.is_empty(), "{problems:?}");
    let [group] = groups.as_slice() else {
        panic!("one group expected")
    };
    let names: Vec<&str> = group.volumes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["root", "swap"]);
    let root = group.volumes[0].1.as_ref().expect("root");
    assert_eq!(root.len(), 8 * EXTENT);
    assert_eq!(byte_at(root, 0), 1);
    assert_eq!(byte_at(root, 7 * EXTENT + 5), 8);
    let swap = group.volumes[1].1.as_ref().expect("swap");
    assert_eq!(swap.len(), 3 * EXTENT);
    assert_eq!(byte_at(swap, 0), 13, "segment 1: pv0 extent 12");
    assert_eq!(byte_at(swap, EXTENT), 10, "segment 2: pv0 extents 9-10");
    assert_eq!(byte_at(swap, 3 * EXTENT - 1), 11);
    // A read across the segments' border, and one past the end.
    let mut across = vec![0u8; 8];
    swap.read_at(EXTENT - 4, &mut across).expect("read across");
    assert_eq!(across, [13, 13, 13, 13, 10, 10, 10, 10]);
    assert!(swap.read_at(3 * EXTENT - 2, &mut across).is_err());
}

#[test]
fn a_disk_without_a_label_has_no_physical_volume() {
    let dev: Vec<u8> = vec![0u8; 1 << 20];
    assert!(read_physical_volume(&dev).expect("read").is_none());
    let tiny: Vec<u8> = vec![0u8; 100];
    assert!(read_physical_volume(&tiny).expect("read").is_none());
}

#[test]
fn damaged_labels_and_metadata_are_errors() {
    let pv = pv_bytes();
    let label_at = pv.windows(8).position(|w| w == b"LABELONE").expect("label");
    let text_at = pv
        .windows(7)
        .rposition(|w| w == b"seqno =")
        .expect("metadata text");
    for (what, at) in [
        ("the label", label_at + 40),
        ("the metadata text", text_at + 8),
    ] {
        let mut damaged = pv.clone();
        damaged[at] ^= 0x55;
        let err = read_physical_volume(&damaged).expect_err(what);
        assert!(matches!(err, LvmError::Corrupt(_)), "{what}: {err}");
    }
}

/// A group of two PVs (`a`, `b`: 16 extents of 1 MiB each from 1 MiB on) and the given
/// logical volumes' text.
fn two_pv_group(lvs: &str) -> Vec<Found> {
    let text = format!(
        r#"vg2 {{
    id = "group-two"
    seqno = 3
    extent_size = 2048
    physical_volumes {{
        pv0 {{ id = "aaaa-aaaa" pe_start = 2048 pe_count = 16 }}
        pv1 {{ id = "bbbb-bbbb" pe_start = 2048 pe_count = 16 }}
    }}
    logical_volumes {{ {lvs} }}
}}"#
    );
    ["aaaaaaaa", "bbbbbbbb"]
        .into_iter()
        .enumerate()
        .map(|(disk, uuid)| {
            let mut bytes = vec![0u8; 17 << 20];
            for (i, b) in bytes.iter_mut().enumerate().skip(1 << 20) {
                // Which PV, and which 64 KiB of it.
                *b = u8::try_from(disk * 128 + (i >> 16) % 128).expect("byte");
            }
            Found {
                pv: PhysicalVolume {
                    uuid: uuid.to_owned(),
                    device_size: 17 << 20,
                    metadata: Some(text.clone().into_bytes()),
                },
                device: Arc::new(bytes),
                disk,
                place: format!("disk {disk}"),
            }
        })
        .collect()
}

#[test]
fn striped_volumes_interleave_their_physical_volumes() {
    let found = two_pv_group(
        r#"data {
            status = ["VISIBLE"]
            segment1 { start_extent = 0 extent_count = 4 type = "striped" stripe_count = 2
                       stripe_size = 128 stripes = ["pv0", 2, "pv1", 0] }
        }"#,
    );
    let (groups, problems) = assemble(&found);
    assert!(problems.is_empty(), "{problems:?}");
    let data = groups[0].volumes[0].1.as_ref().expect("data");
    assert_eq!(groups[0].disk, 0);
    assert_eq!(data.len(), 4 << 20);
    // 64 KiB stripes: even chunks on pv0 from its extent 2, odd ones on pv1 from extent 0.
    let kib64 = 64 * 1024;
    // pv0's extent 2 starts at 3 MiB: its 48th 64 KiB piece.
    let pv0_extent2 = 48;
    assert_eq!(byte_at(data, 0), pv0_extent2);
    assert_eq!(byte_at(data, kib64), 128 + 16);
    assert_eq!(byte_at(data, 2 * kib64), pv0_extent2 + 1);
    assert_eq!(byte_at(data, 3 * kib64 + 7), 128 + 17);
}

#[test]
fn unsupported_and_broken_volumes_say_why() {
    let found = two_pv_group(
        r#"pool { status = ["VISIBLE"] segment1 { start_extent = 0 extent_count = 1 type = "thin-pool" } }
           past { status = ["VISIBLE"] segment1 { start_extent = 0 extent_count = 4 type = "striped"
                  stripe_count = 1 stripes = ["pv1", 14] } }
           ghost { status = ["VISIBLE"] segment1 { start_extent = 0 extent_count = 1 type = "striped"
                  stripe_count = 1 stripes = ["pv7", 0] } }
           hidden { status = [] segment1 { start_extent = 0 extent_count = 1 type = "striped"
                  stripe_count = 1 stripes = ["pv0", 0] } }"#,
    );
    let (groups, _) = assemble(&found);
    let why: Vec<(&str, String)> = groups[0]
        .volumes
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_ref().err().cloned().unwrap_or_default()))
        .collect();
    assert_eq!(why.len(), 3, "the hidden volume is not shown: {why:?}");
    assert!(why[0].1.contains("thin-pool"), "{why:?}");
    assert!(why[1].1.contains("past the end of pv1"), "{why:?}");
    assert!(why[2].1.contains("unknown pv7"), "{why:?}");
    // A group whose second PV is missing: its volumes on it say so.
    let (groups, _) = assemble(
        &two_pv_group(
            r#"b { status = ["VISIBLE"] segment1 { start_extent = 0 extent_count = 1 type = "striped"
              stripe_count = 1 stripes = ["pv1", 0] } }"#,
        )[..1],
    );
    let err = groups[0].volumes[0]
        .1
        .as_ref()
        .err()
        .cloned()
        .unwrap_or_default();
    assert!(err.contains("not on this snapshot's disks"), "{err}");
}
