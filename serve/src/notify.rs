//! Notifications (spec/SERVE.md §7): when a configured job ends in a state one of its
//! notifications lists, its webhook gets a JSON POST of `{"event":"job.finished","job":…}`
//! and its email recipients a message with the end of the job's log (SMTP through `lettre`).
//! Each is sent on a thread of its own so that nothing waits for it: 10 s timeout, a first try
//! and three retries 1, 5 and 25 s after. A notification that cannot be delivered is logged
//! and never changes the job.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Message, SmtpTransport, Transport};
use serde_json::json;

use crate::config::{Config, Email, NotificationDef, NotifyOn, SmtpSecurity};
use crate::jobs::model::rfc3339_text;
use crate::jobs::{Job, JobState, Notifier};

/// How long one webhook request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The waits before each retry.
const RETRY_WAITS: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(25),
];

/// The configured notifications.
pub struct Notifications {
    config: Arc<Config>,
}

impl Notifications {
    /// The notifications of `config`.
    pub fn new(config: Arc<Config>) -> Notifications {
        Notifications { config }
    }

    /// The notifications `job` triggers in its final state.
    fn due<'c>(&'c self, job: &Job) -> Vec<&'c NotificationDef> {
        let wanted = match job.state {
            JobState::Failed => NotifyOn::Failed,
            JobState::Canceled => NotifyOn::Canceled,
            JobState::Succeeded => NotifyOn::Succeeded,
            JobState::Queued | JobState::Running => return Vec::new(),
        };
        let Some(def) = job.job.as_ref().and_then(|j| self.config.jobs.get(j)) else {
            return Vec::new();
        };
        def.notify
            .iter()
            .filter_map(|n| self.config.notifications.get(n))
            .filter(|n| n.on.contains(&wanted))
            .collect()
    }
}

impl Notifier for Notifications {
    fn job_finished(&self, job: &Job, log_tail: &str) {
        tracing::info!(
            job = %job.id,
            "{:?} job ended: {}{}",
            job.kind,
            job.state.name(),
            job.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        );
        for n in self.due(job) {
            let id = job.id.to_string();
            if let Some(email) = &n.email {
                match message(email, job, log_tail) {
                    Ok(message) => {
                        let (name, email, id) = (n.name.clone(), email.clone(), id.clone());
                        spawn(&n.name, "email", move || {
                            deliver(&name, &id, "email", &email.server, || {
                                send(&email, &message)
                            });
                        });
                    }
                    Err(e) => tracing::warn!(
                        job = %job.id,
                        "notification {}: the email could not be written: {e}", n.name
                    ),
                }
            }
            if let Some(url) = n.webhook.clone() {
                let body = json!({ "event": "job.finished", "job": job });
                let name = n.name.clone();
                spawn(&n.name, "webhook", move || {
                    deliver(&name, &id, "webhook", &url, || post(&url, &body));
                });
            }
        }
    }
}

/// Runs `send` on a thread of its own named `what`.
fn spawn(name: &str, what: &str, send: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(what.into()).spawn(send) {
        tracing::warn!("notification {name}: no thread for the {what}: {e}");
    }
}

/// Tries `attempt`, then again after each of [`RETRY_WAITS`] until it succeeds; logs the
/// outcome of notification `name`'s `what` to `to` for job `job`.
fn deliver(
    name: &str,
    job: &str,
    what: &str,
    to: &str,
    attempt: impl Fn() -> Result<String, String>,
) {
    let mut result = attempt();
    for wait in RETRY_WAITS {
        if result.is_ok() {
            break;
        }
        std::thread::sleep(wait);
        result = attempt();
    }
    match result {
        Ok(answer) => tracing::info!(job, "notification {name}: {answer}"),
        Err(e) => tracing::warn!(
            job,
            "notification {name}: the {what} to {to} failed on every try (last: {e}); not delivered"
        ),
    }
}

/// POSTs `body` to `url` once.
fn post(url: &str, body: &serde_json::Value) -> Result<String, String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| format!("no HTTP client: {e}"))?;
    match client.post(url).json(body).send() {
        Ok(r) if r.status().is_success() => Ok(format!("the webhook answered {}", r.status())),
        Ok(r) => Err(format!("answered {}", r.status())),
        Err(e) => Err(e.to_string()),
    }
}

/// How many of a job's last log lines an email carries.
const EMAIL_LOG_LINES: usize = 50;

/// The email of `job`: subject `vmstash: <kind> <job or VMs> <state>`, then the job's state,
/// error and times, and the last [`EMAIL_LOG_LINES`] lines of its log.
fn message(email: &Email, job: &Job, log_tail: &str) -> Result<Message, String> {
    let what = match (&job.job, job.vms.is_empty()) {
        (Some(name), _) => name.clone(),
        (None, false) => job.vms.join(", "),
        (None, true) => job.repository.clone().unwrap_or_default(),
    };
    let subject = format!("vmstash: {} {what} {}", job.kind.name(), job.state.name());
    let lines: Vec<&str> = log_tail.lines().collect();
    let tail = &lines[lines.len().saturating_sub(EMAIL_LOG_LINES)..];
    let mut body = format!("job {}: {}\n", job.id, job.state.name());
    if let Some(e) = &job.error {
        body.push_str(&format!("error: {e}\n"));
    }
    body.push_str(&format!("created: {}\n", rfc3339_text(&job.created)));
    if let Some(f) = &job.finished {
        body.push_str(&format!("finished: {}\n", rfc3339_text(f)));
    }
    body.push_str(&format!("\nthe last {} lines of its log:\n", tail.len()));
    for l in tail {
        body.push_str(l);
        body.push('\n');
    }
    let mut builder = Message::builder().from(email.from.clone()).subject(subject);
    for to in &email.to {
        builder = builder.to(to.clone());
    }
    builder
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| e.to_string())
}

/// Sends `message` through `email`'s SMTP server once.
fn send(email: &Email, message: &Message) -> Result<String, String> {
    let builder = match email.security {
        SmtpSecurity::StartTls => SmtpTransport::starttls_relay(&email.server),
        SmtpSecurity::Tls => SmtpTransport::relay(&email.server),
        SmtpSecurity::Plain => Ok(SmtpTransport::builder_dangerous(&email.server)),
    }
    .map_err(|e| e.to_string())?
    .port(email.port)
    .timeout(Some(TIMEOUT));
    let builder = match (&email.user, &email.password_file) {
        (Some(user), Some(file)) => {
            let password = std::fs::read_to_string(file)
                .map_err(|e| format!("reading smtp_password_file {}: {e}", file.display()))?;
            let password = password.strip_suffix('\n').unwrap_or(&password).to_owned();
            builder.credentials(Credentials::new(user.clone(), password))
        }
        _ => builder,
    };
    let response = builder
        .build()
        .send(message)
        .map_err(|e| format!("{}:{}: {e}", email.server, email.port))?;
    Ok(format!(
        "the email was taken by {}:{} ({})",
        email.server,
        email.port,
        response.code()
    ))
}
