//! What every thread of the process shares: the configuration, each shard's inbox and counters,
//! and node-wide state. Read-mostly; the few mutable parts are atomics.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use futures_channel::oneshot;

use crate::admin::stats::{self, ShardStats};
use crate::budget::InputBudget;
use crate::bus::{InboxSender, ShardCounts, ShardMessage};
use crate::cluster::ClusterLink;
use crate::config::Config;
use crate::limits::{AppRates, IpLimits};
use crate::tls::CertStore;

/// TLS for the node: the configuration every handshake uses, and the certificate behind it.
#[derive(Debug)]
pub struct NodeTls {
    pub config: Arc<rustls::ServerConfig>,
    pub store: Arc<CertStore>,
}
use crate::webhooks::{Job, WebhookStats};

/// The way to reach one shard.
#[derive(Debug)]
pub struct ShardLink {
    pub inbox: InboxSender,
    pub stats: Arc<ShardStats>,
}

/// The process: its configuration, its shards and its lifecycle.
#[derive(Debug)]
pub struct Node {
    pub config: Arc<Config>,
    /// Random per process, so socket ids are unique across a cluster: two nodes of a cluster of
    /// n share an id with probability about n² / 2³³ (one in 860,000 for 100 nodes), and the
    /// cluster bridge reports it if they do.
    pub id: u32,
    pub started: Instant,
    /// "io_uring" or "epoll".
    pub io_driver: &'static str,
    /// WebSocket sessions the node holds at once.
    pub max_connections: usize,
    /// Sockets open now, for `max_sockets`.
    pub open_sockets: AtomicUsize,
    /// Bytes held for client input not complete yet, across shards.
    pub input_budget: InputBudget,
    pub shards: Vec<ShardLink>,
    pub tls: Option<NodeTls>,
    /// The queue to the webhook sender thread, when some app has a webhook URL.
    pub webhooks: Option<Sender<Job>>,
    pub webhook_stats: WebhookStats,
    /// The Redis bridge, when clustering is on.
    pub cluster: Option<ClusterLink>,
    /// Connections per client address, when a per-address limit is on.
    pub ip_limits: Option<IpLimits>,
    /// HTTP API requests per second of each app.
    pub api_rates: AppRates,
    /// Each app's sessions on the other nodes, as their last heartbeats told, by app index:
    /// counted against the app's quota beside this node's own. Written by the cluster bridge
    /// alone; zero without clustering and for apps without a quota.
    pub peer_app_connections: Box<[AtomicI64]>,
    draining: AtomicBool,
    ready: AtomicBool,
}

impl Node {
    pub fn new(
        config: Config,
        io_driver: &'static str,
        max_connections: usize,
        shards: Vec<ShardLink>,
        tls: Option<NodeTls>,
        webhooks: Option<Sender<Job>>,
        cluster: Option<ClusterLink>,
    ) -> Node {
        let ip_limits = IpLimits::new(config.max_connections_per_ip, config.connection_rate_per_ip);
        let api_rates = config.apps.iter().map(|app| config.api_request_rate(app));
        let api_rates = AppRates::new(api_rates.collect());
        let peer_app_connections = config.apps.iter().map(|_| AtomicI64::new(0)).collect();
        Node {
            input_budget: InputBudget::new(config.input_budget_bytes),
            config: Arc::new(config),
            id: fastrand::u32(1..),
            started: Instant::now(),
            io_driver,
            max_connections,
            open_sockets: AtomicUsize::new(0),
            shards,
            tls,
            webhooks,
            webhook_stats: WebhookStats::default(),
            cluster,
            ip_limits,
            api_rates,
            peer_app_connections,
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        }
    }

    /// Sockets (sessions and HTTP connections) the node accepts at once: `max_connections` plus
    /// a reserve for HTTP connections, so the API still answers on a full node.
    pub fn max_sockets(&self) -> usize {
        self.max_connections
            .saturating_add(crate::server::API_RESERVE)
    }

    /// Seconds since start: the clock of the per-second limits.
    pub fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Open WebSocket sessions across all shards.
    pub fn connections(&self) -> i64 {
        self.shards.iter().map(|s| s.stats.open_connections()).sum()
    }

    /// Open WebSocket sessions of one app across all shards. Read without coordination, so
    /// connections opening at the same instant on several shards may pass an app's limit by
    /// one each.
    pub fn app_connections(&self, app: usize) -> i64 {
        self.shards
            .iter()
            .map(|s| s.stats.connections[app].load(Ordering::Relaxed))
            .sum()
    }

