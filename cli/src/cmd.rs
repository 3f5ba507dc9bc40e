//! Dispatch, and the commands that need no pipeline: init, snapshots,
//! check, cat, key, stats.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::json;
use vmstash_repo::backend::{Backend, CachedBackend, FileKind, LocalBackend};
use vmstash_repo::check::check;
use vmstash_repo::config::ChunkSize;
use vmstash_repo::keyfile::{KdfParams, KeyFile};
use vmstash_repo::sealed::FileType;
use vmstash_repo::snapshot::Manifest;
use vmstash_repo::{index, Id, Repository};

use crate::args::{CatArgs, CatWhat, Cli, Command, Global, InitArgs, KeyCommand, SnapshotsArgs};
use crate::sftp_repo::{SftpBackend, SftpUrl};
use crate::ssh::SshSession;
use crate::{backup, exit, password, progress, restore, vmbackup};

/// Runs one command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match &cli.command {
        Command::Init(a) => init(g, a),
        Command::Backup(a) => match &a.connect {
            Some(uri) => vmbackup::run_backup(g, &open(g)?, uri, a),
            None => backup::run(g, &open(g)?, a),
        },
        Command::Vms(a) => vmbackup::run_list(g, a),
        Command::VmRepair(a) => vmbackup::run_repair(g, a),
        Command::Mount(a) => crate::mount::run(g, &open(g)?, a),
        Command::Snapshots(a) => snapshots(g, &open(g)?, a),
        Command::Restore(a) => restore::run(g, &open(g)?, a),
        Command::Check(a) => check_cmd(g, &open(g)?, a.read_data),
        Command::Cat(a) => cat(g, &open(g)?, a),
        Command::Key(k) => key(g, &open(g)?, k),
        Command::Stats => stats(g, &open(g)?),
    }
}

/// The storage behind `-r`, and, for a remote one, its metadata cache.
struct Store {
    backend: Arc<dyn Backend>,
    cache: Option<Arc<CachedBackend<SftpBackend>>>,
}

fn backend(g: &Global) -> Result<Store> {
    let Some(repo) = &g.repo else {
        bail!("no repository given: use -r/--repo or set VMSTASH_REPOSITORY");
    };
    if repo.starts_with("sftp://") {
        let url = SftpUrl::parse(repo)?;
        let session = SshSession::connect(&url.target, &vmbackup::ssh_options(g))
            .with_context(|| format!("connecting to the repository server of {repo}"))?;
        let sftp = SftpBackend::new(&session, &url.path)?;
        let cache = Arc::new(CachedBackend::new(sftp, cache_root()));
        return Ok(Store {
            backend: cache.clone(),
            cache: Some(cache),
        });
    }
    if repo.contains("://") {
        bail!("{repo}: unsupported repository location; use a directory or sftp://user@host/path");
    }
    Ok(Store {
        backend: Arc::new(LocalBackend::new(repo)),
        cache: None,
    })
}

/// `$XDG_CACHE_HOME/vmstash`, else `~/.cache/vmstash`.
fn cache_root() -> std::path::PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("vmstash")
}

/// Opens the repository named by the global options.
pub fn open(g: &Global) -> Result<Repository> {
    let store = backend(g)?;
    let location = store.backend.location();
    let pw = password::current(g)?;
    let repo = Repository::open(store.backend, pw.as_bytes())
        .with_context(|| format!("opening repository {location}"))?;
    if let Some(cache) = store.cache {
        cache.enable(&repo.config().id);
    }
    Ok(repo)
}

/// Prints `v` as one line of JSON.
pub fn print_json(v: &serde_json::Value) {
    println!("{v}");
}

fn init(g: &Global, a: &InitArgs) -> Result<ExitCode> {
    let backend = backend(g)?.backend;
    let location = backend.location();
    let chunk = u32::try_from(a.chunk_size)
        .ok()
        .and_then(|c| ChunkSize::new(c).ok())
        .with_context(|| {
            format!(
                "--chunk-size {} must be a power of two from 64KiB to 8MiB",
                a.chunk_size
            )
        })?;
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
        println!(
            "created vmstash repository {} at {location}",
            &repo.config().id[..10]
        );
        println!("Keep the password safe: without it the data cannot be recovered.");
    }
    Ok(exit::ok())
}

