//! The filesystems inside partitions that the mount shows as `<disk>/p<N>/`: each opened once
//! per mount, given a slot number that puts its inodes in a range of their own, and read
//! through the repository like the raw images.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use vmstash_repo::snapshot::Disk;
use vmstash_repo::Id;

use crate::guestfs::device::{check_range, PastEnd};
use crate::guestfs::{self, Device, DeviceError, FsError, GuestFs, Owner, MAX_LOCAL_INO};
use crate::image::ImageReader;
use crate::luks::{self, Passphrase};
use crate::partition::Partition;

/// Bits of a mount inode number below the slot.
pub const SLOT_SHIFT: u32 = 40;
/// Most filesystems one mount opens (the slot must fit above [`SLOT_SHIFT`]).
const MAX_SLOTS: usize = (1 << 23) - 1;

/// A partition of a snapshot's disk, read through the repository.
pub struct PartitionDevice {
    images: Arc<ImageReader>,
    snapshot: Id,
    disk_no: usize,
    disk: Arc<Disk>,
    start: u64,
    len: u64,
}

impl PartitionDevice {
    /// Bytes `start..start + len` of disk `disk_no` (`disk`) of `snapshot`.
    pub fn new(
        images: &Arc<ImageReader>,
        snapshot: Id,
        (disk_no, disk): (usize, &Disk),
        start: u64,
        len: u64,
    ) -> PartitionDevice {
        PartitionDevice {
            images: Arc::clone(images),
            snapshot,
            disk_no,
            disk: Arc::new(disk.clone()),
            start,
            len,
        }
    }
}

impl Device for PartitionDevice {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        check_range(self, offset, buf.len())?;
        let want = buf.len();
        let mut done = 0usize;
        while done < want {
            let piece = u32::try_from(want - done).unwrap_or(u32::MAX);
            let at = offset + u64::try_from(done).unwrap_or(0);
            let bytes = self
                .images
                .read(
                    &self.snapshot,
                    self.disk_no,
                    &self.disk,
                    self.start + at,
                    piece,
                )
                .map_err(DeviceError::Read)?;
            // The disk ends inside the partition (the table checked it does not): what is
            // missing is past the partition's readable end.
            let dst = buf
                .get_mut(done..done + bytes.len())
                .filter(|_| !bytes.is_empty())
                .ok_or(PastEnd {
                    offset,
                    len: want,
                    size: at,
                })?;
            dst.copy_from_slice(&bytes);
            done += bytes.len();
        }
        Ok(())
    }
}

/// One open filesystem and what to call it in log lines.
pub struct Guest {
    /// The filesystem.
    pub fs: Box<dyn GuestFs>,
    /// "disk vda p1 (ext4) of snapshot 1a2b3c4d (web1)".
    pub label: String,
}

impl Guest {
    /// Runs `f` on the filesystem; a panic inside the filesystem reader becomes an error:
    /// damage, since the readers panic only on metadata they did not expect (though they
    /// cannot say what).
    pub fn call<R>(
        &self,
        f: impl FnOnce(&dyn GuestFs) -> Result<R, FsError>,
    ) -> Result<R, FsError> {
        catch_unwind(AssertUnwindSafe(|| f(self.fs.as_ref()))).unwrap_or_else(|_| {
            Err(FsError::corrupt(
                self.fs.type_name(),
                "the filesystem reader failed on this request",
            ))
        })
    }
}

/// What holds a filesystem: a partition (snapshot, disk index, partition number) or a logical
/// volume (snapshot, volume group UUID, volume name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProbeKey {
    /// A partition.
    Partition(Id, usize, u32),
    /// A logical volume.
    Volume(Id, String, String),
}

/// The filesystems of a mount by slot (slot `n` is at index `n - 1`).
#[derive(Default)]
pub struct Guests {
    slots: RwLock<Vec<Arc<Guest>>>,
    /// Every partition looked at, and the slot of its filesystem if it has one we can read.
    probed: Mutex<HashMap<ProbeKey, Option<u64>>>,
    /// Passphrases tried on LUKS volumes (none: they stay locked).
    passphrases: RwLock<Vec<Passphrase>>,
}

impl Guests {
    /// The slot of the filesystem in partition `part` of disk `disk_no` of snapshot
    /// `snapshot` (`name` is the snapshot's series, for log lines); opened the first time,
    /// `None` (with a log line when it is damaged, or unknown) when there is none to show.
    pub fn slot_of(
        &self,
        images: &Arc<ImageReader>,
        (snapshot, name): (&Id, &str),
        (disk_no, disk): (usize, &Disk),
        part: &Partition,
        owner: Owner,
    ) -> Option<u64> {
        let key = ProbeKey::Partition(*snapshot, disk_no, part.number);
        let place = format!(
            "disk {} p{} of snapshot {} ({name})",
            disk.name,
            part.number,
            snapshot.short()
        );
        let raw = format!("p{}.raw", part.number);
        self.slot_of_device(key, &place, &raw, owner, || {
            Arc::new(PartitionDevice::new(
                images,
                *snapshot,
                (disk_no, disk),
                part.start,
                part.len,
            ))
        })
    }