    /// An app's sessions in the cluster as this node knows them: its own now, plus the other
    /// nodes' as of their last heartbeats (at most a heartbeat interval and a trip through Redis
    /// old), which is what the app's quota is checked against.
    pub fn cluster_app_connections(&self, app: usize) -> i64 {
        let peers = self.peer_app_connections.get(app);
        let peers = peers.map_or(0, |count| count.load(Ordering::Relaxed));
        // Saturating: the others' counts come from the network.
        self.app_connections(app).saturating_add(peers)
    }

    /// Publishes the other nodes' sessions of each app, by app index (from the bridge).
    pub fn set_peer_app_connections(&self, totals: &[u64]) {
        for (slot, &total) in self.peer_app_connections.iter().zip(totals) {
            let total = i64::try_from(total).unwrap_or(i64::MAX);
            slot.store(total, Ordering::Relaxed);
        }
    }

    /// Asks every shard but `except` for its subscription counts of the app's channels: the
    /// named ones, or every occupied one. Each shard answers from its inbox, whatever runtime
    /// waits for the answers (a shard's or the cluster bridge's).
    pub fn ask_counts(
        &self,
        except: Option<usize>,
        app: usize,
        channels: Option<&[Box<str>]>,
    ) -> CountAnswers {
        let mut answers = CountAnswers {
            pending: Vec::new(),
            complete: true,
        };
        for (index, link) in self.shards.iter().enumerate() {
            if Some(index) == except {
                continue;
            }
            let (reply, receiver) = oneshot::channel();
            let message = ShardMessage::ChannelCounts {
                app,
                channels: channels.map(<[Box<str>]>::to_vec),
                reply,
            };
            if link.inbox.send(message).is_ok() {
                answers.pending.push(receiver);
            } else {
                stats::add(&link.stats.inbox_drops, 1);
                answers.complete = false;
            }
        }
        answers
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts the drain once: every shard closes its listener and then its clients.
    pub fn start_drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::AcqRel);
        if first {
            for shard in &self.shards {
                shard.inbox.wake();
            }
        }
        first
    }

    /// The /health body: status, uptime, open connections and the cluster's state. `status`
    /// says whether this process works (liveness); a Redis outage, or a Redis Cluster master
    /// whose slots no live server holds, shows only in `cluster` ("degraded"), because the node still serves its own clients and restarting it would not
    /// bring Redis back.
    pub fn health(&self) -> String {
        let status = if self.is_draining() { "draining" } else { "ok" };
        let cluster = match &self.cluster {
            None => "off",
            Some(link) if link.stats.is_whole() => "ok",
            Some(_) => "degraded",
        };
        serde_json::json!({
            "status": status,
            "uptime_seconds": self.started.elapsed().as_secs(),
            "connections": self.connections(),
            "cluster": cluster,
        })
        .to_string()
    }

    /// Ready means started and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// Shards' answers to `Node::ask_counts`, to be awaited.
pub struct CountAnswers {
    pending: Vec<oneshot::Receiver<ShardCounts>>,
    /// Whether every shard asked got the question (none had a full inbox).
    pub complete: bool,
}

impl CountAnswers {
    /// Waits for every answer, adding each to `totals` as it comes (so a caller that stops
    /// waiting keeps what arrived); false when a shard dropped the question. `pause` is awaited
    /// between slices of the work (see `add_counts`).
    pub async fn add_to<F: Future<Output = ()>>(
        self,
        prefix: &str,
        totals: &mut BTreeMap<String, u64>,
        mut pause: impl FnMut() -> F,
    ) -> bool {
        let mut answered = true;
        for receiver in self.pending {
            match receiver.await {
                Ok(counts) => add_counts(totals, counts, prefix, &mut pause).await,
                Err(_) => answered = false,
            }
        }
        answered
    }
}

/// Channels added to a total between two pauses: about a millisecond of work.
pub const COUNTS_PER_SLICE: usize = 2048;

/// Adds one shard's counts of the channels whose names start with `prefix` to `totals`,
/// awaiting `pause` after every `COUNTS_PER_SLICE`, so that a runtime that also serves clients
/// (a shard) can let them run between slices of a large answer.
pub async fn add_counts<F: Future<Output = ()>>(
    totals: &mut BTreeMap<String, u64>,
    counts: impl IntoIterator<Item = (impl Into<String> + AsRef<str>, u64)>,
    prefix: &str,
    mut pause: impl FnMut() -> F,
) {
    let matching = counts
        .into_iter()
        .filter(|(name, _)| name.as_ref().starts_with(prefix));
    for (added, (name, count)) in matching.enumerate() {
        *totals.entry(name.into()).or_insert(0) += count;
        if added % COUNTS_PER_SLICE == COUNTS_PER_SLICE - 1 {
            pause().await;
        }
    }
}
