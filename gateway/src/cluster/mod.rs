//! Clustering through Redis pub/sub, on when `redis_url` is set.
//!
//! One bridge thread per process owns the Redis connections (see `bridge`). Shards reach it only
//! through its bounded inbox, the same kind of queue shards use between themselves, and it reaches
//! shards through theirs. Nothing here blocks a shard: when the bridge's inbox is full, or Redis
//! is away, a publish is still delivered on this node and is counted as not sent to the others.
//!
//! What is pure lives in its own module with its tests: `wire` (Redis channel names, the
//! broadcast envelope, control messages), `interest` (which shards hold which channels),
//! `nodes` (heartbeats and expiry), `queries` (questions waiting on other nodes), `rosters`
//! (presence members and signed-in users of every node), `occupancy` (every node's subscriber
//! counts, and which node decides about each channel), `parts` (snapshots in parts), `slots`
//! (Redis Cluster's hash slots and which master holds which sharded subscription) and
//! `backoff`.

mod backoff;
mod bridge;
pub mod interest;
pub mod link;
pub mod nodes;
pub mod occupancy;
mod parts;
pub mod queries;
pub mod resp;
pub mod rosters;
pub mod sharded;
pub mod slots;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_channel::oneshot;

use crate::admin::stats::{Labelled, PublishFailure};
use crate::bus::{Broadcast, InboxFull, InboxSender};
use crate::channels::presence::RosterDelta;

pub use bridge::{run, BridgeError, NODE_TIMEOUT, QUERY_DEADLINE};

/// Subscription counts by channel, as other nodes answered them.
pub type Counts = BTreeMap<String, u64>;

/// What shards ask of the bridge.
#[derive(Debug)]
pub enum BridgeMessage {
    /// Send a broadcast (already delivered on this node) to the other nodes.
    Publish(Arc<Broadcast>),
    /// Whether `shard` holds subscribers of the channel now; sent when that changes.
    Interest {
        shard: u16,
        app: usize,
        channel: Box<str>,
        occupied: bool,
    },
    /// Ask the other nodes; the answer leaves out this node's own share.
    Query {
        query: wire::Query,
        reply: oneshot::Sender<Counts>,
    },
    /// A shard's change to its own source in a roster, for the other nodes.
    Roster(Arc<RosterDelta>),
    /// This node's subscribers of a channel now, from the channel's owner shard, for an app that
    /// keeps cluster-wide counts; sent when it changes.
    Count {
        app: usize,
        channel: Box<str>,
        count: u64,
    },
    /// Close the user's sockets on the other nodes.
    Terminate { app: usize, user_id: Arc<str> },
    /// A cache channel's last event, as the cluster keeps it; answered in `shard`'s inbox.
    AskCache {
        shard: u16,
        app: usize,
        channel: Box<str>,
    },
}

/// What the bridge counts, read by /metrics and /health.
#[derive(Debug)]
pub struct ClusterStats {
    up: AtomicBool,
    /// By `PublishFailure`.
    pub publish_failures: Box<[AtomicU64]>,
    /// Broadcasts published to Redis.
    pub messages_out: AtomicU64,
    /// Broadcasts from other nodes handed to this node's shards.
    pub messages_in: AtomicU64,
    /// Connections to Redis made, the first one included.
    pub connects: AtomicU64,
    /// Redis channels of Pusher channels this node is subscribed to.
    pub subscriptions: AtomicU64,
    /// Other nodes heard from within the node timeout.
    pub nodes: AtomicU64,
    /// Answers that lack the other nodes' share: HTTP API answers (a node did not answer in
    /// time, or Redis was away), and cache asks the bridge had no room for.
    pub partial_answers: AtomicU64,
    /// Time from publish on another node to arrival here, in microseconds: median, 99th
    /// percentile, how many were measured and their sum. Written once a second.
    pub lag_p50_micros: AtomicU64,
    pub lag_p99_micros: AtomicU64,
    pub lag_count: AtomicU64,
    pub lag_sum_micros: AtomicU64,
    /// Channels this node wants that no Redis server holds now (a master lost, its replica not
    /// yet promoted): their broadcasts from other nodes are lost meanwhile.
    pub unplaced: AtomicU64,
    /// A Redis Cluster's masters as the bridge last saw them; empty with one server.
    pub redis_shards: ArcSwap<Vec<link::RedisShard>>,
    /// Broadcasts each Redis Cluster master did not take, since start.
    pub shard_failures: ArcSwap<link::ShardFailures>,
}

