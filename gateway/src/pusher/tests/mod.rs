//! The core without sockets: several shards' cores wired together in memory, with recording
//! sessions and a clock the test moves. The harness carries out transmits the way the shard
//! runtime does (`shard::Shard::apply`), and handles a shard's inbox before each of its
//! publishes, as `Shard::publish` does.

mod counts;
mod delivery;
mod lifecycle;
mod limits;
mod presence;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::core::{Core, Handle, Place, Publish, QueueFull, Sent, SessionState, Transmit};
use crate::admin::stats::{Disconnect, ShardStats};
use crate::bus::{Broadcast, ShardMessage};
use crate::cluster::BridgeMessage;
use crate::config::{App, Config};
use crate::protocol::{message, signature};
use crate::webhooks::WebhookEvent;
use crate::ws::frame::{text_frame, text_payload};

/// What a test session received, and whether it was asked to close.
pub struct Recorder {
    state: SessionState,
    frames: RefCell<Vec<Bytes>>,
    close: Cell<Option<(u16, Disconnect)>>,
    last_active: Cell<u32>,
    /// When the client's message in flight began.
    incomplete_since: Cell<Option<u32>>,
    /// A client that reads nothing: its queue only grows.
    stalled: Cell<bool>,
    queued: Cell<usize>,
}

/// A session as the core sees it in these tests.
#[derive(Clone)]
pub struct Recording(Rc<Recorder>);

impl Recording {
    fn new(app: usize, now: u32) -> Recording {
        Recording(Rc::new(Recorder {
            state: SessionState::new(app),
            frames: RefCell::default(),
            close: Cell::default(),
            last_active: Cell::new(now),
            incomplete_since: Cell::default(),
            stalled: Cell::default(),
            queued: Cell::default(),
        }))
    }
}

impl Handle for Recording {
    fn state(&self) -> &SessionState {
        &self.0.state
    }

    fn send(&self, frame: Bytes, limit: usize) -> Result<Sent, QueueFull> {
        let recorder = &self.0;
        if recorder.stalled.get() {
            let queued = recorder.queued.get() + frame.len();
            if queued > limit {
                return Err(QueueFull);
            }
            recorder.queued.set(queued);
        }
        recorder.frames.borrow_mut().push(frame);
        Ok(Sent::default())
    }

    fn close(&self, code: u16, reason: Disconnect) {
        if self.0.close.get().is_none() {
            self.0.close.set(Some((code, reason)));
        }
    }

    fn is_closing(&self) -> bool {
        self.0.close.get().is_some()
    }

    fn last_active(&self) -> u32 {
        self.0.last_active.get()
    }

    fn incomplete_since(&self) -> Option<u32> {
        self.0.incomplete_since.get()
    }
}

/// A session of the node under test.
#[derive(Clone)]
pub struct Client {
    pub shard: usize,
    pub id: u64,
    pub socket_id: String,
    session: Recording,
}

impl Client {
    /// Every message received since the last call, as JSON.
    pub fn take(&self) -> Vec<Value> {
        self.session
            .0
            .frames
            .take()
            .iter()
            .map(|frame| {
                let text = text_payload(frame).expect("a text frame");
                serde_json::from_str(text).expect("JSON")
            })
            .collect()
    }

    /// The events received since the last call, by name, with their data as sent.
    pub fn events(&self) -> Vec<(String, Value)> {
        self.take()
            .into_iter()
            .map(|mut m| {
                let name = m["event"].as_str().unwrap_or_default().to_owned();
                (name, m["data"].take())
            })
            .collect()
    }

    /// The events received since the last call, with `data` sent as a JSON string read back.
    pub fn internal(&self) -> Vec<(String, Value)> {
        let events = self.events().into_iter();
        events
            .map(|(name, data)| match &data {
                Value::String(text) => (name, serde_json::from_str(text).unwrap_or(data)),
                _ => (name, data),
            })
            .collect()
    }

    /// The names of the events received since the last call.
    pub fn event_names(&self) -> Vec<String> {
        self.events().into_iter().map(|(name, _)| name).collect()
    }

    pub fn closed(&self) -> Option<(u16, Disconnect)> {
        self.session.0.close.get()
    }

    /// Makes the client stop reading: what is sent to it stays queued.
    pub fn stall(&self) {
        self.session.0.stalled.set(true);
    }

    /// The client began a message at this second of the core's clock and has not finished it.
    pub fn sending_since(&self, second: u32) {
        self.session.0.incomplete_since.set(Some(second));
    }

    /// The client sent something at this second of the core's clock.
    pub fn active_at(&self, second: u32) {
        self.session.0.last_active.set(second);
    }
}

