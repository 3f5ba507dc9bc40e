//! A QEMU that no libvirt manages (Proxmox VE's VMs, a `qemu-system-*` started by hand), driven
//! through its QMP socket (spec/FORMAT.md §19.8): the scripts run there ([`link`]), its disks as
//! `query-block` shows them ([`block`]), and the image fleecing that gives a point-in-time view
//! of them over NBD with the dirty bitmaps since the last backup ([`fleece`]).

pub mod block;
pub mod fleece;
pub mod inspect;
pub mod link;
