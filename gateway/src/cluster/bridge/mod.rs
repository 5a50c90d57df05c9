//! The Redis bridge: one OS thread per process owning two Redis connections, one to publish and
//! one to subscribe, driven by a current-thread tokio runtime.
//!
//! Why async on one thread: the subscribing connection must take new SUBSCRIBE commands while it
//! waits for messages, and publishes must not wait behind a blocking read. With the `redis`
//! crate's async API one task does all of it (shard inbox, pub/sub stream, pipelined publishes,
//! timers) in a single `select!` loop, and no state is shared between threads. The runtime is
//! tokio because that is what the crate supports best; it runs on this thread only, never on a
//! shard.
//!
//! Failure: any error on either connection, a request unanswered for `REQUEST_TIMEOUT`, or this
//! node's own heartbeat not coming back within `ECHO_TIMEOUT` ends the session. The bridge then
//! reconnects with backoff and subscribes again to everything the shards hold. While it is away
//! it keeps draining its inbox: publishes are counted as not sent, interest is recorded for the
//! next session, and questions are answered at once without the other nodes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_channel::oneshot;
use futures_util::future::LocalBoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde_json::Value;

mod counts;

use super::backoff::Backoff;
use super::interest::{Change, Interest};
use super::link::{Command, Publisher, ShardFailures, Subscriber, Target, Unsent};
use super::nodes::{self, Heard, NodeTable};
use super::occupancy::ClusterCounts;
use super::queries::{Done, Pending};
use super::rosters::Rosters;
use super::sharded::Message;
use super::wire::{self, ChannelCount, Control, Envelope, Query, RosterChange};
use super::{BridgeMessage, ClusterStats, Counts};
use crate::admin::stats::{self, PublishFailure};
use crate::bus::{Broadcast, CacheAnswer, Inbox, ShardMessage};
use crate::channels::presence::{RosterDelta, RosterKey, Source};
use crate::channels::CACHE_TTL;
use crate::node::Node;
use crate::protocol::ChannelKind;

/// How often each node announces itself.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A node not heard from for this long is dropped, with its share of every count: five missed
/// heartbeats, so a short Redis hiccup does not make a node flap.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a question to the other nodes waits for their answers.
pub const QUERY_DEADLINE: Duration = Duration::from_secs(1);
/// Nodes heard from within this are waited for when asking; one that has gone quiet (likely
/// dead, not yet expired) would only make every answer wait for the deadline.
const RECENT: Duration = Duration::from_millis(2500);
/// Our own heartbeat must come back through Redis within this, or the session is stuck.
const ECHO_TIMEOUT: Duration = Duration::from_secs(3);
/// The same on a Redis Cluster, where the master of the control channel may be replaced
/// meanwhile: its replica takes over after `cluster-node-timeout` and an election, and the
/// subscriber follows it on its own. Only a longer silence ends the session.
const CLUSTER_ECHO_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for Redis to answer one command (publish pipelines, subscribe).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the answering node waits for its own shards.
const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_millis(800);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(250);
/// Pipelines, heartbeats and answers awaiting Redis at once; past it the inbox waits (and fills,
/// and shards count what it refuses) instead of the bridge buffering without bound.
const MAX_IN_FLIGHT: usize = 64;
/// Publishes sent to Redis in one pipeline.
const PIPELINE_MAX: u64 = 512;
/// Channels named in one SUBSCRIBE when subscribing again after a reconnect.
const SUBSCRIBE_CHUNK: usize = 1024;
/// Roster entries in one control message: snapshots of big rosters go in parts, so that no
/// message comes near Redis' output buffer limits for subscribers.
const ROSTER_CHUNK: usize = 500;

/// Why the bridge could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot start the bridge's runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("redis_url: {0}")]
    Url(#[from] redis::RedisError),
}

/// Why a session with Redis ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the subscription connection closed")]
    Closed,
    #[error("own heartbeat not heard back within {0:?}")]
    Stalled(Duration),
}

/// Work handed to Redis whose outcome the loop waits for.
enum Work {
    Published {
        count: u64,
        result: Result<(), Unsent>,
    },
    Sent(redis::RedisResult<()>),
}

type InFlight = FuturesUnordered<LocalBoxFuture<'static, Work>>;

/// What one batch of the shards' messages leaves to send once it has been read.
struct Outgoing {
    /// Broadcasts to publish (Redis channel, envelope), `queued` of them.
    publishes: Vec<Command>,
    queued: u64,
    /// The last wanted state of each Redis channel whose interest changed in the batch.
    changes: HashMap<String, bool>,
    roster: Vec<RosterChange>,
    counts: Vec<ChannelCount>,
}

