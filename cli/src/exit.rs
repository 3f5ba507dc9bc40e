//! Exit codes, as documented in README.md.

use std::process::ExitCode;

use vmstash_repo::Error as RepoError;

/// Success.
pub const OK: u8 = 0;
/// Any failure not listed below; also `check` finding damage.
pub const FAILURE: u8 = 1;
/// The location holds no repository.
pub const NO_REPOSITORY: u8 = 10;
/// The repository is locked by another process.
pub const LOCKED: u8 = 11;
/// The password opens no key.
pub const WRONG_PASSWORD: u8 = 12;
/// The repository uses a format version this build does not support.
pub const INCOMPATIBLE: u8 = 13;

/// The exit code for an error: the first repository error in its chain decides.
pub fn code_for(err: &anyhow::Error) -> ExitCode {
    let repo_err = err.chain().find_map(|e| e.downcast_ref::<RepoError>());
    ExitCode::from(match repo_err {
        Some(RepoError::NotARepository(_)) => NO_REPOSITORY,
        Some(RepoError::Locked { .. }) => LOCKED,
        Some(RepoError::WrongPassword) => WRONG_PASSWORD,
        Some(RepoError::Incompatible { .. }) => INCOMPATIBLE,
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
