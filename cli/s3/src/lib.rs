//! vmstash's S3-compatible object storage backend: a repository (spec/FORMAT.md §1) in a bucket
//! of AWS S3, Backblaze B2, Wasabi, Ceph RGW, MinIO, Garage or any other S3-compatible store,
//! behind the engine's blocking [`vmstash_repo::backend::Backend`] trait.
//!
//! Built on opendal's S3 service (request signing, the AWS credential chain, retries with
//! backoff and jitter, timeouts) driven by a small tokio runtime of its own; what this crate adds
//! is the repository layout on object keys, errors that say what to check, and exclusive
//! creation on stores with and without conditional writes ([`create`]).

mod backend;
mod create;
mod error;
mod runtime;
mod url;

pub use backend::{BucketLookup, Credentials, Notice, S3Backend, S3Options, REQUESTS_IN_FLIGHT};
pub use url::{S3Url, UrlError};