/// A node's shards, wired together in memory.
pub struct Node {
    pub cores: Vec<Core<Recording>>,
    inboxes: Vec<VecDeque<ShardMessage>>,
    /// What went to the cluster bridge, in order.
    pub bridge: Vec<BridgeMessage>,
    /// What went to the other nodes as broadcasts.
    pub cluster_publishes: Vec<Arc<Broadcast>>,
    pub webhooks: Vec<WebhookEvent>,
    pub stats: Vec<Arc<ShardStats>>,
    pub now: Instant,
    pub config: Arc<Config>,
    /// Whether the test delivers waiting broadcasts itself (`fan_out_slice`); otherwise every
    /// input's are delivered before the next, as a shard with nothing else to do would.
    pub manual_fanout: bool,
}

impl Node {
    pub fn new(shards: usize, config: Config) -> Node {
        Node::build(shards, config, false)
    }

    /// A node that is part of a cluster: the bridge hears of interest and rosters.
    pub fn clustered(shards: usize, config: Config) -> Node {
        Node::build(shards, config, true)
    }

    fn build(shards: usize, config: Config, clustered: bool) -> Node {
        let config = Arc::new(config);
        let started = Instant::now();
        let stats: Vec<_> = (0..shards)
            .map(|_| Arc::new(ShardStats::new(config.apps.len())))
            .collect();
        let cores = (0..shards)
            .map(|shard| {
                let place = Place {
                    node: 7,
                    shard,
                    shards,
                    clustered,
                };
                Core::new(config.clone(), stats[shard].clone(), place, started)
            })
            .collect();
        Node {
            cores,
            inboxes: (0..shards).map(|_| VecDeque::new()).collect(),
            bridge: Vec::new(),
            cluster_publishes: Vec::new(),
            webhooks: Vec::new(),
            stats,
            now: started,
            config,
            manual_fanout: false,
        }
    }

    /// Carries out what a shard's core asked for.
    fn route(&mut self, shard: usize) {
        let now = self.now;
        while !self.manual_fanout && self.cores[shard].fan_out_slice(now) {}
        while let Some(transmit) = self.cores[shard].poll_transmit() {
            match transmit {
                Transmit::Shard { to, message } => self.inboxes[to].push_back(message),
                Transmit::Cluster(message) => self.bridge.push(message),
                Transmit::ClusterPublish(broadcast) => self.cluster_publishes.push(broadcast),
                Transmit::Webhook(job) => self.webhooks.push(job.event),
                Transmit::AskCache { app, channel } => {
                    let shard = shard as u16;
                    let ask = BridgeMessage::AskCache {
                        shard,
                        app,
                        channel,
                    };
                    self.bridge.push(ask);
                }
            }
        }
    }

    /// Feeds a shard's core one input and carries out its transmits.
    pub fn apply<R>(&mut self, shard: usize, input: impl FnOnce(&mut Core<Recording>) -> R) -> R {
        let result = input(&mut self.cores[shard]);
        self.route(shard);
        result
    }

    /// A shard delivers one slice of the broadcasts waiting there; returns whether some wait.
    pub fn fan_out_slice(&mut self, shard: usize) -> bool {
        let now = self.now;
        self.apply(shard, |core| core.fan_out_slice(now))
    }

    /// A shard handles up to `limit` messages of its inbox, oldest first; returns how many.
    pub fn handle_inbox(&mut self, shard: usize, limit: usize) -> usize {
        let mut handled = 0;
        while handled < limit {
            let Some(message) = self.inboxes[shard].pop_front() else {
                break;
            };
            let now = self.now;
            self.apply(shard, |core| core.handle_message(message, now));
            handled += 1;
        }
        handled
    }

    /// Every shard handles its inbox until all are empty.
    pub fn settle(&mut self) {
        while (0..self.cores.len()).any(|shard| self.handle_inbox(shard, usize::MAX) > 0) {}
    }

    pub fn connect(&mut self, shard: usize) -> Client {
        self.connect_app(shard, 0)
    }

    pub fn connect_app(&mut self, shard: usize, app: usize) -> Client {
        let (id, socket_id) = self.cores[shard].next_socket_id();
        let session = Recording::new(app, self.cores[shard].second(self.now));
        let now = self.now;
        self.apply(shard, |core| core.open(id, session.clone(), now));
        let client = Client {
            shard,
            id,
            socket_id: socket_id.to_string(),
            session,
        };
        let established = client.event_names();
        assert_eq!(established, ["pusher:connection_established"]);
        client
    }

