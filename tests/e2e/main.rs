//! End-to-end tests of the `vmstash` binary, compiled as one test binary.
//! Every test uses real files, real tools and the real release binary;
//! see `util.rs` for prerequisites.

// Test helpers are shared between modules of one binary, not a public API.
#![allow(unreachable_pub)]

mod cbt;
mod cli;
mod concurrency;
mod damage;
mod dashboard;
mod env_smoke;
mod failures;
mod fixtures;
mod forget;
mod guestfs;
mod helper;
mod keys;
mod mount;
mod prune;
mod qmp;
mod repair;
mod roundtrip;
mod s3;
mod serve;
mod serve_schema;
mod ssh;
mod util;
mod vectors;
mod vm;
