//! End-to-end tests of the `vmstash` binary, compiled as one test binary.
//! Every test uses real files, real tools and the real release binary;
//! see `util.rs` for prerequisites.

mod concurrency;
mod failures;
mod keys;
mod roundtrip;
mod util;
mod vectors;
