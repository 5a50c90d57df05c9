//! How the bridge reaches Redis: one server, with `PUBLISH` / `SUBSCRIBE`, or a Redis Cluster,
//! with sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`) so that each message passes through the one
//! master that owns its channel's slot and the cluster's pub/sub capacity grows with its
//! masters. The bridge speaks to both through `Publisher` and `Subscriber` alike.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::{join_all, LocalBoxFuture};
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use super::sharded::{Message, ShardedSubscriber};
use super::slots::slot;

/// A `redis_url` naming a cluster's seed nodes: `redis-cluster://host:port,host:port/`.
pub const CLUSTER_SCHEME: &str = "redis-cluster://";
/// How long the cluster client waits for one node to connect or to answer: a publish to a
/// master that has just died fails after this (and is counted) instead of holding the others.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// Least time between two fresh cluster connections after failed publishes.
const RECONNECT_GAP: Duration = Duration::from_secs(1);

/// Where the bridge connects.
#[derive(Clone)]
pub enum Target {
    Single(redis::Client),
    /// The client that publishes, and the seed nodes (`host:port`) subscribers start from.
    Cluster(Box<ClusterClient>, Vec<String>),
}

impl Target {
    /// Reads `redis_url`: `redis://` or `unix://` for one server, `redis-cluster://` and a
    /// comma-separated list of seed nodes for a cluster.
    pub fn from_url(url: &str) -> redis::RedisResult<Target> {
        let Some(seeds) = url.strip_prefix(CLUSTER_SCHEME) else {
            return Ok(Target::Single(redis::Client::open(url)?));
        };
        let (seeds, path) = seeds.split_once('/').unwrap_or((seeds, ""));
        let seeds: Vec<String> = (seeds.split(','))
            .map(str::trim)
            .filter(|seed| !seed.is_empty())
            .map(str::to_owned)
            .collect();
        if seeds.is_empty() {
            let error = (
                redis::ErrorKind::InvalidClientConfig,
                "no seed node in redis-cluster://",
            );
            return Err(error.into());
        }
        let urls = seeds.iter().map(|seed| format!("redis://{seed}/{path}"));
        // No retries: a publish the crate sent again later, through another route, could
        // arrive after the channel's next one. It fails instead, and is counted.
        let client = ClusterClient::builder(urls.collect::<Vec<String>>())
            .connection_timeout(NODE_TIMEOUT)
            .response_timeout(NODE_TIMEOUT)
            .retries(0)
            .build()?;
        Ok(Target::Cluster(Box::new(client), seeds))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(..))
    }

    /// Opens a session: a connection to publish on and one (per master) to subscribe with.
    pub async fn connect(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> redis::RedisResult<(Publisher, Subscriber)> {
        match self {
            Target::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout));
                let publisher = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                let pubsub = tokio::time::timeout(connect_timeout, client.get_async_pubsub())
                    .await
                    .map_err(|_| timed_out("pub/sub connection"))??;
                let (sink, stream) = pubsub.split();
                Ok((
                    Publisher::Single(publisher),
                    Subscriber::Single { sink, stream },
                ))
            }
            Target::Cluster(client, seeds) => {
                let connecting = client.get_async_connection();
                let publisher = tokio::time::timeout(connect_timeout, connecting)
                    .await
                    .map_err(|_| timed_out("cluster connection"))??;
                let subscriber = ShardedSubscriber::connect(seeds.clone()).await?;
                let publisher = ClusterPublisher {
                    client: (**client).clone(),
                    conn: RefCell::new(publisher),
                    renewed: Cell::new(Instant::now()),
                };
                Ok((
                    Publisher::Cluster(Rc::new(publisher)),
                    Subscriber::Cluster(Box::new(subscriber)),
                ))
            }
        }
    }
}

fn timed_out(what: &'static str) -> redis::RedisError {
    (redis::ErrorKind::Io, "timed out opening a", what.to_owned()).into()
}

/// A cache channel's last event as Redis keeps it, and the time it has left.
pub type Kept = (Vec<u8>, Duration);

/// What the bridge writes to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A message to a Redis channel.
    Publish { channel: String, message: Vec<u8> },
    /// A cache channel's last event, kept under `key` for `ttl` (`SET ... PX`), for nodes that
    /// get their first subscriber later. The key shares its channel's hash slot.
    Keep {
        key: String,
        value: Vec<u8>,
        ttl: Duration,
    },
}

impl Command {
    /// The key or channel its hash slot follows.
    fn slot_key(&self) -> &str {
        match self {
            Command::Publish { channel, .. } => channel,
            Command::Keep { key, .. } => key,
        }
    }

    fn add_to(self, pipe: &mut redis::Pipeline, publish: &str) {
        match self {
            Command::Publish { channel, message } => pipe.cmd(publish).arg(channel).arg(message),
            Command::Keep { key, value, ttl } => {
                let ttl = ttl.as_millis() as u64;
                pipe.cmd("SET").arg(key).arg(value).arg("PX").arg(ttl)
            }
        }
        .ignore();
    }
}

