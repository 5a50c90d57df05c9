//! Sharded pub/sub on a Redis Cluster: one subscriber connection per master, each holding the
//! wanted channels of that master's slots (`SSUBSCRIBE`), moved when slots move or a replica
//! takes over. Publishing (`SPUBLISH`) goes through the `redis` crate's cluster connection,
//! which follows MOVED on its own; subscriptions do not use it, because it does not keep sharded
//! subscriptions across a failover.
//!
//! The links speak RESP2 in subscribe mode, where everything the server sends is a push:
//! `smessage`, `ssubscribe` and `sunsubscribe` arrays. A link that fails reports it and ends;
//! the subscriber asks the cluster for its slots again and opens links to the masters it names.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::resp::Push;
use super::slots::{Addr, Change, Placement, SlotMap};

/// How often the slot map is asked for while all is well, to notice resharding.
const REFRESH: Duration = Duration::from_secs(5);
/// How often while some wanted channel has no live master (a failover in progress).
const REFRESH_UNPLACED: Duration = Duration::from_millis(250);
/// What a link asks the socket for at a time.
const READ_CHUNK: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A message on a sharded channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub channel: String,
    pub payload: Vec<u8>,
}

/// What the links and the slot-map requests report. `Up` and `Down` carry the link's number,
/// so that a late report of a link that was replaced is told apart from its successor's.
#[derive(Debug)]
enum Event {
    Message(Message),
    Up(Addr, u64),
    /// The server confirmed a subscription.
    Subscribed(Addr, String),
    /// The server dropped a subscription (its slot moved), or confirmed our own unsubscribe.
    Unsubscribed(Addr, String),
    Down(Addr, u64),
    /// A `CLUSTER SLOTS` reply, or why none came.
    Slots(Result<redis::Value, String>),
}

/// One master's subscriber connection, run by its own tasks.
struct Link {
    id: u64,
    commands: UnboundedSender<Vec<u8>>,
}

/// The sharded subscriptions of one bridge session. Everything that waits (connections,
/// slot-map requests) runs in tasks of its own and reports through one queue, so `next` can be
/// dropped at any await, as the bridge's `select!` does, without losing anything.
pub struct ShardedSubscriber {
    placement: Placement,
    links: HashMap<Addr, Link>,
    next_link: u64,
    events: UnboundedReceiver<Event>,
    events_in: UnboundedSender<Event>,
    /// Where to ask for the slot map when no master is known: the configured nodes.
    seeds: Vec<Addr>,
    refresh: tokio::time::Interval,
    /// Whether a slot-map request is out.
    asking: bool,
    /// Channels whose subscription a master confirmed, with that master.
    confirmed: HashMap<String, Addr>,
}

impl ShardedSubscriber {
    /// Reads the slot map from one of `seeds` (`host:port`) and opens a link to every master.
    pub async fn connect(seeds: Vec<Addr>) -> redis::RedisResult<ShardedSubscriber> {
        let (events_in, events) = unbounded_channel();
        let reply = cluster_slots(seeds.clone()).await?;
        let mut subscriber = ShardedSubscriber {
            placement: Placement::default(),
            links: HashMap::new(),
            next_link: 0,
            events,
            events_in,
            seeds,
            refresh: tokio::time::interval(REFRESH),
            asking: false,
            confirmed: HashMap::new(),
        };
        subscriber.follow_map(&reply).map_err(|error| {
            redis::RedisError::from((redis::ErrorKind::Client, "CLUSTER SLOTS", error))
        })?;
        Ok(subscriber)
    }

    /// Subscribes to channels on their masters (at once where the master's link is up).
    pub fn subscribe(&mut self, channels: &[String]) {
        for channel in channels {
            let changes = self.placement.want(channel);
            self.carry_out(changes);
        }
    }

    pub fn unsubscribe(&mut self, channels: &[String]) {
        for channel in channels {
            let changes = self.placement.unwant(channel);
            self.carry_out(changes);
        }
    }

    /// Whether the master holding a wanted channel has confirmed its subscription: messages
    /// published to it from now on arrive.
    pub fn confirmed(&self, channel: &str) -> bool {
        (self.confirmed.get(channel)).is_some_and(|node| self.placement.holds(node, channel))
    }

    /// Wanted channels that no live master holds now.
    pub fn unplaced(&self) -> usize {
        self.placement.unplaced()
    }

