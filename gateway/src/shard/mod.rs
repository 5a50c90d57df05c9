//! A shard: one OS thread pinned to a core, running its own monoio runtime with its own
//! SO_REUSEPORT listener. Every connection it accepts lives and dies here; other shards reach it
//! only through its inbox.

mod conn;
mod http;
pub(crate) mod io;
mod session;
pub mod transport;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use hdrhistogram::Histogram;

use crate::admin::stats::{self, Disconnect, Rejection, ShardStats};
use crate::bus::{Broadcast, Inbox, ShardMessage};
use crate::channels::Registry;
use crate::http::api::ApiError;
use crate::node::Node;
use crate::protocol::{codes, ChannelKind, SocketId};

pub use conn::Conn;
use transport::{TlsSession, Transport};

/// Bytes read from a socket at once; also the largest frame that needs no extra buffer.
const SCRATCH_BYTES: usize = 64 * 1024;
/// How long a shard waits for another's answer to a query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Ticks per second while a drain spreads its closes.
const DRAIN_TICKS_PER_SECOND: u64 = 10;
/// Time left to clients to finish their close handshakes after a drain.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// One shard's state, owned by its thread.
pub struct Shard {
    pub index: usize,
    pub node: Arc<Node>,
    registry: RefCell<Registry<Rc<Conn>>>,
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
}

