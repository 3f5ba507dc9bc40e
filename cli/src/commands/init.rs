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

/// Runs `vmstash init`.
pub fn run(g: &Global, a: &InitArgs) -> Result<ExitCode> {
    let chunk = u32::try_from(a.chunk_size)
        .ok()
        .and_then(|c| ChunkSize::new(c).ok())
        .ok_or_else(|| {
            usage(format!(
                "--chunk-size {} must be a power of two from 64KiB to 8MiB",
                a.chunk_size
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
