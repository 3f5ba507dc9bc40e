//! The repository's files as objects of an S3 bucket (spec/FORMAT.md §1): the object key is the
//! file's path relative to the repository root, under the URL's prefix.
//!
//! §1 rule 5 on S3: a PUT of the whole object is atomic (a reader sees all of it or none, and no
//! partial object ever has the final key), listings return sizes and, since every major store is
//! strongly consistent, every completed write; reads of a byte range are ranged GETs. Requests
//! that fail for a reason that may pass (5xx, 429/SlowDown, timeouts, reset connections) are
//! retried with exponential backoff and jitter: a retried PUT writes the same bytes under the
//! same content-addressed key again, so it can neither duplicate nor truncate a file. The errors
//! retrying cannot fix (403, a missing bucket) fail at once with [`Error::StorageDenied`].

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::services::S3;
use opendal::{ErrorKind, Operator};
use vmstash_repo::backend::{
    check_name, is_listed_name, is_temporary_path, relative_path, Backend, FileKind, TemporaryFile,
};
use vmstash_repo::{Error, Result};

use crate::error::{repo_error, runtime_error};
use crate::runtime::block_on;
use crate::url::S3Url;

/// How bucket names go into request URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BucketLookup {
    /// Virtual-host style on AWS, path style elsewhere (MinIO, Ceph, Garage, moto).
    #[default]
    Auto,
    /// `https://bucket.host/key` (virtual-host style).
    Dns,
    /// `https://host/bucket/key` (path style).
    Path,
}

/// A callback for things a user asked to hear about with `-v`.
pub type Notice = Arc<dyn Fn(&str) + Send + Sync>;

/// How to reach the bucket, besides its URL. Credentials are not here: they come from the
/// environment as the AWS tools take them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, or `AWS_PROFILE` with `~/.aws/credentials`), never from the command line.
#[derive(Clone, Default)]
pub struct S3Options {
    /// The signing region; `None`: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the region AWS
    /// reports for the bucket, else `us-east-1` (what S3-compatible servers expect).
    pub region: Option<String>,
    /// Virtual-host or path style.
    pub bucket_lookup: BucketLookup,
    /// Told, once, when the store turns out not to enforce conditional writes.
    pub notice: Option<Notice>,
    /// An access key pair for a caller that holds one (a daemon's configuration, a test);
    /// `None`: the AWS credential chain (environment, profile).
    pub credentials: Option<Credentials>,
}

/// An access key pair.
#[derive(Clone)]
pub struct Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <secret>)", self.access_key_id)
    }
}

/// Requests kept in flight by the engine's readers and uploaders against an object store: each
/// waits a round trip, so a few dozen keep a fast link busy.
pub const REQUESTS_IN_FLIGHT: usize = 16;

/// Attempts of a request that fails for a reason that may pass, the first included.
const ATTEMPTS: usize = 8;

/// The repository files in one bucket (under one prefix).
pub struct S3Backend {
    pub(crate) op: Operator,
    pub(crate) url: S3Url,
    /// Whether the store enforces `If-None-Match: *`, once probed (see [`crate::create`]).
    pub(crate) conditional: OnceLock<bool>,
    pub(crate) notice: Option<Notice>,
}

impl S3Backend {
    /// A backend for the repository at `url`. Nothing is sent yet (except, for AWS S3 with no
    /// region configured, a HEAD that asks for the bucket's region).
    pub fn new(url: &S3Url, options: &S3Options) -> Result<S3Backend> {
        opendal::install_default();
        let region = match region_from(options) {
            Some(r) => r,
            None if url.is_aws() => detect_region(url)?.unwrap_or_else(|| "us-east-1".into()),
            None => "us-east-1".into(),
        };
        let mut builder = S3::default()
            .bucket(&url.bucket)
            .root(&format!("/{}", url.prefix))
            .region(&region);
        if let Some(endpoint) = &url.endpoint {
            builder = builder.endpoint(endpoint);
        }
        let virtual_host = match options.bucket_lookup {
            BucketLookup::Auto => url.is_aws(),
            BucketLookup::Dns => true,
            BucketLookup::Path => false,
        };
        if virtual_host {
            builder = builder.enable_virtual_host_style();
        }
        if let Some(c) = &options.credentials {
            builder = builder
                .access_key_id(&c.access_key_id)
                .secret_access_key(&c.secret_access_key);
        }
        let op = Operator::new(builder)
            .map_err(|e| repo_error(&e, url, ""))?
            // Timeouts inside the retries: a request that hangs is retried like one that failed.
            .layer(
                TimeoutLayer::new()
                    .with_timeout(Duration::from_secs(60))
                    .with_io_timeout(Duration::from_secs(30)),
            )
            .layer(
                RetryLayer::new()
                    .with_jitter()
                    .with_max_times(ATTEMPTS - 1)
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(8)),
            );
        Ok(S3Backend {
            op,
            url: url.clone(),
            conditional: OnceLock::new(),
            notice: options.notice.clone(),
        })
    }

    /// Runs one request.
    pub(crate) fn run<T>(
        &self,
        key: &str,
        request: impl std::future::IntoFuture<Output = opendal::Result<T>>,
    ) -> Result<T> {
        block_on(request.into_future())
            .map_err(|e| runtime_error(e, &self.url))?
            .map_err(|e| repo_error(&e, &self.url, key))
    }

    /// Like [`S3Backend::run`], keeping opendal's error for the caller to look at.
    pub(crate) fn run_raw<T>(
        &self,
        request: impl std::future::IntoFuture<Output = opendal::Result<T>>,
    ) -> Result<opendal::Result<T>> {
        block_on(request.into_future()).map_err(|e| runtime_error(e, &self.url))
    }

    /// The object key of a repository file.
    pub(crate) fn key(kind: FileKind, name: &str) -> String {
        relative_path(kind, name)
    }
}

