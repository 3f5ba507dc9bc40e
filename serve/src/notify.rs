//! Notifications (spec/SERVE.md §7): when a configured job ends in a state one of its
//! notifications lists, its webhook gets a JSON POST of `{"event":"job.finished","job":…}`
//! (10 s timeout; a first try and three retries 1, 5 and 25 s after), on a thread of its own so that nothing
//! waits for it. A notification that cannot be delivered is logged and never changes the job.
//! Email is configured and checked, but not sent yet: a log line says so.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::config::{Config, NotificationDef, NotifyOn};
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
    fn job_finished(&self, job: &Job, _log_tail: &str) {
        tracing::info!(
            job = %job.id,
            "{:?} job ended: {}{}",
            job.kind,
            job.state.name(),
            job.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        );
        for n in self.due(job) {
            if n.email.is_some() {
                tracing::warn!(
                    job = %job.id,
                    "notification {}: email is not sent yet by this vmstash", n.name
                );
            }
            if let Some(url) = n.webhook.clone() {
                let body = json!({ "event": "job.finished", "job": job });
                let (name, id) = (n.name.clone(), job.id.clone());
                let sent = std::thread::Builder::new()
                    .name("webhook".into())
                    .spawn(move || post(&name, &url, &body, &id.to_string()));
                if let Err(e) = sent {
                    tracing::warn!("notification {}: no thread for the webhook: {e}", n.name);
                }
            }
        }
    }
}

/// POSTs `body` to `url`, retrying after [`RETRY_WAITS`]; logs the outcome.
fn post(name: &str, url: &str, body: &serde_json::Value, job: &str) {
    let client = match reqwest::blocking::Client::builder()
        .timeout(TIMEOUT)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(job, "notification {name}: no HTTP client: {e}");
            return;
        }
    };
    let attempt = || match client.post(url).json(body).send() {
        Ok(r) if r.status().is_success() => Ok(r.status()),
        Ok(r) => Err(format!("answered {}", r.status())),
        Err(e) => Err(e.to_string()),
    };
    let mut result = attempt();
    for wait in RETRY_WAITS {
        if result.is_ok() {
            break;
        }
        std::thread::sleep(wait);
        result = attempt();
    }
    match result {
        Ok(status) => tracing::info!(job, "notification {name}: the webhook answered {status}"),
        Err(e) => tracing::warn!(
            job,
            "notification {name}: the webhook {url} failed on every try (last: {e}); not delivered"
        ),
    }
}
