//! The mount's namespace: directories, snapshot files and `latest` links, built from the
//! repository's snapshot manifests.
//!
//! A backup of a VM is found under its name; a backup of local disk files under its series
//! name (the first disk's name unless `--name` was given), which stands in for the VM. Two
//! snapshots of one series taken within the same second get the later one's short id appended.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use vmstash_repo::snapshot::Manifest;

use crate::partition::Partition;
use crate::volumes::VolumeView;

use vmstash_repo::Id;

/// What the tree asks about a snapshot's disks.
pub trait Layouts {
    /// The partitions of disk `disk` (empty without a partition table), each with the slot of
    /// the filesystem in it that the mount can show, if any.
    fn partitions(
        &mut self,
        id: &Id,
        manifest: &Manifest,
        disk: usize,
    ) -> Vec<(Partition, Option<u64>)>;
    /// The logical volumes on the snapshot's disks, whose partitions are `partitions` (one
    /// list per disk).
    fn volumes(
        &mut self,
        id: &Id,
        manifest: &Manifest,
        partitions: &[Vec<Partition>],
    ) -> Vec<VolumeView>;
}

/// An inode number.
pub type Ino = u64;
/// The root directory's inode number (FUSE's).
pub const ROOT: Ino = 1;

/// What a path is.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory: its entries by name.
    Dir(BTreeMap<String, Ino>),
    /// A symbolic link to a relative path.
    Symlink(String),
    /// A small file held in memory (the domain XML).
    Text(Arc<str>),
    /// A disk image of a snapshot, or a partition of one: `disk` indexes the manifest's
    /// disks, and the file is its bytes `start..start + size`.
    Disk {
        /// The snapshot.
        snapshot: Id,
        /// The disk's index in the manifest.
        disk: usize,
        /// Where the file starts on the disk (0 for the whole disk).
        start: u64,
        /// The file's size.
        size: u64,
    },
    /// An LVM logical volume of a snapshot (`<disk>/<vg>/<lv>.raw`): volume `number` of the
    /// mount's [`Volumes`](crate::volumes::Volumes).
    Volume {
        /// The volume's number.
        number: u64,
        /// Its size.
        size: u64,
    },
    /// The root directory of the filesystem in a partition (`<disk>/p<N>/`), served by the
    /// filesystem in `slot`.
    Guest {
        /// The filesystem's slot.
        slot: u64,
    },
}

/// One path of the namespace.
#[derive(Debug, Clone)]
pub struct Node {
    /// The directory it is in (the root's parent is the root).
    pub parent: Ino,
    /// What it is.
    pub entry: Entry,
    /// Its modification time: the snapshot's time, or the mount's for the top directories.
    pub mtime: SystemTime,
}

/// Hands out inode numbers by path, never twice, so a path keeps its number across rebuilds.
#[derive(Debug)]
pub struct Inodes {
    by_path: HashMap<String, Ino>,
    next: Ino,
}

impl Default for Inodes {
    fn default() -> Self {
        Inodes {
            by_path: HashMap::new(),
            next: ROOT + 1,
        }
    }
}

impl Inodes {
    fn of(&mut self, path: &str) -> Ino {
        if path.is_empty() {
            return ROOT;
        }
        if let Some(&ino) = self.by_path.get(path) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_path.insert(path.to_owned(), ino);
        ino
    }
}

/// The whole namespace.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: HashMap<Ino, Node>,
    /// The snapshots it shows, by id.
    snapshots: HashMap<Id, Arc<Manifest>>,
}

/// The time of a manifest (RFC 3339) as a `SystemTime`; the epoch if it does not parse.
fn manifest_time(m: &Manifest) -> SystemTime {
    humantime::parse_rfc3339(&m.time).unwrap_or(UNIX_EPOCH)
}

/// The directory name of a snapshot taken at `time`: to the second, in UTC.
fn timestamp_name(time: &str) -> String {
    match time.get(..19) {
        Some(prefix) => format!("{prefix}Z"),
        None => time.to_owned(),
    }
}