/// Subscribes to the Redis channels a batch came to need and unsubscribes from those it no
/// longer needs.
async fn follow_interest(
    subscriber: &mut Subscriber,
    changes: HashMap<String, bool>,
) -> Result<(), SessionEnd> {
    let (subscribe, unsubscribe): (Vec<_>, Vec<_>) =
        changes.into_iter().partition(|(_, wanted)| *wanted);
    let names =
        |list: Vec<(String, bool)>| list.into_iter().map(|(name, _)| name).collect::<Vec<_>>();
    let (subscribe, unsubscribe) = (names(subscribe), names(unsubscribe));
    if !subscribe.is_empty() {
        within(REQUEST_TIMEOUT, subscriber.subscribe(&subscribe)).await?;
    }
    if !unsubscribe.is_empty() {
        within(REQUEST_TIMEOUT, subscriber.unsubscribe(&unsubscribe)).await?;
    }
    Ok(())
}

/// Items grouped by lane, each group in the order given.
fn by_lane<T>(items: Vec<T>, lane: impl Fn(&T) -> u16) -> BTreeMap<u16, Vec<T>> {
    let mut lanes: BTreeMap<u16, Vec<T>> = BTreeMap::new();
    for item in items {
        lanes.entry(lane(&item)).or_default().push(item);
    }
    lanes
}

/// The node a control message comes from.
fn control_sender(control: &Control) -> u32 {
    match control {
        Control::Heartbeat { node, .. }
        | Control::Query { node, .. }
        | Control::Answer { node, .. }
        | Control::Roster { node, .. }
        | Control::Snapshot { node, .. }
        | Control::Counts { node, .. }
        | Control::Sync { node }
        | Control::Terminate { node, .. } => *node,
    }
}

/// Runs the bridge on the current thread, forever.
pub fn run(
    node: Arc<Node>,
    stats: Arc<ClusterStats>,
    inbox: Inbox<BridgeMessage>,
) -> Result<(), BridgeError> {
    let url = node.config.redis_url.clone().unwrap_or_default();
    let client = Target::from_url(&url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bridge = Bridge::new(node, stats, inbox, client);
    runtime.block_on(bridge.run());
    Ok(())
}

struct Bridge {
    node: Arc<Node>,
    stats: Arc<ClusterStats>,
    inbox: Inbox<BridgeMessage>,
    batch: Vec<BridgeMessage>,
    client: Target,
    prefix: String,
    control: String,
    own_channel: String,
    /// The lanes' Redis channels, by lane (see `wire::lane_of`).
    lanes: Vec<String>,
    nonce: u64,
    interest: Interest,
    nodes: NodeTable,
    rosters: Rosters,
    /// Every node's subscriber counts, for the apps that keep cluster-wide counts.
    counts: ClusterCounts,
    /// When this session with Redis began.
    online_since: Instant,
    last_count_flush: Instant,
    /// Broadcasts each master did not take, since start (shown in /metrics).
    shard_failures: ShardFailures,
    pending: Pending<oneshot::Sender<Counts>>,
    /// Lag of broadcasts from other nodes, microseconds.
    lag: Histogram<u64>,
    last_heartbeat: Instant,
    last_echo: Instant,
    /// Publishes handed to Redis and not yet confirmed; lost if the session ends.
    unconfirmed: u64,
    collision_reported: bool,
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn within<T>(
    limit: Duration,
    request: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, SessionEnd> {
    match tokio::time::timeout(limit, request).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(SessionEnd::Timeout(limit)),
    }
}

async fn connect(target: Target) -> Result<(Publisher, Subscriber), SessionEnd> {
    Ok(target.connect(CONNECT_TIMEOUT, REQUEST_TIMEOUT).await?)
}

fn publish(conn: &Publisher, channel: String, message: String) -> LocalBoxFuture<'static, Work> {
    let sent = conn.publish(channel, message.into_bytes());
    Box::pin(async move { Work::Sent(sent.await) })
}

fn send_pipeline(
    conn: &Publisher,
    publishes: Vec<Command>,
    count: u64,
) -> LocalBoxFuture<'static, Work> {
    let sent = conn.publish_all(publishes);
    Box::pin(async move {
        let result = sent.await;
        Work::Published { count, result }
    })
}

/// Hands a shard the cluster's answer about a cache channel. A shard whose inbox is full misses
/// it, and its subscribers wait for the channel's next event.
fn answer_cache(
    node: &Node,
    shard: u16,
    app: usize,
    channel: Box<str>,
    cached: Option<(Bytes, Duration)>,
) {
    if let Some(link) = node.shards.get(usize::from(shard)) {
        let answer = ShardMessage::Cached(Box::new(CacheAnswer {
            app,
            channel,
            cached,
        }));
        let _ = link.inbox.send(answer);
    }
}