impl Shard {
    fn new(node: Arc<Node>, index: usize) -> Shard {
        let apps = node.config.apps.len();
        Shard {
            index,
            node,
            registry: RefCell::new(Registry::new(apps)),
            conns: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
            tls_scratch: RefCell::new(Vec::new()),
            latency: RefCell::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds"),
            ),
            started: Instant::now(),
            drain_waiters: RefCell::new(Vec::new()),
            pong: crate::ws::frame::text_frame(crate::protocol::message::PONG),
        }
    }

    pub fn stats(&self) -> &ShardStats {
        &self.node.shards[self.index].stats
    }

    /// Seconds since the shard started: the clock for activity timeouts.
    pub fn now(&self) -> u32 {
        self.started.elapsed().as_secs() as u32
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
        let mut registry = self.registry.borrow_mut();
        for channel in conn.subscriptions.take() {
            registry.unsubscribe(conn.app, &channel, conn.id);
        }
        if self.conns.borrow_mut().remove(&conn.id).is_some() {
            self.stats().disconnect(conn.app, reason);
        }
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

    /// Sends an event to every subscriber of a channel on every shard. The frame is encoded
    /// once by the caller and shared.
    pub fn publish(&self, app: usize, channel: &str, frame: Bytes, except: Option<SocketId>) {
        let broadcast = Arc::new(Broadcast {
            app,
            channel: channel.into(),
            frame,
            except,
            published: Instant::now(),
        });
        self.deliver(&broadcast);
        for (index, link) in self.node.shards.iter().enumerate() {
            if index != self.index
                && link
                    .inbox
                    .send(ShardMessage::Broadcast(broadcast.clone()))
                    .is_err()
            {
                stats::add(&link.stats.inbox_drops, 1);
            }
        }
    }

    /// Queues a broadcast to this shard's subscribers of its channel.
    fn deliver(&self, broadcast: &Broadcast) {
        if ChannelKind::of(&broadcast.channel).is_cache() {
            self.registry.borrow_mut().set_cached(
                broadcast.app,
                &broadcast.channel,
                broadcast.frame.clone(),
                broadcast.published,
            );
        }
        let registry = self.registry.borrow();
        let mut delivered = 0;
        for (id, conn) in registry.subscribers(broadcast.app, &broadcast.channel) {
            let excluded = broadcast.except.is_some_and(|except| {
                except.local == id
                    && except.shard as usize == self.index
                    && except.node == self.node.id
            });
            if excluded || conn.close_requested().is_some() {
                continue;
            }
            if self.send(conn, broadcast.frame.clone()) {
                delivered += 1;
            }
        }
        if delivered > 0 {
            stats::add(&self.stats().messages_out, delivered);
            let micros = broadcast.published.elapsed().as_micros() as u64;
            self.latency.borrow_mut().saturating_record(micros.max(1));
        }
    }

    /// Subscription counts across every shard: of all the app's occupied channels, or of one.
    pub async fn channel_counts(
        &self,
        app: usize,
        channel: Option<&str>,
    ) -> Result<BTreeMap<String, u64>, ApiError> {
        let mut replies = Vec::new();
        for (index, link) in self.node.shards.iter().enumerate() {
            if index == self.index {
                continue;
            }
            let (reply, receiver) = oneshot::channel();
            let message = ShardMessage::ChannelCounts {
                app,
                channel: channel.map(Into::into),
                reply,
            };
            if link.inbox.send(message).is_err() {
                stats::add(&link.stats.inbox_drops, 1);
                return Err(ApiError::new(503, "a shard is overloaded; try again"));
            }
            replies.push(receiver);
        }
        let mut totals = BTreeMap::new();
        for (name, count) in self.local_counts(app, channel) {
            *totals.entry(name.into_string()).or_insert(0) += count;
        }
        for receiver in replies {
            match monoio::time::timeout(QUERY_TIMEOUT, receiver).await {
                Ok(Ok(counts)) => {
                    for (name, count) in counts {
                        *totals.entry(name.into_string()).or_insert(0) += count;
                    }
                }
                _ => return Err(ApiError::new(503, "a shard did not answer in time")),
            }
        }
        Ok(totals)
    }

    fn local_counts(&self, app: usize, channel: Option<&str>) -> Vec<(Box<str>, u64)> {
        let registry = self.registry.borrow();
        match channel {
            Some(name) => vec![(name.into(), registry.count(app, name))],
            None => registry.counts(app).map(|(n, c)| (n.into(), c)).collect(),
        }
    }

    fn handle_message(&self, message: ShardMessage) {
        match message {
            ShardMessage::Broadcast(broadcast) => self.deliver(&broadcast),
            ShardMessage::ChannelCounts {
                app,
                channel,
                reply,
            } => {
                // The asker may have given up; nothing to do then.
                let _ = reply.send(self.local_counts(app, channel.as_deref()));
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
        let shard = Rc::new(Shard::new(node, index));
        if let Some(listener) = listeners.plain {
            let listener = monoio::net::TcpListener::from_std(listener)?;
            monoio::spawn(accept_loop(shard.clone(), listener, None));
        }
        if let (Some(listener), Some(tls)) = (listeners.tls, &shard.node.tls) {
            let listener = monoio::net::TcpListener::from_std(listener)?;
            monoio::spawn(accept_loop(
                shard.clone(),
                listener,
                Some(tls.config.clone()),
            ));
        }
        monoio::spawn(inbox_loop(shard.clone(), inbox));
        monoio::spawn(sweep_loop(shard.clone()));
        shard.drain_started().await;
        drain(&shard).await;
        Ok(())
    })
}

async fn inbox_loop(shard: Rc<Shard>, inbox: Inbox) {
    let mut batch = Vec::new();
    loop {
        inbox.next_batch(&mut batch).await;
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
struct OpenSocket(Arc<Node>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0
            .open_sockets
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn accept_loop(
    shard: Rc<Shard>,
    listener: monoio::net::TcpListener,
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
        if open >= node.max_connections {
            shard.reject(Rejection::OverCapacity);
            let refusal = http::refuse_over_capacity(shard.clone(), stream, tls.is_some(), guard);
            monoio::spawn(refusal);
            continue;
        }
        let _ = stream.set_nodelay(true);
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

/// Once a second: closes connections that have been silent too long.
async fn sweep_loop(shard: Rc<Shard>) {
    let limit = shard.node.config.inactivity_timeout;
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        if shard.node.is_draining() {
            return;
        }
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