fn snapshot_json(id: &Id, m: &Manifest) -> serde_json::Value {
    json!({
        "id": id.to_hex(), "short_id": id.short(), "time": m.time, "hostname": m.hostname,
        "username": m.username, "name": m.name, "tags": m.tags, "parent": m.parent,
        "disks": m.disks.iter().map(|d| json!({"name": d.name, "size": d.size, "format": d.format, "source": d.source})).collect::<Vec<_>>(),
        "summary": m.summary,
    })
}

fn snapshots(g: &Global, repo: &Repository, a: &SnapshotsArgs) -> Result<ExitCode> {
    let all: Vec<_> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, m)| a.name.as_ref().is_none_or(|n| *n == m.name))
        .collect();
    if g.json {
        print_json(&serde_json::Value::Array(
            all.iter().map(|(id, m)| snapshot_json(id, m)).collect(),
        ));
        return Ok(exit::ok());
    }
    println!(
        "{:<8}  {:<20}  {:<12}  {:<16}  {:>10}  disks / tags",
        "ID", "Time", "Host", "Name", "Size"
    );
    println!("{}", "-".repeat(90));
    for (id, m) in &all {
        let disks: Vec<_> = m.disks.iter().map(|d| d.name.as_str()).collect();
        println!(
            "{:<8}  {:<20}  {:<12}  {:<16}  {:>10}  {}{}",
            id.short(),
            m.time.get(..19).unwrap_or(&m.time).replace('T', " "),
            m.hostname,
            m.name,
            progress::human(m.summary.disk_bytes),
            disks.join(","),
            if m.tags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", m.tags.join(","))
            }
        );
    }
    println!("{} snapshots", all.len());
    Ok(exit::ok())
}

