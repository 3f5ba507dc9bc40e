//! The volume group a metadata text describes: its physical volumes (by UUID, where their
//! extents start) and its logical volumes with their segments. Only what reading a volume
//! needs is kept; every number is checked (extents inside their physical volume, segments in
//! order) so that a volume never maps outside its disks.

use super::text::{self, Value};
use super::LvmError;

const SECTOR: u64 = 512;
/// Most physical volumes, logical volumes and segments per volume accepted.
const MAX_ITEMS: usize = 4096;

/// A volume group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeGroup {
    /// Its name.
    pub name: String,
    /// Its UUID (with LVM's dashes).
    pub id: String,
    /// The metadata's sequence number: the highest one among a group's PVs is the newest.
    pub seqno: u64,
    /// Bytes per extent.
    pub extent_size: u64,
    /// Its physical volumes, as its segments name them.
    pub pvs: Vec<PvRef>,
    /// Its logical volumes, in order.
    pub lvs: Vec<LogicalVolume>,
}

/// A physical volume of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvRef {
    /// Its key in the metadata (`pv0`).
    pub key: String,
    /// Its UUID without dashes, as its label stores it.
    pub uuid: String,
    /// Where its first extent starts on it, in bytes.
    pub pe_start: u64,
    /// How many extents it has.
    pub pe_count: u64,
}

/// A logical volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalVolume {
    /// Its name.
    pub name: String,
    /// Shown to users (hidden ones are other volumes' parts: a thin pool's data, a mirror's
    /// legs).
    pub visible: bool,
    /// Its segments, or why it cannot be read.
    pub layout: Result<Vec<Segment>, String>,
}

impl LogicalVolume {
    /// Its size in bytes (0 when it cannot be read).
    pub fn size(&self, extent_size: u64) -> u64 {
        self.layout.as_ref().map_or(0, |segments| {
            segments
                .last()
                .map_or(0, |s| (s.start_extent + s.extent_count) * extent_size)
        })
    }
}

/// A striped (linear: one stripe) segment of a logical volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its first extent in the volume.
    pub start_extent: u64,
    /// How many extents of the volume it holds.
    pub extent_count: u64,
    /// Bytes per stripe chunk (unused with one stripe).
    pub stripe_size: u64,
    /// Each stripe: the index of its PV in [`VolumeGroup::pvs`] and its first extent there.
    pub stripes: Vec<(usize, u64)>,
}

/// The volume group of a metadata text.
pub fn parse_volume_group(metadata: &[u8]) -> Result<VolumeGroup, LvmError> {
    read_volume_group(&text::parse(metadata)?)
}

fn corrupt(what: String) -> LvmError {
    LvmError::Corrupt(what)
}

/// The volume group of a parsed metadata text: its one section holding `physical_volumes`.
pub fn read_volume_group(top: &Value) -> Result<VolumeGroup, LvmError> {
    let (name, vg) = top
        .items()
        .iter()
        .find(|(_, v)| v.get("physical_volumes").is_some())
        .ok_or_else(|| corrupt("no volume group in the metadata text".to_owned()))?;
    let number = |v: &Value, key: &str, what: &str| -> Result<u64, LvmError> {
        v.get(key)
            .and_then(Value::int)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| corrupt(format!("{what}: no {key}")))
    };
    let extent_sectors = number(vg, "extent_size", name)?;
    if extent_sectors == 0 || extent_sectors > 1 << 32 {
        return Err(corrupt(format!(
            "{name}: extent size of {extent_sectors} sectors"
        )));
    }
    let extent_size = extent_sectors * SECTOR;
    let pvs = vg
        .get("physical_volumes")
        .map(Value::items)
        .unwrap_or_default()
        .iter()
        .take(MAX_ITEMS)
        .map(|(key, pv)| {
            let what = format!("{name} {key}");
            let pe_start = number(pv, "pe_start", &what)?
                .checked_mul(SECTOR)
                .ok_or_else(|| corrupt(format!("{what}: pe_start out of range")))?;
            let pe_count = number(pv, "pe_count", &what)?;
            pe_count
                .checked_mul(extent_size)
                .and_then(|n| n.checked_add(pe_start))
                .ok_or_else(|| corrupt(format!("{what}: pe_count out of range")))?;
            let uuid: String = pv
                .get("id")
                .and_then(Value::str)
                .ok_or_else(|| corrupt(format!("{what}: no id")))?
                .chars()
                .filter(|c| *c != '-')
                .collect();
            Ok(PvRef {
                key: key.clone(),
                uuid,
                pe_start,
                pe_count,
            })
        })
        .collect::<Result<Vec<_>, LvmError>>()?;
    let lv_items = vg
        .get("logical_volumes")
        .map(Value::items)
        .unwrap_or_default();
    let cow_stores: Vec<&str> = lv_items
        .iter()
        .flat_map(|(_, lv)| segments_of(lv))
        .filter(|s| s.get("type").and_then(Value::str) == Some("snapshot"))
        .filter_map(|s| s.get("cow_store").and_then(Value::str))
        .collect();
    let lvs = lv_items
        .iter()
        .take(MAX_ITEMS)
        .map(|(lv_name, lv)| {
            let visible = lv.get("status").is_some_and(
                |s| matches!(s, Value::List(l) if l.contains(&Value::Str("VISIBLE".into()))),
            );
            let layout = if cow_stores.contains(&lv_name.as_str()) {
                Err("the copy-on-write store of a snapshot volume".to_owned())
            } else {
                read_segments(lv, &pvs).map_err(|e| match e {
                    SegmentError::Unsupported(why) => why,
                    SegmentError::Corrupt(why) => format!("damaged: {why}"),
                })
            };
            LogicalVolume {
                name: lv_name.clone(),
                visible,
                layout,
            }
        })
        .collect();
    Ok(VolumeGroup {
        name: name.clone(),
        id: vg
            .get("id")
            .and_then(Value::str)
            .unwrap_or_default()
            .to_owned(),
        seqno: number(vg, "seqno", name)?,
        extent_size,
        pvs,
        lvs,
    })
}

