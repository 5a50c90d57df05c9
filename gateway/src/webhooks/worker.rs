//! The webhook sender thread: takes events from the shards' queue, lets the outbox decide what
//! is due, and POSTs it with a blocking HTTP client. Only this thread ever waits on an app's
//! server.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::outbox::{Accepted, Outbox, Request};
use super::Job;
use crate::admin::stats::add;
use crate::config::App;
use crate::node::Node;
use crate::protocol::signature;

/// Longest one request may take, connecting included: a stalled endpoint holds up the others
/// only this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most of an answer's body read (and thrown away) so that the connection can be reused.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// Runs the sender until the process exits.
pub fn run(node: Arc<Node>, jobs: Receiver<Job>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .http_status_as_error(false)
        .user_agent(format!("gateway/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let stats = &node.webhook_stats;
    let mut outbox = Outbox::default();
    loop {
        let received = match outbox.next_due() {
            Some(due) => jobs.recv_timeout(due.saturating_duration_since(Instant::now())),
            None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(job) => {
                let now = Instant::now();
                for job in std::iter::once(job).chain(jobs.try_iter()) {
                    match outbox.push(job.app, job.event, now) {
                        Accepted::Queued => {}
                        Accepted::Cancelled => add(&stats.cancelled, 2),
                        Accepted::Duplicate => add(&stats.cancelled, 1),
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for request in outbox.take_due(Instant::now(), wall, &node.config.apps) {
            let app = &node.config.apps[request.app];
            match send(&agent, app, &request) {
                Ok(()) => add(&stats.sent, request.events as u64),
                Err(error) => {
                    let endpoint = request.endpoint;
                    tracing::warn!(app = %app.id, endpoint, events = request.events, %error, "webhook not delivered; retrying");
                    add(&stats.retries, 1);
                    let lost = outbox.retry(request, Instant::now());
                    if lost > 0 {
                        tracing::warn!(app = %app.id, events = lost, "webhook events given up");
                        add(&stats.failed, lost as u64);
                    }
                }
            }
        }
    }
}

/// POSTs one request, signed as Pusher signs webhooks, with the endpoint's own headers; any
/// answer but 2xx is a failure.
fn send(agent: &ureq::Agent, app: &App, request: &Request) -> Result<(), String> {
    let Some(endpoint) = app.webhooks.get(request.endpoint) else {
        return Ok(());
    };
    let mut post = agent.post(&endpoint.url);
    for (name, value) in &endpoint.headers {
        post = post.header(name, value);
    }
    let answer = post
        .header("X-Pusher-Key", &app.key)
        .header(
            "X-Pusher-Signature",
            signature::sign(&app.secret, &request.body),
        )
        .content_type("application/json")
        .send(request.body.as_bytes());
    match answer {
        Ok(mut response) => {
            let _ = response
                .body_mut()
                .with_config()
                .limit(MAX_ANSWER_BYTES)
                .read_to_vec();
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("answered {}", response.status()))
            }
        }
        Err(error) => Err(error.to_string()),
    }
}
