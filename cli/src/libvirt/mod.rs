//! libvirt, driven through virsh on the hypervisor: connection URIs, the hypervisor's disks and
//! helper, and the external-snapshot dance that makes a running VM's disks stable while they are
//! read. The domain XML is the `vmstash-libvirt-xml` crate's.

pub mod hypervisor;
pub mod overlay;
pub mod shell;
pub mod uri;
pub mod virsh;
