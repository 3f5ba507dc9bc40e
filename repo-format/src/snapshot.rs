//! Snapshot manifests (spec/FORMAT.md §13 "Snapshots").
//!
//! A sealed file (§6, type 3) in `snapshots/`, JSON plaintext. Writing it
//! is the commit point of a backup: it is written only after every pack
//! and index file it depends on is durable.

use serde::{Deserialize, Serialize};

use crate::id::Id;
use crate::version::check_json_version;
use crate::{Error, Result};

/// A snapshot: one backup of one VM (or of a set of disk files).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Format version: 1.
    pub version: u32,
    /// When the backup started (RFC 3339, UTC).
    pub time: String,
    /// The machine that made it.
    pub hostname: String,
    /// The user that made it.
    pub username: String,
    /// The VM name, or the name given to a set of disk files.
    pub name: String,
    /// User tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The previous snapshot of the same name, if any.
    #[serde(default)]
    pub parent: Option<Id>,
    /// The disks, in the order they were given.
    pub disks: Vec<Disk>,
    /// The libvirt domain XML, for VM backups.
    #[serde(default)]
    pub domain_xml: Option<String>,
    /// What the backup did.
    pub summary: Summary,
    /// The snapshot this one was rewritten from (`tag`, `repair snapshots`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    /// The hypervisor checkpoint made at this snapshot's instant (changed-block tracking), if
    /// any: the next backup of the VM reads only what its bitmap says was written since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// The configuration of a QEMU backed up through its QMP socket (no libvirt, so no
    /// `domain_xml`), if this is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<QemuConfig>,
}

/// What says how a QEMU backed up through its QMP socket ran (spec §13 `qemu`): enough to start
/// it again on the restored disks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QemuConfig {
    /// The QMP socket it was backed up through, on the hypervisor.
    pub qmp_socket: String,
    /// QEMU's version, as its QMP greeting said.
    pub version: String,
    /// The QEMU process's command line (empty when the host could not say).
    pub cmdline: Vec<String>,
    /// Its working directory, which relative paths in `cmdline` are relative to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Proxmox VE's configuration of the VM (`qm config VMID`), on a Proxmox node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pve_config: Option<String>,
}

/// A libvirt checkpoint made with a snapshot (spec §13 `checkpoint`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its name on the hypervisor.
    pub name: String,
    /// Its XML as `virsh checkpoint-dumpxml --no-domain` printed it, to redefine it
    /// (`checkpoint-create --redefine`) if libvirt lost its metadata.
    pub xml: String,
    /// Backups of this VM since the last one that hashed every chunk (0: this one did).
    pub since_full_hash: u32,
}

/// One disk of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Disk {
    /// Name in the snapshot (the libvirt target, or the file's stem).
    pub name: String,
    /// Where it was read from.
    pub source: String,
    /// The source's image format: "raw" or "qcow2".
    pub format: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// Chunk size used, in bytes (the repository's).
    pub chunk_size: u32,
    /// Map segment ids (§9), `ZERO` for an all-zero segment.
    pub map: Vec<Id>,
    /// Byte ranges whose chunks were gone when `repair snapshots` wrote this snapshot, sorted
    /// and disjoint: readers refuse them, or give zeros only when asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<LostRange>,
}

/// A range of a disk's bytes that is lost (spec §13 `lost`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LostRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

impl Disk {
    /// The recorded lost range that overlaps `[offset, offset + len)`, if any.
    pub fn lost_in(&self, offset: u64, len: u64) -> Option<&LostRange> {
        let end = offset.saturating_add(len);
        self.lost
            .iter()
            .find(|r| r.offset < end && offset < r.offset.saturating_add(r.length))
    }
}

/// Counters of one backup.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Sum of the disks' virtual sizes.
    pub disk_bytes: u64,
    /// Bytes actually read from the sources (holes are skipped).
    pub bytes_read: u64,
    /// Bytes of new pack, index and snapshot files written.
    pub bytes_added: u64,
    /// Chunks in all disks.
    pub chunks: u64,
    /// Chunks that were all zero.
    pub zero_chunks: u64,
    /// Chunks that were new to the repository.
    pub new_chunks: u64,
    /// Wall-clock seconds.
    pub duration_seconds: f64,
}

impl Manifest {
    /// Parses a snapshot's plaintext; `file` names it in errors.
    pub fn decode(plain: &[u8], file: &str) -> Result<Manifest> {
        let v: serde_json::Value = serde_json::from_slice(plain)
            .map_err(|e| Error::corrupt(file, format!("not JSON: {e}")))?;
        check_json_version(v.get("version"), file)?;
        let m: Manifest = serde_json::from_value(v)
            .map_err(|e| Error::corrupt(file, format!("bad snapshot: {e}")))?;
        m.validate(file)?;
        Ok(m)
    }