fn check_cmd(g: &Global, repo: &Repository, read_data: bool) -> Result<ExitCode> {
    let _lock = repo.lock(false)?;
    let total: u64 = if read_data {
        repo.backend()
            .list(FileKind::Pack)?
            .iter()
            .map(|(_, s)| s)
            .sum()
    } else {
        0
    };
    let bar = progress::bytes(g, total, "reading packs");
    let report = check(repo, read_data, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    if g.json {
        print_json(&serde_json::to_value(&report)?);
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        if !g.quiet {
            println!(
                "checked {} snapshots, {} packs ({} read), {} blobs: {}",
                report.snapshots,
                report.packs,
                report.packs_read,
                report.blobs,
                if report.is_ok() {
                    "no errors".to_string()
                } else {
                    format!("{} errors", report.errors.len())
                }
            );
        }
    }
    if report.is_ok() {
        Ok(exit::ok())
    } else {
        if !g.json {
            eprintln!("vmstash: the repository is damaged; the errors above name the files and the snapshots affected");
        }
        Ok(ExitCode::from(exit::FAILURE))
    }
}

/// The one file of `kind` whose name starts with `prefix`.
fn resolve(repo: &Repository, kind: FileKind, prefix: &str) -> Result<String> {
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

fn cat(_g: &Global, repo: &Repository, a: &CatArgs) -> Result<ExitCode> {
    let id = || a.id.as_deref().context("this needs an id");
    let v = match a.what {
        CatWhat::Config => serde_json::to_value(repo.config())?,
        CatWhat::Key => {
            let name = resolve(repo, FileKind::Key, id()?)?;
            let bytes = repo.backend().read(FileKind::Key, &name)?;
            serde_json::to_value(KeyFile::decode(&bytes, &format!("keys/{name}"))?)?
        }
        CatWhat::Snapshot => {
            let (sid, m) = repo.find_snapshot(id()?)?;
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
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(exit::ok())
}

fn key(g: &Global, repo: &Repository, k: &KeyCommand) -> Result<ExitCode> {
    match k {
        KeyCommand::List => {
            let keys = repo.list_keys()?;
            if g.json {
                print_json(&json!(keys.iter().map(|(n, k)| json!({
                    "id": n, "current": n == repo.key_name(), "username": k.username, "hostname": k.hostname, "created": k.created,
                })).collect::<Vec<_>>()));
            } else {
                println!(" {:<8}  {:<12}  {:<16}  created", "ID", "User", "Host");
                for (n, k) in keys {
                    let cur = if n == repo.key_name() { "*" } else { " " };
                    println!(
                        "{cur}{:<8}  {:<12}  {:<16}  {}",
                        n.get(..8).unwrap_or(&n),
                        k.username,
                        k.hostname,
                        k.created
                    );
                }
            }
        }
        KeyCommand::Add(np) => {
            let pw = password::new(None, Some(np))?;
            let name = repo.add_key(pw.as_bytes(), KdfParams::DEFAULT)?;
            report(g, "key_added", &name);
        }
        KeyCommand::Passwd(np) => {
            let pw = password::new(None, Some(np))?;
            let name = repo.change_password(pw.as_bytes(), KdfParams::DEFAULT)?;
            report(g, "password_changed", &name);
        }
        KeyCommand::Remove { id } => {
            let name = resolve(repo, FileKind::Key, id)?;
            repo.remove_key(&name)?;
            report(g, "key_removed", &name);
        }
    }
    Ok(exit::ok())
}

fn report(g: &Global, what: &str, key: &str) {
    if g.json {
        print_json(&json!({"message_type": what, "id": key}));
    } else if !g.quiet {
        println!(
            "{}: key {}",
            what.replace('_', " "),
            key.get(..8).unwrap_or(key)
        );
    }
}

/// A byte count as a float, for ratios: exact below 2^53, which every
/// real byte count is.
#[allow(clippy::as_conversions)]
fn approx(n: u64) -> f64 {
    n as f64
}

fn stats(g: &Global, repo: &Repository) -> Result<ExitCode> {
    let _lock = repo.lock(false)?;
    let idx = repo.load_index()?;
    let snaps = repo.snapshots()?;
    let mut logical = 0u64;
    let mut nonzero = 0u64;
    for (_, m) in &snaps {
        for d in &m.disks {
            logical += d.size;
            for seg in 0..d.map.len() {
                let ids = repo.map_segment(&idx, d, seg)?;
                let full = ids.iter().filter(|i| !i.is_zero()).count();
                nonzero += u64::try_from(full).unwrap_or(0) * u64::from(d.chunk_size);
            }
        }
    }
    let unique: u64 = idx
        .iter()
        .filter(|l| l.entry.ty == vmstash_repo::blob::BlobType::Data)
        .map(|l| u64::from(l.entry.raw_length))
        .sum();
    let blob_stored: u64 = idx.iter().map(|l| u64::from(l.entry.length)).sum();
    let mut files = 0u64;
    for kind in [
        FileKind::Config,
        FileKind::Key,
        FileKind::Pack,
        FileKind::Index,
        FileKind::Snapshot,
    ] {
        files += repo
            .backend()
            .list(kind)?
            .iter()
            .map(|(_, s)| s)
            .sum::<u64>();
    }
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { approx(a) / approx(b) };
    let v = json!({
        "snapshots": snaps.len(), "blobs": idx.len(), "logical_bytes": logical,
        "nonzero_logical_bytes": nonzero, "unique_data_bytes": unique,
        "stored_blob_bytes": blob_stored, "repository_bytes": files,
        "dedup_ratio": ratio(nonzero, unique), "compression_ratio": ratio(unique, blob_stored),
        "space_saving_ratio": ratio(logical, files),
    });
    if g.json {
        print_json(&v);
    } else {
        println!("snapshots:                 {}", snaps.len());
        println!("logical size (all disks):  {}", progress::human(logical));
        println!("  of which non-zero:       {}", progress::human(nonzero));
        println!(
            "unique data:               {} in {} blobs",
            progress::human(unique),
            idx.len()
        );
        println!("stored in repository:      {}", progress::human(files));
        println!("deduplication ratio:       {:.2}x", ratio(nonzero, unique));
        println!(
            "compression ratio:         {:.2}x",
            ratio(unique, blob_stored)
        );
    }
    Ok(exit::ok())
}
