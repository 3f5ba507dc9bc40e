//! libvirt, driven through virsh on the hypervisor: connection URIs, the
//! domain XML, and the external-snapshot dance that makes a running VM's
//! disks stable while they are read.

pub mod define;
pub mod shell;
pub mod uri;
pub mod virsh;
pub mod xml;
