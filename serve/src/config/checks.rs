//! From the file as read ([`raw`]) to a [`Config`]: every value checked, every reference
//! resolved, every problem collected with its place in the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use globset::{Glob, GlobSet, GlobSetBuilder};
use toml::Spanned;
use vmstash_repo::check::ReadData;
use vmstash_repo::policy::{Keep, KeepPolicy, Span};
use vmstash_repo::prune::{MaxUnused, PruneOptions};
use vmstash_repo::selection::TagList;

use super::raw;
use super::{
    CheckDef, Config, Email, HypervisorDef, JobDef, NotificationDef, NotifyOn, PasswordSource,
    RepositoryDef, Retention, Server, SmtpSecurity, Transport, VmSelection, DEFAULT_KEEP_HISTORY,
    DEFAULT_LISTEN, DEFAULT_MAX_AUTH_FAILURES, DEFAULT_MAX_JOBS, DEFAULT_STATE_DIR,
};
use crate::error::{ConfigIssue, ServeError};
use crate::schedule::Schedule;

/// The most jobs the daemon runs at once, whatever the file says.
const MAX_MAX_JOBS: i64 = 64;
/// The URI schemes `vmstash backup --connect` takes.
const HYPERVISOR_SCHEMES: [&str; 4] = ["qemu://", "qemu+ssh://", "qmp://", "qmp+ssh://"];

/// Collects the problems of one file.
struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    issues: Vec<ConfigIssue>,
    warnings: Vec<String>,
}

/// Checks `file`, read from `text` at `path`.
pub(super) fn check(path: &Path, text: &str, file: raw::File) -> Result<Config, ServeError> {
    let mut c = Checker {
        path,
        text,
        issues: Vec::new(),
        warnings: Vec::new(),
    };
    let server = c.server(file.server);
    let repositories = c.named(file.repositories, Checker::repository);
    let hypervisors = c.named(file.hypervisors, Checker::hypervisor);
    let notifications = c.named(file.notifications, Checker::notification);
    let known = Known {
        zone: server.time_zone,
        repositories: &repositories,
        hypervisors: &hypervisors,
        notifications: &notifications,
    };
    let jobs = c.named(file.jobs, |c, name, job| c.job(name, job, &known));
    if !c.issues.is_empty() {
        c.issues.sort_by_key(|i| (i.line, i.column));
        return Err(ServeError::Config(c.issues));
    }
    Ok(Config {
        path: path.to_owned(),
        server,
        repositories,
        hypervisors,
        jobs,
        notifications,
        warnings: c.warnings,
    })
}

/// What a job may refer to.
struct Known<'a> {
    zone: Tz,
    repositories: &'a BTreeMap<String, RepositoryDef>,
    hypervisors: &'a BTreeMap<String, HypervisorDef>,
    notifications: &'a BTreeMap<String, NotificationDef>,
}