/// The bytes of a response body: without a copy when they arrived in one piece (the buffer is
/// the only owner of its allocation then), else gathered once.
fn into_vec(buffer: opendal::Buffer) -> Vec<u8> {
    let bytes = buffer.to_bytes();
    drop(buffer);
    Vec::from(bytes)
}

fn region_from(options: &S3Options) -> Option<String> {
    options
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.is_empty())
}

fn detect_region(url: &S3Url) -> Result<Option<String>> {
    let endpoint = url
        .endpoint
        .clone()
        .unwrap_or_else(|| "https://s3.amazonaws.com".into());
    block_on(S3::detect_region(&endpoint, &url.bucket)).map_err(|e| runtime_error(e, url))
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.url.to_string()
    }

    fn create(&self) -> Result<()> {
        // Object stores have no directories: an empty prefix is an empty repository. A listing
        // also proves the bucket exists and the credentials work before the key file is written.
        let any = self.run("", self.op.list_with("").limit(2))?;
        if any.iter().any(|e| !e.path().is_empty() && e.path() != "/") {
            return Err(Error::AlreadyExists(self.location()));
        }
        Ok(())
    }

    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        if kind == FileKind::Config {
            return match self.run_raw(self.op.stat("config"))? {
                Ok(meta) => Ok(vec![("config".into(), meta.content_length())]),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(repo_error(&e, &self.url, "config")),
            };
        }
        let dir = format!("{}/", kind.dir());
        let entries = self.run(&dir, self.op.list_with(&dir).recursive(true))?;
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.path();
            let Some((parent, name)) = path.rsplit_once('/') else {
                continue;
            };
            let placed = match kind {
                FileKind::Pack => parent.strip_prefix("data/") == name.get(..2),
                _ => parent == kind.dir(),
            };
            if placed && is_listed_name(name) && entry.metadata().is_file() {
                out.push((name.to_string(), entry.metadata().content_length()));
            }
        }
        Ok(out)
    }

    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        check_name(kind, name)?;
        let key = Self::key(kind, name);
        Ok(into_vec(self.run(&key, self.op.read(&key))?))
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
        check_name(kind, name)?;
        let key = Self::key(kind, name);
        let end = offset.saturating_add(u64::from(len));
        let bytes = into_vec(self.run(&key, self.op.read_with(&key).range(offset..end))?);
        if bytes.len() != usize::try_from(len).unwrap_or(usize::MAX) {
            return Err(Error::Io {
                path: format!("{}/{key}", self.url).into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "asked for {len} bytes at offset {offset}, got {}",
                        bytes.len()
                    ),
                ),
            });
        }
        Ok(bytes)
    }

    fn write(&self, kind: FileKind, name: &str, bytes: &[u8]) -> Result<()> {
        check_name(kind, name)?;
        let key = Self::key(kind, name);
        self.run(&key, self.op.write(&key, bytes.to_vec()))?;
        Ok(())
    }

    fn remove(&self, kind: FileKind, name: &str) -> Result<()> {
        check_name(kind, name)?;
        let key = Self::key(kind, name);
        self.run(&key, self.op.delete(&key))
    }

    fn create_new(&self, kind: FileKind, name: &str, bytes: &[u8]) -> Result<bool> {
        check_name(kind, name)?;
        self.create_exclusively(&Self::key(kind, name), bytes)
    }

    fn list_temporary(&self) -> Result<Vec<TemporaryFile>> {
        // PUTs leave no temporary objects; only an interrupted probe of conditional writes
        // (crate::create) leaves one, in locks/.
        let entries = self.run("locks/", self.op.list_with("locks/"))?;
        Ok(entries
            .into_iter()
            .filter(|e| is_temporary_path(e.path()))
            .map(|e| TemporaryFile {
                path: e.path().to_string(),
                modified: e.metadata().last_modified().map(SystemTime::from),
            })
            .collect())
    }

    fn remove_temporary(&self, path: &str) -> Result<()> {
        if !is_temporary_path(path) {
            return Err(Error::InvalidParameter(format!(
                "{path} is not a temporary file"
            )));
        }
        self.run(path, self.op.delete(path))
    }

    fn modified(&self, kind: FileKind, name: &str) -> Result<Option<SystemTime>> {
        check_name(kind, name)?;
        let key = Self::key(kind, name);
        let meta = self.run(&key, self.op.stat(&key))?;
        Ok(meta.last_modified().map(SystemTime::from))
    }

    fn requests_in_flight(&self) -> usize {
        REQUESTS_IN_FLIGHT
    }
}
