//! libvirt, driven through virsh on the hypervisor: connection URIs, the hypervisor's disks and
//! helper, the external-snapshot dance that makes a running VM's disks stable while they are
//! read, and the backup jobs and NBD exports of changed-block tracking. The XML is the
//! `vmstash-libvirt-xml` crate's.

pub mod backup_job;
pub mod hypervisor;
pub mod nbd_disk;
pub mod offline_job;
pub mod overlay;
pub mod shell;
pub mod uri;
pub mod virsh;