/// The `segmentN` sections of a logical volume, in order.
fn segments_of(lv: &Value) -> impl Iterator<Item = &Value> {
    lv.items()
        .iter()
        .filter(|(k, v)| k.starts_with("segment") && matches!(v, Value::Section(_)))
        .map(|(_, v)| v)
        .take(MAX_ITEMS)
}

/// Why a logical volume cannot be read.
enum SegmentError {
    Unsupported(String),
    Corrupt(String),
}

/// The segments of a logical volume, checked: in order from extent 0 without gaps, every
/// stripe inside its physical volume.
fn read_segments(lv: &Value, pvs: &[PvRef]) -> Result<Vec<Segment>, SegmentError> {
    let num = |v: &Value, key: &str| -> Result<u64, SegmentError> {
        v.get(key)
            .and_then(Value::int)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| SegmentError::Corrupt(format!("a segment without {key}")))
    };
    let mut out: Vec<Segment> = Vec::new();
    for seg in segments_of(lv) {
        let kind = seg.get("type").and_then(Value::str).unwrap_or("?");
        if kind != "striped" {
            return Err(SegmentError::Unsupported(format!(
                "a {kind} volume (vmstash reads linear and striped ones)"
            )));
        }
        let start_extent = num(seg, "start_extent")?;
        let extent_count = num(seg, "extent_count")?;
        let stripe_count = num(seg, "stripe_count")?;
        let expected_start = out.last().map_or(0, |s| s.start_extent + s.extent_count);
        if start_extent != expected_start || extent_count == 0 {
            return Err(SegmentError::Corrupt(format!(
                "a segment at extent {start_extent} of {extent_count} extents after extent {expected_start}"
            )));
        }
        if stripe_count == 0 || stripe_count > 128 || extent_count % stripe_count != 0 {
            return Err(SegmentError::Corrupt(format!(
                "{stripe_count} stripes for {extent_count} extents"
            )));
        }
        let stripe_size = if stripe_count > 1 {
            let sectors = num(seg, "stripe_size")?;
            if !sectors.is_power_of_two() || sectors > 1 << 24 {
                return Err(SegmentError::Corrupt(format!(
                    "a stripe size of {sectors} sectors"
                )));
            }
            sectors * SECTOR
        } else {
            0
        };
        let Some(Value::List(list)) = seg.get("stripes") else {
            return Err(SegmentError::Corrupt(
                "a segment without stripes".to_owned(),
            ));
        };
        let per_stripe = extent_count / stripe_count;
        let mut stripes = Vec::new();
        for pair in list.chunks(2) {
            let (Some(Value::Str(key)), Some(Value::Int(first))) = (pair.first(), pair.get(1))
            else {
                return Err(SegmentError::Corrupt(
                    "a stripe that is not a PV and an extent".to_owned(),
                ));
            };
            let pv = pvs
                .iter()
                .position(|p| &p.key == key)
                .ok_or_else(|| SegmentError::Corrupt(format!("a stripe on unknown {key}")))?;
            let first = u64::try_from(*first)
                .ok()
                .filter(|f| {
                    f.checked_add(per_stripe)
                        .is_some_and(|end| end <= pvs[pv].pe_count)
                })
                .ok_or_else(|| SegmentError::Corrupt(format!("a stripe past the end of {key}")))?;
            stripes.push((pv, first));
        }
        if u64::try_from(stripes.len()).ok() != Some(stripe_count) {
            return Err(SegmentError::Corrupt(format!(
                "{} stripes listed for stripe_count {stripe_count}",
                stripes.len()
            )));
        }
        out.push(Segment {
            start_extent,
            extent_count,
            stripe_size,
            stripes,
        });
    }
    if out.is_empty() {
        return Err(SegmentError::Corrupt(
            "a volume without segments".to_owned(),
        ));
    }
    Ok(out)
}