    /// The slot of the filesystem on the device `device` makes (opened the first time `key` is
    /// seen); `place` names it in log lines and `raw` is the file that shows its bytes anyway.
    pub fn slot_of_device(
        &self,
        key: ProbeKey,
        place: &str,
        raw: &str,
        owner: Owner,
        device: impl FnOnce() -> Arc<dyn Device>,
    ) -> Option<u64> {
        if let Some(&known) = self
            .probed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return known;
        }
        let Some(device) = self.unlocked(place, raw, device()) else {
            self.probed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, None);
            return None;
        };
        let opened = catch_unwind(AssertUnwindSafe(|| guestfs::open(device, owner)))
            .unwrap_or_else(|_| Err(FsError::corrupt("guest", "its reader failed")));
        let slot = match opened {
            Ok(Some(fs)) => {
                for note in fs.notes() {
                    eprintln!("vmstash mount: {place} ({}): {note}", fs.type_name());
                }
                self.add(Guest {
                    label: format!("{place} [{}]", fs.type_name()),
                    fs,
                })
            }
            Ok(None) => {
                eprintln!(
                    "vmstash mount: {place}: no filesystem vmstash can read (ext2/3/4, XFS, Btrfs, FAT, NTFS); showing {raw} only"
                );
                None
            }
            Err(e) => {
                eprintln!("vmstash mount: {place}: {e}; showing {raw} only");
                None
            }
        };
        self.probed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, slot);
        slot
    }

    /// Sets the passphrases tried on LUKS volumes opened from now on (before any is probed).
    pub fn set_passphrases(&self, passphrases: Vec<Passphrase>) {
        *self
            .passphrases
            .write()
            .unwrap_or_else(PoisonError::into_inner) = passphrases;
    }

    /// `device` itself, or when it holds a LUKS volume its decrypted data, unlocked with the
    /// passphrases given; `None` (with a log line naming `place`, and `raw` that still shows
    /// its bytes) when it stays locked or cannot be read.
    fn unlocked(&self, place: &str, raw: &str, device: Arc<dyn Device>) -> Option<Arc<dyn Device>> {
        let mut head = [0u8; 8];
        if device.len() < 8 || device.read_at(0, &mut head).is_err() || !luks::recognises(&head) {
            return Some(device);
        }
        let what = match luks::Header::read(device.as_ref()) {
            Ok(h) => format!("LUKS{} volume {}", h.version, h.uuid),
            Err(e) => {
                eprintln!("vmstash mount: {place}: {e}; showing {raw} only");
                return None;
            }
        };
        let passphrases = self
            .passphrases
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if passphrases.is_empty() {
            eprintln!(
                "vmstash mount: {place}: {what} is locked; mount with --luks-passphrase-file to open it (showing {raw} only)"
            );
            return None;
        }
        let opened = catch_unwind(AssertUnwindSafe(|| {
            luks::open_with_any(&device, &passphrases)
        }));
        match opened {
            Ok(Ok(unlocked)) => {
                eprintln!("vmstash mount: {place}: {what} unlocked");
                Some(Arc::new(unlocked))
            }
            Ok(Err(e)) => {
                eprintln!("vmstash mount: {place}: {what}: {e}; showing {raw} only");
                None
            }
            Err(_) => {
                eprintln!("vmstash mount: {place}: {what}: its reader failed; showing {raw} only");
                None
            }
        }
    }

    fn add(&self, guest: Guest) -> Option<u64> {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        if slots.len() >= MAX_SLOTS {
            eprintln!(
                "vmstash mount: {}: more than {MAX_SLOTS} filesystems in one mount; not shown",
                guest.label
            );
            return None;
        }
        slots.push(Arc::new(guest));
        u64::try_from(slots.len()).ok()
    }

    /// The filesystem in `slot`.
    pub fn get(&self, slot: u64) -> Option<Arc<Guest>> {
        let i = usize::try_from(slot).ok()?.checked_sub(1)?;
        self.slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(i)
            .cloned()
    }
}

/// The mount's inode number of inode `local` of the filesystem in `slot`.
pub fn mount_ino(slot: u64, local: u64) -> u64 {
    (slot << SLOT_SHIFT) | (local & MAX_LOCAL_INO)
}

/// The slot and local inode number of a mount inode number; `None` for the mount's own
/// namespace (repository directories and files).
pub fn split_ino(ino: u64) -> Option<(u64, u64)> {
    let slot = ino >> SLOT_SHIFT;
    (slot != 0).then_some((slot, ino & MAX_LOCAL_INO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_split_back() {
        assert_eq!(split_ino(5), None);
        assert_eq!(split_ino(MAX_LOCAL_INO), None);
        assert_eq!(split_ino(mount_ino(3, 77)), Some((3, 77)));
        let last = u64::try_from(MAX_SLOTS).expect("fits");
        assert_eq!(
            split_ino(mount_ino(last, MAX_LOCAL_INO)),
            Some((last, MAX_LOCAL_INO))
        );
    }
}
