//! A shard: one OS thread pinned to a core, running its own monoio runtime with its own
//! SO_REUSEPORT listener. Every connection it accepts lives and dies here; other shards reach it
//! only through its inbox.

mod conn;
mod counts;
mod http;
pub(crate) mod io;
mod members;
mod session;
pub mod transport;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::poll_fn;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::admin::stats::{self, Disconnect, Rejection, ShardStats};
use crate::bus::{Broadcast, Inbox, InboxFull, ShardCounts, ShardMessage};
use crate::channels::counts::OwnedCounts;
use crate::channels::presence::Source;
use crate::channels::Registry;
use crate::cluster::{wire, BridgeMessage, QUERY_DEADLINE};
use crate::http::api::ApiError;
use crate::node::{add_counts, Node};
use crate::protocol::channel::server_to_user;
use crate::protocol::{codes, ChannelKind, SocketId};
use crate::webhooks::{Job, WebhookEvent, WebhookKind};

pub use conn::Conn;
use transport::{TlsSession, Transport};

/// Bytes read from a socket at once; also the largest frame that needs no extra buffer.
const SCRATCH_BYTES: usize = 64 * 1024;
/// How long a shard waits for another's answer to a query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a shard waits for the other nodes' share of an answer: the bridge's own deadline
/// plus room for the bridge to be busy.
const CLUSTER_QUERY_TIMEOUT: Duration = QUERY_DEADLINE.saturating_add(Duration::from_millis(500));
/// Ticks per second while a drain spreads its closes.
const DRAIN_TICKS_PER_SECOND: u64 = 10;
/// Time left to clients to finish their close handshakes after a drain.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// One shard's state, owned by its thread.
pub struct Shard {
    pub index: usize,
    pub node: Arc<Node>,
    /// This shard as a source of presence members and signed-in users.
    me: Source,
    /// What other shards, and the cluster bridge, ask of this one.
    inbox: Inbox,
    registry: RefCell<Registry<Rc<Conn>>>,
    /// Node-wide subscriber counts of the channels this shard owns (see `counts`).
    counts: RefCell<OwnedCounts>,
    conns: RefCell<HashMap<u64, Rc<Conn>>>,
    next_id: Cell<u64>,
    /// Where every connection on this shard reads into.
    scratch: RefCell<Vec<u8>>,
    /// Ciphertext on its way in or out of TLS connections.
    tls_scratch: RefCell<Vec<u8>>,
    /// Fanout latency in microseconds, from publish to queued on this shard's subscribers.
    latency: RefCell<Histogram<u64>>,
    started: Instant,
    drain_waiters: RefCell<Vec<Waker>>,
    pong: Bytes,
    /// Messages for the Redis bridge that must not be lost (which channels this shard holds,
    /// roster changes) and that its full inbox refused, in order. Sent again before any newer one.
    cluster_backlog: RefCell<VecDeque<BridgeMessage>>,
}