    /// A client's message, handled as the runtime does: the inbox first (a client event is a
    /// publish).
    pub fn say(&mut self, client: &Client, message: &Value) {
        self.handle_inbox(client.shard, usize::MAX);
        let (id, now, text) = (client.id, self.now, message.to_string());
        self.apply(client.shard, |core| core.client_message(id, &text, now));
    }

    pub fn subscribe(&mut self, client: &Client, channel: &str) {
        let auth = self.channel_auth(client, channel, None);
        let data = serde_json::json!({ "channel": channel, "auth": auth });
        self.say(
            client,
            &serde_json::json!({"event": "pusher:subscribe", "data": data}),
        );
    }

    /// Subscribes to a presence channel as `user_id`.
    pub fn join(&mut self, client: &Client, channel: &str, user_id: &str) {
        let channel_data = serde_json::json!({ "user_id": user_id }).to_string();
        let auth = self.channel_auth(client, channel, Some(&channel_data));
        let data = serde_json::json!({
            "channel": channel, "auth": auth, "channel_data": channel_data,
        });
        self.say(
            client,
            &serde_json::json!({"event": "pusher:subscribe", "data": data}),
        );
    }

    pub fn unsubscribe(&mut self, client: &Client, channel: &str) {
        let data = serde_json::json!({ "channel": channel });
        self.say(
            client,
            &serde_json::json!({"event": "pusher:unsubscribe", "data": data}),
        );
    }

    /// Signs in as `user_id`, watching `watchlist`.
    pub fn sign_in(&mut self, client: &Client, user_id: &str, watchlist: &[&str]) {
        let user_data = serde_json::json!({ "id": user_id, "watchlist": watchlist }).to_string();
        let app = &self.config.apps[0];
        let to_sign = format!("{}::user::{}", client.socket_id, user_data);
        let auth = format!("{}:{}", app.key, signature::sign(&app.secret, &to_sign));
        let data = serde_json::json!({ "auth": auth, "user_data": user_data });
        self.say(
            client,
            &serde_json::json!({"event": "pusher:signin", "data": data}),
        );
    }

    pub fn channel_auth(&self, client: &Client, channel: &str, data: Option<&str>) -> String {
        let app = &self.config.apps[0];
        let to_sign = signature::channel_auth_message(&client.socket_id, channel, data);
        format!("{}:{}", app.key, signature::sign(&app.secret, &to_sign))
    }

    /// A publish through the HTTP API of one shard, as `Shard::publish` makes it.
    pub fn publish(&mut self, shard: usize, channel: &str, event: &str, data: &str) {
        self.handle_inbox(shard, usize::MAX);
        self.publish_now(shard, channel, event, data);
    }

    /// A publish that does not first handle what the shard's inbox holds.
    pub fn publish_now(&mut self, shard: usize, channel: &str, event: &str, data: &str) {
        let data = Value::String(data.into());
        let frame = text_frame(&message::channel_event(event, channel, &data, None));
        let publish = Publish {
            app: 0,
            channel,
            frame,
            except: None,
            cache: true,
        };
        let now = self.now;
        self.apply(shard, |core| core.publish(publish, now));
    }

    pub fn close(&mut self, client: &Client, reason: Disconnect) {
        let id = client.id;
        self.apply(client.shard, |core| core.close(id, reason));
    }

    /// Moves the clock.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Every shard's once-a-second work.
    pub fn tick(&mut self) {
        let now = self.now;
        for shard in 0..self.cores.len() {
            self.apply(shard, |core| core.tick(now));
        }
    }

    /// The webhooks sent since the last call.
    pub fn take_webhooks(&mut self) -> Vec<WebhookEvent> {
        std::mem::take(&mut self.webhooks)
    }
}

/// The development app with client events on.
pub fn config() -> Config {
    let mut config = Config::default();
    config.apps[0].client_events = true;
    config
}

/// An app that sends every kind of webhook and subscription_count events.
pub fn counting_config() -> Config {
    let mut config = config();
    let app: &mut App = &mut config.apps[0];
    let url = "http://127.0.0.1:9/hooks";
    app.webhooks = vec![crate::webhooks::Endpoint::new(
        url,
        Some(vec![
            crate::webhooks::WebhookKind::ChannelOccupied,
            crate::webhooks::WebhookKind::ChannelVacated,
            crate::webhooks::WebhookKind::MemberAdded,
            crate::webhooks::WebhookKind::MemberRemoved,
            crate::webhooks::WebhookKind::SubscriptionCount,
            crate::webhooks::WebhookKind::CacheMiss,
            crate::webhooks::WebhookKind::ClientEvent,
        ]),
    )];
    app.subscription_count_events = true;
    config
}
