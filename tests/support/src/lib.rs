//! Fixtures shared by vmstash's tests, so that each real component a test needs is set up in one
//! place. Dev-only: a dev-dependency of the crates whose tests use it, never published.
//!
//! - [`Sshd`]: a private OpenSSH server on 127.0.0.1, for the SSH client's own tests
//!   (`vmstash-ssh`), the CLI's SFTP source tests (`vmstash`) and the end-to-end tests
//!   (`vmstash-tests`).
//!
//! A missing prerequisite skips a test with a message on stderr, except under `CI=true`, where it
//! is a failure: CI installs everything (`scripts/install-deps.sh`), so a skip there would hide a
//! broken setup.

mod sshd;

pub use sshd::{keygen, run, Sshd, SshdError, SSHD};
