//! One shard's Pusher state as a state machine: who is connected and subscribed, presence and
//! signed-in users, cache channels, node-wide counts, publish and fanout, activity timeouts and
//! drain. It is fed inputs (a session opening or closing, a client's message, a publish, a
//! message from another shard, the clock) and answers through each session's [`Handle`] (frames,
//! closes) and through [`Transmit`]s the shard carries out (other shards' inboxes, the cluster
//! bridge, webhooks). It owns no socket, task or timer, and reads no clock: `now` is an input.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use super::fanout::Fanout;
use crate::admin::stats::{self, Disconnect, Rejection, ShardStats};
use crate::bus::{Broadcast, CacheAnswer, ShardCounts, ShardMessage};
use crate::channels::counts::OwnedCounts;
use crate::channels::presence::Source;
use crate::channels::Registry;
use crate::cluster::BridgeMessage;
use crate::config::Config;
use crate::protocol::{codes, message, ChannelKind, SocketId};
use crate::pusher::requests::{self, Refusal};
use crate::webhooks::{Job, WebhookEvent, WebhookKind};
use crate::ws::frame::text_frame;

/// Ticks per second while a drain spreads its closes.
pub const DRAIN_TICKS_PER_SECOND: u32 = 10;

/// A session as the core reaches it: the runtime's connection, or a test's recording.
pub trait Handle: Clone {
    /// The core's state of this session, kept in the handle's own allocation so that a session
    /// costs the core one table entry and no allocation of its own.
    fn state(&self) -> &SessionState;
    /// Queues a frame. When the queue would pass `limit` bytes the handle may first hand the
    /// kernel what it takes now; `Ok` says what happened, `Err` that the frame did not fit even
    /// so.
    fn send(&self, frame: Bytes, limit: usize) -> Result<Sent, QueueFull>;
    /// Asks the session to close with this code. The first request wins.
    fn close(&self, code: u16, reason: Disconnect);
    /// Whether a close was asked for.
    fn is_closing(&self) -> bool;
    /// The core's second (see [`Core::second`]) of the last bytes the client sent.
    fn last_active(&self) -> u32;
    /// The core's second at which the client's message in flight began, while one is.
    fn incomplete_since(&self) -> Option<u32>;
}

/// What queuing a frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sent {
    /// Bytes handed to the kernel on the way, when the queue was near its limit.
    pub written: usize,
    /// The queue was empty and the session's task was not woken: the runtime writes the queue
    /// out once the input at hand is handled (see `Core::take_writable`), so that one system
    /// call carries every frame this input queued, and no task wakes up for it.
    pub to_write: bool,
}

/// A session's outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// What the shard must carry out for the core, in order.
#[derive(Debug)]
pub enum Transmit {
    /// To another shard's inbox. A full inbox drops it, counted there.
    Shard { to: usize, message: ShardMessage },
    /// To the cluster bridge; must not be lost (kept and sent again while its inbox is full).
    Cluster(BridgeMessage),
    /// A broadcast for the other nodes; dropped and counted while the bridge is busy.
    ClusterPublish(Arc<Broadcast>),
    /// To the webhook sender; dropped and counted when its queue is full.
    Webhook(Job),
    /// Ask the cluster for a cache channel's last event, which this node may never have
    /// received; the answer comes back in this shard's inbox (`ShardMessage::Cached`).
    AskCache { app: usize, channel: Box<str> },
}

/// Where a core sits: its node and shard, and how many shards the node has.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    pub node: u32,
    pub shard: usize,
    pub shards: usize,
    /// Whether the node is part of a cluster (the bridge must hear of interest and rosters).
    pub clustered: bool,
}

/// What the core keeps per session, inside its handle (see `Handle::state`).
#[derive(Debug)]
pub struct SessionState {
    app: usize,
    subscriptions: RefCell<Vec<Box<str>>>,
    /// Client events in the current second: (second, count).
    client_events: Cell<(u32, u32)>,
}

impl SessionState {
    pub fn new(app: usize) -> SessionState {
        SessionState {
            app,
            subscriptions: RefCell::new(Vec::new()),
            client_events: Cell::new((0, 0)),
        }
    }
}

/// Closes spread over the drain window, in the order sessions were open when it started.
struct Drain {
    order: Vec<u64>,
    started: Instant,
    per_tick: usize,
    /// How many of `order` have been asked to close.
    asked: usize,
}