/// This node's share of an answer: its shards' counts, summed.
async fn local_counts(node: &Node, query: &Query) -> Vec<(String, u64)> {
    let (app_id, channels, prefix) = match query {
        Query::Channels { app, prefix } => (app, None, prefix.as_str()),
        Query::Named { app, channels } => (app, Some(channels), ""),
    };
    let Some((app, _)) = node.config.app_by_id(app_id) else {
        return Vec::new();
    };
    let names: Option<Vec<Box<str>>> =
        channels.map(|names| names.iter().map(|n| n.as_str().into()).collect());
    let answers = node.ask_counts(None, app, names.as_deref());
    let mut totals = BTreeMap::new();
    // What came in time stands; a shard that did not answer is left out.
    // The bridge serves no client: no need to pause.
    let adding = answers.add_to(prefix, &mut totals, || std::future::ready(()));
    let _ = tokio::time::timeout(SHARD_ANSWER_TIMEOUT, adding).await;
    totals.into_iter().collect()
}

fn answer(
    node: Arc<Node>,
    conn: &Publisher,
    to: String,
    id: u64,
    query: Query,
) -> LocalBoxFuture<'static, Work> {
    let conn = conn.clone();
    Box::pin(async move {
        let counts = local_counts(&node, &query).await;
        let message = Control::Answer {
            node: node.id,
            id,
            counts,
        };
        publish(&conn, to, message.encode()).await
    })
}