/// Publishes: `PUBLISH` to one server, `SPUBLISH` routed by slot on a cluster.
#[derive(Clone)]
pub enum Publisher {
    Single(MultiplexedConnection),
    Cluster(Rc<ClusterPublisher>),
}

/// The cluster client's connection, renewed after failures: the crate reconnects to a node it
/// lost but keeps its slot map until a node answers MOVED, so a dead master's slots would stay
/// routed to it after its replica took over. A fresh connection reads the slots anew.
pub struct ClusterPublisher {
    client: ClusterClient,
    conn: RefCell<ClusterConnection>,
    renewed: Cell<Instant>,
}

impl ClusterPublisher {
    async fn renew(&self) {
        if self.renewed.get().elapsed() < RECONNECT_GAP {
            return;
        }
        self.renewed.set(Instant::now());
        match self.client.get_async_connection().await {
            Ok(conn) => *self.conn.borrow_mut() = conn,
            Err(error) => tracing::debug!(%error, "redis cluster connection not renewed"),
        }
    }
}

impl Publisher {
    fn command(&self) -> &'static str {
        match self {
            Publisher::Single(_) => "PUBLISH",
            Publisher::Cluster(_) => "SPUBLISH",
        }
    }

    /// Publishes one message.
    pub fn publish(
        &self,
        channel: String,
        message: Vec<u8>,
    ) -> LocalBoxFuture<'static, redis::RedisResult<()>> {
        let sent = self.publish_all(vec![Command::Publish { channel, message }]);
        Box::pin(async move { sent.await.map_err(|unsent| unsent.error) })
    }

    /// A cache channel's last event kept under `key` and the time it has left, if any.
    pub fn kept(&self, key: String) -> LocalBoxFuture<'static, redis::RedisResult<Option<Kept>>> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        let this = self.clone();
        Box::pin(async move {
            let (value, ttl): (Option<Vec<u8>>, i64) = match this {
                Publisher::Single(mut conn) => pipe.query_async(&mut conn).await?,
                Publisher::Cluster(cluster) => {
                    let mut conn = cluster.conn.borrow().clone();
                    pipe.query_async(&mut conn).await?
                }
            };
            let left = u64::try_from(ttl).ok().map(Duration::from_millis);
            Ok(value.zip(left))
        })
    }

    /// Publishes messages in order: one pipeline to one server; on a cluster, one pipeline per
    /// hash slot, all at once (the order that matters is per channel, and one channel's messages
    /// go through one pipeline in the order sent).
    pub fn publish_all(
        &self,
        messages: Vec<Command>,
    ) -> LocalBoxFuture<'static, Result<(), Unsent>> {
        let name = self.command();
        match self.clone() {
            Publisher::Single(mut conn) => Box::pin(async move {
                let mut pipe = redis::pipe();
                for command in messages {
                    command.add_to(&mut pipe, name);
                }
                let sent = pipe.query_async::<()>(&mut conn).await;
                sent.map_err(|error| Unsent {
                    error,
                    slots: Vec::new(),
                })
            }),
            Publisher::Cluster(cluster) => Box::pin(async move {
                let conn = cluster.conn.borrow().clone();
                let sends = per_slot(name, messages).into_iter().map(|(slot, batch)| {
                    let mut conn = conn.clone();
                    async move {
                        let sent = batch.pipe.query_async::<()>(&mut conn).await;
                        sent.map_err(|error| (slot, batch.publishes, error))
                    }
                });
                let failed: Vec<_> = join_all(sends)
                    .await
                    .into_iter()
                    .filter_map(Result::err)
                    .collect();
                let Some((_, _, error)) = failed.first() else {
                    return Ok(());
                };
                let error = error.clone();
                cluster.renew().await;
                let slots = failed.into_iter().map(|(slot, n, _)| (slot, n)).collect();
                Err(Unsent { error, slots })
            }),
        }
    }
}

/// Messages Redis did not take: the first error, and on a cluster the hash slots whose
/// pipelines failed, with the publishes each carried (on one server, all of them failed).
#[derive(Debug)]
pub struct Unsent {
    pub error: redis::RedisError,
    pub slots: Vec<(u16, u64)>,
}

/// One hash slot's pipeline and the publishes in it.
#[derive(Default)]
struct SlotBatch {
    pipe: redis::Pipeline,
    publishes: u64,
}