/// One shard's Pusher state.
pub struct Core<H> {
    pub(super) config: Arc<Config>,
    pub(super) stats: Arc<ShardStats>,
    pub(super) place: Place,
    /// This shard as a source of presence members and signed-in users.
    pub(super) me: Source,
    started: Instant,
    pub(super) registry: Registry<H>,
    /// Node-wide subscriber counts of the channels this shard owns (see `counts`).
    pub(super) counts: OwnedCounts,
    pub(super) sessions: HashMap<u64, H>,
    next_id: u64,
    /// Fanout latency in microseconds, from publish to queued on this shard's subscribers.
    pub(super) latency: Histogram<u64>,
    pong: Bytes,
    pub(super) transmits: VecDeque<Transmit>,
    drain: Option<Drain>,
    /// Sessions of apps with authorized connections, by the second they must have signed in
    /// by, in the order they opened (so in deadline order).
    awaiting_signin: VecDeque<(u32, u64)>,
    /// Subscribers of cache channels waiting for the cluster's answer, by (app, channel), with
    /// the second the shard asked.
    pub(super) awaiting_cache: HashMap<(usize, Box<str>), (u32, Vec<u64>)>,
    /// Sessions whose queue got its first frame and is left for the runtime to write.
    writable: RefCell<Vec<H>>,
    /// Broadcasts too big to deliver at once, and those behind them (see `fanout`).
    pub(super) fanout: Fanout<H>,
}

impl<H: Handle> Core<H> {
    pub fn new(
        config: Arc<Config>,
        stats: Arc<ShardStats>,
        place: Place,
        started: Instant,
    ) -> Core<H> {
        let apps = config.apps.len();
        let fanout = Fanout::new(config.fanout_backlog);
        Core {
            me: Source {
                node: place.node,
                shard: place.shard as u32,
            },
            registry: Registry::new(apps),
            counts: OwnedCounts::new(apps, place.shards),
            config,
            stats,
            place,
            started,
            sessions: HashMap::new(),
            next_id: 1,
            latency: stats::latency_histogram(),
            pong: text_frame(message::PONG),
            transmits: VecDeque::new(),
            drain: None,
            awaiting_signin: VecDeque::new(),
            awaiting_cache: HashMap::new(),
            writable: RefCell::new(Vec::new()),
            fanout,
        }
    }