impl Default for ClusterStats {
    fn default() -> ClusterStats {
        ClusterStats {
            up: AtomicBool::new(false),
            publish_failures: PublishFailure::ALL
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
            messages_out: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            nodes: AtomicU64::new(0),
            partial_answers: AtomicU64::new(0),
            lag_p50_micros: AtomicU64::new(0),
            lag_p99_micros: AtomicU64::new(0),
            lag_count: AtomicU64::new(0),
            lag_sum_micros: AtomicU64::new(0),
            unplaced: AtomicU64::new(0),
            redis_shards: ArcSwap::from_pointee(Vec::new()),
            shard_failures: ArcSwap::from_pointee(link::ShardFailures::new()),
        }
    }
}

impl ClusterStats {
    /// Connected to Redis and subscribed.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Connected, and every wanted channel held by a live server.
    pub fn is_whole(&self) -> bool {
        self.is_up() && self.unplaced.load(Relaxed) == 0
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Relaxed);
    }

    pub fn publish_failed(&self, reason: PublishFailure, count: u64) {
        self.publish_failures[reason.index()].fetch_add(count, Relaxed);
    }
}

/// How shards reach the bridge.
#[derive(Debug)]
pub struct ClusterLink {
    sender: InboxSender<BridgeMessage>,
    pub stats: Arc<ClusterStats>,
}

impl ClusterLink {
    pub fn new(sender: InboxSender<BridgeMessage>, stats: Arc<ClusterStats>) -> ClusterLink {
        ClusterLink { sender, stats }
    }

    /// Hands a broadcast to the bridge; a full inbox counts it as not sent.
    pub fn publish(&self, broadcast: &Arc<Broadcast>) {
        if self
            .sender
            .send(BridgeMessage::Publish(broadcast.clone()))
            .is_err()
        {
            self.stats.publish_failed(PublishFailure::QueueFull, 1);
        }
    }

    /// Hands the bridge a message that must not be lost (interest, roster changes); a full
    /// inbox hands it back, for the caller to keep and send again.
    pub fn offer(&self, message: BridgeMessage) -> Result<(), BridgeMessage> {
        self.sender.offer(message)
    }

    /// Asks the bridge for a cache channel's last event, unless its inbox is full: the ask
    /// comes from a client's subscription, so it is not kept for later; the shard answers a
    /// miss when no answer comes. Counted as a partial answer then.
    pub fn ask_cache(&self, shard: u16, app: usize, channel: Box<str>) {
        let ask = BridgeMessage::AskCache {
            shard,
            app,
            channel,
        };
        if self.sender.send(ask).is_err() {
            self.stats.partial_answers.fetch_add(1, Relaxed);
        }
    }

    /// Asks the bridge to close a user's sockets on the other nodes; false when it cannot now
    /// (its inbox is full, or Redis is away).
    pub fn terminate(&self, app: usize, user_id: Arc<str>) -> bool {
        self.stats.is_up()
            && self
                .sender
                .send(BridgeMessage::Terminate { app, user_id })
                .is_ok()
    }

    /// Asks the other nodes; `None` when the bridge's inbox is full.
    pub fn ask(&self, query: wire::Query) -> Option<oneshot::Receiver<Counts>> {
        let (reply, receiver) = oneshot::channel();
        match self.sender.send(BridgeMessage::Query { query, reply }) {
            Ok(()) => Some(receiver),
            Err(InboxFull) => {
                self.stats.partial_answers.fetch_add(1, Relaxed);
                None
            }
        }
    }
}
