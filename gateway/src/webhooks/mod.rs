//! Webhooks: channel and member events POSTed to each of an app's endpoints that wants them,
//! signed with its secret. Shards hand events to one sender thread through a bounded queue and never wait: a
//! full queue drops the event and counts it. The sender holds, batches and retries (`outbox`)
//! and does the blocking HTTP (`worker`).

mod endpoint;
mod event;
pub mod outbox;
mod worker;

use std::sync::atomic::AtomicU64;

use crossbeam_channel::{Receiver, Sender};

pub use endpoint::{ChannelFilter, Endpoint};
pub use event::{WebhookEvent, WebhookKind};
pub use worker::run;

/// An event on its way from a shard to the sender thread.
#[derive(Debug)]
pub struct Job {
    pub app: usize,
    pub event: WebhookEvent,
}

/// The bounded queue from the shards to the sender thread.
pub fn queue(capacity: usize) -> (Sender<Job>, Receiver<Job>) {
    crossbeam_channel::bounded(capacity)
}

/// What the sender thread did with the events it took; written only by that thread.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Delivered (a 2xx answer).
    pub sent: AtomicU64,
    /// Not sent because what they reported was undone in time, or repeated.
    pub cancelled: AtomicU64,
    /// Given up after retrying, or evicted while too many requests were failing.
    pub failed: AtomicU64,
    /// Requests that failed and were scheduled again.
    pub retries: AtomicU64,
}