    /// Seconds since the shard started: the clock of activity and client-event rates.
    pub fn second(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.started).as_secs() as u32
    }

    /// The next thing the shard must carry out, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Open sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn registry(&self) -> &Registry<H> {
        &self.registry
    }

    /// A cache channel's kept frame and the time it has left.
    pub fn cached(&mut self, app: usize, channel: &str, now: Instant) -> Option<(Bytes, Duration)> {
        self.registry.cached(app, channel, now)
    }

    /// Numbers a new session: its number on this shard and its cluster-wide socket id.
    pub fn next_socket_id(&mut self) -> (u64, SocketId) {
        let id = self.next_id;
        self.next_id += 1;
        (id, self.socket_id(id))
    }

    pub fn socket_id(&self, id: u64) -> SocketId {
        SocketId {
            node: self.place.node,
            shard: self.place.shard as u32,
            local: id,
        }
    }

    /// A session starts: it is told its socket id.
    pub fn open(&mut self, id: u64, handle: H, now: Instant) {
        let app = handle.state().app;
        self.stats.connect(app);
        if self.config.apps[app].authorized_connections {
            let timeout = u32::try_from(self.config.signin_timeout).unwrap_or(u32::MAX);
            let deadline = self.second(now).saturating_add(timeout);
            self.awaiting_signin.push_back((deadline, id));
        }
        let established = message::connection_established(
            &self.socket_id(id).to_string(),
            self.config.activity_timeout,
        );
        self.send(&handle, text_frame(&established));
        self.sessions.insert(id, handle);
    }

    /// A session ended: it leaves its channels and its sign-in.
    pub fn close(&mut self, id: u64, reason: Disconnect) {
        let Some(handle) = self.sessions.remove(&id) else {
            return;
        };
        let app = handle.state().app;
        for channel in handle.state().subscriptions.take() {
            self.remove_subscriber(app, id, &channel);
        }
        self.sign_out(app, id);
        self.stats.disconnect(app, reason);
    }

    /// Whether the runtime has frames to write (see `take_writable`) or broadcasts to deliver
    /// (see `fan_out_slice`).
    pub fn has_output(&self) -> bool {
        !self.writable.borrow().is_empty() || self.fanout_waiting()
    }

    /// Moves the sessions whose queues the runtime is to write now into `into` (see
    /// `Sent::to_write`), each once.
    pub fn take_writable(&mut self, into: &mut Vec<H>) {
        into.append(self.writable.get_mut());
    }

    /// Queues a frame to a session, closing it as a slow consumer when it cannot take it.
    pub fn send(&self, handle: &H, frame: Bytes) -> bool {
        match handle.send(frame, self.config.outbound_queue_bytes) {
            Ok(sent) => {
                stats::add(&self.stats.bytes_out, sent.written as u64);
                if sent.to_write {
                    self.writable.borrow_mut().push(handle.clone());
                }
                true
            }
            Err(QueueFull) => {
                handle.close(codes::OVER_CAPACITY, Disconnect::SlowConsumer);
                stats::add(&self.stats.slow_consumer_disconnects, 1);
                false
            }
        }
    }

    /// Queues a frame to a session by its number, if it is still open.
    pub(super) fn send_to_session(&self, id: u64, frame: Bytes) {
        if let Some(handle) = self.sessions.get(&id) {
            self.send(handle, frame);
        }
    }

    pub(super) fn app_of(&self, id: u64) -> Option<usize> {
        self.sessions.get(&id).map(|h| h.state().app)
    }

    pub(super) fn is_subscribed(&self, id: u64, channel: &str) -> bool {
        self.sessions.get(&id).is_some_and(|h| {
            let subscriptions = h.state().subscriptions.borrow();
            subscriptions.iter().any(|c| &**c == channel)
        })
    }

    /// Whether the session may hold one more channel (see `requests::within_caps`).
    pub(super) fn within_caps(&self, id: u64, channel: &str) -> Result<(), Refusal> {
        let Some(handle) = self.sessions.get(&id) else {
            return Ok(());
        };
        let held = handle.state().subscriptions.borrow();
        requests::within_caps(&self.config, &held, channel)
    }

    /// Counts a client event; false when it is over `per_second`.
    pub(super) fn allow_client_event(&self, id: u64, now: u32, per_second: u32) -> bool {
        let Some(handle) = self.sessions.get(&id) else {
            return false;
        };
        let events = &handle.state().client_events;
        let (second, count) = events.get();
        let count = if second == now { count + 1 } else { 1 };
        events.set((now, count));
        count <= per_second
    }

    pub(super) fn pong(&self) -> Bytes {
        self.pong.clone()
    }

    pub(super) fn reject(&self, reason: Rejection) {
        self.stats.reject(reason);
    }

    /// Adds a session to a channel's subscribers; false if it already was one.
    pub(super) fn add_subscriber(&mut self, id: u64, channel: &str) -> bool {
        let Some(handle) = self.sessions.get(&id) else {
            return false;
        };
        let app = handle.state().app;
        if !self.registry.subscribe(app, channel, id, handle.clone()) {
            return false;
        }
        handle
            .state()
            .subscriptions
            .borrow_mut()
            .push(channel.into());
        self.subscribers_changed(app, channel);
        if self.registry.count(app, channel) == 1 {
            self.interest(app, channel, true);
        }
        true
    }

    /// A session unsubscribes from a channel.
    pub(super) fn unsubscribe(&mut self, id: u64, channel: &str) {
        let Some(handle) = self.sessions.get(&id) else {
            return;
        };
        let state = handle.state();
        state.subscriptions.borrow_mut().retain(|c| **c != *channel);
        let app = state.app;
        self.remove_subscriber(app, id, channel);
    }

    /// Removes a subscriber from a channel (and from its members, on a presence channel).
    fn remove_subscriber(&mut self, app: usize, id: u64, channel: &str) {
        if !self.registry.unsubscribe(app, channel, id) {
            return;
        }
        if ChannelKind::of(channel).is_presence() {
            self.leave_presence(app, channel, id);
        }
        self.subscribers_changed(app, channel);
        if self.registry.count(app, channel) == 0 {
            self.interest(app, channel, false);
        }
    }

    /// Tells the cluster bridge whether this shard holds subscribers of a channel, so that the
    /// node receives the channel's traffic from other nodes exactly while it needs it.
    pub(super) fn interest(&mut self, app: usize, channel: &str, occupied: bool) {
        if !self.place.clustered {
            return;
        }
        self.transmits
            .push_back(Transmit::Cluster(BridgeMessage::Interest {
                // Shards are at most `MAX_SHARDS` (1000), checked at start.
                shard: self.place.shard as u16,
                app,
                channel: channel.into(),
                occupied,
            }));
    }

    pub(super) fn tell_cluster(&mut self, message: BridgeMessage) {
        if self.place.clustered {
            self.transmits.push_back(Transmit::Cluster(message));
        }
    }

    pub(super) fn tell_shard(&mut self, to: usize, message: ShardMessage) {
        self.transmits.push_back(Transmit::Shard { to, message });
    }

    /// Sends a message, made anew for each, to every other shard of the node.
    pub(super) fn tell_other_shards(&mut self, mut message: impl FnMut() -> ShardMessage) {
        let Place { shard, shards, .. } = self.place;
        for to in (0..shards).filter(|&to| to != shard) {
            self.tell_shard(to, message());
        }
    }

    /// Sends an event to every subscriber of a channel on every shard (to a user's signed-in
    /// sockets for `#server-to-user-{id}`), and to the other nodes when clustering is on. The
    /// frame is encoded once by the caller and shared. `cache` says whether a cache channel
    /// keeps it. The shard hands the core what its inbox holds first (see `Shard::publish`).
    pub fn publish(&mut self, publish: Publish, now: Instant) {
        let broadcast = Arc::new(Broadcast {
            app: publish.app,
            channel: publish.channel.into(),
            frame: publish.frame,
            except: publish.except,
            cache: publish.cache,
            published: now,
        });
        self.deliver(&broadcast, now);
        self.tell_other_shards(|| ShardMessage::Broadcast(broadcast.clone()));
        if self.place.clustered {
            self.transmits
                .push_back(Transmit::ClusterPublish(broadcast));
        }
    }

    /// Queues a frame to this shard's subscribers of a channel, but not to `excluded` ones;
    /// returns how many got it.
    pub(super) fn fan_out(
        &self,
        app: usize,
        channel: &str,
        frame: &Bytes,
        excluded: impl Fn(u64) -> bool,
    ) -> u64 {
        let mut delivered = 0;
        for (id, handle) in self.registry.subscribers(app, channel) {
            if excluded(id) || handle.is_closing() {
                continue;
            }
            if self.send(handle, frame.clone()) {
                delivered += 1;
            }
        }
        stats::add(&self.stats.messages_out, delivered);
        delivered
    }

    /// Queues a frame to some of this shard's sessions, by number; returns how many got it.
    pub(super) fn send_to(&self, ids: impl IntoIterator<Item = u64>, frame: &Bytes) -> u64 {
        let mut delivered = 0;
        for id in ids {
            if let Some(handle) = self.sessions.get(&id) {
                if !handle.is_closing() && self.send(handle, frame.clone()) {
                    delivered += 1;
                }
            }
        }
        stats::add(&self.stats.messages_out, delivered);
        delivered
    }

    /// Hands a webhook event to the sender if the app wants this kind. `event` is only built
    /// when it will be sent.
    pub(super) fn webhook(
        &mut self,
        app: usize,
        kind: WebhookKind,
        event: impl FnOnce() -> WebhookEvent,
    ) {
        if self.config.apps[app].wants_webhook(kind) {
            let job = Job {
                app,
                event: event(),
            };
            self.transmits.push_back(Transmit::Webhook(job));
        }
    }

    /// Closes every session on this shard signed in as the user, with 4009.
    pub fn terminate_user(&self, app: usize, user_id: &str) {
        for id in self.registry.users(app).sockets_of(user_id) {
            if let Some(handle) = self.sessions.get(id) {
                handle.close(codes::UNAUTHORIZED, Disconnect::Terminated);
            }
        }
    }

    /// This shard's subscription counts of the app's channels: the named ones, or every
    /// occupied one.
    pub fn local_counts(&self, app: usize, channels: Option<&[Box<str>]>) -> ShardCounts {
        match channels {
            Some(names) => names
                .iter()
                .map(|name| (name.clone(), self.registry.count(app, name)))
                .collect(),
            None => self
                .registry
                .counts(app)
                .map(|(n, c)| (n.into(), c))
                .collect(),
        }
    }

    /// A message from another shard (or, through the bridge, another node).
    pub fn handle_message(&mut self, message: ShardMessage, now: Instant) {
        match message {
            ShardMessage::Broadcast(broadcast) => self.deliver(&broadcast, now),
            ShardMessage::Roster(delta) => self.apply_roster(&delta),
            ShardMessage::Subscribers {
                app,
                channel,
                shard,
                count,
            } => self.count_subscribers(app, &channel, shard, count),
            ShardMessage::Decided {
                app,
                channel,
                decision,
            } => self.decided(app, &channel, decision, now),
            ShardMessage::TerminateUser { app, user_id } => self.terminate_user(app, &user_id),
            ShardMessage::ChannelCounts {
                app,
                channels,
                reply,
            } => {
                // The asker may have given up; nothing to do then.
                let _ = reply.send(self.local_counts(app, channels.as_deref()));
            }
            ShardMessage::Cached(answer) => {
                let CacheAnswer {
                    app,
                    channel,
                    cached,
                } = *answer;
                self.cache_answer(app, &channel, cached, now);
            }
            ShardMessage::Latency { reply } => {
                let _ = reply.send(self.latency.clone());
            }
        }
    }

    /// Once a second: closes sessions that have been silent too long or have been sending one
    /// message for longer than a request head may take (`head_timeout`: a trickle of bytes does
    /// not keep a half message alive), and sends the subscription counts that changed (so a
    /// burst of subscriptions makes one event, not one each).
    pub fn tick(&mut self, now: Instant) {
        self.flush_subscription_counts(now);
        let second = self.second(now);
        self.close_unauthorized(second);
        self.expire_cache_asks(now);
        let (silence, message_time) = (self.config.inactivity_timeout, self.config.head_timeout);
        for handle in self.sessions.values() {
            let silent = second.saturating_sub(handle.last_active());
            let sending = handle
                .incomplete_since()
                .map(|since| second.saturating_sub(since));
            if u64::from(silent) > silence {
                handle.close(codes::PONG_NOT_RECEIVED, Disconnect::ActivityTimeout);
            } else if sending.is_some_and(|sending| u64::from(sending) > message_time) {
                self.stats.reject(Rejection::MessageTimeout);
                handle.close(codes::WS_POLICY_VIOLATION, Disconnect::ProtocolError);
            }
        }
    }

    /// Closes, with 4009, the sessions of apps with authorized connections that are not
    /// authorized by their deadline. Pusher sends only the close code on protocol 7, and the
    /// shard gives it Pusher's reason ("Connection not authorized within timeout").
    fn close_unauthorized(&mut self, second: u32) {
        while let Some(&(deadline, id)) = self.awaiting_signin.front() {
            if deadline > second {
                return;
            }
            self.awaiting_signin.pop_front();
            let Some(handle) = self.sessions.get(&id) else {
                continue;
            };
            if handle.is_closing() || self.is_authorized(id, handle) {
                continue;
            }
            self.stats.reject(Rejection::SigninTimeout);
            handle.close(codes::UNAUTHORIZED, Disconnect::SigninTimeout);
        }
    }

    /// Whether a session is an authorized connection as Pusher defines it: signed in, or
    /// subscribed to a channel that needs the app server's signature.
    fn is_authorized(&self, id: u64, handle: &H) -> bool {
        let state = handle.state();
        self.registry.users(state.app).signed_in(id).is_some()
            || (state.subscriptions.borrow().iter())
                .any(|channel| ChannelKind::of(channel).needs_auth())
    }

    /// Starts closing every session with 4200, spread over `window` so that clients do not all
    /// reconnect at once.
    pub fn start_drain(&mut self, now: Instant, window: Duration) {
        let order: Vec<u64> = self.sessions.keys().copied().collect();
        let ticks = (window.as_millis() as usize * DRAIN_TICKS_PER_SECOND as usize / 1000).max(1);
        let per_tick = order.len().div_ceil(ticks).max(1);
        self.drain = Some(Drain {
            order,
            started: now,
            per_tick,
            asked: 0,
        });
    }

    /// Asks the sessions whose turn has come to close; true once every one has been asked.
    pub fn drain(&mut self, now: Instant) -> bool {
        let Some(drain) = &mut self.drain else {
            return false;
        };
        let tick = Duration::from_secs(1) / DRAIN_TICKS_PER_SECOND;
        let elapsed = now.saturating_duration_since(drain.started);
        let ticks = (elapsed.as_nanos() / tick.as_nanos()) as usize + 1;
        let due = drain.per_tick.saturating_mul(ticks).min(drain.order.len());
        for id in &drain.order[drain.asked..due] {
            if let Some(handle) = self.sessions.get(id) {
                handle.close(codes::GOING_AWAY, Disconnect::Drain);
            }
        }
        drain.asked = due;
        due == drain.order.len()
    }
}

/// An event to publish on one channel.
#[derive(Debug)]
pub struct Publish<'a> {
    pub app: usize,
    pub channel: &'a str,
    /// The WebSocket text frame, encoded once.
    pub frame: Bytes,
    /// The socket that must not receive it.
    pub except: Option<SocketId>,
    /// Whether a cache channel keeps it.
    pub cache: bool,
}
