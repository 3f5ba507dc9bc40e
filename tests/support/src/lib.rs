//! Fixtures shared by vmstash's tests, so that each real component a test needs is set up in one
//! place. Dev-only: a dev-dependency of the crates whose tests use it, never published.
//!
//! - [`Sshd`]: a private OpenSSH server on 127.0.0.1, for the SSH client's own tests
//!   (`vmstash-ssh`), the CLI's SFTP source tests (`vmstash`) and the end-to-end tests
//!   (`vmstash-tests`).
//! - [`S3Server`]: a real S3 server on 127.0.0.1 with a bucket, for the S3 backend's end-to-end
//!   tests: moto ([`S3Server::start_moto`]: conditional writes as on AWS, no signature check) or
//!   `rclone serve s3` ([`S3Server::start_rclone`]: signatures checked, `If-None-Match`
//!   ignored), both from the venv that `scripts/install-deps.sh` makes (`VMSTASH_S3_VENV`).
//! - [`FaultProxy`]: a fault-injecting HTTP/1.1 proxy in front of an S3 server (5xx answers,
//!   reset connections, answers lost after the server acted, delays).
//!
//! A missing prerequisite skips a test with a message on stderr, except under `CI=true`, where it
//! is a failure: CI installs everything (`scripts/install-deps.sh`), so a skip there would hide a
//! broken setup.

mod fault_proxy;
mod s3;
mod sshd;

pub use fault_proxy::{FaultKind, FaultProxy, Faults, Injection};
pub use s3::{venv as test_venv, S3Error, S3Server, DEFAULT_S3_VENV};
pub use sshd::{keygen, run, Sshd, SshdError, SSHD};