/// Messages as one pipeline per hash slot, in order within each: a cluster takes a pipeline
/// only when all its keys share a slot, and one channel's messages must keep their order.
fn per_slot(publish: &str, commands: Vec<Command>) -> BTreeMap<u16, SlotBatch> {
    let mut batches: BTreeMap<u16, SlotBatch> = BTreeMap::new();
    for command in commands {
        let batch = batches
            .entry(slot(command.slot_key().as_bytes()))
            .or_default();
        batch.publishes += u64::from(matches!(command, Command::Publish { .. }));
        command.add_to(&mut batch.pipe, publish);
    }
    batches
}

/// Subscriptions: one pub/sub connection to one server, or one per master of a cluster.
pub enum Subscriber {
    Single {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    Cluster(Box<ShardedSubscriber>),
}

impl Subscriber {
    pub async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single { sink, .. } => sink.subscribe(channels).await,
            Subscriber::Cluster(sharded) => {
                sharded.subscribe(channels);
                Ok(())
            }
        }
    }

    pub async fn unsubscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single { sink, .. } => sink.unsubscribe(channels).await,
            Subscriber::Cluster(sharded) => {
                sharded.unsubscribe(channels);
                Ok(())
            }
        }
    }

    /// The next message; `Ok(None)` when the connection has closed.
    pub async fn next(&mut self) -> redis::RedisResult<Option<Message>> {
        match self {
            Subscriber::Single { stream, .. } => Ok(stream.next().await.map(|message| Message {
                channel: message.get_channel_name().to_owned(),
                payload: message.get_payload_bytes().to_vec(),
            })),
            Subscriber::Cluster(sharded) => Ok(Some(sharded.next().await)),
        }
    }

    /// A cluster's masters as this node's subscriptions see them; none for one server.
    pub fn redis_shards(&self) -> Vec<RedisShard> {
        let Subscriber::Cluster(sharded) = self else {
            return Vec::new();
        };
        let masters = sharded.masters().into_iter();
        masters
            .map(|(addr, up, subscriptions)| RedisShard {
                addr,
                up,
                subscriptions,
            })
            .collect()
    }

    /// Whether every one of these channels is subscribed where messages to it go (always with
    /// one server, where subscribing waits for the server's answer).
    pub fn confirmed(&self, channels: &[String]) -> bool {
        match self {
            Subscriber::Single { .. } => true,
            Subscriber::Cluster(sharded) => channels.iter().all(|c| sharded.confirmed(c)),
        }
    }

    /// The master that serves a hash slot now, as this node's subscriptions see it; none for
    /// one server.
    pub fn master_of(&self, slot: u16) -> Option<String> {
        match self {
            Subscriber::Single { .. } => None,
            Subscriber::Cluster(sharded) => sharded.master_of(slot),
        }
    }

    /// Wanted channels that no server holds now (a cluster's failover in progress).
    pub fn unplaced(&self) -> usize {
        match self {
            Subscriber::Single { .. } => 0,
            Subscriber::Cluster(sharded) => sharded.unplaced(),
        }
    }
}

/// One master of a Redis Cluster, for /metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisShard {
    pub addr: String,
    /// Whether this node's subscriber connection to it is up.
    pub up: bool,
    /// Redis channels this node holds on it.
    pub subscriptions: usize,
}

/// Broadcasts a Redis Cluster master did not take, by the master's address (the one serving
/// their slot when the failure was seen), since start.
pub type ShardFailures = BTreeMap<String, u64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clusters_publishes_go_in_one_pipeline_per_slot_in_order() {
        let messages = ["a", "b", "a", "c", "{a}x"].map(|channel| Command::Publish {
            channel: channel.to_owned(),
            message: vec![],
        });
        let mut messages = messages.to_vec();
        messages.push(Command::Keep {
            key: "{b}#last".into(),
            value: vec![],
            ttl: Duration::from_secs(1),
        });
        let batches = per_slot("SPUBLISH", messages);
        assert_eq!(batches.len(), 3, "a and {{a}}x share a slot");
        let counts = |name: &[u8]| batches[&slot(name)].pipe.cmd_iter().count();
        assert_eq!((counts(b"a"), counts(b"b"), counts(b"c")), (3, 2, 1));
        assert_eq!(
            batches[&slot(b"b")].publishes,
            1,
            "a kept event is no publish"
        );
        let packed = String::from_utf8(batches[&slot(b"a")].pipe.get_packed_pipeline()).unwrap();
        let (first, last) = (
            packed.find("\r\na\r\n").unwrap(),
            packed.find("{a}x").unwrap(),
        );
        assert!(first < last, "in the order given");
    }

    #[test]
    fn a_redis_url_names_one_server_or_a_clusters_seeds() {
        assert!(!Target::from_url("redis://127.0.0.1:6379/")
            .unwrap()
            .is_cluster());
        let cluster = Target::from_url("redis-cluster://127.0.0.1:7001, 127.0.0.1:7002/").unwrap();
        assert!(cluster.is_cluster());
        assert!(Target::from_url("redis-cluster://").is_err());
        assert!(Target::from_url("redis-cluster://,/").is_err());
    }
}
