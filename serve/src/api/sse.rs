//! Server-Sent Events (spec/SERVE.md §6.4): the kept events after the client's
//! `Last-Event-ID`, then the live ones, each once, filtered to what the caller's tenant (and
//! the route's job) may see; a comment every 15 s of silence keeps proxies from closing the
//! stream. A client too slow for the live channel is served from the kept events; one that
//! fell behind those gets a `reset`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::stream::{self, Stream};
use tokio::sync::broadcast::error::RecvError;

use super::auth::Caller;
use super::extract::Path;
use super::{ApiError, ApiState};
use crate::events::{Event, EventKind, Events};

/// Seconds of silence before a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Which events a stream carries.
#[derive(Clone)]
struct Filter {
    tenant: Option<String>,
    job: Option<String>,
}

impl Filter {
    fn passes(&self, e: &Event) -> bool {
        (e.kind == EventKind::Reset
            || self
                .tenant
                .as_deref()
                .is_none_or(|t| e.tenant.as_deref() == Some(t)))
            && self.job.as_deref().is_none_or(|j| e.job == j)
    }
}

fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn to_sse(e: &Event) -> SseEvent {
    SseEvent::default()
        .id(e.id.to_string())
        .event(e.kind.name())
        .data(e.data.as_ref())
}

fn reset(id: u64) -> Arc<Event> {
    Arc::new(Event {
        id,
        kind: EventKind::Reset,
        job: String::new(),
        tenant: None,
        data: "{}".into(),
    })
}

/// The state of one stream between items.
struct Cursor {
    events: Events,
    filter: Filter,
    pending: std::collections::VecDeque<Arc<Event>>,
    live: tokio::sync::broadcast::Receiver<Arc<Event>>,
    last: u64,
}

impl Cursor {
    /// The next event this stream sends, waiting for it.
    async fn next(&mut self) -> Option<Arc<Event>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                if e.kind == EventKind::Reset || e.id > self.last {
                    self.last = self.last.max(e.id);
                    if self.filter.passes(&e) {
                        return Some(e);
                    }
                }
                continue;
            }
            match self.live.recv().await {
                Ok(e) => self.pending.push_back(e),
                Err(RecvError::Lagged(_)) => {
                    let (kept, missed) = self.events.since(self.last);
                    if missed {
                        self.pending.push_back(reset(self.last));
                    }
                    self.pending.extend(kept);
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

fn stream_for(
    events: Events,
    filter: Filter,
    last_seen: Option<u64>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let sub = events.subscribe(last_seen);
    let mut pending: std::collections::VecDeque<Arc<Event>> = sub.replay.into();
    let last = last_seen.unwrap_or_else(|| events.next_id().saturating_sub(1));
    if sub.missed {
        pending.push_front(reset(last));
    }
    let cursor = Cursor {
        events,
        filter,
        pending,
        live: sub.live,
        last,
    };
    stream::unfold(cursor, |mut cursor| async move {
        let e = cursor.next().await?;
        Some((Ok(to_sse(&e)), cursor))
    })
}

fn sse(
    state: &ApiState,
    filter: Filter,
    headers: &HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    Sse::new(stream_for(
        state.runner.events().clone(),
        filter,
        last_event_id(headers),
    ))
    .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
}

/// `GET /v1/events`: every job the caller sees.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "viewer",
    description = "Server-Sent Events of every job the caller's tenant sees (spec section 6.4): job, progress, log, reset; replay after Last-Event-ID.",
    params(("Last-Event-ID" = Option<String>, Header, description = "the id of the last event received")),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 401, description = "no, a wrong or an expired token", body = crate::api::types::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn all_events(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let filter = Filter {
        tenant: caller.token.tenant.clone(),
        job: None,
    };
    sse(&state, filter, &headers)
}

/// `GET /v1/jobs/{id}/events`: one job.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    tag = "viewer",
    description = "Server-Sent Events of one job (spec section 6.4).",
    params(
        ("id" = String, Path, description = "the job's id"),
        ("Last-Event-ID" = Option<String>, Header, description = "the id of the last event received")
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = String),
        (status = 401, description = "no, a wrong or an expired token", body = crate::api::types::ErrorBody),
        (status = 404, description = "no such job (or another tenant's)", body = crate::api::types::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn job_events(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let job = state
        .runner
        .get(&id, caller.scope())
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    let filter = Filter {
        tenant: caller.token.tenant.clone(),
        job: Some(job.id.to_string()),
    };
    Ok(sse(&state, filter, &headers))
}
