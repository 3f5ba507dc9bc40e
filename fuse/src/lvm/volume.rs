//! Volume groups assembled from the physical volumes found on a snapshot's disks, and a
//! logical volume's bytes ([`LvDevice`]): each read split along segments and stripes and
//! served by the physical volumes' devices.

use super::metadata::{parse_volume_group, Segment, VolumeGroup};
use super::{PhysicalVolume, SharedDevice};
use crate::guestfs::device::{check_range, PastEnd};
use crate::guestfs::{Device, DeviceError};

/// A physical volume found on a disk of a snapshot.
pub struct Found {
    /// What its label says.
    pub pv: PhysicalVolume,
    /// Its bytes (a partition, or a whole disk).
    pub device: SharedDevice,
    /// The disk it is on (index in the snapshot).
    pub disk: usize,
    /// Where it is, for log lines (`disk vda p2`).
    pub place: String,
}

/// A volume group put together from its physical volumes.
pub struct Assembled {
    /// The group, as its newest metadata describes it.
    pub vg: VolumeGroup,
    /// The first disk (in the snapshot's order) that holds one of its physical volumes: where
    /// the mount shows it.
    pub disk: usize,
    /// Each visible logical volume: its name and device, or why it cannot be read.
    pub volumes: Vec<(String, Result<LvDevice, String>)>,
}

/// Groups `found` into volume groups (by UUID; the metadata with the highest sequence number
/// wins) and opens their visible logical volumes. Physical volumes whose metadata cannot be
/// read are reported in the second list, with why.
pub fn assemble(found: &[Found]) -> (Vec<Assembled>, Vec<String>) {
    let mut groups: Vec<(VolumeGroup, usize)> = Vec::new();
    let mut problems = Vec::new();
    for f in found {
        let Some(text) = &f.pv.metadata else {
            continue;
        };
        let vg = match parse_volume_group(text) {
            Ok(vg) => vg,
            Err(e) => {
                problems.push(format!("{}: {e}", f.place));
                continue;
            }
        };
        match groups
            .iter_mut()
            .find(|(g, _)| g.id == vg.id && g.name == vg.name)
        {
            Some((known, disk)) => {
                *disk = (*disk).min(f.disk);
                if vg.seqno > known.seqno {
                    *known = vg;
                }
            }
            None => groups.push((vg, f.disk)),
        }
    }
    let assembled = groups
        .into_iter()
        .map(|(vg, disk)| {
            let volumes = vg
                .lvs
                .iter()
                .filter(|lv| lv.visible)
                .map(|lv| {
                    let device = lv
                        .layout
                        .clone()
                        .and_then(|segments| LvDevice::new(&vg, segments, found));
                    (lv.name.clone(), device)
                })
                .collect();
            Assembled { vg, disk, volumes }
        })
        .collect();
    (assembled, problems)
}

/// A segment with its stripes' devices and where their extents start on them.
struct MappedSegment {
    segment: Segment,
    stripes: Vec<(SharedDevice, u64)>,
}

/// A logical volume's bytes.
pub struct LvDevice {
    size: u64,
    extent_size: u64,
    segments: Vec<MappedSegment>,
}

impl LvDevice {
    /// The volume of `segments` in `vg`, its physical volumes among `found`.
    fn new(vg: &VolumeGroup, segments: Vec<Segment>, found: &[Found]) -> Result<LvDevice, String> {
        let mut mapped = Vec::new();
        for segment in segments {
            let mut stripes = Vec::new();
            for &(pv, first_extent) in &segment.stripes {
                let pv = &vg.pvs[pv];
                let device = found
                    .iter()
                    .find(|f| f.pv.uuid == pv.uuid)
                    .map(|f| SharedDevice::clone(&f.device))
                    .ok_or_else(|| {
                        format!(
                            "its physical volume {} ({}) is not on this snapshot's disks",
                            pv.key, pv.uuid
                        )
                    })?;
                stripes.push((device, pv.pe_start + first_extent * vg.extent_size));
            }
            mapped.push(MappedSegment { segment, stripes });
        }
        let size = mapped.last().map_or(0, |m| {
            (m.segment.start_extent + m.segment.extent_count) * vg.extent_size
        });
        Ok(LvDevice {
            size,
            extent_size: vg.extent_size,
            segments: mapped,
        })
    }

    /// Where the byte at `offset` of the volume is: its device, the offset there, and how many
    /// bytes from there stay on that device in a row.
    fn locate(&self, offset: u64) -> Option<(&SharedDevice, u64, u64)> {
        let extent = offset / self.extent_size;
        let i = self
            .segments
            .partition_point(|m| m.segment.start_extent + m.segment.extent_count <= extent);
        let m = self.segments.get(i)?;
        let seg_start = m.segment.start_extent * self.extent_size;
        let seg_end = seg_start + m.segment.extent_count * self.extent_size;
        let within = offset - seg_start;
        if m.stripes.len() == 1 {
            let (dev, start) = &m.stripes[0];
            return Some((dev, start + within, seg_end - offset));
        }
        let stripe_size = m.segment.stripe_size;
        let n = u64::try_from(m.stripes.len()).ok()?;
        let chunk = within / stripe_size;
        let (dev, start) = m.stripes.get(usize::try_from(chunk % n).ok()?)?;
        let in_chunk = within % stripe_size;
        let at = start + (chunk / n) * stripe_size + in_chunk;
        Some((dev, at, (stripe_size - in_chunk).min(seg_end - offset)))
    }
}

impl Device for LvDevice {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        check_range(self, offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + u64::try_from(done).unwrap_or(u64::MAX);
            let (dev, pv_offset, run) = self.locate(at).ok_or(PastEnd {
                offset,
                len: buf.len(),
                size: self.size,
            })?;
            let n = usize::try_from(run)
                .unwrap_or(usize::MAX)
                .min(buf.len() - done);
            dev.read_at(pv_offset, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}