/// Which channels a counts query covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every occupied channel whose name starts with the prefix.
    Prefix(&'a str),
    /// These channels, occupied or not.
    Named(&'a [Box<str>]),
}

impl Shard {
    fn new(node: Arc<Node>, index: usize, inbox: Inbox) -> Shard {
        let apps = node.config.apps.len();
        let shards = node.shards.len();
        Shard {
            index,
            me: Source {
                node: node.id,
                shard: index as u32,
            },
            node,
            inbox,
            registry: RefCell::new(Registry::new(apps)),
            counts: RefCell::new(OwnedCounts::new(apps, shards)),
            conns: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
            tls_scratch: RefCell::new(Vec::new()),
            latency: RefCell::new(crate::admin::stats::latency_histogram()),
            started: Instant::now(),
            drain_waiters: RefCell::new(Vec::new()),
            pong: crate::ws::frame::text_frame(crate::protocol::message::PONG),
            cluster_backlog: RefCell::new(VecDeque::new()),
        }
    }

    pub fn stats(&self) -> &ShardStats {
        &self.node.shards[self.index].stats
    }

    /// How long a client may take to read a response, or a connection's last bytes: as long as
    /// it may take to send a request head (`head_timeout`).
    pub fn response_time(&self) -> Duration {
        Duration::from_secs(self.node.config.head_timeout)
    }

    /// Seconds since the shard started: the clock for activity timeouts.
    pub fn now(&self) -> u32 {
        self.started.elapsed().as_secs() as u32
    }

    /// A connection's cluster-wide id: this node, this shard, its number here.
    pub fn socket_id(&self, conn: &Conn) -> SocketId {
        SocketId {
            node: self.node.id,
            shard: self.index as u32,
            local: conn.id,
        }
    }

    fn next_socket_id(&self) -> (u64, SocketId) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let socket_id = SocketId {
            node: self.node.id,
            shard: self.index as u32,
            local: id,
        };
        (id, socket_id)
    }

    fn register(&self, conn: Rc<Conn>) {
        self.stats().connect(conn.app);
        self.conns.borrow_mut().insert(conn.id, conn);
    }

    fn unregister(&self, conn: &Conn, reason: Disconnect) {
        for channel in conn.subscriptions.take() {
            self.remove_subscriber(conn, &channel);
        }
        self.sign_out(conn);
        if self.conns.borrow_mut().remove(&conn.id).is_some() {
            self.stats().disconnect(conn.app, reason);
        }
    }

    /// Adds a subscriber to a channel; false if it already was one.
    fn add_subscriber(&self, conn: &Conn, channel: &str) -> bool {
        let conn_rc = self.conns.borrow().get(&conn.id).cloned();
        let Some(conn_rc) = conn_rc else {
            return false;
        };
        let added = self
            .registry
            .borrow_mut()
            .subscribe(conn.app, channel, conn.id, conn_rc);
        if added {
            conn.subscriptions.borrow_mut().push(channel.into());
            self.subscribers_changed(conn.app, channel);
            if self.registry.borrow().count(conn.app, channel) == 1 {
                self.interest(conn.app, channel, true);
            }
        }
        added
    }

    /// Removes a subscriber from a channel (and from its members, on a presence channel). The
    /// caller keeps `conn.subscriptions` in step.
    fn remove_subscriber(&self, conn: &Conn, channel: &str) {
        let removed = self
            .registry
            .borrow_mut()
            .unsubscribe(conn.app, channel, conn.id);
        if !removed {
            return;
        }
        if ChannelKind::of(channel).is_presence() {
            self.leave_presence(conn.app, channel, conn.id);
        }
        self.subscribers_changed(conn.app, channel);
        if self.registry.borrow().count(conn.app, channel) == 0 {
            self.interest(conn.app, channel, false);
        }
    }

    /// Tells the cluster bridge whether this shard holds subscribers of a channel, so that the
    /// node receives the channel's traffic from other nodes exactly while it needs it.
    fn interest(&self, app: usize, channel: &str, occupied: bool) {
        if self.node.cluster.is_none() {
            return;
        }
        self.to_cluster(BridgeMessage::Interest {
            // Shards are at most `MAX_SHARDS` (1000), checked at start.
            shard: self.index as u16,
            app,
            channel: channel.into(),
            occupied,
        });
    }

    /// Queues a message for the Redis bridge behind any it has not taken yet.
    fn to_cluster(&self, message: BridgeMessage) {
        self.cluster_backlog.borrow_mut().push_back(message);
        self.flush_cluster();
    }

    /// Sends the messages the bridge has not taken yet, oldest first, until its inbox is full.
    fn flush_cluster(&self) {
        let Some(cluster) = &self.node.cluster else {
            return;
        };
        let mut backlog = self.cluster_backlog.borrow_mut();
        while let Some(message) = backlog.pop_front() {
            if let Err(message) = cluster.offer(message) {
                backlog.push_front(message);
                break;
            }
        }
        self.stats()
            .cluster_backlog
            .store(backlog.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Queues a frame to one connection, closing it as a slow consumer when its queue is full
    /// even after handing the kernel what it will take now.
    fn send(&self, conn: &Conn, frame: Bytes) -> bool {
        let limit = self.node.config.outbound_queue_bytes;
        if conn.enqueue(frame.clone(), limit) {
            return true;
        }
        // TLS connections are written by their own task, which holds their TLS state.
        let flushed = !conn.is_tls()
            && conn.flush().is_ok_and(|(_, written)| {
                stats::add(&self.stats().bytes_out, written as u64);
                true
            });
        if flushed && conn.enqueue(frame, limit) {
            return true;
        }
        conn.request_close(codes::OVER_CAPACITY, Disconnect::SlowConsumer);
        stats::add(&self.stats().slow_consumer_disconnects, 1);
        false
    }

    /// Sends an event to every subscriber of a channel on every shard (to a user's signed-in
    /// sockets for `#server-to-user-{id}`), and to the other nodes when clustering is on. The
    /// frame is encoded once by the caller and shared. `cache` says whether a cache channel keeps
    /// it.
    pub fn publish(
        &self,
        app: usize,
        channel: &str,
        frame: Bytes,
        except: Option<SocketId>,
        cache: bool,
    ) {
        // A publish made before this one on another shard (its publisher already had the
        // answer) is in this inbox by now: delivering it first keeps every subscriber here, and
        // the cache, in publish order. Other shards get both through their inboxes, in order.
        self.catch_up();
        let broadcast = Arc::new(Broadcast {
            app,
            channel: channel.into(),
            frame,
            except,
            cache,
            published: Instant::now(),
        });
        self.deliver(&broadcast);
        // A shard whose inbox is full misses it; counted there.
        let _ = self.to_other_shards(|| ShardMessage::Broadcast(broadcast.clone()));
        if let Some(cluster) = &self.node.cluster {
            cluster.publish(&broadcast);
        }
    }

    /// Sends a message, made anew for each, to every other shard of the node. A full inbox
    /// drops its copy and counts it; the others still get theirs.
    fn to_other_shards(&self, mut message: impl FnMut() -> ShardMessage) -> Result<(), InboxFull> {
        let mut sent = Ok(());
        for (index, link) in self.node.shards.iter().enumerate() {
            if index != self.index && link.inbox.send(message()).is_err() {
                stats::add(&link.stats.inbox_drops, 1);
                sent = Err(InboxFull);
            }
        }
        sent
    }

    /// Handles every message already in the inbox.
    fn catch_up(&self) {
        while let Some(message) = self.inbox.try_next() {
            self.handle_message(message);
        }
    }

    /// Queues a broadcast to this shard's subscribers of its channel.
    fn deliver(&self, broadcast: &Broadcast) {
        let excluded = |id: u64| {
            broadcast.except.is_some_and(|except| {
                except.local == id
                    && except.shard as usize == self.index
                    && except.node == self.node.id
            })
        };
        let delivered = if let Some(user_id) = server_to_user(&broadcast.channel) {
            let registry = self.registry.borrow();
            let sockets = registry.users(broadcast.app).sockets_of(user_id);
            let ids = sockets.iter().copied().filter(|id| !excluded(*id));
            self.send_to(ids, &broadcast.frame)
        } else {
            if broadcast.cache && ChannelKind::of(&broadcast.channel).is_cache() {
                self.registry.borrow_mut().set_cached(
                    broadcast.app,
                    &broadcast.channel,
                    broadcast.frame.clone(),
                    broadcast.published,
                );
            }
            self.fan_out(
                broadcast.app,
                &broadcast.channel,
                &broadcast.frame,
                excluded,
            )
        };
        if delivered > 0 {
            let micros = broadcast.published.elapsed().as_micros() as u64;
            self.latency.borrow_mut().saturating_record(micros.max(1));
        }
    }

    /// Queues a frame to this shard's subscribers of a channel, but not to `excluded` ones;
    /// returns how many got it.
    fn fan_out(
        &self,
        app: usize,
        channel: &str,
        frame: &Bytes,
        excluded: impl Fn(u64) -> bool,
    ) -> u64 {
        let registry = self.registry.borrow();
        let mut delivered = 0;
        for (id, conn) in registry.subscribers(app, channel) {
            if excluded(id) || conn.close_requested().is_some() {
                continue;
            }
            if self.send(conn, frame.clone()) {
                delivered += 1;
            }
        }
        stats::add(&self.stats().messages_out, delivered);
        delivered
    }

    /// Queues a frame to some of this shard's sockets, by connection number; returns how many
    /// got it.
    fn send_to(&self, ids: impl IntoIterator<Item = u64>, frame: &Bytes) -> u64 {
        let conns = self.conns.borrow();
        let mut delivered = 0;
        for id in ids {
            if let Some(conn) = conns.get(&id) {
                if conn.close_requested().is_none() && self.send(conn, frame.clone()) {
                    delivered += 1;
                }
            }
        }
        stats::add(&self.stats().messages_out, delivered);
        delivered
    }

    /// Hands a webhook event to the sender thread if the app wants this kind; a full queue
    /// drops it and counts it. `event` is only built when it will be sent.
    fn webhook(&self, app: usize, kind: WebhookKind, event: impl FnOnce() -> WebhookEvent) {
        if !self.node.config.apps[app].wants_webhook(kind) {
            return;
        }
        let Some(queue) = &self.node.webhooks else {
            return;
        };
        let job = Job {
            app,
            event: event(),
        };
        if queue.try_send(job).is_err() {
            stats::add(&self.stats().webhook_drops, 1);
        }
    }

    /// Closes every socket on this shard signed in as the user, with 4009.
    fn terminate_user(&self, app: usize, user_id: &str) {
        let registry = self.registry.borrow();
        let conns = self.conns.borrow();
        for id in registry.users(app).sockets_of(user_id) {
            if let Some(conn) = conns.get(id) {
                conn.request_close(codes::UNAUTHORIZED, Disconnect::Terminated);
            }
        }
    }

    /// Subscription counts across every shard and, when clustering is on, every node.
    pub async fn channel_counts(
        &self,
        app: usize,
        scope: Scope<'_>,
    ) -> Result<BTreeMap<String, u64>, ApiError> {
        let remote = self.node.cluster.as_ref().and_then(|cluster| {
            let app = self.node.config.apps[app].id.clone();
            cluster.ask(match scope {
                Scope::Prefix(prefix) => wire::Query::Channels {
                    app,
                    prefix: prefix.into(),
                },
                Scope::Named(channels) => wire::Query::Named {
                    app,
                    channels: channels.iter().map(|c| c.to_string()).collect(),
                },
            })
        });
        let mut totals = self.node_counts(app, scope).await?;
        if let Some(receiver) = remote {
            // Without an answer (the bridge's inbox was full, or it is stuck) the node's own
            // counts stand.
            if let Ok(Ok(counts)) = monoio::time::timeout(CLUSTER_QUERY_TIMEOUT, receiver).await {
                for (name, count) in counts {
                    *totals.entry(name).or_insert(0) += count;
                }
            }
        }
        Ok(totals)
    }

    /// Subscription counts across this node's shards.
    async fn node_counts(
        &self,
        app: usize,
        scope: Scope<'_>,
    ) -> Result<BTreeMap<String, u64>, ApiError> {
        let (channels, prefix) = match scope {
            Scope::Prefix(prefix) => (None, prefix),
            Scope::Named(channels) => (Some(channels), ""),
        };
        let answers = self.node.ask_counts(Some(self.index), app, channels);
        if !answers.complete {
            return Err(ApiError::unavailable("a shard is overloaded; try again"));
        }
        let mut totals = BTreeMap::new();
        add_counts(&mut totals, self.local_counts(app, channels), prefix);
        match monoio::time::timeout(QUERY_TIMEOUT, answers.add_to(prefix, &mut totals)).await {
            Ok(true) => {}
            _ => return Err(ApiError::unavailable("a shard did not answer in time")),
        }
        Ok(totals)
    }

    fn local_counts(&self, app: usize, channels: Option<&[Box<str>]>) -> ShardCounts {
        let registry = self.registry.borrow();
        match channels {
            Some(names) => names
                .iter()
                .map(|name| (name.clone(), registry.count(app, name)))
                .collect(),
            None => registry.counts(app).map(|(n, c)| (n.into(), c)).collect(),
        }
    }

    fn handle_message(&self, message: ShardMessage) {
        match message {
            ShardMessage::Broadcast(broadcast) => self.deliver(&broadcast),
            ShardMessage::Roster(delta) => self.apply_roster(&delta),
            ShardMessage::Subscribers {
                app,
                channel,
                shard,
                count,
            } => self.count_subscribers(app, &channel, shard, count),
            ShardMessage::TerminateUser { app, user_id } => self.terminate_user(app, &user_id),
            ShardMessage::ChannelCounts {
                app,
                channels,
                reply,
            } => {
                // The asker may have given up; nothing to do then.
                let _ = reply.send(self.local_counts(app, channels.as_deref()));
            }
            ShardMessage::Latency { reply } => {
                let _ = reply.send(self.latency.borrow().clone());
            }
        }
    }

    /// Resolves once the node starts draining.
    async fn drain_started(&self) {
        poll_fn(|cx| {
            if self.node.is_draining() {
                return Poll::Ready(());
            }
            let mut waiters = self.drain_waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    fn reject(&self, reason: Rejection) {
        self.stats().reject(reason);
    }
}

/// A shard's listeners: plaintext, TLS, either or both.
pub struct Listeners {
    pub plain: Option<std::net::TcpListener>,
    pub tls: Option<std::net::TcpListener>,
}

/// Runs a shard on the current thread until the node has drained.
pub fn run(
    node: Arc<Node>,
    index: usize,
    inbox: Inbox,
    listeners: Listeners,
) -> std::io::Result<()> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .with_entries(4096)
        .build()?;
    runtime.block_on(async move {
        let shard = Rc::new(Shard::new(node, index, inbox));
        let mut listening = Vec::new();
        if let Some(listener) = listeners.plain {
            let listener = Rc::new(monoio::net::TcpListener::from_std(listener)?);
            listening.push(listener.clone());
            monoio::spawn(accept_loop(shard.clone(), listener, None));
        }
        if let (Some(listener), Some(tls)) = (listeners.tls, &shard.node.tls) {
            let listener = Rc::new(monoio::net::TcpListener::from_std(listener)?);
            listening.push(listener.clone());
            monoio::spawn(accept_loop(
                shard.clone(),
                listener,
                Some(tls.config.clone()),
            ));
        }
        monoio::spawn(inbox_loop(shard.clone()));
        monoio::spawn(sweep_loop(shard.clone()));
        shard.drain_started().await;
        // Here, not in the accept loops: with no clients to drain the shard returns at once,
        // and an accept loop may not run again before then.
        for listener in &listening {
            io::stop_listening(listener.as_raw_fd());
        }
        drain(&shard).await;
        Ok(())
    })
}

async fn inbox_loop(shard: Rc<Shard>) {
    let mut batch = Vec::new();
    loop {
        shard.inbox.next_batch(&mut batch).await;
        for message in batch.drain(..) {
            shard.handle_message(message);
        }
        if shard.node.is_draining() {
            for waker in shard.drain_waiters.take() {
                waker.wake();
            }
        }
    }
}

/// Decrements the node's open-socket count when a connection ends, however it ends.
pub struct OpenSocket(Arc<Node>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0
            .open_sockets
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn accept_loop(
    shard: Rc<Shard>,
    listener: Rc<monoio::net::TcpListener>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = shard.drain_started() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                // The connection stays in the backlog; try again once something has closed.
                shard.reject(Rejection::FileLimit);
                monoio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(shard = shard.index, error = %e, "accept failed");
                continue;
            }
        };
        let node = &shard.node;
        let open = node
            .open_sockets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let guard = OpenSocket(node.clone());
        if open >= node.max_sockets() {
            shard.reject(Rejection::OverCapacity);
            let refusal = http::refuse_over_capacity(shard.clone(), stream, tls.is_some(), guard);
            monoio::spawn(refusal);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let send_buffer = node.config.send_buffer_bytes;
        if send_buffer > 0 {
            if let Err(error) = io::set_send_buffer(stream.as_raw_fd(), send_buffer) {
                tracing::debug!(shard = shard.index, %error, "cannot cap the send buffer");
            }
        }
        let transport = match &tls {
            None => Transport::Plain,
            Some(config) => match TlsSession::new(config.clone()) {
                Ok(session) => Transport::Tls(Box::new(session)),
                Err(error) => {
                    tracing::warn!(shard = shard.index, %error, "cannot start a TLS session");
                    continue;
                }
            },
        };
        monoio::spawn(http::serve(shard.clone(), stream, transport, guard));
    }
}

/// Once a second: closes connections that have been silent too long, sends the subscription
/// counts that changed (so a burst of subscriptions makes one event, not one each), and retries
/// what the cluster bridge had no room for.
async fn sweep_loop(shard: Rc<Shard>) {
    let limit = shard.node.config.inactivity_timeout;
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        if shard.node.is_draining() {
            return;
        }
        shard.flush_subscription_counts();
        shard.flush_cluster();
        let now = shard.now();
        for conn in shard.conns.borrow().values() {
            if u64::from(conn.silent_for(now)) > limit {
                conn.request_close(codes::PONG_NOT_RECEIVED, Disconnect::ActivityTimeout);
            }
        }
    }
}

/// Closes every client with 4200, spread over the drain window so that they do not all
/// reconnect at once, then gives them a moment to finish their close handshakes.
async fn drain(shard: &Shard) {
    let ids: Vec<u64> = shard.conns.borrow().keys().copied().collect();
    let ticks = (shard.node.config.drain_seconds * DRAIN_TICKS_PER_SECOND).max(1) as usize;
    let per_tick = ids.len().div_ceil(ticks).max(1);
    tracing::info!(shard = shard.index, clients = ids.len(), "draining");
    for chunk in ids.chunks(per_tick) {
        for id in chunk {
            if let Some(conn) = shard.conns.borrow().get(id) {
                conn.request_close(codes::GOING_AWAY, Disconnect::Drain);
            }
        }
        monoio::time::sleep(Duration::from_millis(1000 / DRAIN_TICKS_PER_SECOND)).await;
    }
    let deadline = Instant::now() + DRAIN_GRACE;
    while !shard.conns.borrow().is_empty() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
}