/// Whether `name` can be a file name in the mount.
fn usable(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// Whether `name` is one a partition's files have in a disk directory (`p1`, `p1.raw`).
fn partition_like(name: &str) -> bool {
    let digits = name
        .strip_prefix('p')
        .map(|n| n.strip_suffix(".raw").unwrap_or(n));
    digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

impl Tree {
    /// Builds the namespace of `snapshots`; `now` is the top directories' time.
    pub fn build(
        snapshots: &[(Id, Manifest)],
        inodes: &mut Inodes,
        now: SystemTime,
        layouts: &mut dyn Layouts,
    ) -> Tree {
        let mut tree = Tree::default();
        tree.dir_at(ROOT, ROOT, now);
        for top in ["vms", "snapshots"] {
            let ino = inodes.of(top);
            tree.dir_at(ino, ROOT, now);
            tree.link(ROOT, top, ino);
        }
        let mut series: BTreeMap<&str, Vec<&(Id, Manifest)>> = BTreeMap::new();
        for s in snapshots.iter().filter(|(_, m)| usable(&m.name)) {
            series.entry(s.1.name.as_str()).or_default().push(s);
        }
        for (name, mut snaps) in series {
            snaps.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
            let vm_path = format!("vms/{name}");
            let vm_ino = inodes.of(&vm_path);
            tree.dir_at(vm_ino, inodes.of("vms"), now);
            tree.link(inodes.of("vms"), name, vm_ino);
            let mut latest = None;
            for (id, manifest) in snaps {
                let mut dir_name = timestamp_name(&manifest.time);
                if tree.child(vm_ino, &dir_name).is_some() {
                    dir_name = format!("{dir_name}-{}", id.short());
                }
                let path = format!("{vm_path}/{dir_name}");
                tree.snapshot_dir(&path, vm_ino, id, manifest, inodes, layouts);
                latest = Some(dir_name);
            }
            if let Some(target) = latest {
                // The kernel caches symlink targets by inode: a new target gets a new number.
                let ino = inodes.of(&format!("{vm_path}/latest\0{target}"));
                tree.nodes.insert(
                    ino,
                    Node {
                        parent: vm_ino,
                        entry: Entry::Symlink(target),
                        mtime: now,
                    },
                );
                tree.link(vm_ino, "latest", ino);
            }
        }
        let snapshots_ino = inodes.of("snapshots");
        for (id, manifest) in snapshots {
            let path = format!("snapshots/{}", id.short());
            tree.snapshot_dir(&path, snapshots_ino, id, manifest, inodes, layouts);
        }
        tree
    }

    fn dir_at(&mut self, ino: Ino, parent: Ino, mtime: SystemTime) {
        self.nodes.entry(ino).or_insert(Node {
            parent,
            entry: Entry::Dir(BTreeMap::new()),
            mtime,
        });
    }

    fn link(&mut self, dir: Ino, name: &str, ino: Ino) {
        if let Some(Node {
            entry: Entry::Dir(children),
            ..
        }) = self.nodes.get_mut(&dir)
        {
            children.insert(name.to_owned(), ino);
        }
    }

    fn snapshot_dir(
        &mut self,
        path: &str,
        parent: Ino,
        id: &Id,
        manifest: &Manifest,
        inodes: &mut Inodes,
        layouts: &mut dyn Layouts,
    ) {
        let mtime = manifest_time(manifest);
        let ino = inodes.of(path);
        self.dir_at(ino, parent, mtime);
        let name = path.rsplit('/').next().unwrap_or(path);
        self.link(parent, name, ino);
        self.snapshots
            .entry(*id)
            .or_insert_with(|| Arc::new(manifest.clone()));
        if let Some(xml) = &manifest.domain_xml {
            self.file(
                ino,
                path,
                "domain.xml",
                Entry::Text(Arc::from(xml.as_str())),
                mtime,
                inodes,
            );
        }
        if let Some(qemu) = &manifest.qemu {
            let mut json = serde_json::to_string_pretty(qemu).unwrap_or_default();
            json.push('\n');
            self.file(
                ino,
                path,
                "qemu.json",
                Entry::Text(Arc::from(json.as_str())),
                mtime,
                inodes,
            );
        }
        let parts: Vec<Vec<(Partition, Option<u64>)>> = (0..manifest.disks.len())
            .map(|disk| layouts.partitions(id, manifest, disk))
            .collect();
        let tables: Vec<Vec<Partition>> = parts
            .iter()
            .map(|p| p.iter().map(|(p, _)| *p).collect())
            .collect();
        let volumes = layouts.volumes(id, manifest, &tables);
        for ((disk, d), parts) in manifest.disks.iter().enumerate().zip(parts) {
            if !usable(&d.name) {
                continue;
            }
            let entry = Entry::Disk {
                snapshot: *id,
                disk,
                start: 0,
                size: d.size,
            };
            self.file(ino, path, &format!("{}.raw", d.name), entry, mtime, inodes);
            let on_disk: Vec<&VolumeView> = volumes.iter().filter(|v| v.disk == disk).collect();
            if parts.is_empty() && on_disk.is_empty() {
                continue;
            }
            let dir_path = format!("{path}/{}", d.name);
            let dir = inodes.of(&dir_path);
            self.dir_at(dir, ino, mtime);
            self.link(ino, &d.name, dir);
            self.volume_files(dir, &dir_path, &on_disk, mtime, inodes);
            for (p, slot) in parts {
                let entry = Entry::Disk {
                    snapshot: *id,
                    disk,
                    start: p.start,
                    size: p.len,
                };
                let name = format!("p{}.raw", p.number);
                self.file(dir, &dir_path, &name, entry, mtime, inodes);
                if let Some(slot) = slot {
                    let name = format!("p{}", p.number);
                    self.file(dir, &dir_path, &name, Entry::Guest { slot }, mtime, inodes);
                }
            }
        }
    }

    /// `<vg>/<lv>.raw` and `<vg>/<lv>/` in the disk directory `dir` for each of `volumes`; a
    /// group whose name a partition's files already take (`p1`) is `<vg>.vg/`.
    fn volume_files(
        &mut self,
        dir: Ino,
        dir_path: &str,
        volumes: &[&VolumeView],
        mtime: SystemTime,
        inodes: &mut Inodes,
    ) {
        for v in volumes {
            if !usable(&v.vg) || !usable(&v.lv) {
                continue;
            }
            let vg_name = if partition_like(&v.vg) {
                format!("{}.vg", v.vg)
            } else {
                v.vg.clone()
            };
            let vg_path = format!("{dir_path}/{vg_name}");
            let vg_dir = inodes.of(&vg_path);
            self.dir_at(vg_dir, dir, mtime);
            self.link(dir, &vg_name, vg_dir);
            let raw = Entry::Volume {
                number: v.number,
                size: v.size,
            };
            self.file(
                vg_dir,
                &vg_path,
                &format!("{}.raw", v.lv),
                raw,
                mtime,
                inodes,
            );
            if let Some(slot) = v.slot {
                self.file(
                    vg_dir,
                    &vg_path,
                    &v.lv,
                    Entry::Guest { slot },
                    mtime,
                    inodes,
                );
            }
        }
    }

    fn file(
        &mut self,
        dir: Ino,
        dir_path: &str,
        name: &str,
        entry: Entry,
        mtime: SystemTime,
        inodes: &mut Inodes,
    ) {
        let ino = inodes.of(&format!("{dir_path}/{name}"));
        self.nodes.insert(
            ino,
            Node {
                parent: dir,
                entry,
                mtime,
            },
        );
        self.link(dir, name, ino);
    }

    /// The node `ino`.
    pub fn node(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The entry `name` of directory `dir`.
    pub fn child(&self, dir: Ino, name: &str) -> Option<Ino> {
        match &self.nodes.get(&dir)?.entry {
            Entry::Dir(children) => children.get(name).copied(),
            _ => None,
        }
    }

    /// The manifest of snapshot `id`, if the tree shows it.
    pub fn manifest(&self, id: &Id) -> Option<&Arc<Manifest>> {
        self.snapshots.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vmstash_repo::snapshot::{Disk, Summary};

    fn manifest(name: &str, time: &str, disks: &[&str], xml: bool) -> Manifest {
        Manifest {
            version: 1,
            time: time.to_owned(),
            hostname: "h".to_owned(),
            username: "u".to_owned(),
            name: name.to_owned(),
            tags: Vec::new(),
            parent: None,
            disks: disks
                .iter()
                .map(|d| Disk {
                    name: (*d).to_owned(),
                    source: format!("/images/{d}"),
                    format: "raw".to_owned(),
                    size: 1 << 20,
                    chunk_size: 1 << 16,
                    map: Vec::new(),
                    lost: Vec::new(),
                })
                .collect(),
            domain_xml: xml.then(|| "<domain/>".to_owned()),
            summary: Summary::default(),
            original: None,
            checkpoint: None,
            qemu: None,
        }
    }

    /// Disks without partitions or volumes.
    struct Plain;

    impl Layouts for Plain {
        fn partitions(&mut self, _: &Id, _: &Manifest, _: usize) -> Vec<(Partition, Option<u64>)> {
            Vec::new()
        }

        fn volumes(&mut self, _: &Id, _: &Manifest, _: &[Vec<Partition>]) -> Vec<VolumeView> {
            Vec::new()
        }
    }

    fn lookup(tree: &Tree, path: &str) -> Option<Ino> {
        path.split('/')
            .filter(|p| !p.is_empty())
            .try_fold(ROOT, |dir, name| tree.child(dir, name))
    }

    #[test]
    fn layout_matches_the_design() {
        let a = Id::of(b"a");
        let b = Id::of(b"b");
        let c = Id::of(b"c");
        let snaps = vec![
            (
                a,
                manifest("web1", "2026-11-20T10:00:00.000001Z", &["vda", "vdb"], true),
            ),
            (
                b,
                manifest("web1", "2026-11-21T10:00:00.5Z", &["vda"], true),
            ),
            (
                c,
                manifest("web1", "2026-11-21T10:00:00.9Z", &["vda"], true),
            ),
        ];
        let mut inodes = Inodes::default();
        let tree = Tree::build(&snaps, &mut inodes, UNIX_EPOCH, &mut Plain);
        assert!(lookup(&tree, "vms/web1/2026-11-20T10:00:00Z/domain.xml").is_some());
        assert!(lookup(&tree, "vms/web1/2026-11-20T10:00:00Z/vdb.raw").is_some());
        let second = format!("vms/web1/2026-11-21T10:00:00Z-{}", c.short());
        assert!(
            lookup(&tree, &second).is_some(),
            "same second gets the short id"
        );
        let latest = lookup(&tree, "vms/web1/latest").expect("latest");
        match &tree.node(latest).expect("node").entry {
            Entry::Symlink(target) => assert_eq!(target, second.rsplit('/').next().expect("name")),
            other => panic!("{other:?}"),
        }
        let by_id = format!("snapshots/{}/vda.raw", a.short());
        let ino = lookup(&tree, &by_id).expect("by id");
        assert!(matches!(
            tree.node(ino).expect("node").entry,
            Entry::Disk {
                size: 1048576,
                start: 0,
                ..
            }
        ));
        let again = Tree::build(&snaps[..1], &mut inodes, UNIX_EPOCH, &mut Plain);
        assert_eq!(
            lookup(&again, &by_id),
            Some(ino),
            "inode numbers survive a rebuild"
        );
        assert_eq!(
            manifest_time(&snaps[0].1),
            UNIX_EPOCH + Duration::new(1_795_168_800, 1_000)
        );
    }

    #[test]
    fn unusable_names_are_left_out() {
        let snaps = vec![(
            Id::of(b"x"),
            manifest("..", "2026-11-20T10:00:00Z", &["a/b"], false),
        )];
        let tree = Tree::build(&snaps, &mut Inodes::default(), UNIX_EPOCH, &mut Plain);
        match &tree
            .node(lookup(&tree, "vms").expect("vms"))
            .expect("node")
            .entry
        {
            Entry::Dir(children) => assert!(children.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}
