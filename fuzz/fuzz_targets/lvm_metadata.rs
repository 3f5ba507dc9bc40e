//! The LVM reader (`vmstash_fuse::lvm`): arbitrary bytes as a physical volume, and as the
//! metadata text of a volume group.
//!
//! Input: byte 0 chooses the mode.
//!
//! - Even: the rest is a device: its label, PV header, metadata area and text are read, the
//!   group assembled, and every volume read at its start, middle and last byte. Properties:
//!   no panic; a read of a volume fails only past its end or past its physical volume's end
//!   (damage), never out of bounds.
//! - Odd: the rest is metadata text, assembled onto a 1 MiB physical volume whose UUID the
//!   text may name (`pv-uuid`); volumes are read as above.
//!
//! Seeds (`seeds/lvm_metadata/`): the head of a real PV (`fuse/testdata/lvm-pv-head.bin`, made
//! by LVM's tools) and metadata texts with linear, striped and thin volumes.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmstash_fuse::guestfs::Device;
use vmstash_fuse::lvm::{assemble, read_physical_volume, Found, PhysicalVolume, SharedDevice};

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 0 => device(rest),
        Some((_, rest)) => text(rest),
        None => {}
    }
});

fn device(bytes: &[u8]) {
    let device: SharedDevice = Arc::new(bytes.to_vec());
    if let Ok(Some(pv)) = read_physical_volume(device.as_ref()) {
        read_volumes(vec![Found {
            pv,
            device,
            disk: 0,
            place: "fuzz".to_owned(),
        }]);
    }
}

fn text(text: &[u8]) {
    let device: SharedDevice = Arc::new(vec![0u8; 1 << 20]);
    read_volumes(vec![Found {
        pv: PhysicalVolume {
            uuid: "pvuuid".to_owned(),
            device_size: 1 << 20,
            metadata: Some(text.to_vec()),
        },
        device,
        disk: 0,
        place: "fuzz".to_owned(),
    }]);
}

fn read_volumes(found: Vec<Found>) {
    let (groups, _) = assemble(&found);
    for group in groups {
        for (_, volume) in group.volumes {
            let Ok(volume) = volume else { continue };
            let len = volume.len();
            let mut b = [0u8; 1];
            for at in [0, len / 2, len.saturating_sub(1)] {
                if at < len {
                    let _ = volume.read_at(at, &mut b);
                }
            }
            assert!(volume.read_at(len, &mut b).is_err(), "a read past the end");
        }
    }
}
