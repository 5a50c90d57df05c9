//! The fanout publisher: signed `POST /apps/{id}/events` requests at a steady rate, each event
//! stamped with its send time and its channel's next sequence number.
//!
//! Each channel belongs to exactly one publishing connection, which sends one request at a time,
//! so a channel's events leave in sequence order and any reordering seen by subscribers is the
//! server's.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::histogram::LatencyHistogram;
use crate::http::{HttpConnection, HttpEndpoint, HttpError};
use crate::link::ChannelPublished;
use crate::pacing::Pacer;
use crate::payload::{unix_micros, Stamp};
use crate::signing::{signed_query, ApiCredentials};
use crate::tally::{count_key, merge_causes, CauseCounts};

pub struct PublishPlan {
    pub endpoint: Rc<HttpEndpoint>,
    pub credentials: Rc<ApiCredentials>,
    pub event: Rc<str>,
    pub channels: Vec<String>,
    /// Events per second over all channels.
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    pub payload_bytes: usize,
    pub step_timeout: Duration,
    /// Publishes attempted so far, for the progress line.
    pub attempted: Rc<Cell<u64>>,
}

#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Indexed like the plan's channels.
    pub per_channel: Vec<ChannelPublished>,
    pub attempted: u64,
    pub accepted: u64,
    pub failures: CauseCounts,
    /// Request to response, per accepted publish.
    pub latency: LatencyHistogram,
    /// Request to the kernel's receipt of the response, per accepted publish over plaintext.
    pub answer_latency: LatencyHistogram,
    pub started_unix_micros: u64,
    pub elapsed: Duration,
}

#[derive(Serialize)]
struct EventRequest<'a> {
    name: &'a str,
    channel: &'a str,
    data: String,
}

/// Runs every publishing connection for the plan's duration.
pub async fn publish(plan: PublishPlan) -> PublishOutcome {
    let started_unix_micros = unix_micros();
    let started = Instant::now();
    let connections = plan.connections.clamp(1, plan.channels.len().max(1));
    let channel_count = plan.channels.len();
    let plan = Rc::new(plan);
    let mut tasks = JoinSet::new();
    for connection in 0..connections {
        let owned: Vec<usize> = (connection..channel_count).step_by(connections).collect();
        tasks.spawn_local(publish_on_connection(plan.clone(), owned));
    }
    let mut outcome = PublishOutcome {
        per_channel: vec![ChannelPublished::default(); channel_count],
        started_unix_micros,
        ..PublishOutcome::default()
    };
    while let Some(joined) = tasks.join_next().await {
        let Ok(part) = joined else { continue };
        for (channel, published) in part.per_channel {
            if let Some(slot) = outcome.per_channel.get_mut(channel) {
                *slot = published;
            }
        }
        outcome.attempted += part.attempted;
        outcome.accepted += part.accepted;
        merge_causes(&mut outcome.failures, &part.failures);
        outcome.latency.merge(&part.latency);
        outcome.answer_latency.merge(&part.answer_latency);
    }
    outcome.elapsed = started.elapsed();
    outcome
}

#[derive(Default)]
struct ConnectionOutcome {
    per_channel: Vec<(usize, ChannelPublished)>,
    attempted: u64,
    accepted: u64,
    failures: CauseCounts,
    latency: LatencyHistogram,
    answer_latency: LatencyHistogram,
}

async fn publish_on_connection(plan: Rc<PublishPlan>, owned: Vec<usize>) -> ConnectionOutcome {
    let mut outcome = ConnectionOutcome {
        per_channel: owned
            .iter()
            .map(|channel| (*channel, ChannelPublished::default()))
            .collect(),
        ..ConnectionOutcome::default()
    };
    if owned.is_empty() {
        return outcome;
    }
    let share = owned.len() as f64 / plan.channels.len() as f64;
    let mut pacer = Pacer::new(plan.rate * share);
    let deadline = Instant::now() + plan.duration;
    let padding = "x".repeat(plan.payload_bytes);
    let path = format!("/apps/{}/events", plan.credentials.app_id);
    let mut connection: Option<HttpConnection> = None;
    let mut turn = 0usize;
    'publishing: loop {
        let batch = tokio::select! {
            batch = pacer.next_batch() => batch,
            () = tokio::time::sleep_until(deadline.into()) => break,
        };
        for _ in 0..batch {
            if Instant::now() >= deadline {
                break 'publishing;
            }
            let (channel_index, published) = &mut outcome.per_channel[turn % owned.len()];
            turn += 1;
            published.published += 1;
            let sequence = published.published;
            outcome.attempted += 1;
            plan.attempted.set(plan.attempted.get() + 1);
            let channel = plan.channels[*channel_index].as_str();
            let sent = Instant::now();
            let result =
                send_event(&plan, &mut connection, &path, channel, sequence, &padding).await;
            match result {
                Ok((200, answered_in)) => {
                    outcome.accepted += 1;
                    outcome.latency.record(sent.elapsed());
                    if let Some(answered_in) = answered_in {
                        outcome.answer_latency.record(answered_in);
                    }
                }
                Ok((status, _)) => {
                    published.failed.push(sequence);
                    count_key(&mut outcome.failures, format!("http_{status}"));
                }
                Err(error) => {
                    published.failed.push(sequence);
                    count_key(&mut outcome.failures, error.cause_key());
                    connection = None;
                }
            }
        }
    }
    outcome
}

/// Sends one event, opening a connection first when there is none; answers the HTTP status
/// and, over plaintext, how long until the kernel had the response.
async fn send_event(
    plan: &PublishPlan,
    connection: &mut Option<HttpConnection>,
    path: &str,
    channel: &str,
    sequence: u64,
    padding: &str,
) -> Result<(u16, Option<Duration>), HttpError> {
    let open = match connection.take() {
        Some(open) => connection.insert(open),
        None => connection.insert(HttpConnection::open(&plan.endpoint, plan.step_timeout).await?),
    };
    let stamp = Stamp {
        seq: sequence,
        sent_us: unix_micros(),
        pad: padding,
    };
    let request = EventRequest {
        name: &plan.event,
        channel,
        data: serde_json::to_string(&stamp).unwrap_or_default(),
    };
    let body = serde_json::to_vec(&request).unwrap_or_default();
    let query = signed_query(
        &plan.credentials,
        "POST",
        path,
        &[],
        &body,
        unix_micros() / 1_000_000,
    );
    let response = open
        .request(
            &plan.endpoint,
            "POST",
            &format!("{path}?{query}"),
            &body,
            plan.step_timeout,
        )
        .await?;
    if !response.reusable {
        *connection = None;
    }
    Ok((response.status, response.answered_in))
}