    /// The JSON plaintext.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| unreachable!("plain struct"))
    }

    fn validate(&self, file: &str) -> Result<()> {
        if !is_safe_name(&self.name) {
            return Err(Error::corrupt(
                file,
                format!("bad snapshot name {:?}", self.name),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.disks.iter().find(|d| !seen.insert(d.name.as_str())) {
            return Err(Error::corrupt(
                file,
                format!("disk name {:?} appears twice", dup.name),
            ));
        }
        for d in &self.disks {
            crate::config::ChunkSize::new(d.chunk_size)
                .map_err(|e| Error::corrupt(file, format!("disk {}: {e}", d.name)))?;
            let chunks = crate::chunkmap::chunk_count(d.size, d.chunk_size);
            let segments = crate::chunkmap::segment_count(chunks);
            if u64::try_from(d.map.len()).ok() != Some(segments) {
                return Err(Error::corrupt(
                    file,
                    format!(
                        "disk {} of {} bytes needs {segments} map segments, has {}",
                        d.name,
                        d.size,
                        d.map.len()
                    ),
                ));
            }
            if !is_safe_name(&d.name) {
                return Err(Error::corrupt(file, format!("bad disk name {:?}", d.name)));
            }
            let mut end = 0u64;
            for r in &d.lost {
                let stop = r.offset.checked_add(r.length).filter(|&s| s <= d.size);
                if r.length == 0 || r.offset < end || stop.is_none() {
                    return Err(Error::corrupt(
                        file,
                        format!(
                            "disk {}: lost ranges must be sorted, disjoint and inside the disk",
                            d.name
                        ),
                    ));
                }
                end = stop.unwrap_or(u64::MAX);
            }
        }
        Ok(())
    }
}

/// True for a name usable as one path component: the mount and restore
/// turn snapshot and disk names into directory and file names.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && name.len() <= 255
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid manifest for other modules' tests.
    pub(crate) fn sample() -> Manifest {
        Manifest {
            version: 1,
            time: "2026-11-26T10:00:00Z".into(),
            hostname: "h".into(),
            username: "u".into(),
            name: "web1".into(),
            tags: vec!["t".into()],
            parent: None,
            disks: vec![Disk {
                name: "vda".into(),
                source: "/x".into(),
                format: "raw".into(),
                size: 300 * 1024 * 1024,
                chunk_size: 256 * 1024,
                map: vec![Id::ZERO, Id::of(b"s")],
                lost: Vec::new(),
            }],
            domain_xml: None,
            summary: Summary::default(),
            original: None,
            checkpoint: None,
            qemu: None,
        }
    }

    #[test]
    fn round_trip_and_validation() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode(), "s").expect("decode"), m);
        let mut short = m.clone();
        short.disks[0].map.pop();
        assert!(Manifest::decode(&short.encode(), "s").is_err());
        let mut evil = m.clone();
        evil.disks[0].name = "../etc".into();
        assert!(Manifest::decode(&evil.encode(), "s").is_err());
        let mut repaired = m;
        repaired.original = Some(Id::of(b"o"));
        repaired.disks[0].lost = vec![
            LostRange {
                offset: 0,
                length: 512,
            },
            LostRange {
                offset: 4096,
                length: 100,
            },
        ];
        assert_eq!(
            Manifest::decode(&repaired.encode(), "s").expect("lost"),
            repaired
        );
        for bad in [
            vec![LostRange {
                offset: 0,
                length: 0,
            }],
            vec![
                LostRange {
                    offset: 100,
                    length: 10,
                },
                LostRange {
                    offset: 50,
                    length: 10,
                },
            ],
            vec![LostRange {
                offset: 300 << 20,
                length: 1,
            }],
            vec![LostRange {
                offset: u64::MAX,
                length: 2,
            }],
        ] {
            let mut m = repaired.clone();
            m.disks[0].lost = bad;
            assert!(Manifest::decode(&m.encode(), "s").is_err());
        }
    }

    #[test]
    fn duration_round_trips_to_the_bit() {
        // Written as "7.3588302070000005"; serde_json without its
        // float_roundtrip feature reads that back as 7.358830207, breaking
        // the decode ∘ encode = id property of the `manifest` fuzz target.
        let mut m = sample();
        m.summary.duration_seconds = std::time::Duration::new(7, 358_830_207).as_secs_f64();
        let back = Manifest::decode(&m.encode(), "s").expect("decode");
        assert_eq!(
            back.summary.duration_seconds.to_bits(),
            m.summary.duration_seconds.to_bits()
        );
    }
}
