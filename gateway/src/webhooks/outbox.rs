//! What the webhook sender has yet to send, and when: vacated channels and removed members held
//! for a while (and dropped if the channel or member comes back in that time), events batched
//! into one request per app, failed requests retried with backoff for a bounded time. No IO lives
//! here; the caller passes the clock in.

use std::collections::VecDeque;
use std::time::Duration;
use std::time::Instant;

use serde_json::{json, Value};

use super::event::WebhookEvent;
use crate::config::App;

/// How long vacated channels and removed members are held, as Pusher does.
pub const HOLD: Duration = Duration::from_secs(3);
/// How long a ready event waits for others to share its request.
pub const LINGER: Duration = Duration::from_millis(100);
/// Most events one request carries.
pub const MAX_EVENTS_PER_REQUEST: usize = 100;
/// How long a failing request is retried, as Pusher does.
pub const RETRY_FOR: Duration = Duration::from_secs(5 * 60);
/// The first retry's delay; each further one doubles, up to `MAX_RETRY_GAP`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY_GAP: Duration = Duration::from_secs(60);
/// Most requests waiting for a retry; past it the oldest is given up, so that a dead endpoint
/// cannot take all the memory.
pub const MAX_RETRYING: usize = 1000;

#[derive(Debug)]
struct Waiting {
    due: Instant,
    app: usize,
    event: WebhookEvent,
}

/// One POST to one of an app's webhook endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub app: usize,
    /// Its place in the app's `webhooks`.
    pub endpoint: usize,
    /// The JSON body, fixed at the first try so that retries carry the same signature.
    pub body: String,
    /// Events in the body.
    pub events: usize,
    first_try: Instant,
    tries: u32,
    next_try: Instant,
}

/// What became of a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Waiting to be sent.
    Queued,
    /// It undid a held event: neither is sent (2 events).
    Cancelled,
    /// The same cache miss is already waiting: only one is sent.
    Duplicate,
}

/// Events and requests waiting to go.
#[derive(Debug, Default)]
pub struct Outbox {
    held: Vec<Waiting>,
    /// In arrival order; all go together once the first one's linger is over.
    ready: Vec<Waiting>,
    retrying: VecDeque<Request>,
}

impl Outbox {
    pub fn push(&mut self, app: usize, event: WebhookEvent, now: Instant) -> Accepted {
        if let Some(index) = self
            .held
            .iter()
            .position(|w| w.app == app && event.undoes(&w.event))
        {
            self.held.remove(index);
            return Accepted::Cancelled;
        }
        if matches!(event, WebhookEvent::CacheMiss { .. })
            && self.ready.iter().any(|w| w.app == app && w.event == event)
        {
            return Accepted::Duplicate;
        }
        if event.is_held() {
            self.held.push(Waiting {
                due: now + HOLD,
                app,
                event,
            });
        } else {
            self.ready.push(Waiting {
                due: now + LINGER,
                app,
                event,
            });
        }
        Accepted::Queued
    }

    /// When something is next due, if anything waits.
    pub fn next_due(&self) -> Option<Instant> {
        let held = self.held.iter().map(|w| w.due);
        let ready = self.ready.first().map(|w| w.due);
        let retry = self.retrying.iter().map(|r| r.next_try);
        held.chain(ready).chain(retry).min()
    }

    /// The requests due now: ready events batched per endpoint that wants them (of `apps`,
    /// the apps by number), and retries whose time has come. `time_ms` is the wall clock for
    /// the bodies.
    pub fn take_due(&mut self, now: Instant, time_ms: u64, apps: &[App]) -> Vec<Request> {
        let released = self.release_held(now);
        let mut requests = Vec::new();
        if released || self.ready.first().is_some_and(|w| w.due <= now) {
            for ((app, endpoint), events) in batches(self.ready.drain(..), apps) {
                for chunk in events.chunks(MAX_EVENTS_PER_REQUEST) {
                    requests.push(Request {
                        app,
                        endpoint,
                        body: json!({"time_ms": time_ms, "events": chunk}).to_string(),
                        events: chunk.len(),
                        first_try: now,
                        tries: 0,
                        next_try: now,
                    });
                }
            }
        }
        while self.retrying.front().is_some_and(|r| r.next_try <= now) {
            requests.extend(self.retrying.pop_front());
        }
        requests
    }

    /// Moves the held events whose hold is over to the ready ones; true if there were any.
    fn release_held(&mut self, now: Instant) -> bool {
        let mut released = false;
        let mut index = 0;
        while index < self.held.len() {
            if self.held[index].due <= now {
                let mut waiting = self.held.remove(index);
                waiting.due = now;
                self.ready.push(waiting);
                released = true;
            } else {
                index += 1;
            }
        }
        released
    }

