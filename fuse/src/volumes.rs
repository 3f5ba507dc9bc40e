//! The logical volumes of each snapshot (LVM2, see [`crate::lvm`]) as the mount shows them:
//! `<disk>/<vg>/<lv>.raw` and, when a filesystem is recognised on it, `<disk>/<vg>/<lv>/`.
//! Each snapshot's disks are searched once per mount for physical volumes (in every partition,
//! or on a disk without a partition table), their groups assembled across the snapshot's
//! disks, and each volume given a number (its file) and its filesystem a slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use vmstash_repo::snapshot::Manifest;
use vmstash_repo::Id;

use crate::guestfs::{Device, Owner};
use crate::guests::{Guests, PartitionDevice, ProbeKey};
use crate::image::ImageReader;
use crate::lvm::{self, Found, LvDevice};
use crate::partition::Partition;

/// A logical volume as the tree shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeView {
    /// The disk (index in the snapshot) whose directory shows it: the first holding one of its
    /// group's physical volumes.
    pub disk: usize,
    /// Its volume group's name.
    pub vg: String,
    /// Its name.
    pub lv: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its number, for [`Volumes::get`].
    pub number: u64,
    /// The slot of its filesystem, if one is recognised.
    pub slot: Option<u64>,
}

/// Every logical volume the mount has found.
#[derive(Default)]
pub struct Volumes {
    devices: RwLock<Vec<Arc<LvDevice>>>,
    by_snapshot: Mutex<HashMap<Id, Vec<VolumeView>>>,
}

impl Volumes {
    /// The logical volumes of snapshot `id` (`manifest`), whose disks have the partitions
    /// `partitions` (one list per disk, in order): found the first time, then remembered.
    pub fn of_snapshot(
        &self,
        images: &Arc<ImageReader>,
        guests: &Guests,
        (id, manifest): (&Id, &Manifest),
        partitions: &[Vec<Partition>],
        owner: Owner,
    ) -> Vec<VolumeView> {
        if let Some(known) = self
            .by_snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            return known.clone();
        }
        let found = physical_volumes(images, (id, manifest), partitions);
        let (groups, problems) = lvm::assemble(&found);
        let of = format!("of snapshot {} ({})", id.short(), manifest.name);
        for p in problems {
            eprintln!("vmstash mount: {p} {of}: its LVM metadata cannot be read");
        }
        let mut views = Vec::new();
        for group in groups {
            let disk_name = manifest
                .disks
                .get(group.disk)
                .map_or("?", |d| d.name.as_str());
            for (lv, device) in group.volumes {
                let place = format!("disk {disk_name} volume {}/{lv} {of}", group.vg.name);
                let device = match device {
                    Ok(device) => Arc::new(device),
                    Err(why) => {
                        eprintln!("vmstash mount: {place}: not shown: {why}");
                        continue;
                    }
                };
                let size = device.len();
                let number = self.add(Arc::clone(&device));
                let key = ProbeKey::Volume(*id, group.vg.id.clone(), lv.clone());
                let raw = format!("{}/{lv}.raw", group.vg.name);
                let slot = guests.slot_of_device(key, &place, &raw, owner, || device);
                views.push(VolumeView {
                    disk: group.disk,
                    vg: group.vg.name.clone(),
                    lv,
                    size,
                    number,
                    slot,
                });
            }
        }
        self.by_snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(*id, views.clone());
        views
    }

    fn add(&self, device: Arc<LvDevice>) -> u64 {
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        devices.push(device);
        u64::try_from(devices.len() - 1).unwrap_or(u64::MAX)
    }

    /// Volume `number`.
    pub fn get(&self, number: u64) -> Option<Arc<LvDevice>> {
        let i = usize::try_from(number).ok()?;
        self.devices
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(i)
            .cloned()
    }
}

/// Whether the device holds an LVM physical volume (its label; damaged or not).
pub fn is_physical_volume(device: &dyn Device) -> bool {
    !matches!(lvm::read_physical_volume(device), Ok(None))
}

/// The physical volumes on the snapshot's disks: in each partition, or on a whole disk
/// without partitions; with a log line for each one whose label or metadata is damaged.
fn physical_volumes(
    images: &Arc<ImageReader>,
    (id, manifest): (&Id, &Manifest),
    partitions: &[Vec<Partition>],
) -> Vec<Found> {
    let mut found = Vec::new();
    for (no, disk) in manifest.disks.iter().enumerate() {
        let parts = partitions.get(no).map(Vec::as_slice).unwrap_or_default();
        let places: Vec<(String, u64, u64)> = if parts.is_empty() {
            vec![(format!("disk {}", disk.name), 0, disk.size)]
        } else {
            parts
                .iter()
                .map(|p| (format!("disk {} p{}", disk.name, p.number), p.start, p.len))
                .collect()
        };
        for (place, start, len) in places {
            let device: Arc<dyn Device> =
                Arc::new(PartitionDevice::new(images, *id, (no, disk), start, len));
            match lvm::read_physical_volume(device.as_ref()) {
                Ok(Some(pv)) => found.push(Found {
                    pv,
                    device,
                    disk: no,
                    place,
                }),
                Ok(None) => {}
                Err(e) => eprintln!(
                    "vmstash mount: {place} of snapshot {} ({}): {e}; its volumes are not shown",
                    id.short(),
                    manifest.name
                ),
            }
        }
    }
    found
}
