//! Figures for the README, not a check: what a Redis hop adds to fanout latency, how many
//! publishes per second one node pushes through one Redis and through a Redis Cluster (three
//! masters, sharded pub/sub), and how far a burst of connections passes an app's quota. Bounded
//! and loopback only. Run on demand:
//!
//! ```sh
//! cargo test --release -p gateway --test it cluster_bench -- --ignored --nocapture
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::redis::Redis;
use crate::common::redis_cluster::RedisCluster;
use crate::common::{now_secs, signed_request, wait_until, Client, Gateway, APP_ID};
use serde_json::{json, Value};

/// Events timed one by one for the latency figures.
const LATENCY_EVENTS: usize = 2000;
/// Pause between timed events, so that each is measured on its own and not behind a queue.
const LATENCY_GAP: Duration = Duration::from_millis(1);
/// Events pushed as fast as the publishers can for the throughput figure.
const FLOOD_EVENTS: usize = 100_000;
/// Connections publishing the flood, each sending batches of 10 events.
const FLOOD_PUBLISHERS: usize = 2;
/// Channels the flood is spread over, so that a Redis Cluster's masters share it.
const FLOOD_CHANNELS: usize = 12;

/// App 2's `max_connections` in the burst measurement.
const QUOTA: usize = 100;

/// An HTTP API connection kept open across requests.
struct Publisher {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Publisher {
    fn connect(gateway: &Gateway) -> Publisher {
        let stream = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
        stream.set_nodelay(true).unwrap();
        Publisher {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends a signed POST and waits for its answer; returns the status.
    fn post(&mut self, path: &str, body: &str) -> u16 {
        let request = signed_request("POST", path, &[], body, now_secs())
            .replace("Connection: close", "Connection: keep-alive");
        self.stream.write_all(request.as_bytes()).unwrap();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + length {
                    self.buf.drain(..end + 4 + length);
                    return head
                        .split(' ')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the gateway closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Reads `count` events and returns when each arrived, by the number in its data.
fn arrivals(mut client: Client, count: usize) -> Vec<Option<Instant>> {
    client.set_timeout(Duration::from_secs(10));
    let mut times = vec![None; count];
    for _ in 0..count {
        let event = client.next_event();
        let now = Instant::now();
        let index: usize = event["data"].as_str().unwrap().parse().unwrap();
        times[index] = Some(now);
    }
    times
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<34} p50 {:>8.1?}  p99 {:>8.1?}  ({} samples)",
        quantile(&samples, 0.5),
        quantile(&samples, 0.99),
        samples.len()
    );
}

fn subscriber(gateway: &Gateway, channel: &str) -> Client {
    let mut client = gateway.client();
    client.subscribe(channel);
    client
}

/// Waits until this many nodes subscribe to a Pusher channel's Redis channel.
type WaitSubscribers<'a> = &'a dyn Fn(&str, u64);

#[test]
#[ignore = "a measurement for the README; run with --ignored --nocapture"]
fn cross_node_latency_and_throughput() {
    {
        let redis = Redis::start();
        let (a, b) = (redis.gateway(), redis.gateway());
        println!("== one Redis");
        let wait = |channel: &str, nodes: u64| redis.wait_subscribers(channel, nodes);
        latency(&wait, &a, &b);
        throughput(&wait, &a, &b);
    }
    let cluster = RedisCluster::start();
    let (a, b) = (cluster.gateway(), cluster.gateway());
    println!("== a Redis Cluster of 3 masters and 3 replicas (sharded pub/sub)");
    let wait = |channel: &str, nodes: u64| {
        let name = format!("gateway:1:{channel}");
        let subscribed = || cluster.shard_subscribers(&name) == nodes;
        assert!(wait_until(Duration::from_secs(10), subscribed), "{name}");
    };
    latency(&wait, &a, &b);
    throughput(&wait, &a, &b);
}

/// Spaced publishes on A: how long each takes to reach a subscriber on A and one on B.
fn latency(wait_subscribers: WaitSubscribers, a: &Gateway, b: &Gateway) {
    let path = format!("/apps/{APP_ID}/events");

    let on_a = subscriber(a, "timed");
    let on_b = subscriber(b, "timed");
    wait_subscribers("timed", 2);
    let readers =
        [on_a, on_b].map(|client| thread::spawn(move || arrivals(client, LATENCY_EVENTS)));
    let mut publisher = Publisher::connect(a);
    let mut sent = Vec::with_capacity(LATENCY_EVENTS);
    for i in 0..LATENCY_EVENTS {
        let body = json!({"name": "t", "channel": "timed", "data": i.to_string()}).to_string();
        sent.push(Instant::now());
        assert_eq!(publisher.post(&path, &body), 200);
        thread::sleep(LATENCY_GAP);
    }
    let [local, remote] = readers.map(|reader| reader.join().unwrap());
    let since = |times: &[Option<Instant>]| -> Vec<Duration> {
        times
            .iter()
            .zip(&sent)
            .map(|(t, s)| t.expect("every event arrives").duration_since(*s))
            .collect()
    };
    let (local, remote) = (since(&local), since(&remote));
    let extra: Vec<Duration> = local
        .iter()
        .zip(&remote)
        .map(|(l, r)| r.saturating_sub(*l))
        .collect();
    println!("publish on node A (HTTP API) to a subscriber's socket:");
    summary("  subscriber on A (local)", local);
    summary("  subscriber on B (through Redis)", remote);
    summary("  extra for B, per event", extra);
}

/// Batches from several connections to A as fast as it takes them, over `FLOOD_CHANNELS`
/// channels: how many reach B, how fast.
fn throughput(wait_subscribers: WaitSubscribers, a: &Gateway, b: &Gateway) {
    let flood_reader = {
        let mut client = b.client();
        for n in 0..FLOOD_CHANNELS {
            let channel = format!("flood-{n}");
            client.subscribe(&channel);
            wait_subscribers(&channel, 1);
        }
        thread::spawn(move || {
            let mut client = client;
            client.set_timeout(Duration::from_secs(3));
            let mut received = 0;
            let mut last = Instant::now();
            while let Ok(tungstenite::Message::Text(_)) = client.socket.read() {
                received += 1;
                last = Instant::now();
                if received == FLOOD_EVENTS {
                    break;
                }
            }
            (received, last)
        })
    };
    let out_before = a.metric("gateway_redis_messages_out_total");
    let start = Instant::now();
    let publishers: Vec<_> = (0..FLOOD_PUBLISHERS)
        .map(|p| {
            let mut publisher = Publisher::connect(a);
            thread::spawn(move || {
                let path = format!("/apps/{APP_ID}/batch_events");
                let per_publisher = FLOOD_EVENTS / FLOOD_PUBLISHERS;
                for first in (0..per_publisher).step_by(10) {
                    let batch: Vec<_> = (first..first + 10)
                        .map(|i| {
                            let channel = format!("flood-{}", i % FLOOD_CHANNELS);
                            json!({"name": "f", "channel": channel, "data": format!("{p}-{i}")})
                        })
                        .collect();
                    let body = json!({ "batch": batch }).to_string();
                    assert_eq!(publisher.post(&path, &body), 200);
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().unwrap();
    }
    let published = start.elapsed();
    let (received, last) = flood_reader.join().unwrap();
    let through = last.duration_since(start);
    let out = a.metric("gateway_redis_messages_out_total") - out_before;
    let failed = a.metric("gateway_redis_publish_failures_total");
    println!(
        "flood of {FLOOD_EVENTS} events from {FLOOD_PUBLISHERS} HTTP connections to node A:\n  \
         accepted by A in {published:.2?} ({:.0}/s)\n  \
         published to Redis by A: {out} (failures {failed})\n  \
         received on B: {received} in {through:.2?} ({:.0}/s)",
        FLOOD_EVENTS as f64 / published.as_secs_f64(),
        received as f64 / through.as_secs_f64()
    );
}

#[test]
#[ignore = "a measurement for the README; run with --ignored --nocapture"]
fn quota_overshoot_during_a_burst() {
    let redis = Redis::start();
    println!("two nodes each asked for {QUOTA} connections of an app whose quota is {QUOTA}:");
    for rate in [0, 100, 50, 20] {
        let (on_a, on_b) = admitted(&redis, rate);
        let pace = match rate {
            0 => "as fast as they open".to_string(),
            rate => format!("{rate}/s on each node"),
        };
        let over = (on_a + on_b).saturating_sub(QUOTA);
        println!("  {pace}: admitted {on_a} + {on_b}, {over} over the quota");
    }
}

/// Asks each of two fresh nodes for `QUOTA` connections of app 2 at `rate` per second (0: one
/// after the other, as fast as they open); returns how many each admitted.
fn admitted(redis: &Redis, rate: u32) -> (usize, usize) {
    let config = json!({"apps": [
        {"id": "1", "key": "app-key", "secret": "app-secret"},
        {"id": "2", "key": "key-two", "secret": "secret-two", "max_connections": QUOTA},
    ]});
    let nodes = [(); 2].map(|()| redis.gateway_with_config(&config));
    for node in &nodes {
        let heard = || node.metric("gateway_cluster_nodes") == 1.0;
        assert!(wait_until(Duration::from_secs(5), heard));
    }
    let pace = Duration::from_secs(1).checked_div(rate).unwrap_or_default();
    let openers = nodes.map(|node| {
        thread::spawn(move || {
            let start = Instant::now();
            let mut held = Vec::new();
            for attempt in 0..QUOTA as u32 {
                thread::sleep((start + pace * attempt).saturating_duration_since(Instant::now()));
                held.extend(try_open(&node));
            }
            (node, held)
        })
    });
    let [a, b] = openers.map(|opener| opener.join().unwrap());
    (a.1.len(), b.1.len())
}

/// A connection to app 2, or `None` when the gateway refuses it.
fn try_open(gateway: &Gateway) -> Option<Client> {
    let (mut socket, _) = tungstenite::connect(gateway.url("key-two")).ok()?;
    let tungstenite::Message::Text(text) = socket.read().ok()? else {
        return None;
    };
    let first: Value = serde_json::from_str(&text).ok()?;
    (first["event"] == "pusher:connection_established").then_some(Client {
        socket,
        socket_id: String::new(),
    })
}

/// Presence channels the churn joins, and public channels the publisher sends to.
const CHURN_CHANNELS: usize = 20;
/// How long the mixed load runs.
const MIXED_RUN: Duration = Duration::from_secs(10);

#[test]
#[ignore = "a measurement for the README; run with --ignored --nocapture"]
fn control_traffic_share_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let nodes: Vec<Gateway> = (0..3).map(|_| cluster.gateway()).collect();
    let rooms: Vec<String> = (0..CHURN_CHANNELS).map(|n| format!("room-{n}")).collect();
    // A subscriber of every public channel on every node, so each broadcast reaches all three.
    let _subscribers: Vec<Client> = (nodes.iter())
        .flat_map(|node| rooms.iter().map(|room| subscriber(node, room)))
        .collect();
    for room in &rooms {
        let name = format!("gateway:1:{room}");
        assert!(wait_until(Duration::from_secs(10), || cluster
            .shard_subscribers(&name)
            == 3));
    }
    let spublish_calls = || -> Vec<(u16, u64)> {
        let masters = cluster.masters().into_iter();
        masters
            .map(|master| (master.port, spublish_calls(master.port)))
            .collect()
    };
    let before = spublish_calls();
    let started = Instant::now();
    let (joins, publishes) = thread::scope(|scope| {
        let churns: Vec<_> = (nodes.iter().enumerate())
            .map(|(n, node)| scope.spawn(move || churn(node, n, started)))
            .collect();
        let (rooms, first) = (&rooms, &nodes[0]);
        let publisher = scope.spawn(move || publish_spaced(first, rooms, started));
        let joins: usize = churns.into_iter().map(|c| c.join().unwrap()).sum();
        (joins, publisher.join().unwrap())
    });
    let seconds = started.elapsed().as_secs_f64();
    let after = spublish_calls();
    let masters = cluster.masters();
    let on_master = |port: u16| {
        let of = |list: &[(u16, u64)]| list.iter().find(|(p, _)| *p == port).map_or(0, |x| x.1);
        of(&after) - of(&before)
    };
    // What each master holds of the control channel and the lanes.
    let holds = |port: u16| {
        let names = (0..gateway::cluster::wire::CLUSTER_LANES)
            .map(|lane| format!("gateway#lane:{lane}"))
            .chain(["gateway#cluster".to_owned()]);
        let slot = |name: &String| gateway::cluster::slots::slot(name.as_bytes());
        let master = masters.iter().find(|m| m.port == port);
        names
            .filter(|name| master.is_some_and(|m| m.serves(slot(name))))
            .count()
    };
    let all: u64 = masters.iter().map(|m| on_master(m.port)).sum();
    let busiest = masters.iter().map(|m| on_master(m.port)).max().unwrap_or(0);
    println!(
        "3 nodes for {seconds:.1} s: {:.0} presence joins and as many leaves per second (all nodes), {:.0} publishes per second",
        joins as f64 / seconds,
        publishes as f64 / seconds
    );
    for master in &masters {
        println!(
            "  master {} ({} of the control channel and lanes): {:.0} SPUBLISH/s",
            master.port,
            holds(master.port),
            on_master(master.port) as f64 / seconds
        );
    }
    println!(
        "  all masters: {:.0} SPUBLISH/s; the busiest takes {:.1}% of them",
        all as f64 / seconds,
        100.0 * busiest as f64 / all.max(1) as f64
    );
}

/// `SPUBLISH` calls a Redis server has served since it started.
fn spublish_calls(port: u16) -> u64 {
    let info = crate::common::redis_cluster::cli(port, &["INFO", "commandstats"]);
    info.iter()
        .find_map(|line| line.strip_prefix("cmdstat_spublish:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Clients that connect, join a presence channel and leave, back to back, until the run ends;
/// returns how many joined.
fn churn(node: &Gateway, n: usize, started: Instant) -> usize {
    let mut joins = 0;
    while started.elapsed() < MIXED_RUN {
        let mut client = node.client();
        let room = format!("presence-room-{}", joins % CHURN_CHANNELS);
        client.join(&room, &format!("user-{n}-{joins}"), json!({"n": joins}));
        client.close();
        joins += 1;
    }
    joins
}

/// Publishes to the rooms in turn, one every 5 ms, until the run ends; returns how many.
fn publish_spaced(node: &Gateway, rooms: &[String], started: Instant) -> usize {
    let mut publisher = Publisher::connect(node);
    let path = format!("/apps/{APP_ID}/events");
    let mut sent = 0;
    while started.elapsed() < MIXED_RUN {
        let room = &rooms[sent % rooms.len()];
        let body = json!({"name": "e", "channel": room, "data": sent.to_string()}).to_string();
        assert_eq!(publisher.post(&path, &body), 200);
        sent += 1;
        thread::sleep(Duration::from_millis(5));
    }
    sent - sent % rooms.len()
}