    /// Schedules a failed request's next try. Returns the events given up: the request's own
    /// once it has been retried for `RETRY_FOR`, or the oldest waiting request's when too many
    /// wait.
    pub fn retry(&mut self, mut request: Request, now: Instant) -> usize {
        if now.duration_since(request.first_try) >= RETRY_FOR {
            return request.events;
        }
        request.tries += 1;
        let gap = FIRST_RETRY
            .saturating_mul(1 << request.tries.min(16).saturating_sub(1))
            .min(MAX_RETRY_GAP);
        request.next_try = now + gap;
        let position = self
            .retrying
            .iter()
            .position(|r| r.next_try > request.next_try)
            .unwrap_or(self.retrying.len());
        self.retrying.insert(position, request);
        if self.retrying.len() > MAX_RETRYING {
            let oldest = self
                .retrying
                .iter()
                .enumerate()
                .min_by_key(|(_, r)| r.first_try)
                .map(|(index, _)| index);
            if let Some(removed) = oldest.and_then(|index| self.retrying.remove(index)) {
                return removed.events;
            }
        }
        0
    }
}

/// Events in arrival order, grouped per (app, endpoint) for every endpoint that wants them.
fn batches(
    ready: impl Iterator<Item = Waiting>,
    apps: &[App],
) -> Vec<((usize, usize), Vec<Value>)> {
    let mut batches: Vec<((usize, usize), Vec<Value>)> = Vec::new();
    for waiting in ready {
        let Some(app) = apps.get(waiting.app) else {
            continue;
        };
        let event = waiting.event.to_json();
        let endpoints = app.webhooks.iter().enumerate();
        for (endpoint, _) in endpoints.filter(|(_, e)| e.wants(&waiting.event)) {
            let to = (waiting.app, endpoint);
            match batches.iter_mut().find(|(batch, _)| *batch == to) {
                Some((_, events)) => events.push(event.clone()),
                None => batches.push((to, vec![event.clone()])),
            }
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::{Endpoint, WebhookKind};

    /// Two apps, each with one endpoint that wants every kind.
    fn apps() -> Vec<App> {
        let everything = Some(vec![
            WebhookKind::ChannelOccupied,
            WebhookKind::ChannelVacated,
            WebhookKind::MemberAdded,
            WebhookKind::MemberRemoved,
            WebhookKind::CacheMiss,
        ]);
        (0..2)
            .map(|n| App {
                webhooks: vec![Endpoint::new("http://127.0.0.1:9/", everything.clone())],
                ..App::new(&n.to_string(), &format!("k{n}"), "s")
            })
            .collect()
    }

    fn vacated(channel: &str) -> WebhookEvent {
        WebhookEvent::ChannelVacated {
            channel: channel.into(),
        }
    }

    fn occupied(channel: &str) -> WebhookEvent {
        WebhookEvent::ChannelOccupied {
            channel: channel.into(),
        }
    }

    fn names(request: &Request) -> Vec<String> {
        let body: Value = serde_json::from_str(&request.body).unwrap();
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["name"].as_str().unwrap(),
                    e["channel"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn ready_events_linger_then_go_in_one_request_per_app() {
        let mut outbox = Outbox::default();
        let start = Instant::now();
        assert_eq!(outbox.push(0, occupied("a"), start), Accepted::Queued);
        assert_eq!(outbox.push(1, occupied("b"), start), Accepted::Queued);
        assert_eq!(
            outbox.push(0, occupied("c"), start + LINGER / 2),
            Accepted::Queued
        );
        assert_eq!(outbox.next_due(), Some(start + LINGER));
        assert!(outbox.take_due(start, 1, &apps()).is_empty());
        let requests = outbox.take_due(start + LINGER, 1234, &apps());
        assert_eq!(requests.len(), 2);
        assert_eq!((requests[0].app, requests[0].events), (0, 2));
        assert_eq!(
            names(&requests[0]),
            ["channel_occupied a", "channel_occupied c"]
        );
        let body: Value = serde_json::from_str(&requests[0].body).unwrap();
        assert_eq!(body["time_ms"], 1234);
        assert_eq!(requests[1].app, 1);
        assert_eq!(outbox.next_due(), None);
    }

    #[test]
    fn each_endpoint_gets_one_request_of_the_events_it_wants() {
        let mut apps = apps();
        let filtered = r#"{"url": "http://b/", "event_types": ["channel_occupied", "cache_miss"],
                           "filter": {"channel_name_starts_with": "private-"}}"#;
        apps[0]
            .webhooks
            .push(serde_json::from_str(filtered).unwrap());
        let mut outbox = Outbox::default();
        let start = Instant::now();
        outbox.push(0, occupied("private-a"), start);
        outbox.push(0, occupied("public"), start);
        outbox.push(0, vacated("private-a"), start);
        let miss = WebhookEvent::CacheMiss {
            channel: "private-cache-x".into(),
        };
        outbox.push(0, miss, start);
        let requests = outbox.take_due(start + HOLD, 0, &apps);
        let to: Vec<(usize, usize)> = requests.iter().map(|r| (r.app, r.endpoint)).collect();
        assert_eq!(to, [(0, 0), (0, 1)]);
        assert_eq!(
            names(&requests[0]),
            [
                "channel_occupied private-a",
                "channel_occupied public",
                "cache_miss private-cache-x",
                "channel_vacated private-a"
            ]
        );
        assert_eq!(
            names(&requests[1]),
            ["channel_occupied private-a", "cache_miss private-cache-x"]
        );
    }

    #[test]
    fn a_quick_return_cancels_a_held_departure() {
        let mut outbox = Outbox::default();
        let start = Instant::now();
        outbox.push(0, vacated("a"), start);
        assert!(
            outbox.take_due(start + LINGER, 0, &apps()).is_empty(),
            "held, not lingering"
        );
        assert_eq!(
            outbox.push(1, occupied("a"), start),
            Accepted::Queued,
            "other app"
        );
        assert_eq!(
            outbox.push(0, occupied("a"), start + Duration::from_secs(1)),
            Accepted::Cancelled
        );
        let requests = outbox.take_due(start + HOLD, 0, &apps());
        assert_eq!(requests.len(), 1, "only app 1's event");
        assert_eq!(requests[0].app, 1);

        outbox.push(0, vacated("a"), start);
        assert_eq!(outbox.next_due(), Some(start + HOLD));
        let requests = outbox.take_due(start + HOLD, 0, &apps());
        assert_eq!(names(&requests[0]), ["channel_vacated a"]);
        assert_eq!(
            outbox.push(0, occupied("a"), start + HOLD),
            Accepted::Queued,
            "too late to cancel: sent already"
        );
    }

    #[test]
    fn removed_members_are_held_and_cancelled_per_user() {
        let mut outbox = Outbox::default();
        let start = Instant::now();
        let removed = |user: &str| WebhookEvent::MemberRemoved {
            channel: "presence-a".into(),
            user_id: user.into(),
        };
        let added = |user: &str| WebhookEvent::MemberAdded {
            channel: "presence-a".into(),
            user_id: user.into(),
        };
        outbox.push(0, removed("u1"), start);
        outbox.push(0, removed("u2"), start);
        assert_eq!(outbox.push(0, added("u1"), start), Accepted::Cancelled);
        let requests = outbox.take_due(start + HOLD, 0, &apps());
        assert_eq!(requests.len(), 1);
        assert!(requests[0].body.contains("\"u2\"") && !requests[0].body.contains("\"u1\""));
    }

    #[test]
    fn duplicate_cache_misses_are_sent_once() {
        let mut outbox = Outbox::default();
        let start = Instant::now();
        let miss = || WebhookEvent::CacheMiss {
            channel: "cache-a".into(),
        };
        assert_eq!(outbox.push(0, miss(), start), Accepted::Queued);
        assert_eq!(outbox.push(0, miss(), start), Accepted::Duplicate);
        assert_eq!(outbox.take_due(start + LINGER, 0, &apps())[0].events, 1);
    }

    #[test]
    fn big_batches_are_split() {
        let mut outbox = Outbox::default();
        let start = Instant::now();
        for n in 0..250 {
            outbox.push(0, occupied(&format!("c{n}")), start);
        }
        let sizes: Vec<usize> = outbox
            .take_due(start + LINGER, 0, &apps())
            .iter()
            .map(|r| r.events)
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
    }

    #[test]
    fn failures_back_off_then_give_up() {
        let mut outbox = Outbox::default();
        let start = Instant::now();
        outbox.push(0, occupied("a"), start);
        let request = outbox.take_due(start + LINGER, 0, &apps()).remove(0);
        let body = request.body.clone();
        let mut now = start + LINGER;
        let mut gaps = Vec::new();
        let mut request = Some(request);
        while let Some(failed) = request.take() {
            let lost = outbox.retry(failed, now);
            if lost > 0 {
                assert_eq!(lost, 1);
                break;
            }
            let due = outbox.next_due().unwrap();
            gaps.push(due.duration_since(now).as_secs());
            assert!(outbox
                .take_due(due - Duration::from_millis(1), 0, &apps())
                .is_empty());
            let mut again = outbox.take_due(due, 0, &apps());
            assert_eq!(again[0].body, body, "a retry sends the same body");
            now = due;
            request = again.pop();
        }
        assert_eq!(&gaps[..7], &[1, 2, 4, 8, 16, 32, 60]);
        assert!(now.duration_since(start) >= RETRY_FOR);
        assert!(now.duration_since(start) < RETRY_FOR + MAX_RETRY_GAP + LINGER);
        assert_eq!(outbox.next_due(), None);
    }

    #[test]
    fn too_many_failing_requests_give_the_oldest_up() {
        let mut outbox = Outbox::default();
        let start = Instant::now();
        let mut lost = 0;
        for n in 0..=MAX_RETRYING {
            let now = start + Duration::from_micros(n as u64);
            outbox.push(0, occupied("a"), now);
            for request in outbox.take_due(now + LINGER, 0, &apps()) {
                lost += outbox.retry(request, now + LINGER);
            }
        }
        assert_eq!(lost, 1);
    }
}