    /// The master serving a hash slot, as the slot map last said.
    pub fn master_of(&self, slot: u16) -> Option<Addr> {
        self.placement.map().master_of(slot).cloned()
    }

    /// Each master: its address, whether its link is up, the channels it holds for this node.
    pub fn masters(&self) -> Vec<(Addr, bool, usize)> {
        self.placement.masters()
    }

    /// The next message; meanwhile follows the links coming and going and the slot map.
    pub async fn next(&mut self) -> Message {
        loop {
            tokio::select! {
                Some(event) = self.events.recv() => {
                    if let Some(message) = self.on_event(event) {
                        return message;
                    }
                }
                _ = self.refresh.tick() => self.ask_slots(),
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Option<Message> {
        match event {
            Event::Message(message) => return Some(message),
            Event::Up(node, id) if self.is_current(&node, id) => {
                let changes = self.placement.node_up(&node);
                self.carry_out(changes);
            }
            Event::Subscribed(node, channel) => {
                self.confirmed.insert(channel, node);
            }
            Event::Unsubscribed(node, channel) => {
                if self.confirmed.get(&channel) == Some(&node) {
                    self.confirmed.remove(&channel);
                }
                // Ours, or the server's after a slot moved: whichever, a channel still wanted
                // there is asked for again (a repeated SSUBSCRIBE changes nothing).
                if self.placement.holds(&node, &channel) {
                    self.send(&node, &ssubscribe(&channel));
                    self.refresh_soon();
                }
            }
            Event::Down(node, id) if self.is_current(&node, id) => {
                self.links.remove(&node);
                self.confirmed.retain(|_, at| *at != node);
                self.placement.node_down(&node);
                self.refresh_soon();
            }
            Event::Up(..) | Event::Down(..) => {}
            Event::Slots(reply) => {
                self.asking = false;
                if let Err(error) = reply.and_then(|reply| self.follow_map(&reply)) {
                    tracing::debug!(%error, "redis cluster slots not read; asking again");
                    self.refresh_soon();
                }
            }
        }
        None
    }

    fn is_current(&self, node: &str, id: u64) -> bool {
        self.links.get(node).is_some_and(|link| link.id == id)
    }

    fn refresh_soon(&mut self) {
        if self.refresh.period() != REFRESH_UNPLACED {
            self.refresh = tokio::time::interval(REFRESH_UNPLACED);
        }
    }

    /// Sends a `CLUSTER SLOTS` request, unless one is out: to the masters seen last, then the
    /// seeds.
    fn ask_slots(&mut self) {
        if self.asking {
            return;
        }
        self.asking = true;
        let masters = self.placement.map().masters().into_iter().cloned();
        let nodes: Vec<Addr> = masters.chain(self.seeds.iter().cloned()).collect();
        let events = self.events_in.clone();
        tokio::spawn(async move {
            let reply = cluster_slots(nodes)
                .await
                .map_err(|error| error.to_string());
            let _ = events.send(Event::Slots(reply));
        });
    }

    /// Follows a slot map: links to new masters, channels moved, links to former masters
    /// closed.
    fn follow_map(&mut self, reply: &redis::Value) -> Result<(), String> {
        let map = SlotMap::from_cluster_slots(reply).map_err(|error| error.to_string())?;
        let masters: Vec<Addr> = map.masters().into_iter().cloned().collect();
        let changes = self.placement.set_map(map);
        self.carry_out(changes);
        for master in masters {
            if !self.links.contains_key(&master) {
                self.next_link += 1;
                let link = open_link(master.clone(), self.next_link, self.events_in.clone());
                self.links.insert(master, link);
            }
        }
        for retired in self.placement.retired() {
            self.links.remove(&retired);
            self.placement.node_down(&retired);
        }
        let period = match self.placement.unplaced() {
            0 => REFRESH,
            _ => REFRESH_UNPLACED,
        };
        if self.refresh.period() != period {
            self.refresh = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        }
        Ok(())
    }

    fn carry_out(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Subscribe { node, channel } => self.send(&node, &ssubscribe(&channel)),
                Change::Unsubscribe { node, channel } => {
                    let command = redis::cmd("SUNSUBSCRIBE")
                        .arg(&channel)
                        .get_packed_command();
                    self.send(&node, &command);
                }
            }
        }
    }

    fn send(&self, node: &str, command: &[u8]) {
        if let Some(link) = self.links.get(node) {
            // A link that has ended reports Down; what it missed is placed again then.
            let _ = link.commands.send(command.to_vec());
        }
    }
}

/// `CLUSTER SLOTS` from the first of `nodes` that answers.
async fn cluster_slots(nodes: Vec<Addr>) -> redis::RedisResult<redis::Value> {
    let mut last_error = None;
    for node in nodes {
        match ask_slots(&node).await {
            Ok(reply) => return Ok(reply),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| (redis::ErrorKind::Client, "no redis cluster node").into()))
}

async fn ask_slots(node: &str) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(format!("redis://{node}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONNECT_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await
}

fn ssubscribe(channel: &str) -> Vec<u8> {
    redis::cmd("SSUBSCRIBE").arg(channel).get_packed_command()
}

/// Starts a master's link; it reports `Up` once connected, then what it reads, then `Down`.
fn open_link(node: Addr, id: u64, events: UnboundedSender<Event>) -> Link {
    let (commands, queued) = unbounded_channel();
    tokio::spawn(async move {
        let ended = run_link(&node, id, queued, &events).await;
        if let Err(error) = ended {
            tracing::debug!(%node, %error, "redis cluster subscriber link ended");
        }
        let _ = events.send(Event::Down(node, id));
    });
    Link { id, commands }
}

/// Writes the link's commands while a task of its own reads (a read is never cut short by a
/// command to write); ends when either side fails or the subscriber drops the link.
async fn run_link(
    node: &str,
    id: u64,
    mut commands: UnboundedReceiver<Vec<u8>>,
    events: &UnboundedSender<Event>,
) -> std::io::Result<()> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(node))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let reading = tokio::spawn(read_pushes(node.to_owned(), reader, events.clone()));
    let _stop_reading = AbortOnDrop(reading.abort_handle());
    if events.send(Event::Up(node.to_owned(), id)).is_err() {
        return Ok(());
    }
    let mut reading = reading;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => writer.write_all(&command).await?,
                // The subscriber dropped the link (its master retired, or the session ended).
                None => return Ok(()),
            },
            ended = &mut reading => return ended.unwrap_or(Ok(())),
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads pushes until the connection fails or the subscriber is gone.
async fn read_pushes(
    node: Addr,
    mut reader: tokio::net::tcp::OwnedReadHalf,
    events: UnboundedSender<Event>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut start = 0;
        while let Some((push, used)) = Push::parse(&buf[start..]).map_err(std::io::Error::other)? {
            start += used;
            if let Some(event) = to_event(&node, push) {
                if events.send(event).is_err() {
                    return Ok(());
                }
            }
        }
        // What was read goes at once, not push by push (each would move the rest), and the
        // room a large push needed goes with it.
        buf.drain(..start);
        if buf.is_empty() && buf.capacity() > 2 * READ_CHUNK {
            buf = Vec::new();
        }
        buf.reserve(READ_CHUNK);
        if (&mut reader)
            .take(READ_CHUNK as u64)
            .read_buf(&mut buf)
            .await?
            == 0
        {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn to_event(node: &str, push: Push) -> Option<Event> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match (push.kind.as_slice(), push.fields.as_slice()) {
        (b"smessage", [channel, payload]) => Some(Event::Message(Message {
            channel: text(channel),
            payload: payload.clone(),
        })),
        (b"ssubscribe", [channel, ..]) => Some(Event::Subscribed(node.into(), text(channel))),
        (b"sunsubscribe", [channel, ..]) => Some(Event::Unsubscribed(node.into(), text(channel))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_become_events_of_their_link() {
        let push = |kind: &[u8], fields: &[&[u8]]| Push {
            kind: kind.to_vec(),
            fields: fields.iter().map(|field| field.to_vec()).collect(),
        };
        let confirmed = to_event("n:1", push(b"ssubscribe", &[b"c:1", b"1"]));
        assert!(matches!(confirmed, Some(Event::Subscribed(n, c)) if n == "n:1" && c == "c:1"));
        let message = to_event("n:1", push(b"smessage", &[b"c:1", b"hi\r\nyou"]));
        assert!(matches!(message, Some(Event::Message(m)) if m.payload == b"hi\r\nyou"));
        let dropped = to_event("n:1", push(b"sunsubscribe", &[b"c:1", b"0"]));
        assert!(matches!(dropped, Some(Event::Unsubscribed(_, c)) if c == "c:1"));
        assert!(to_event("n:1", push(b"pong", &[b""])).is_none());
    }
}
