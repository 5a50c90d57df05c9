//! A shard: one OS thread pinned to a core, running its own monoio runtime with its own
//! SO_REUSEPORT listener. Every connection it accepts lives and dies here; other shards reach it
//! only through its inbox.

mod admit;
mod conn;
mod http;
pub(crate) mod io;
mod send_batch;
mod session;
pub mod transport;
mod turn;

use crate::memory::{self, GiveBack};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::admin::stats::{self, Rejection, ShardStats};
use crate::bus::{Inbox, InboxFull, ShardMessage};
use crate::cluster::{wire, BridgeMessage, QUERY_DEADLINE};
use crate::http::api::ApiError;
use crate::limits::{HandshakeBudget, IpClaim};
use crate::node::{add_counts, Node};
use crate::pusher::{Core, Place, Publish, Transmit, DRAIN_TICKS_PER_SECOND};
use send_batch::SendBatch;

pub use conn::Conn;

/// Bytes read from a socket at once; also the largest frame that needs no extra buffer.
const SCRATCH_BYTES: usize = 64 * 1024;
/// How long a shard waits for another's answer to a query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a shard waits for the other nodes' share of an answer: the bridge's own deadline
/// plus room for the bridge to be busy.
const CLUSTER_QUERY_TIMEOUT: Duration = QUERY_DEADLINE.saturating_add(Duration::from_millis(500));
/// Time left to clients to finish their close handshakes after a drain.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// One shard's runtime, owned by its thread: the Pusher core it drives, its inbox, and the
/// buffers its connections share.
pub struct Shard {
    pub index: usize,
    pub node: Arc<Node>,
    /// What other shards, and the cluster bridge, ask of this one.
    inbox: Inbox,
    core: RefCell<Core<Rc<Conn>>>,
    /// Where every connection on this shard reads into.
    scratch: RefCell<Vec<u8>>,
    /// Ciphertext on its way in or out of TLS connections.
    tls_scratch: RefCell<Vec<u8>>,
    started: Instant,
    drain_waiters: RefCell<Vec<Waker>>,
    /// Messages for the Redis bridge that must not be lost (which channels this shard holds,
    /// roster changes) and that its full inbox refused, in order. Sent again before any newer one.
    cluster_backlog: RefCell<VecDeque<BridgeMessage>>,
    /// TLS handshakes this shard may start, when `tls_handshake_rate` is set.
    handshakes: RefCell<Option<HandshakeBudget>>,
    /// Connections whose queued frames the shard writes after the input at hand.
    writable: RefCell<Vec<Rc<Conn>>>,
    /// The output task, parked while nothing waits to be written or delivered.
    output_waker: Cell<Option<Waker>>,
    /// The ring that writes many connections with one system call; none where io_uring refused
    /// one, and then each connection is written with its own `sendmsg`.
    sends: RefCell<Option<SendBatch>>,
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
        let started = Instant::now();
        let place = Place {
            node: node.id,
            shard: index,
            shards: node.shards.len(),
            clustered: node.cluster.is_some(),
        };
        let stats = node.shards[index].stats.clone();
        let core = Core::new(node.config.clone(), stats, place, started);
        let handshakes = HandshakeBudget::new(node.config.tls_handshake_rate);
        let sends = SendBatch::new()
            .inspect_err(|error| tracing::warn!(%error, "no io_uring for batched sends; one sendmsg per connection"))
            .ok();
        Shard {
            index,
            node,
            inbox,
            core: RefCell::new(core),
            scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
            tls_scratch: RefCell::new(Vec::new()),
            started,
            drain_waiters: RefCell::new(Vec::new()),
            cluster_backlog: RefCell::new(VecDeque::new()),
            handshakes: RefCell::new(handshakes),
            writable: RefCell::new(Vec::new()),
            output_waker: Cell::new(None),
            sends: RefCell::new(sends),
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

    /// Seconds since the shard started: the core's clock for activity timeouts.
    pub fn now(&self) -> u32 {
        self.started.elapsed().as_secs() as u32
    }

    /// Feeds the core one input and carries out what it asks of the shard. Frames it queued to
    /// plaintext connections, and broadcasts it left to deliver in slices, are for the output
    /// task, woken here.
    fn apply<R>(&self, input: impl FnOnce(&mut Core<Rc<Conn>>) -> R) -> R {
        let mut core = self.core.borrow_mut();
        let result = input(&mut core);
        while let Some(transmit) = core.poll_transmit() {
            self.carry_out(transmit);
        }
        if core.has_output() {
            if let Some(waker) = self.output_waker.take() {
                waker.wake();
            }
        }
        result
    }

    /// Writes out what the inputs handled since the last time queued to plaintext connections:
    /// one system call per connection for all of it, and no session task woken.
    fn write_queued(&self) {
        let mut writable = self.writable.borrow_mut();
        self.core.borrow_mut().take_writable(&mut writable);
        let written = self.write_batched(&mut writable);
        stats::add(&self.stats().bytes_out, written as u64);
    }

    /// Writes the connections' queues with one io_uring submission for all of them, and what
    /// that left with a `sendmsg` each. Bytes written.
    fn write_batched(&self, conns: &mut Vec<Rc<Conn>>) -> usize {
        let mut sends = self.sends.borrow_mut();
        let Some(batch) = sends.as_mut() else {
            return conns.drain(..).map(|conn| conn.write_queued()).sum();
        };
        // A connection whose queue emptied and filled again is listed twice: one send each.
        conns.sort_unstable_by_key(Rc::as_ptr);
        conns.dedup_by(|a, b| Rc::ptr_eq(a, b));
        let queues: Vec<_> = conns.iter().map(|conn| conn.queued()).collect();
        let messages = (conns.iter().zip(&queues))
            .map(|(conn, queue)| (conn.fd(), queue.iter().map(|frame| &frame[..])));
        let (results, failure) = batch.send(messages);
        // The queues change as the results are taken into account.
        drop(queues);
        let written = conns
            .iter()
            .zip(results)
            .map(|(conn, result)| conn.sent(result));
        let written = written.sum();
        if let Some(failure) = failure {
            tracing::warn!(%failure, "io_uring failed a batched send; one sendmsg per connection from now on");
            *sends = None;
        }
        conns.clear();
        written
    }

    fn carry_out(&self, transmit: Transmit) {
        match transmit {
            // A shard whose inbox is full misses it; counted there.
            Transmit::Shard { to, message } => drop(self.to_shard(to, message)),
            Transmit::Cluster(message) => {
                self.cluster_backlog.borrow_mut().push_back(message);
                self.flush_cluster();
            }
            Transmit::ClusterPublish(broadcast) => {
                if let Some(cluster) = &self.node.cluster {
                    cluster.publish(&broadcast);
                }
            }
            Transmit::AskCache { app, channel } => {
                if let Some(cluster) = &self.node.cluster {
                    cluster.ask_cache(self.index as u16, app, channel);
                }
            }
            Transmit::Webhook(job) => {
                let sent = self.node.webhooks.as_ref().map(|q| q.try_send(job));
                if matches!(sent, Some(Err(_))) {
                    stats::add(&self.stats().webhook_drops, 1);
                }
            }
        }
    }

    /// Queues a frame to one session (see `Core::send`).
    fn send(&self, conn: &Rc<Conn>, frame: Bytes) -> bool {
        self.core.borrow().send(conn, frame)
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

    /// Whether any shard of the node has as many writes waiting as it may:
    /// publishes wait then (see `wait_for_fanout`).
    fn fanout_backlogged(&self) -> bool {
        (self.node.shards.iter()).any(|link| {
            link.stats
                .fanout_waiting
                .load(std::sync::atomic::Ordering::Relaxed)
                >= self.node.config.fanout_backlog
        })
    }

    /// Holds a publish back while the node's shards are behind with their fanout, for at most
    /// `fanout_wait_ms`: publishers slow down to what the node delivers, instead of its backlog
    /// growing without bound. False when the wait ran out.
    pub async fn wait_for_fanout(&self) -> bool {
        let deadline = Instant::now() + Duration::from_millis(self.node.config.fanout_wait_ms);
        while self.fanout_backlogged() {
            if Instant::now() >= deadline {
                return false;
            }
            pause().await;
        }
        true
    }

    /// Publishes an event from this shard (see `Core::publish`).
    pub fn publish(&self, publish: Publish) {
        // A publish made before this one on another shard (its publisher already had the
        // answer) is in this inbox by now: delivering it first keeps every subscriber here, and
        // the cache, in publish order. Other shards get both through their inboxes, in order.
        self.catch_up();
        self.apply(|core| core.publish(publish, Instant::now()));
    }

    /// A text message from a session's client. Client events are publishes: the inbox goes
    /// first, as for any publish.
    fn client_message(&self, conn: &Conn, text: &str) {
        self.catch_up();
        self.apply(|core| core.client_message(conn.id, text, Instant::now()));
    }

    /// Sends a message to one other shard; a full inbox drops it and counts it there.
    fn to_shard(&self, to: usize, message: ShardMessage) -> Result<(), InboxFull> {
        let link = &self.node.shards[to];
        let sent = link.inbox.send(message);
        if sent.is_err() {
            stats::add(&link.stats.inbox_drops, 1);
        }
        sent
    }

    /// Sends a message, made anew for each, to every other shard of the node. A full inbox
    /// drops its copy and counts it; the others still get theirs.
    fn to_other_shards(&self, mut message: impl FnMut() -> ShardMessage) -> Result<(), InboxFull> {
        let mut sent = Ok(());
        for to in (0..self.node.shards.len()).filter(|&to| to != self.index) {
            if self.to_shard(to, message()).is_err() {
                sent = Err(InboxFull);
            }
        }
        sent
    }

    /// Handles every message already in the inbox.
    fn catch_up(&self) {
        self.apply(|core| {
            let now = Instant::now();
            while let Some(message) = self.inbox.try_next() {
                core.handle_message(message, now);
            }
        });
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
                add_counts(&mut totals, counts, "", pause).await;
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
        let local = self.core.borrow().local_counts(app, channels);
        add_counts(&mut totals, local, prefix, pause).await;
        let adding = answers.add_to(prefix, &mut totals, pause);
        match monoio::time::timeout(QUERY_TIMEOUT, adding).await {
            Ok(true) => {}
            _ => return Err(ApiError::unavailable("a shard did not answer in time")),
        }
        Ok(totals)
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

/// Lets the shard serve its clients between slices of a long job (an HTTP API answer over many
/// channels). A timer, not a yield to the run queue: measured with 200,000 channels listed, a
/// yield left bystanders' deliveries waiting up to 426 ms, a 1 ms timer at most 26 ms.
pub async fn pause() {
    monoio::time::sleep(Duration::from_millis(1)).await
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
        monoio::spawn(output_loop(shard.clone()));
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
    let waiting = || {
        shard
            .stats()
            .fanout_waiting
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    loop {
        // Publishes wait for room (`wait_for_fanout`); broadcasts from other nodes and client
        // events do not, and past twice the backlog the inbox is left to fill, so that what
        // comes then is dropped and counted (`gateway_inbox_drops_total`) rather than held.
        while waiting() >= shard.node.config.fanout_backlog.saturating_mul(2) {
            pause().await;
        }
        shard.inbox.next_batch(&mut batch).await;
        shard.apply(|core| {
            let now = Instant::now();
            for message in batch.drain(..) {
                core.handle_message(message, now);
            }
        });
        if shard.node.is_draining() {
            for waker in shard.drain_waiters.take() {
                waker.wake();
            }
        }
    }
}

/// Writes what the shard's inputs queued to plaintext connections once the tasks that ran
/// before it are done, so that a publish is answered before its frames are written and one
/// system call per connection carries what several inputs queued. Then delivers the broadcasts
/// too big to deliver at once, a slice at a time, with a pause between slices in which the
/// shard serves everything else (see `pusher::fanout`).
async fn output_loop(shard: Rc<Shard>) {
    let turn = turn::DriverTurn::new()
        .inspect_err(|error| tracing::warn!(%error, "no socket pair for driver turns; pausing 1 ms between fanout slices"))
        .ok();
    loop {
        poll_fn(|cx| {
            if shard.core.borrow().has_output() {
                return Poll::Ready(());
            }
            shard.output_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        shard.write_queued();
        loop {
            let started = Instant::now();
            let more = shard.apply(|core| core.fan_out_slice(started));
            shard.write_queued();
            if !more {
                break;
            }
            shard.core.borrow_mut().slice_took(started.elapsed());
            match &turn {
                Some(turn) if turn.take().await.is_ok() => {}
                _ => pause().await,
            }
        }
    }
}

/// Decrements the node's open-socket count, and its client address's count, when a connection
/// ends, however it ends: the node, and the connection as its client address's limit counts it.
pub struct OpenSocket(Arc<Node>, Option<IpClaim>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0
            .open_sockets
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let (Some(claim), Some(limits)) = (self.1.take(), &self.0.ip_limits) {
            limits.release(claim);
        }
    }
}

async fn accept_loop(
    shard: Rc<Shard>,
    listener: Rc<monoio::net::TcpListener>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let proxied = shard.node.config.proxy_protocol.on(tls.is_some());
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = shard.drain_started() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
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
        let guard = OpenSocket(node.clone(), None);
        if open >= node.max_sockets() {
            shard.reject(Rejection::OverCapacity);
            let refusal = http::refuse_over_capacity(shard.clone(), stream, tls.is_some(), guard);
            monoio::spawn(refusal);
            continue;
        }
        if !proxied {
            admit::start(&shard, stream, peer.ip(), tls.as_ref(), guard, Vec::new());
        } else if node.config.trusts_proxy(peer.ip()) {
            monoio::spawn(admit::proxied(
                shard.clone(),
                stream,
                peer,
                tls.clone(),
                guard,
            ));
        } else {
            // Closed unread: its PROXY header would be a lie anyone could tell.
            tracing::debug!(shard = shard.index, %peer, "PROXY header from an untrusted source");
            shard.reject(Rejection::ProxyUntrusted);
        }
    }
}

/// Once a second: the core's tick (activity timeouts, subscription counts), after what the inbox
/// holds, memory given back after a mass disconnect, and a retry of what the cluster bridge had
/// no room for.
async fn sweep_loop(shard: Rc<Shard>) {
    let mut memory = GiveBack::default();
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        if shard.node.is_draining() {
            return;
        }
        shard.catch_up();
        shard.apply(|core| core.tick(Instant::now()));
        if memory.observe(shard.core.borrow().sessions()) {
            memory::give_back();
        }
        shard.flush_cluster();
    }
}

/// Closes every client with 4200, spread over the drain window so that they do not all
/// reconnect at once, then gives them a moment to finish their close handshakes.
async fn drain(shard: &Shard) {
    let window = Duration::from_secs(shard.node.config.drain_seconds);
    let clients = shard.core.borrow().sessions();
    tracing::info!(shard = shard.index, clients, "draining");
    shard.core.borrow_mut().start_drain(Instant::now(), window);
    let tick = Duration::from_secs(1) / DRAIN_TICKS_PER_SECOND;
    while !shard.apply(|core| core.drain(Instant::now())) {
        monoio::time::sleep(tick).await;
    }
    let deadline = Instant::now() + DRAIN_GRACE;
    while shard.core.borrow().sessions() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
}