impl Checker<'_> {
    fn issue(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.issues.push(ConfigIssue::at(
            self.path,
            self.text,
            span.start,
            message.into(),
        ));
    }

    /// Checks each entry of a table of named things with `check`, keeping the good ones.
    fn named<R, T>(
        &mut self,
        table: BTreeMap<Spanned<String>, R>,
        check: impl Fn(&mut Self, &Spanned<String>, R) -> Option<T>,
    ) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        for (name, value) in table {
            if !is_name(name.get_ref()) {
                self.issue(
                    name.span(),
                    format!(
                        "{:?} is not a name: use 1 to 64 of a-z, 0-9, '_' and '-'",
                        name.get_ref()
                    ),
                );
                continue;
            }
            if let Some(checked) = check(self, &name, value) {
                out.insert(name.into_inner(), checked);
            }
        }
        out
    }

    fn server(&mut self, s: raw::Server) -> Server {
        let listen = match &s.listen {
            Some(l) => l.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
                self.issue(
                    l.span(),
                    format!(
                        "listen = {:?} is not an address and port (e.g. \"127.0.0.1:8443\")",
                        l.get_ref()
                    ),
                );
                default_listen()
            }),
            None => default_listen(),
        };
        let plain = s.plain_http.as_ref().is_some_and(|p| *p.get_ref());
        let transport = match (s.tls_cert, s.tls_key) {
            (Some(cert), Some(key)) => Transport::Tls {
                cert: cert.into_inner(),
                key: key.into_inner(),
            },
            (None, None) if plain => Transport::PlainHttp,
            (None, None) => Transport::SelfSigned,
            (_, Some(key)) => {
                self.issue(
                    key.span(),
                    "tls_key without tls_cert: give both, or neither for a self-signed certificate",
                );
                Transport::SelfSigned
            }
            (Some(cert), None) => {
                self.issue(
                    cert.span(),
                    "tls_cert without tls_key: give both, or neither for a self-signed certificate",
                );
                Transport::SelfSigned
            }
        };
        if let Some(p) = s.plain_http.as_ref().filter(|p| *p.get_ref()) {
            if !matches!(transport, Transport::PlainHttp) {
                self.issue(
                    p.span(),
                    "plain_http = true and a TLS certificate: choose one",
                );
            } else if !listen.ip().is_loopback() {
                self.issue(
                    p.span(),
                    format!("plain_http = true on {listen}: plain HTTP is served on a loopback address only (127.0.0.1, ::1); use TLS elsewhere"),
                );
            }
        }
        let max_jobs = self.bounded(s.max_jobs.as_ref(), "max_jobs", 1, MAX_MAX_JOBS);
        let keep_history = self.bounded(s.keep_history.as_ref(), "keep_history", 1, 1_000_000);
        let max_auth_failures = self.bounded(
            s.max_auth_failures.as_ref(),
            "max_auth_failures",
            1,
            1_000_000,
        );
        let restore_dirs = self.restore_dirs(s.restore_dirs);
        Server {
            listen,
            transport,
            state_dir: s
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            max_jobs: max_jobs
                .and_then(NonZeroUsize::new)
                .or(NonZeroUsize::new(DEFAULT_MAX_JOBS))
                .unwrap_or(NonZeroUsize::MIN),
            time_zone: self.zone(s.time_zone.as_ref()).unwrap_or(Tz::UTC),
            keep_history: keep_history.unwrap_or(DEFAULT_KEEP_HISTORY),
            max_auth_failures: max_auth_failures.unwrap_or(DEFAULT_MAX_AUTH_FAILURES),
            restore_dirs,
        }
    }

    /// `restore_dirs`: absolute paths without `..`, so that "below one of them" means what
    /// it says.
    fn restore_dirs(&mut self, dirs: Vec<Spanned<PathBuf>>) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in dirs {
            let path = d.get_ref();
            let dotdot = path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
            if !path.is_absolute() || dotdot {
                self.issue(
                    d.span(),
                    format!(
                        "restore_dirs: {} is not an absolute path without '..'",
                        path.display()
                    ),
                );
            } else {
                out.push(d.into_inner());
            }
        }
        out
    }

    /// A whole number in `min..=max`, or an issue.
    fn bounded(
        &mut self,
        v: Option<&Spanned<i64>>,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<usize> {
        let v = v?;
        match usize::try_from(*v.get_ref()) {
            Ok(n) if (min..=max).contains(v.get_ref()) => Some(n),
            _ => {
                self.issue(
                    v.span(),
                    format!(
                        "{key} = {}: give a whole number from {min} to {max}",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn zone(&mut self, zone: Option<&Spanned<String>>) -> Option<Tz> {
        let zone = zone?;
        match zone.get_ref().parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                self.issue(
                    zone.span(),
                    format!(
                        "time_zone = {:?} is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")",
                        zone.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn tenant(&mut self, tenant: Option<Spanned<String>>) -> Option<String> {
        let t = tenant?;
        if !is_name(t.get_ref()) {
            self.issue(
                t.span(),
                format!(
                    "tenant {:?} is not a name: use 1 to 64 of a-z, 0-9, '_' and '-'",
                    t.get_ref()
                ),
            );
        }
        Some(t.into_inner())
    }

    fn repository(&mut self, name: &Spanned<String>, r: raw::Repository) -> Option<RepositoryDef> {
        if r.location.get_ref().trim().is_empty() {
            self.issue(
                r.location.span(),
                "location is empty: give a path, sftp://… or s3://…",
            );
        }
        let password = match (r.password_file, r.password_command) {
            (Some(file), None) => {
                self.password_file(&file);
                PasswordSource::File(file.into_inner())
            }
            (None, Some(command)) => PasswordSource::Command(command.into_inner()),
            (Some(file), Some(_)) => {
                self.issue(file.span(), "password_file and password_command: give one");
                return None;
            }
            (None, None) => {
                self.issue(
                    name.span(),
                    format!(
                        "repository {:?} has no password_file or password_command (a password is never written in this file)",
                        name.get_ref()
                    ),
                );
                return None;
            }
        };
        Some(RepositoryDef {
            name: name.get_ref().clone(),
            location: r.location.into_inner(),
            password,
            tenant: self.tenant(r.tenant),
            s3_region: r.s3_region,
            identity: r.identity,
            known_hosts: r.known_hosts,
        })
    }

    /// A password file must exist; one others can read is a warning.
    fn password_file(&mut self, file: &Spanned<PathBuf>) {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(file.get_ref()) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => self.warnings.push(format!(
                "{}: others may read it (mode {:o}): chmod 600 it",
                file.get_ref().display(),
                m.permissions().mode() & 0o777
            )),
            Ok(_) => {}
            Err(e) => self.issue(
                file.span(),
                format!("password_file {}: {e}", file.get_ref().display()),
            ),
        }
    }

    fn hypervisor(&mut self, name: &Spanned<String>, h: raw::Hypervisor) -> Option<HypervisorDef> {
        if !HYPERVISOR_SCHEMES
            .iter()
            .any(|s| h.uri.get_ref().starts_with(s))
        {
            self.issue(
                h.uri.span(),
                format!(
                    "uri = {:?}: give qemu+ssh://[user@]host/system (or qemu:///system, qmp+ssh://…)",
                    h.uri.get_ref()
                ),
            );
        }
        Some(HypervisorDef {
            name: name.get_ref().clone(),
            uri: h.uri.into_inner(),
            identity: h.identity,
            known_hosts: h.known_hosts,
            accept_new_host_key: h.accept_new_host_key,
            tenant: self.tenant(h.tenant),
        })
    }

    fn notification(
        &mut self,
        name: &Spanned<String>,
        n: raw::Notification,
    ) -> Option<NotificationDef> {
        let mut on = Vec::new();
        for state in &n.on {
            match state.get_ref().as_str() {
                "failed" => on.push(NotifyOn::Failed),
                "canceled" => on.push(NotifyOn::Canceled),
                "succeeded" => on.push(NotifyOn::Succeeded),
                other => self.issue(
                    state.span(),
                    format!("on = {other:?}: give failed, canceled or succeeded"),
                ),
            }
        }
        if n.on.is_empty() {
            on.push(NotifyOn::Failed);
        }
        if let Some(url) = &n.webhook {
            if !(url.get_ref().starts_with("https://") || url.get_ref().starts_with("http://")) {
                self.issue(
                    url.span(),
                    format!("webhook = {:?} is not an http(s) URL", url.get_ref()),
                );
            }
        }
        let email = if n.email_to.is_empty() {
            None
        } else {
            let port = self.bounded(n.smtp_port.as_ref(), "smtp_port", 1, 65_535);
            let security = self.smtp_security(n.smtp_security.as_ref());
            let to: Vec<_> = n
                .email_to
                .iter()
                .filter_map(|a| self.mailbox(a, "email_to"))
                .collect();
            match (n.email_from, n.smtp_server) {
                (Some(from), Some(server)) => {
                    if security == SmtpSecurity::Plain && !is_loopback_host(&server) {
                        let at = n.smtp_security.as_ref().map_or(name.span(), Spanned::span);
                        self.issue(
                            at,
                            format!("smtp_security = \"plain\" to {server}: plain SMTP goes to a loopback server only (localhost, 127.0.0.1, ::1); use starttls or tls"),
                        );
                    }
                    let from = self.mailbox(&from, "email_from");
                    from.map(|from| Email {
                        to,
                        from,
                        server,
                        port: port
                            .and_then(|p| u16::try_from(p).ok())
                            .unwrap_or(security.default_port()),
                        security,
                        user: n.smtp_user,
                        password_file: n.smtp_password_file,
                    })
                }
                _ => {
                    self.issue(name.span(), "email_to needs email_from and smtp_server");
                    None
                }
            }
        };
        if n.webhook.is_none() && email.is_none() {
            self.issue(
                name.span(),
                format!(
                    "notification {:?} has neither a webhook nor email_to",
                    name.get_ref()
                ),
            );
        }
        Some(NotificationDef {
            name: name.get_ref().clone(),
            on,
            webhook: n.webhook.map(Spanned::into_inner),
            email,
        })
    }

    /// An email address (`Name <addr>` or `addr`), or an issue.
    fn mailbox(&mut self, text: &Spanned<String>, key: &str) -> Option<lettre::message::Mailbox> {
        match text.get_ref().parse::<lettre::message::Mailbox>() {
            Ok(m) => Some(m),
            Err(e) => {
                self.issue(
                    text.span(),
                    format!("{key}: {:?} is not an email address ({e})", text.get_ref()),
                );
                None
            }
        }
    }

    fn smtp_security(&mut self, v: Option<&Spanned<String>>) -> SmtpSecurity {
        match v.map(|v| v.get_ref().as_str()) {
            None | Some("starttls") => SmtpSecurity::StartTls,
            Some("tls") => SmtpSecurity::Tls,
            Some("plain") => SmtpSecurity::Plain,
            Some(other) => {
                if let Some(v) = v {
                    self.issue(
                        v.span(),
                        format!("smtp_security = {other:?}: use starttls, tls or plain"),
                    );
                }
                SmtpSecurity::StartTls
            }
        }
    }

    fn job(&mut self, name: &Spanned<String>, j: raw::Job, known: &Known<'_>) -> Option<JobDef> {
        let repository = self.reference(&j.repository, "repository", known.repositories);
        let hypervisor = self.reference(&j.hypervisor, "hypervisor", known.hypervisors);
        let tenant = repository.and_then(|r| r.tenant.clone());
        if let Some(h) = hypervisor {
            if h.tenant != tenant {
                self.issue(
                    j.hypervisor.span(),
                    format!(
                        "hypervisor {:?} belongs to tenant {} but repository {:?} to tenant {}: a job stays within one tenant",
                        h.name,
                        tenant_name(h.tenant.as_deref()),
                        j.repository.get_ref(),
                        tenant_name(tenant.as_deref())
                    ),
                );
            }
        }
        if let Some(to) = &j.copy_to {
            if let Some(r) = self.reference(to, "copy_to", known.repositories) {
                if r.tenant != tenant {
                    self.issue(
                        to.span(),
                        "copy_to is a repository of another tenant: a job stays within one tenant",
                    );
                }
                if to.get_ref() == j.repository.get_ref() {
                    self.issue(to.span(), "copy_to names the job's own repository");
                }
            }
        }
        for n in &j.notify {
            self.reference(n, "notify", known.notifications);
        }
        let vms = self.vms(name, &j)?;
        let zone = self.zone(j.time_zone.as_ref()).unwrap_or(known.zone);
        let schedule = j.schedule.as_ref().and_then(|s| self.schedule(s, zone));
        for tag in &j.tags {
            if tag.get_ref().is_empty() || tag.get_ref().contains(',') {
                self.issue(
                    tag.span(),
                    format!(
                        "tag {:?}: a tag is non-empty and without ','",
                        tag.get_ref()
                    ),
                );
            }
        }
        let retention = j.retention.map(|r| self.retention(r));
        let check = j.check.and_then(|c| {
            let read_data = match &c.read_data_subset {
                Some(s) => ReadData::parse_subset(s.get_ref()).unwrap_or_else(|e| {
                    self.issue(s.span(), format!("read_data_subset: {e}"));
                    ReadData::None
                }),
                None => ReadData::None,
            };
            Some(CheckDef {
                schedule: self.schedule(&c.schedule, zone)?,
                read_data,
                read_data_subset: c.read_data_subset.map(Spanned::into_inner),
            })
        });
        Some(JobDef {
            name: name.get_ref().clone(),
            hypervisor: j.hypervisor.into_inner(),
            repository: j.repository.into_inner(),
            vms,
            exclude_disks: j.exclude_disks,
            schedule,
            tags: j.tags.into_iter().map(Spanned::into_inner).collect(),
            copy_to: j.copy_to.map(Spanned::into_inner),
            notify: j.notify.into_iter().map(Spanned::into_inner).collect(),
            retention,
            check,
            tenant,
        })
    }

    /// The entry `name` refers to in `table`, or an issue saying which names there are.
    fn reference<'t, T>(
        &mut self,
        name: &Spanned<String>,
        key: &str,
        table: &'t BTreeMap<String, T>,
    ) -> Option<&'t T> {
        let found = table.get(name.get_ref());
        if found.is_none() {
            let names: Vec<&str> = table.keys().map(String::as_str).collect();
            self.issue(
                name.span(),
                format!(
                    "{key} = {:?} is not configured (configured: {})",
                    name.get_ref(),
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            );
        }
        found
    }

    fn vms(&mut self, name: &Spanned<String>, j: &raw::Job) -> Option<VmSelection> {
        let all = j.all.as_ref().is_some_and(|a| *a.get_ref());
        let names: Vec<String> = j
            .vms
            .as_ref()
            .map(|v| v.get_ref().clone())
            .unwrap_or_default();
        match (&j.vms, all) {
            (Some(v), true) => {
                self.issue(
                    v.span(),
                    "vms and all = true: give one (all = true with exclude leaves some out)",
                );
                return None;
            }
            (Some(v), false) if names.is_empty() => {
                self.issue(
                    v.span(),
                    "vms is empty: name the VMs (globs allowed) or set all = true",
                );
                return None;
            }
            (None, false) => {
                self.issue(
                    name.span(),
                    format!(
                        "job {:?} names no VM: give vms = [\"web*\", …] or all = true",
                        name.get_ref()
                    ),
                );
                return None;
            }
            _ => {}
        }
        let names_set = self.globs(
            names
                .iter()
                .map(|n| (n.as_str(), j.vms.as_ref().map_or(0..0, Spanned::span))),
        )?;
        let exclude_set = self.globs(j.exclude.iter().map(|e| (e.get_ref().as_str(), e.span())))?;
        Some(VmSelection {
            all,
            names,
            names_set,
            exclude: j.exclude.iter().map(|e| e.get_ref().clone()).collect(),
            exclude_set,
        })
    }

    fn globs<'s>(
        &mut self,
        patterns: impl Iterator<Item = (&'s str, Range<usize>)>,
    ) -> Option<GlobSet> {
        let mut set = GlobSetBuilder::new();
        let mut good = true;
        for (pattern, span) in patterns {
            match Glob::new(pattern) {
                Ok(g) => {
                    set.add(g);
                }
                Err(e) => {
                    self.issue(span, format!("{pattern:?} is not a name or glob: {e}"));
                    good = false;
                }
            }
        }
        good.then(|| set.build().ok()).flatten()
    }

    fn schedule(&mut self, s: &Spanned<String>, zone: Tz) -> Option<Schedule> {
        Schedule::parse(s.get_ref(), zone)
            .map_err(|e| self.issue(s.span(), format!("schedule: {e}")))
            .ok()
    }

    fn retention(&mut self, r: Spanned<raw::Retention>) -> Retention {
        let span = r.span();
        let r = r.into_inner();
        let mut policy = KeepPolicy {
            last: self.keep(r.keep_last.as_ref(), "keep_last"),
            hourly: self.keep(r.keep_hourly.as_ref(), "keep_hourly"),
            daily: self.keep(r.keep_daily.as_ref(), "keep_daily"),
            weekly: self.keep(r.keep_weekly.as_ref(), "keep_weekly"),
            monthly: self.keep(r.keep_monthly.as_ref(), "keep_monthly"),
            yearly: self.keep(r.keep_yearly.as_ref(), "keep_yearly"),
            within: self.span(r.keep_within.as_ref(), "keep_within"),
            within_hourly: self.span(r.keep_within_hourly.as_ref(), "keep_within_hourly"),
            within_daily: self.span(r.keep_within_daily.as_ref(), "keep_within_daily"),
            within_weekly: self.span(r.keep_within_weekly.as_ref(), "keep_within_weekly"),
            within_monthly: self.span(r.keep_within_monthly.as_ref(), "keep_within_monthly"),
            within_yearly: self.span(r.keep_within_yearly.as_ref(), "keep_within_yearly"),
            tags: Vec::new(),
        };
        policy.tags = r.keep_tags.iter().map(|t| TagList::parse(t)).collect();
        if policy.is_empty() {
            self.issue(span.clone(), "retention keeps nothing: it would forget every snapshot; give keep_last, keep_daily, … (or remove [retention])");
        }
        let prune = r.prune.then(|| {
            let mut options = PruneOptions::default();
            if let Some(m) = &r.max_unused {
                match MaxUnused::parse(m.get_ref()) {
                    Ok(v) => options.max_unused = v,
                    Err(e) => self.issue(m.span(), format!("max_unused: {e}")),
                }
            }
            options
        });
        if !r.prune && r.max_unused.is_some() {
            self.issue(span, "max_unused without prune = true");
        }
        Retention { policy, prune }
    }

    fn keep(&mut self, v: Option<&Spanned<raw::Count>>, key: &str) -> Keep {
        let Some(v) = v else { return Keep::Off };
        let text = match v.get_ref() {
            raw::Count::Number(n) => n.to_string(),
            raw::Count::Text(t) => t.clone(),
        };
        Keep::parse(&text).unwrap_or_else(|e| {
            self.issue(v.span(), format!("{key}: {e}"));
            Keep::Off
        })
    }

    fn span(&mut self, v: Option<&Spanned<String>>, key: &str) -> Option<Span> {
        let v = v?;
        Span::parse(v.get_ref())
            .map_err(|e| self.issue(v.span(), format!("{key}: {e}")))
            .ok()
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8443)))
}

/// A name of the configuration: 1 to 64 of `a-z`, `0-9`, `_`, `-`.
pub(crate) fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn tenant_name(t: Option<&str>) -> String {
    t.map_or_else(|| "(none)".to_owned(), |t| format!("{t:?}"))
}

/// Whether an SMTP server name is this host: `localhost` or a loopback address.
fn is_loopback_host(server: &str) -> bool {
    server.eq_ignore_ascii_case("localhost")
        || server
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
