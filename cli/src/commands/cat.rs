//! `vmstash cat`: a decoded repository file as JSON, for people and scripts that want to see
//! what is stored.

use std::process::ExitCode;

use anyhow::{bail, Result};
use serde_json::json;
use vmstash_repo::backend::FileKind;
use vmstash_repo::keyfile::KeyFile;
use vmstash_repo::sealed::FileType;
use vmstash_repo::selection::SnapshotFilter;
use vmstash_repo::{index, Repository};

use crate::args::{CatArgs, CatWhat, Global};
use crate::exit::{self, usage};
use crate::output::line;
use crate::repo;

/// The one file of `kind` whose name starts with `prefix`.
pub(super) fn resolve(repo: &Repository, kind: FileKind, prefix: &str) -> Result<String> {
    let hits: Vec<_> = repo
        .backend()
        .list(kind)?
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with(&prefix.to_ascii_lowercase()))
        .collect();
    match hits.as_slice() {
        [one] if !prefix.is_empty() => Ok(one.clone()),
        [] => bail!("no {} file matches {prefix:?}", kind.dir()),
        _ => bail!(
            "{prefix:?} matches several {} files; give more of the id",
            kind.dir()
        ),
    }
}

/// Runs `vmstash cat`.
pub fn run(g: &Global, a: &CatArgs) -> Result<ExitCode> {
    let repo = &repo::open(g)?;
    let id = || {
        a.id.as_deref().ok_or_else(|| {
            usage("this `vmstash cat` needs the file's id (or a unique prefix of it)")
        })
    };
    let v = match a.what {
        CatWhat::Config => serde_json::to_value(repo.config())?,
        CatWhat::Key => {
            let name = resolve(repo, FileKind::Key, id()?)?;
            let bytes = repo.backend().read(FileKind::Key, &name)?;
            serde_json::to_value(KeyFile::decode(&bytes, &format!("keys/{name}"))?)?
        }
        CatWhat::Snapshot => {
            let (sid, m) = repo.find_snapshot(id()?, &SnapshotFilter::default())?;
            let mut v = serde_json::to_value(&m)?;
            v["id"] = json!(sid.to_hex());
            v
        }
        CatWhat::Index => {
            let name = resolve(repo, FileKind::Index, id()?)?;
            let plain = repo.read_file(FileKind::Index, FileType::Index, &name)?;
            let packs = index::decode(&plain, &format!("index/{name}"))?;
            json!({"packs": packs.iter().map(|p| json!({
                "id": p.id, "salt": hex::encode(p.salt),
                "blobs": p.blobs.iter().map(|b| json!({"type": b.ty.name(), "id": b.id, "offset": b.offset, "length": b.length, "raw_length": b.raw_length})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()})
        }
    };
    line(format_args!("{}", serde_json::to_string_pretty(&v)?));
    Ok(exit::ok())
}
