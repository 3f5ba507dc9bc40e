//! libvirt domain XML, and nothing else: what a backup reads from it and how
//! a restore rewrites it to define a VM; and the XML of libvirt's backup API
//! that changed-block tracking uses ([`backup`]).
//!
//! - [`parse_domain`] reads what `virsh dumpxml` printed: the domain's name,
//!   UUID and disks, and [`DiskDef::plan`] says which disks a backup reads.
//! - [`rewrite_for_define`] turns the domain XML stored in a snapshot into
//!   one that `virsh define` accepts on the restore host: every disk on its
//!   restored image, the values of the old running process dropped, a new
//!   name, UUID and MACs for a copy. Everything else is kept byte for byte
//!   ([`edit`], a byte-range editor that knows XML but not libvirt).
//!
//! The XML in a backup is untrusted input (the repository or the backed-up
//! host may be damaged or hostile): both functions return an [`Error`] that
//! says whose fault a failure is and never panic; they refuse, before
//! parsing, more attributes or namespace declarations than libvirt writes
//! ([`MAX_ATTRIBUTES`], [`MAX_NAMESPACES`]; roxmltree takes quadratic time
//! or worse on those), so they take time linear in the size of the XML;
//! and the rewrite reads at most [`MAX_DOMAIN_XML`] bytes, what `virsh
//! define` reads. fuzz/'s `domain_xml` target checks all of this.
//!
//! # QEMU pass-through on restore
//!
//! `<qemu:commandline>`, `<qemu:capabilities>`, `<qemu:override>` and
//! `<qemu:deprecation>` pass raw arguments, environment variables and flags
//! to QEMU behind libvirt's back, and often name files, devices and sockets
//! of the source host. [`rewrite_for_define`] removes them by default and
//! lists each one removed in [`Defined::removed`] for the caller to show;
//! [`DefineOptions::keep_qemu_passthrough`] keeps them. Why: [`define`].

pub mod backup;
pub mod define;
pub mod domain;
pub mod edit;
mod error;
mod nodes;
mod parse;

pub use define::{
    rewrite_for_define, DefineOptions, Defined, Removed, RestoredDisk, MAX_DOMAIN_XML,
    QEMU_NAMESPACE,
};
pub use domain::{parse_domain, DiskDef, DiskPlan, DomainDef};
pub use error::{Error, Result};
pub use parse::{MAX_ATTRIBUTES, MAX_NAMESPACES};
