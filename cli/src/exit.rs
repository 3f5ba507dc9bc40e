//! Exit codes, as documented in README.md, and the error that says "bad command line".

use std::process::ExitCode;

use vmstash_repo::Error as RepoError;

/// Success.
pub const OK: u8 = 0;
/// Any failure not listed below; also `check` finding damage.
pub const FAILURE: u8 = 1;
/// A bad command line: an unknown option, or a value of the wrong form (clap's errors too).
pub const USAGE: u8 = 2;
/// The snapshot was saved, but changed-block tracking had missed writes that a full hash
/// found (`backup --verify-cbt`, and every 7th backup): earlier incremental snapshots of that
/// VM may hold stale chunks.
pub const CBT_MISSED: u8 = 3;
/// The location holds no repository.
pub const NO_REPOSITORY: u8 = 10;
/// The repository is locked by another process.
pub const LOCKED: u8 = 11;
/// The password opens no key.
pub const WRONG_PASSWORD: u8 = 12;
/// The repository uses a format version this build does not support.
pub const INCOMPATIBLE: u8 = 13;
/// The storage refused the credentials, or the bucket does not exist.
pub const STORAGE_DENIED: u8 = 14;
/// Stopped by Ctrl-C or SIGTERM (128 + SIGINT, as a shell reports it).
pub const INTERRUPTED: u8 = 130;

/// A value on the command line that clap accepted but that is of the wrong form (a chunk size
/// that is not a power of two, a snapshot name with a `/`, a mount point that is a file):
/// exit [`USAGE`], like clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A [`UsageError`] as an `anyhow` error.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// Changed-block tracking missed writes that a full hash found; the snapshot is saved: exit
/// [`CBT_MISSED`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CbtMissed(pub String);

/// The exit code for an error: a usage error, or the first repository error in its chain.
pub fn code_for(err: &anyhow::Error) -> ExitCode {
    if err.chain().any(|e| e.is::<UsageError>()) {
        return ExitCode::from(USAGE);
    }
    if err.chain().any(|e| e.is::<CbtMissed>()) {
        return ExitCode::from(CBT_MISSED);
    }
    let repo_err = err.chain().find_map(|e| e.downcast_ref::<RepoError>());
    ExitCode::from(match repo_err {
        Some(RepoError::NotARepository(_)) => NO_REPOSITORY,
        Some(RepoError::Locked { .. } | RepoError::LockUnreadable { .. }) => LOCKED,
        Some(RepoError::WrongPassword) => WRONG_PASSWORD,
        Some(RepoError::Incompatible { .. }) => INCOMPATIBLE,
        Some(RepoError::StorageDenied { .. }) => STORAGE_DENIED,
        Some(RepoError::Cancelled) => INTERRUPTED,
        _ => FAILURE,
    })
}

/// True when the error chain says a disk is full.
pub fn is_disk_full(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<RepoError>()
            .is_some_and(RepoError::is_disk_full)
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.raw_os_error() == Some(28))
    })
}

/// Shorthand for a success code.
pub fn ok() -> ExitCode {
    ExitCode::from(OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_wherever_they_are_in_the_chain() {
        assert_eq!(code_for(&usage("bad")), ExitCode::from(USAGE));
        let wrapped = usage("bad").context("running init");
        assert_eq!(code_for(&wrapped), ExitCode::from(USAGE));
        let repo = anyhow::Error::new(RepoError::NotARepository("/x".into())).context("opening");
        assert_eq!(code_for(&repo), ExitCode::from(NO_REPOSITORY));
        assert_eq!(code_for(&anyhow::anyhow!("other")), ExitCode::from(FAILURE));
    }
}