impl Bridge {
    fn new(
        node: Arc<Node>,
        stats: Arc<ClusterStats>,
        inbox: Inbox<BridgeMessage>,
        client: Target,
    ) -> Bridge {
        let prefix = node.config.redis_prefix.clone();
        let nonce = fastrand::u64(..);
        let now = Instant::now();
        let lanes = match client.is_cluster() {
            true => wire::CLUSTER_LANES,
            false => 1,
        };
        Bridge {
            control: wire::control_channel(&prefix),
            own_channel: wire::node_channel(&prefix, node.id),
            lanes: (0..lanes)
                .map(|lane| wire::lane_channel(&prefix, lanes, lane))
                .collect(),
            interest: Interest::new(node.config.apps.len()),
            nodes: NodeTable::new(node.id, nonce, NODE_TIMEOUT),
            node,
            stats,
            inbox,
            batch: Vec::new(),
            client,
            prefix,
            nonce,
            rosters: Rosters::new(lanes),
            counts: ClusterCounts::new(lanes),
            online_since: now,
            last_count_flush: now,
            shard_failures: ShardFailures::new(),
            pending: Pending::default(),
            lag: crate::admin::stats::latency_histogram(),
            last_heartbeat: now,
            last_echo: now,
            unconfirmed: 0,
            collision_reported: false,
        }
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_CAP);
        let mut failing = false;
        loop {
            let end = match self.offline_until(connect(self.client.clone())).await {
                Ok((publisher, subscriber)) => {
                    failing = false;
                    self.online(publisher, subscriber, &mut backoff).await
                }
                Err(end) => end,
            };
            self.went_offline();
            let wait = backoff.next_wait(fastrand::f64());
            // The first failure is worth a warning; the retries after it are not.
            if failing {
                tracing::debug!(error = %end, "redis still unavailable; retrying in {wait:?}");
            } else {
                tracing::warn!(error = %end, "redis unavailable: this node delivers locally only until it is back; retrying in {wait:?}");
                failing = true;
            }
            self.offline_until(tokio::time::sleep(wait)).await;
        }
    }

    /// Drives `work` while keeping the inbox drained with no Redis to talk to.
    async fn offline_until<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                output = &mut work => return output,
                () = self.inbox.next_batch(&mut self.batch) => self.handle_offline(),
                _ = tick.tick() => self.tick(Instant::now()),
            }
        }
    }

    fn went_offline(&mut self) {
        self.stats.set_up(false);
        self.stats
            .publish_failed(PublishFailure::Error, std::mem::take(&mut self.unconfirmed));
        for done in self.pending.abandon() {
            self.finish(done);
        }
    }

    fn handle_offline(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        for message in batch.drain(..) {
            match message {
                BridgeMessage::Publish(_) => {
                    self.stats.publish_failed(PublishFailure::Disconnected, 1);
                }
                BridgeMessage::Interest {
                    shard,
                    app,
                    channel,
                    occupied,
                } => {
                    self.interest.set(shard, app, &channel, occupied);
                }
                BridgeMessage::Query { reply, .. } => self.finish(Done {
                    reply,
                    counts: Counts::new(),
                    complete: false,
                }),
                // Kept for the snapshot sent when Redis is back.
                BridgeMessage::Roster(delta) => {
                    if let Some(change) = self.roster_change(&delta) {
                        self.rosters.apply(self.node.id, &change);
                    }
                }
                // Kept for the snapshot sent when Redis is back.
                BridgeMessage::Count {
                    app,
                    channel,
                    count,
                } => self.own_count(app, channel, count, None),
                // The API already answered that the other nodes cannot be reached.
                BridgeMessage::Terminate { .. } => {}
                BridgeMessage::AskCache {
                    shard,
                    app,
                    channel,
                } => answer_cache(&self.node, shard, app, channel, None),
            }
        }
        self.batch = batch;
        self.stats
            .subscriptions
            .store(self.interest.len() as u64, Relaxed);
    }

    /// Sends an answer to the shard that asked.
    fn finish(&self, done: Done<oneshot::Sender<Counts>>) {
        if !done.complete {
            self.stats.partial_answers.fetch_add(1, Relaxed);
        }
        // The asker may have given up waiting; nothing to do then.
        let _ = done.reply.send(done.counts);
    }

    /// Housekeeping, online or not: nodes that went quiet, questions past their deadline.
    fn tick(&mut self, now: Instant) {
        let gone = self.nodes.expire(now);
        if !gone.is_empty() {
            self.share_peer_connections();
        }
        for node in gone {
            self.node_gone(node);
        }
        for done in self.pending.expire(now) {
            self.finish(done);
        }
        self.stats.nodes.store(self.nodes.len() as u64, Relaxed);
    }

    /// A node stopped sending heartbeats: it is no longer asked, so its connections and channels
    /// drop out of every count, and its presence members and signed-in users leave, with
    /// `member_removed` to subscribers here, so that a crashed node leaves no ghost members. The
    /// `member_removed` webhooks go out from one node only: the one with the lowest id among
    /// those still connected (when this node is itself cut off from Redis, it is not the one).
    fn node_gone(&mut self, node: u32) {
        tracing::warn!(
            node,
            timeout_seconds = NODE_TIMEOUT.as_secs(),
            "node left the cluster: no heartbeat within the timeout"
        );
        let own = self.node.id;
        let speaks = self.stats.is_up()
            && self
                .nodes
                .recent(Instant::now(), RECENT)
                .iter()
                .all(|&other| other > own);
        for change in self.rosters.forget(node) {
            self.forward_roster(node, &change, speaks);
        }
    }

    /// A shard's roster change as nodes tell each other.
    fn roster_change(&self, delta: &RosterDelta) -> Option<RosterChange> {
        let app = self.node.config.apps.get(delta.app)?;
        Some(RosterChange {
            app: app.id.clone(),
            channel: match &delta.roster {
                RosterKey::Channel(channel) => Some(channel.to_string()),
                RosterKey::SignedIn => None,
            },
            user: delta.user_id.to_string(),
            shard: delta.source.shard,
            joined: delta.joined.is_some(),
            info: delta.joined.clone().unwrap_or(Value::Null),
        })
    }

    /// Hands another node's roster change to every shard, as shards hand theirs to each other.
    fn forward_roster(&self, node: u32, change: &RosterChange, webhooks: bool) {
        let Some((app, _)) = self.node.config.app_by_id(&change.app) else {
            return;
        };
        let delta = Arc::new(RosterDelta {
            app,
            roster: match &change.channel {
                Some(channel) => RosterKey::Channel(channel.as_str().into()),
                None => RosterKey::SignedIn,
            },
            user_id: change.user.as_str().into(),
            source: Source {
                node,
                shard: change.shard,
            },
            joined: change.joined.then(|| change.info.clone()),
            webhooks,
        });
        for link in &self.node.shards {
            if link
                .inbox
                .send(ShardMessage::Roster(delta.clone()))
                .is_err()
            {
                stats::add(&link.stats.inbox_drops, 1);
            }
        }
    }

    /// Publishes every roster entry and channel count this node holds, lane by lane, in parts.
    fn publish_snapshot(&self, publisher: &Publisher, in_flight: &mut InFlight) {
        let lanes = self.lanes.len() as u16;
        let mut entries = by_lane(self.rosters.held(self.node.id), |e| e.lane(lanes));
        let mut counts = by_lane(self.count_snapshot(), |c| wire::lane_of(lanes, &c.channel));
        for (lane, channel) in self.lanes.iter().enumerate() {
            let lane = lane as u16;
            let entries = entries.remove(&lane).unwrap_or_default();
            let mut entries = entries.chunks(ROSTER_CHUNK).map(<[_]>::to_vec);
            let counts = counts.remove(&lane).unwrap_or_default();
            let mut counts = counts.chunks(ROSTER_CHUNK).map(<[_]>::to_vec);
            let parts = entries.len().max(counts.len()).max(1);
            for part in 0..parts {
                let message = Control::Snapshot {
                    node: self.node.id,
                    lane,
                    part: part as u32,
                    last: part + 1 == parts,
                    entries: entries.next().unwrap_or_default(),
                    counts: counts.next().unwrap_or_default(),
                };
                in_flight.push(publish(publisher, channel.clone(), message.encode()));
            }
        }
    }

    fn data_channel(&self, app: usize, channel: &str) -> String {
        let app_id = self.node.config.apps.get(app).map_or("", |a| a.id.as_str());
        wire::data_channel(&self.prefix, app_id, channel)
    }

    async fn online(
        &mut self,
        publisher: Publisher,
        mut subscriber: Subscriber,
        backoff: &mut Backoff,
    ) -> SessionEnd {
        let mut names = vec![self.control.clone(), self.own_channel.clone()];
        names.extend(
            self.lanes
                .iter()
                .filter(|lane| **lane != self.control)
                .cloned(),
        );
        names.extend(
            self.interest
                .channels()
                .map(|(app, channel)| self.data_channel(app, channel)),
        );
        for chunk in names.chunks(SUBSCRIBE_CHUNK) {
            if let Err(end) = within(REQUEST_TIMEOUT, subscriber.subscribe(chunk)).await {
                return end;
            }
        }
        self.stats.connects.fetch_add(1, Relaxed);
        self.stats.set_up(true);
        backoff.reset();
        tracing::info!(
            channels = names.len() - 2,
            prefix = %self.prefix,
            "connected to redis and subscribed"
        );
        let mut in_flight = InFlight::new();
        let now = Instant::now();
        self.last_echo = now;
        self.online_since = now;
        self.heartbeat(&publisher, &mut in_flight, now);
        let mut synced = false;
        self.sync_when_subscribed(&mut synced, &publisher, &subscriber, &mut in_flight);
        let mut tick = tokio::time::interval(TICK);
        loop {
            let outcome = tokio::select! {
                () = self.inbox.next_batch(&mut self.batch), if in_flight.len() < MAX_IN_FLIGHT => {
                    self.handle_online(&publisher, &mut subscriber, &mut in_flight).await
                }
                message = subscriber.next() => match message {
                    Ok(Some(message)) => {
                        self.on_message(&message, &publisher, &mut in_flight);
                        Ok(())
                    }
                    Ok(None) => Err(SessionEnd::Closed),
                    Err(error) => Err(SessionEnd::Redis(error)),
                },
                Some(work) = in_flight.next(), if !in_flight.is_empty() => self.finished(work, &subscriber),
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.sync_when_subscribed(&mut synced, &publisher, &subscriber, &mut in_flight);
                    self.tick(now);
                    self.share_redis_shards(&subscriber);
                    self.tick_online(&publisher, &mut in_flight, now)
                }
            };
            if let Err(end) = outcome {
                return end;
            }
        }
    }

    /// Once this session's control channel and lanes are subscribed, asks every other node
    /// for its snapshot and sends this node's: other nodes may have forgotten this one, and
    /// this one them, while it was away. On a cluster, subscriptions are confirmed only after
    /// connecting; snapshots sent before would pass this node by.
    fn sync_when_subscribed(
        &self,
        synced: &mut bool,
        publisher: &Publisher,
        subscriber: &Subscriber,
        in_flight: &mut InFlight,
    ) {
        if *synced {
            return;
        }
        let mut needed = self.lanes.clone();
        needed.push(self.control.clone());
        if !subscriber.confirmed(&needed) {
            return;
        }
        *synced = true;
        let sync = Control::Sync { node: self.node.id };
        in_flight.push(publish(publisher, self.control.clone(), sync.encode()));
        self.publish_snapshot(publisher, in_flight);
    }

    /// Hands /metrics and /health what the subscriptions see of the Redis servers.
    fn share_redis_shards(&self, subscriber: &Subscriber) {
        self.stats
            .unplaced
            .store(subscriber.unplaced() as u64, Relaxed);
        let shards = subscriber.redis_shards();
        if **self.stats.redis_shards.load() != shards {
            self.stats.redis_shards.store(Arc::new(shards));
        }
    }

    fn tick_online(
        &mut self,
        publisher: &Publisher,
        in_flight: &mut InFlight,
        now: Instant,
    ) -> Result<(), SessionEnd> {
        let echo_timeout = match self.client.is_cluster() {
            true => CLUSTER_ECHO_TIMEOUT,
            false => ECHO_TIMEOUT,
        };
        if now.saturating_duration_since(self.last_echo) > echo_timeout {
            return Err(SessionEnd::Stalled(echo_timeout));
        }
        if now.saturating_duration_since(self.last_heartbeat) >= HEARTBEAT_INTERVAL {
            self.heartbeat(publisher, in_flight, now);
        }
        self.tick_counts(now);
        Ok(())
    }

    fn heartbeat(&mut self, publisher: &Publisher, in_flight: &mut InFlight, now: Instant) {
        self.last_heartbeat = now;
        let node = &self.node;
        let message = Control::Heartbeat {
            node: node.id,
            nonce: self.nonce,
            connections: nodes::own_connections(&node.config.apps, |app| node.app_connections(app)),
            online_ms: Some(now.saturating_duration_since(self.online_since).as_millis() as u64),
        };
        in_flight.push(publish(publisher, self.control.clone(), message.encode()));
        self.stats
            .lag_p50_micros
            .store(self.lag.value_at_quantile(0.5), Relaxed);
        self.stats
            .lag_p99_micros
            .store(self.lag.value_at_quantile(0.99), Relaxed);
        self.stats.lag_count.store(self.lag.len(), Relaxed);
        let sum = self.lag.mean() * self.lag.len() as f64;
        self.stats.lag_sum_micros.store(sum as u64, Relaxed);
    }

    fn finished(&mut self, work: Work, subscriber: &Subscriber) -> Result<(), SessionEnd> {
        let error = match work {
            Work::Published { count, result } => {
                self.unconfirmed = self.unconfirmed.saturating_sub(count);
                let Err(unsent) = result else {
                    self.stats.messages_out.fetch_add(count, Relaxed);
                    return Ok(());
                };
                let failed = self.count_unsent(count, &unsent.slots, subscriber);
                self.stats.messages_out.fetch_add(count - failed, Relaxed);
                self.stats.publish_failed(PublishFailure::Error, failed);
                unsent.error
            }
            Work::Sent(Ok(())) => return Ok(()),
            Work::Sent(Err(error)) => error,
        };
        // A cluster's client reconnects and follows slots on its own: a master that died fails
        // the publishes sent to it (counted), not the session.
        let ends = error.is_unrecoverable_error() || error.is_connection_dropped();
        if ends && !self.client.is_cluster() {
            return Err(SessionEnd::Redis(error));
        }
        tracing::debug!(%error, "redis refused a command");
        Ok(())
    }

    /// Counts the broadcasts of a pipeline that Redis did not take, by master on a cluster;
    /// returns how many.
    fn count_unsent(&mut self, count: u64, slots: &[(u16, u64)], subscriber: &Subscriber) -> u64 {
        if slots.is_empty() {
            return count;
        }
        for &(slot, publishes) in slots {
            let master = subscriber
                .master_of(slot)
                .unwrap_or_else(|| "unknown".into());
            *self.shard_failures.entry(master).or_default() += publishes;
        }
        self.stats
            .shard_failures
            .store(Arc::new(self.shard_failures.clone()));
        slots
            .iter()
            .map(|&(_, publishes)| publishes)
            .sum::<u64>()
            .min(count)
    }

    async fn handle_online(
        &mut self,
        publisher: &Publisher,
        subscriber: &mut Subscriber,
        in_flight: &mut InFlight,
    ) -> Result<(), SessionEnd> {
        let mut batch = std::mem::take(&mut self.batch);
        let mut outgoing = Outgoing {
            publishes: Vec::new(),
            queued: 0,
            changes: HashMap::new(),
            roster: Vec::new(),
            counts: Vec::new(),
        };
        for message in batch.drain(..) {
            self.take(message, &mut outgoing, publisher, in_flight);
        }
        self.batch = batch;
        let (node, lanes) = (self.node.id, self.lanes.len() as u16);
        let roster = |changes| Control::Roster { node, changes };
        let lane = |change: &RosterChange| change.lane(lanes);
        self.publish_on_lanes(publisher, in_flight, outgoing.roster, lane, roster);
        let counts = |counts| Control::Counts { node, counts };
        let lane = |count: &ChannelCount| wire::lane_of(lanes, &count.channel);
        self.publish_on_lanes(publisher, in_flight, outgoing.counts, lane, counts);
        if outgoing.queued > 0 {
            self.send(publisher, in_flight, outgoing.publishes, outgoing.queued);
        }
        follow_interest(subscriber, outgoing.changes).await?;
        self.stats
            .subscriptions
            .store(self.interest.len() as u64, Relaxed);
        Ok(())
    }

    /// Publishes changes each on its lane, in the order given, in messages of at most
    /// `ROSTER_CHUNK`.
    fn publish_on_lanes<T: Clone>(
        &self,
        publisher: &Publisher,
        in_flight: &mut InFlight,
        items: Vec<T>,
        lane: impl Fn(&T) -> u16,
        message: impl Fn(Vec<T>) -> Control,
    ) {
        for (lane, items) in by_lane(items, lane) {
            for chunk in items.chunks(ROSTER_CHUNK) {
                let channel = self.lanes[usize::from(lane)].clone();
                let message = message(chunk.to_vec());
                in_flight.push(publish(publisher, channel, message.encode()));
            }
        }
    }

    /// Takes one message of a shard into what the batch sends.
    fn take(
        &mut self,
        message: BridgeMessage,
        outgoing: &mut Outgoing,
        publisher: &Publisher,
        in_flight: &mut InFlight,
    ) {
        match message {
            BridgeMessage::Publish(broadcast) => {
                if self.queue_publish(&mut outgoing.publishes, &broadcast) {
                    outgoing.queued += 1;
                }
                if outgoing.queued == PIPELINE_MAX {
                    let publishes = std::mem::take(&mut outgoing.publishes);
                    self.send(publisher, in_flight, publishes, outgoing.queued);
                    outgoing.queued = 0;
                }
            }
            BridgeMessage::Interest {
                shard,
                app,
                channel,
                occupied,
            } => {
                if let Some(change) = self.interest.set(shard, app, &channel, occupied) {
                    let wanted = change == Change::Subscribe;
                    outgoing
                        .changes
                        .insert(self.data_channel(app, &channel), wanted);
                }
            }
            BridgeMessage::Query { query, reply } => {
                self.ask(publisher, in_flight, query, reply);
            }
            BridgeMessage::Roster(delta) => {
                if let Some(change) = self.roster_change(&delta) {
                    if self.rosters.apply(self.node.id, &change) {
                        outgoing.roster.push(change);
                    }
                }
            }
            BridgeMessage::Count {
                app,
                channel,
                count,
            } => self.own_count(app, channel, count, Some(&mut outgoing.counts)),
            BridgeMessage::AskCache {
                shard,
                app,
                channel,
            } => in_flight.push(self.ask_cache(publisher, shard, app, channel)),
            BridgeMessage::Terminate { app, user_id } => {
                if let Some(app) = self.node.config.apps.get(app) {
                    let message = Control::Terminate {
                        node: self.node.id,
                        app: app.id.clone(),
                        user: user_id.to_string(),
                    };
                    in_flight.push(publish(publisher, self.control.clone(), message.encode()));
                }
            }
        }
    }

    /// Reads a cache channel's last event from Redis for a shard that has none; a failure
    /// answers that there is none.
    fn ask_cache(
        &self,
        publisher: &Publisher,
        shard: u16,
        app: usize,
        channel: Box<str>,
    ) -> LocalBoxFuture<'static, Work> {
        let node = self.node.clone();
        let key = node
            .config
            .apps
            .get(app)
            .map(|settings| wire::cache_key(&self.prefix, &settings.id, &channel));
        let kept = key.map(|key| publisher.kept(key));
        Box::pin(async move {
            let cached = match kept {
                Some(kept) => kept.await,
                None => Ok(None),
            };
            let found = cached.as_ref().ok().cloned().flatten();
            let found = found.map(|(frame, left)| (Bytes::from(frame), left));
            answer_cache(&node, shard, app, channel, found);
            Work::Sent(cached.map(|_| ()))
        })
    }

    /// Adds one broadcast to those to publish; false (and counted) when it cannot be encoded.
    fn queue_publish(&self, publishes: &mut Vec<Command>, broadcast: &Broadcast) -> bool {
        let Some(app) = self.node.config.apps.get(broadcast.app) else {
            return false;
        };
        let envelope = Envelope {
            origin: self.node.id,
            sent_micros: unix_micros(),
            except: broadcast.except,
            cache: broadcast.cache,
            app_id: &app.id,
            channel: &broadcast.channel,
            frame: &broadcast.frame,
        };
        match envelope.encode() {
            Ok(bytes) => {
                let channel = wire::data_channel(&self.prefix, &app.id, &broadcast.channel);
                publishes.push(Command::Publish {
                    channel,
                    message: bytes,
                });
                if broadcast.cache && ChannelKind::of(&broadcast.channel).is_cache() {
                    publishes.push(Command::Keep {
                        key: wire::cache_key(&self.prefix, &app.id, &broadcast.channel),
                        value: broadcast.frame.to_vec(),
                        ttl: CACHE_TTL,
                    });
                }
                true
            }
            Err(error) => {
                tracing::debug!(%error, "broadcast not sent to the cluster");
                self.stats.publish_failed(PublishFailure::Error, 1);
                false
            }
        }
    }

    fn send(
        &mut self,
        publisher: &Publisher,
        in_flight: &mut InFlight,
        publishes: Vec<Command>,
        count: u64,
    ) {
        self.unconfirmed += count;
        in_flight.push(send_pipeline(publisher, publishes, count));
    }

    /// Asks the nodes heard from lately; the answer goes out when all have answered or at the
    /// deadline.
    fn ask(
        &mut self,
        publisher: &Publisher,
        in_flight: &mut InFlight,
        query: Query,
        reply: oneshot::Sender<Counts>,
    ) {
        let now = Instant::now();
        let nodes = self.nodes.recent(now, RECENT);
        match self.pending.open(reply, nodes, now + QUERY_DEADLINE) {
            Err(done) => self.finish(done),
            Ok(id) => {
                let message = Control::Query {
                    node: self.node.id,
                    id,
                    query,
                };
                in_flight.push(publish(publisher, self.control.clone(), message.encode()));
            }
        }
    }

    fn on_message(&mut self, message: &Message, publisher: &Publisher, in_flight: &mut InFlight) {
        let (channel, payload) = (message.channel.as_str(), message.payload.as_slice());
        if wire::is_control(&self.prefix, channel) {
            self.on_control(payload, publisher, in_flight);
        } else {
            self.on_broadcast(payload);
        }
    }

    fn on_control(&mut self, payload: &[u8], publisher: &Publisher, in_flight: &mut InFlight) {
        let control = match Control::decode(payload) {
            Ok(control) => control,
            Err(error) => {
                tracing::debug!(%error, "unreadable cluster message ignored");
                return;
            }
        };
        let now = Instant::now();
        match control {
            Control::Heartbeat {
                node,
                nonce,
                connections,
                online_ms,
            } => {
                self.on_heartbeat(node, nonce, &connections, now);
                if let Some(online) = online_ms {
                    self.nodes
                        .online_for(node, Duration::from_millis(online), now);
                }
            }
            Control::Query { node, id, query } if node != self.node.id => {
                // Answers past the cap are skipped: the asker answers without this node's share.
                if in_flight.len() < MAX_IN_FLIGHT {
                    let to = wire::node_channel(&self.prefix, node);
                    in_flight.push(answer(self.node.clone(), publisher, to, id, query));
                }
            }
            // Our own question, echoed back.
            Control::Query { .. } => {}
            Control::Answer { node, id, counts } => {
                if let Some(done) = self.pending.answer(id, node, counts) {
                    self.finish(done);
                }
            }
            // The rest, when sent by this node, are its own messages echoed back.
            _ if control_sender(&control) == self.node.id => {}
            Control::Roster { node, changes } => {
                for change in changes {
                    if self.rosters.apply(node, &change) {
                        self.forward_roster(node, &change, false);
                    }
                }
            }
            Control::Snapshot {
                node,
                lane,
                part,
                last,
                entries,
                counts,
            } => {
                for change in self.rosters.snapshot(node, lane, part, last, entries) {
                    self.forward_roster(node, &change, false);
                }
                self.on_count_snapshot(node, lane, part, last, counts);
            }
            Control::Counts { node, counts } => self.on_counts(node, counts),
            Control::Sync { .. } => self.publish_snapshot(publisher, in_flight),
            Control::Terminate { app, user, .. } => {
                if let Some((app, _)) = self.node.config.app_by_id(&app) {
                    let user_id: Arc<str> = user.into();
                    for link in &self.node.shards {
                        let message = ShardMessage::TerminateUser {
                            app,
                            user_id: user_id.clone(),
                        };
                        if link.inbox.send(message).is_err() {
                            stats::add(&link.stats.inbox_drops, 1);
                        }
                    }
                }
            }
        }
    }

    /// Records another node's heartbeat, or this node's own echoed back, and the connections
    /// per app it reports.
    fn on_heartbeat(
        &mut self,
        node: u32,
        nonce: u64,
        connections: &BTreeMap<String, u64>,
        now: Instant,
    ) {
        let reported = nodes::reported(&self.node.config.apps, connections);
        match self.nodes.heartbeat(node, nonce, reported, now) {
            Heard::Own => self.last_echo = now,
            Heard::Joined => tracing::info!(node, "node joined the cluster"),
            Heard::Alive => {}
            Heard::Collision if !self.collision_reported => {
                self.collision_reported = true;
                tracing::error!(
                    node,
                    "another gateway uses this node's id: restart one of them (socket ids and message origins would be confused)"
                );
            }
            Heard::Collision => {}
        }
        self.share_peer_connections();
    }

    /// Hands the shards the other nodes' sessions of each app, for the apps' quotas.
    fn share_peer_connections(&self) {
        let totals = self.nodes.connections(self.node.config.apps.len());
        self.node.set_peer_app_connections(&totals);
    }

    /// Hands a broadcast from another node to the shards that hold its channel; an event a cache
    /// channel keeps goes to every shard, since each keeps the channel's last event.
    fn on_broadcast(&mut self, payload: &[u8]) {
        let envelope = match Envelope::decode(payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::debug!(%error, "unreadable broadcast ignored");
                return;
            }
        };
        if envelope.origin == self.node.id {
            return;
        }
        let Some((app, _)) = self.node.config.app_by_id(envelope.app_id) else {
            return;
        };
        let lag = unix_micros().saturating_sub(envelope.sent_micros);
        self.lag.saturating_record(lag.max(1));
        let broadcast = Arc::new(Broadcast {
            app,
            channel: envelope.channel.into(),
            frame: Bytes::copy_from_slice(envelope.frame),
            except: envelope.except,
            cache: envelope.cache,
            published: Instant::now(),
        });
        let every: Vec<u16>;
        let shards = if envelope.cache && ChannelKind::of(envelope.channel).is_cache() {
            every = (0..self.node.shards.len() as u16).collect();
            &every
        } else {
            self.interest.shards(app, envelope.channel)
        };
        for &shard in shards {
            let Some(link) = self.node.shards.get(usize::from(shard)) else {
                continue;
            };
            if link
                .inbox
                .send(ShardMessage::Broadcast(broadcast.clone()))
                .is_err()
            {
                stats::add(&link.stats.inbox_drops, 1);
            }
        }
        self.stats.messages_in.fetch_add(1, Relaxed);
    }
}
