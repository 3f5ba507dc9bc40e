//! `vmstash serve`: the daemon (spec/SERVE.md), its `--check-config`, and its tokens. The
//! daemon itself is `vmstash-serve`; this module gives it the work ([`work`], on the engine
//! and this binary's hypervisor code) and the repositories' contents ([`catalog`]).

mod catalog;
mod global;
mod work;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::Utc;
use vmstash_serve::config::Config;
use vmstash_serve::state_dir::StateDir;
use vmstash_serve::tokens::{Role, Tokens};

use crate::args::{Global, ServeAction, ServeArgs, TokenCommand};
use crate::exit::{self, usage};
use crate::output::line;

/// Runs `vmstash serve`.
pub fn run(g: &Global, a: &ServeArgs) -> Result<ExitCode> {
    let config = Config::load(&a.config).map_err(|e| usage(e.to_string()))?;
    for w in &config.warnings {
        eprintln!("vmstash serve: warning: {w}");
    }
    match &a.action {
        Some(ServeAction::Token(t)) => token(g, &config, t),
        None if a.check_config => {
            print_next_runs(&config);
            Ok(exit::ok())
        }
        None => daemon(g, config),
    }
}

/// Prints, for each job and check, when it runs next (its zone and UTC).
fn print_next_runs(config: &Config) {
    let now = Utc::now();
    line(format_args!(
        "{}: valid; {} repositories, {} hypervisors, {} jobs",
        config.path.display(),
        config.repositories.len(),
        config.hypervisors.len(),
        config.jobs.len()
    ));
    for job in config.jobs.values() {
        let schedules = job
            .schedule
            .iter()
            .map(|s| ("backup", s))
            .chain(job.check.iter().map(|c| ("check", &c.schedule)));
        let mut any = false;
        for (what, s) in schedules {
            any = true;
            match s.next_after(now) {
                Some(t) => line(format_args!(
                    "{} {what} ({:?} in {}): next {} ({} UTC)",
                    job.name,
                    s.text(),
                    s.zone(),
                    t.with_timezone(&s.zone()).format("%Y-%m-%d %H:%M %Z"),
                    t.format("%Y-%m-%d %H:%M")
                )),
                None => line(format_args!(
                    "{} {what} ({:?}): never runs (no such date)",
                    job.name,
                    s.text()
                )),
            }
        }
        if !any {
            line(format_args!("{}: no schedule (runs when asked)", job.name));
        }
    }
}

/// `vmstash serve token create|list|revoke`.
fn token(g: &Global, config: &Config, t: &TokenCommand) -> Result<ExitCode> {
    let state = StateDir::open(&config.server.state_dir)?;
    let tokens = Tokens::new(state);
    match t {
        TokenCommand::Create {
            role,
            tenant,
            name,
            expires,
        } => {
            let role = Role::parse(role).ok_or_else(|| usage("--role viewer|operator|admin"))?;
            let now = Utc::now();
            let too_far = || usage("--expires: too far in the future");
            let expires = expires
                .map(|d| {
                    chrono::TimeDelta::from_std(d)
                        .ok()
                        .and_then(|d| now.checked_add_signed(d))
                        .ok_or_else(too_far)
                })
                .transpose()?;
            let (secret, record) = tokens.create(name, role, tenant.as_deref(), expires, now)?;
            if g.json {
                crate::output::print_json(&serde_json::json!({
                    "id": record.id, "token": secret, "role": record.role, "tenant": record.tenant,
                }));
            } else {
                line(format_args!("{secret}"));
                eprintln!(
                    "token {} ({}{}) made; it is shown only this once",
                    record.id,
                    role.name(),
                    record
                        .tenant
                        .as_deref()
                        .map(|t| format!(", tenant {t}"))
                        .unwrap_or_default()
                );
            }
        }
        TokenCommand::List => {
            for r in tokens.list()? {
                line(format_args!(
                    "{} {:<8} {:<10} {:<16} {}",
                    r.id,
                    r.role.name(),
                    r.tenant.as_deref().unwrap_or("-"),
                    r.expires
                        .map_or_else(|| "no expiry".to_owned(), |e| e.to_rfc3339()),
                    r.name
                ));
            }
        }
        TokenCommand::Revoke { id } => {
            if !tokens.revoke(id)? {
                return Err(usage(format!(
                    "no token {id}: `vmstash serve token list` shows them"
                )));
            }
            eprintln!("token {id} revoked");
        }
    }
    Ok(exit::ok())
}

/// Runs the daemon until SIGTERM or SIGINT.
fn daemon(g: &Global, config: Config) -> Result<ExitCode> {
    let level = match g.verbose {
        0 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let config = Arc::new(config);
    let parts = vmstash_serve::daemon::Parts {
        config: Arc::clone(&config),
        work: Arc::new(work::DaemonWork::new(Arc::clone(&config))),
        catalog: Arc::new(catalog::RepoCatalog::default()),
        notifier: Arc::new(vmstash_serve::notify::Notifications::new(Arc::clone(
            &config,
        ))),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = async {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(e) => {
                    tracing::error!("cannot watch for SIGTERM ({e}); only Ctrl-C stops the daemon");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        vmstash_serve::daemon::run(parts, shutdown).await
    })?;
    tracing::info!("stopped");
    Ok(exit::ok())
}
