//! The one error type of the crate, split by whose fault it is.
//!
//! A domain XML read from a backup may be damaged, or hostile: the
//! repository or the backed-up host wrote it. A user must be able to tell
//! "this backup's XML is broken" ([`Error::Malformed`]) from "vmstash cannot
//! rewrite this (yet)" ([`Error::Unsupported`]) and from "the restore asked
//! for something impossible" ([`Error::InvalidArgument`]). A rewrite that
//! contradicts itself is [`Error::Internal`]: never the input's fault.

/// Everything that can go wrong reading or rewriting a domain XML.
///
/// Each message says what failed and where (a line of the XML, a disk's
/// target), and what to do where there is something to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The XML is not well-formed, or not a domain libvirt could have
    /// written: damaged or tampered with.
    #[error("damaged domain XML: {what}")]
    Malformed {
        /// What is wrong, and where.
        what: String,
    },
    /// The XML is well-formed but uses something this crate does not
    /// support: a DTD, namespaced elements among the devices, more bytes
    /// than virsh reads, more attributes or namespaces than libvirt writes.
    #[error("unsupported domain XML: {what}")]
    Unsupported {
        /// What is not supported, where, and what to do about it.
        what: String,
    },
    /// The caller asked for something that cannot be done: a new name or a
    /// restored image that libvirt would refuse, a disk restored twice.
    #[error("{what}")]
    InvalidArgument {
        /// Which argument, and why it is refused.
        what: String,
    },
    /// The rewrite contradicted itself (overlapping edits, an output that
    /// does not read back as asked): a bug in vmstash, not in the input.
    #[error(
        "internal error in the domain XML rewrite (a vmstash bug; please report it with the domain XML): {what}"
    )]
    Internal {
        /// What the check found.
        what: String,
    },
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A [`Error::Malformed`] error.
    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        Error::Malformed { what: what.into() }
    }

    /// An [`Error::Unsupported`] error.
    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        Error::Unsupported { what: what.into() }
    }

    /// An [`Error::InvalidArgument`] error.
    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        Error::InvalidArgument { what: what.into() }
    }

    /// An [`Error::Internal`] error.
    pub(crate) fn internal(what: impl Into<String>) -> Self {
        Error::Internal { what: what.into() }
    }

    /// Classifies a parse failure of roxmltree: a DTD is something libvirt
    /// never writes and this crate refuses to read (entity expansion would
    /// make the text and the tree disagree); anything else is damage.
    pub(crate) fn from_parse(context: &str, err: &roxmltree::Error) -> Self {
        match err {
            roxmltree::Error::DtdDetected => Error::unsupported(format!(
                "{context}: it has a DTD (<!DOCTYPE …>), which libvirt never writes and vmstash \
                 does not read; remove the DTD and define the VM by hand"
            )),
            _ => Error::malformed(format!("{context}: not well-formed XML: {err}")),
        }
    }
}
