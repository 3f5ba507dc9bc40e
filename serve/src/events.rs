//! The daemon's event stream (spec/SERVE.md §6.4): every job change, progress tick and log
//! line gets the next id of one sequence, goes into a bounded buffer of the latest events for
//! clients that reconnect with `Last-Event-ID`, and out to every live subscriber.
//!
//! Publishing and subscribing take the same lock, so a subscriber's replay (from the buffer)
//! and its live events (from the channel) meet exactly: no gap, no duplicate.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use tokio::sync::broadcast;

/// How many events the buffer keeps for reconnecting clients.
pub const BUFFER_EVENTS: usize = 4096;
/// How many events a live subscriber may fall behind before it is sent back to the buffer.
const CHANNEL_EVENTS: usize = 1024;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A job was created or changed state; the data is the job.
    Job,
    /// A running job's progress.
    Progress,
    /// A line of a job's log.
    Log,
    /// The client missed events no longer kept: it reloads the job list.
    Reset,
}

impl EventKind {
    /// The SSE `event:` name.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Job => "job",
            EventKind::Progress => "progress",
            EventKind::Log => "log",
            EventKind::Reset => "reset",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its place in the daemon's sequence (1, 2, …).
    pub id: u64,
    /// What it is about.
    pub kind: EventKind,
    /// The job it concerns, as text (filters per job and per tenant use these).
    pub job: String,
    /// The job's tenant.
    pub tenant: Option<String>,
    /// The JSON `data:`.
    pub data: Arc<str>,
}

struct Inner {
    next_id: u64,
    buffer: VecDeque<Arc<Event>>,
    live: broadcast::Sender<Arc<Event>>,
}

impl Inner {
    /// The kept events after `last`, and whether some after it are no longer kept.
    fn kept_after(&self, last: u64) -> (Vec<Arc<Event>>, bool) {
        let oldest = self.buffer.front().map_or(self.next_id, |e| e.id);
        let kept = self
            .buffer
            .iter()
            .filter(|e| e.id > last)
            .cloned()
            .collect();
        (kept, last.saturating_add(1) < oldest)
    }
}

/// The event bus: cheap to clone, shared by the runner and the API.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

/// What a new subscriber gets: the kept events after its `Last-Event-ID`, then the live ones.
pub struct Subscription {
    /// Kept events after the given id, oldest first.
    pub replay: Vec<Arc<Event>>,
    /// Whether events after the given id are no longer kept (send [`EventKind::Reset`]).
    pub missed: bool,
    /// Every event published from now on.
    pub live: broadcast::Receiver<Arc<Event>>,
}

impl Events {
    /// An empty bus; the first event gets id 1.
    pub fn new() -> Events {
        let (live, _) = broadcast::channel(CHANNEL_EVENTS);
        Events {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 1,
                buffer: VecDeque::with_capacity(BUFFER_EVENTS),
                live,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes an event about `job` (of `tenant`) with `data` serialized as JSON.
    pub fn publish(&self, kind: EventKind, job: &str, tenant: Option<&str>, data: &impl Serialize) {
        let data = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
        let mut inner = self.lock();
        let event = Arc::new(Event {
            id: inner.next_id,
            kind,
            job: job.to_owned(),
            tenant: tenant.map(str::to_owned),
            data: data.into(),
        });
        inner.next_id += 1;
        if inner.buffer.len() == BUFFER_EVENTS {
            inner.buffer.pop_front();
        }
        inner.buffer.push_back(Arc::clone(&event));
        // No subscriber is not an error: the buffer keeps the event.
        let _ = inner.live.send(event);
    }

    /// Subscribes after `last_seen` (a client's `Last-Event-ID`; `None`: live events only).
    pub fn subscribe(&self, last_seen: Option<u64>) -> Subscription {
        let inner = self.lock();
        let live = inner.live.subscribe();
        let Some(last) = last_seen else {
            return Subscription {
                replay: Vec::new(),
                missed: false,
                live,
            };
        };
        let (replay, missed) = inner.kept_after(last);
        Subscription {
            replay,
            missed,
            live,
        }
    }

    /// The kept events after `last` (for a subscriber that fell behind the live channel),
    /// and whether some after it are no longer kept.
    pub fn since(&self, last: u64) -> (Vec<Arc<Event>>, bool) {
        self.lock().kept_after(last)
    }

    /// The id the next event gets.
    pub fn next_id(&self) -> u64 {
        self.lock().next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn a_reconnecting_subscriber_gets_every_event_once() {
        let bus = Events::new();
        for n in 0..5 {
            bus.publish(EventKind::Log, "j", None, &n);
        }
        let mut sub = bus.subscribe(Some(2));
        bus.publish(EventKind::Log, "j", None, &5);
        assert_eq!(ids(&sub.replay), [3, 4, 5]);
        assert!(!sub.missed);
        let live = sub.live.try_recv().expect("the event after subscribing");
        assert_eq!(live.id, 6);
        assert!(sub.live.try_recv().is_err(), "nothing twice");
    }

    #[test]
    fn the_buffer_is_bounded_and_a_too_old_id_says_so() {
        let bus = Events::new();
        for n in 0..BUFFER_EVENTS + 10 {
            bus.publish(EventKind::Progress, "j", Some("acme"), &n);
        }
        let sub = bus.subscribe(Some(3));
        assert!(sub.missed);
        assert_eq!(sub.replay.len(), BUFFER_EVENTS);
        assert_eq!(sub.replay.first().map(|e| e.id), Some(11));
        let recent = bus.subscribe(Some(10));
        assert!(
            !recent.missed,
            "event 11 is the oldest kept: nothing missed"
        );
        let (events, missed) = bus.since(u64::try_from(BUFFER_EVENTS).expect("fits") + 9);
        assert_eq!(ids(&events), [4106]);
        assert!(!missed);
    }

    #[test]
    fn a_new_subscriber_without_an_id_gets_live_events_only() {
        let bus = Events::new();
        bus.publish(EventKind::Job, "j", None, &"x");
        let mut sub = bus.subscribe(None);
        assert!(sub.replay.is_empty());
        bus.publish(EventKind::Job, "j", None, &"y");
        assert_eq!(sub.live.try_recv().expect("live").data.as_ref(), "\"y\"");
    }
}
