//! `vmstash init`: a new, empty repository.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::json;
use vmstash_repo::config::ChunkSize;
use vmstash_repo::keyfile::KdfParams;
use vmstash_repo::Repository;

use crate::args::{Global, InitArgs};
use crate::exit::{self, usage};
use crate::output::{line, print_json};
use crate::{password, repo};

/// The chunk size of a new repository unless told otherwise: 512 KiB.
const DEFAULT_CHUNK_SIZE: u64 = 512 * 1024;

/// Runs `vmstash init`.
pub fn run(g: &Global, a: &InitArgs) -> Result<ExitCode> {
    let chunk_size = if a.copy_chunker_params {
        let source = repo::open_source(g, &a.from)?;
        u64::from(source.config().chunk_size)
    } else {
        a.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE)
    };
    let chunk = u32::try_from(chunk_size)
        .ok()
        .and_then(|c| ChunkSize::new(c).ok())
        .ok_or_else(|| {
            usage(format!(
                "--chunk-size {chunk_size} must be a power of two from 64KiB to 8MiB"
            ))
        })?;
    let backend = repo::store(g)?.backend;
    let location = backend.location();
    let pw = password::new(Some(g), None)?;
    if pw.is_empty() {
        bail!("refusing an empty password");
    }
    let repo = Repository::init(
        backend,
        pw.as_bytes(),
        chunk,
        a.compression_level,
        KdfParams::DEFAULT,
    )
    .with_context(|| format!("creating repository at {location}"))?;
    if g.json {
        print_json(
            &json!({"message_type": "initialized", "id": repo.config().id, "repository": location}),
        );
    } else if !g.quiet {
        line(format_args!(
            "created vmstash repository {} at {location}",
            repo.config().id.get(..10).unwrap_or_default()
        ));
        line("Keep the password safe: without it the data cannot be recovered.");
    }
    Ok(exit::ok())
}
