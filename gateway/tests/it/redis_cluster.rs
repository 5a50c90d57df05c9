//! Clustering through a real Redis Cluster (three masters, three replicas, started by the test)
//! with sharded pub/sub: exactly-once delivery across three gateways, each master holding only
//! the channels of its slots, and a master killed with its replica taking over.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use std::time::{Duration, Instant};

use crate::cluster::{late_subscriber_gets_the_last_event, lines, received, subscribed};
use crate::cluster_presence::{ids, users, ROOM};
use crate::common::redis_cluster::{RedisCluster, NODE_TIMEOUT_MS};
use crate::common::webhooks::Receiver;
use crate::common::{wait_until, Client, Gateway, KEY, SECRET};
use gateway::cluster::slots::slot;

/// Channels spread over the slot space, so that every master holds some.
const CHANNELS: usize = 12;

fn channel(n: usize) -> String {
    format!("room-{n}")
}

/// The Redis channel of app 1's Pusher channel, with the default prefix.
fn redis_channel(name: &str) -> String {
    format!("gateway:1:{name}")
}

/// Starts `n` gateways on the cluster and waits until each hears the others.
fn nodes(cluster: &RedisCluster, n: usize) -> Vec<Gateway> {
    heard((0..n).map(|_| cluster.gateway()).collect())
}

/// Waits until each node hears the others.
fn heard(nodes: Vec<Gateway>) -> Vec<Gateway> {
    let n = nodes.len();
    for node in &nodes {
        assert!(
            wait_until(Duration::from_secs(10), || node
                .metric("gateway_cluster_nodes")
                == (n - 1) as f64),
            "every node hears the others' heartbeats"
        );
    }
    nodes
}

fn wait_shard_subscribers(cluster: &RedisCluster, name: &str, nodes: u64) {
    let redis = redis_channel(name);
    assert!(
        wait_until(Duration::from_secs(10), || cluster
            .shard_subscribers(&redis)
            == nodes),
        "{nodes} nodes subscribe to {redis} on its master"
    );
}

#[test]
fn publishes_through_a_redis_cluster_reach_every_node_exactly_once() {
    let cluster = RedisCluster::start();
    let nodes = nodes(&cluster, 3);
    let mut clients: Vec<Client> = nodes.iter().map(Gateway::client).collect();
    for client in &mut clients {
        subscribed(client, "news");
        (0..CHANNELS).for_each(|n| subscribed(client, &channel(n)));
    }
    wait_shard_subscribers(&cluster, "news", 3);
    (0..CHANNELS).for_each(|n| wait_shard_subscribers(&cluster, &channel(n), 3));

    let mut expected = Vec::new();
    for (from, node) in nodes.iter().enumerate() {
        for n in 0..CHANNELS {
            node.publish(&channel(n), "from", &from.to_string());
            expected.push(format!("{}/from/{from}", channel(n)));
        }
    }
    let expected = lines(&expected.iter().map(String::as_str).collect::<Vec<_>>());
    let refs: Vec<&Gateway> = nodes.iter().collect();
    let mut client_refs: Vec<&mut Client> = clients.iter_mut().collect();
    for (n, got) in received(&refs, &mut client_refs, "news")
        .into_iter()
        .enumerate()
    {
        assert_eq!(got, expected, "client on node {n}: every publish once");
    }

    // Each master holds the sharded channels of its own slots, and between them all of them.
    let mut held = Vec::new();
    for master in cluster.masters() {
        for name in cluster.shard_channels(master.port) {
            assert!(
                master.serves(slot(name.as_bytes())),
                "{name} is held by the master of its slot, not {}",
                master.port
            );
            held.push(name);
        }
    }
    for n in 0..CHANNELS {
        assert!(held.contains(&redis_channel(&channel(n))));
    }
    assert!(held.contains(&"gateway#cluster".to_owned()));
    late_subscriber_gets_the_last_event(&nodes[0], &nodes[2]);
}

/// Events received per channel, with when they came, until `end` has come on each channel.
fn collect_until_end(
    client: &mut Client,
    channels: &[&str],
) -> BTreeMap<String, Vec<(u64, Instant)>> {
    let mut got: BTreeMap<String, Vec<(u64, Instant)>> = BTreeMap::new();
    let mut ended = 0;
    client.set_timeout(Duration::from_secs(20));
    while ended < channels.len() {
        let event = match client.socket.read() {
            Ok(tungstenite::Message::Text(text)) => {
                serde_json::from_str::<serde_json::Value>(&text).unwrap()
            }
            Ok(_) => continue,
            // Silent for too long: what came is judged below.
            Err(_) => break,
        };
        let Some(name) = event["channel"].as_str() else {
            continue;
        };
        match event["event"].as_str() {
            Some("end") => ended += 1,
            Some("tick") => {
                let n = event["data"].as_str().and_then(|d| d.parse().ok()).unwrap();
                got.entry(name.to_owned())
                    .or_default()
                    .push((n, Instant::now()));
            }
            _ => {}
        }
    }
    got
}

/// The longest silence between consecutive events at or after `from`.
fn longest_gap(events: &[(u64, Instant)], from: Instant) -> Duration {
    let times: Vec<Instant> = events
        .iter()
        .map(|&(_, at)| at)
        .filter(|&at| at >= from)
        .collect();
    let first = times.first().map_or(Duration::MAX, |&at| at - from);
    times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .fold(first, Duration::max)
}

#[test]
fn a_killed_master_is_replaced_by_its_replica_and_delivery_resumes_on_its_own() {
    let mut cluster = RedisCluster::start();
    let nodes = nodes(&cluster, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let masters = cluster.masters();
    let control = slot(b"gateway#cluster");
    let master_of = |name: &str| {
        let slot = slot(redis_channel(name).as_bytes());
        masters.iter().find(|m| m.serves(slot)).unwrap().port
    };
    // The victim holds the control channel (heartbeats, queries) as well as a data channel.
    let victim = masters.iter().find(|m| m.serves(control)).unwrap().port;
    let names: Vec<String> = (0..CHANNELS).map(channel).collect();
    let on_victim = names
        .iter()
        .find(|n| master_of(n) == victim)
        .unwrap()
        .clone();
    let elsewhere = names
        .iter()
        .find(|n| master_of(n) != victim)
        .unwrap()
        .clone();
    let mut listener = b.client();
    for name in [&on_victim, &elsewhere] {
        subscribed(&mut listener, name);
        wait_shard_subscribers(&cluster, name, 1);
    }

    let watched = [on_victim.as_str(), elsewhere.as_str()];
    let reader = {
        let mut listener = listener;
        let watched = watched.map(str::to_owned);
        std::thread::spawn(move || {
            let watched: Vec<&str> = watched.iter().map(String::as_str).collect();
            collect_until_end(&mut listener, &watched)
        })
    };
    let ticks = 300;
    let mut killed_at = None;
    for n in 0..ticks {
        if n == 40 {
            cluster.kill(victim);
            killed_at = Some(Instant::now());
        }
        for name in watched {
            a.publish(name, "tick", &n.to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
        if killed_at.is_some_and(|at| at.elapsed() > Duration::from_secs(6)) && cluster.is_ok() {
            break;
        }
    }
    // Past the failover: both channels must carry these.
    std::thread::sleep(Duration::from_secs(1));
    for n in ticks..ticks + 20 {
        for name in watched {
            a.publish(name, "tick", &n.to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for name in watched {
        a.publish(name, "end", "");
    }
    let got = reader.join().unwrap();
    let killed_at = killed_at.unwrap();
    for (name, events) in &got {
        let mut numbers: Vec<u64> = events.iter().map(|&(n, _)| n).collect();
        let count = numbers.len();
        numbers.dedup();
        assert_eq!(numbers.len(), count, "{name}: no event twice");
        let disorder: Vec<&[u64]> = numbers.windows(2).filter(|p| p[0] >= p[1]).collect();
        assert!(
            disorder.is_empty(),
            "{name}: in order, not {disorder:?} (victim {on_victim})"
        );
        assert!(
            numbers.contains(&(ticks + 19)),
            "{name}: delivery resumed after the failover"
        );
    }
    let victim_gap = longest_gap(&got[&on_victim], killed_at);
    let other_gap = longest_gap(&got[&elsewhere], killed_at);
    println!(
        "failover (cluster-node-timeout {NODE_TIMEOUT_MS} ms): longest silence on the killed master's channel {victim_gap:?}, elsewhere {other_gap:?}"
    );
    assert!(victim_gap < Duration::from_secs(15), "{victim_gap:?}");
    assert!(
        other_gap < Duration::from_secs(2),
        "nothing else stops: {other_gap:?}"
    );
    // Both nodes kept each other through the loss of the control channel's master, and see
    // three masters again, all reachable.
    for node in [a, b] {
        assert_eq!(node.metric("gateway_cluster_nodes"), 1.0);
        assert_eq!(
            node.metric("gateway_redis_connects_total"),
            1.0,
            "no session restarted"
        );
        assert!(wait_until(Duration::from_secs(10), || node.health()
            ["cluster"]
            == "ok"));
        assert_eq!(node.metric("gateway_redis_shard_up"), 3.0);
        assert_eq!(node.metric("gateway_redis_unplaced_subscriptions"), 0.0);
    }
    // The publishes lost meanwhile are counted against the master that was killed.
    let failures = "gateway_redis_shard_publish_failures_total";
    let on_victim = a.metric(&format!("{failures}{{shard=\"127.0.0.1:{victim}\"}}"));
    println!(
        "publishes lost on the killed master: {on_victim}, in all: {}",
        a.metric(failures)
    );
    assert!(on_victim > 0.0, "failures counted on the killed master");
    assert!(a.metric(failures) <= a.metric("gateway_redis_publish_failures_total"));
}

/// An event's data, which Pusher sends as a JSON string.
fn data(event: &Value) -> Value {
    serde_json::from_str(event["data"].as_str().unwrap_or("")).unwrap()
}

/// Reads events until the channel's subscription count is `count`.
fn wait_count(client: &mut Client, count: u64) {
    loop {
        let event = client.next_named("pusher_internal:subscription_count");
        if data(&event)["subscription_count"] == count {
            return;
        }
    }
}

/// The channels of the webhook events named `name` among `events`, sorted.
fn hooked(events: &[(Value, Instant)], name: &str) -> Vec<String> {
    let named = events.iter().filter(|(event, _)| event["name"] == name);
    let mut channels: Vec<String> = named
        .map(|(event, _)| event["channel"].as_str().unwrap_or("").to_string())
        .collect();
    channels.sort();
    channels
}

#[test]
fn channels_on_two_nodes_are_occupied_counted_and_vacated_once_for_the_cluster() {
    let receiver = Receiver::start(0);
    let app = json!({"id": "1", "key": KEY, "secret": SECRET, "webhook_url": receiver.url(),
                     "webhook_events": ["channel_occupied", "channel_vacated"],
                     "subscription_count_events": true});
    let config = json!({ "apps": [app] });
    let cluster = RedisCluster::start();
    let mut nodes = heard(vec![
        cluster.gateway_with_config(&config),
        cluster.gateway_with_config(&config),
    ]);
    let mut room = vec![nodes[0].client(), nodes[0].client(), nodes[1].client()];
    for client in &mut room {
        subscribed(client, "room");
    }
    // Every subscriber, on either node, is told the cluster's count.
    for client in &mut room {
        wait_count(client, 3);
    }
    room.pop().unwrap().close();
    wait_count(&mut room[0], 2);
    // "hall" loses its subscriber on the second node with the node itself.
    let mut hall = vec![nodes[0].client(), nodes[1].client()];
    for client in &mut hall {
        subscribed(client, "hall");
    }
    for client in &mut hall {
        wait_count(client, 2);
    }

    for client in room.drain(..) {
        client.close();
    }
    // "room" is vacated after the 3 s hold, by whichever node decides about it; the node is
    // killed only then, since a vacate still held dies with its node.
    let mut events = receiver.collect(Duration::from_secs(5));
    assert_eq!(hooked(&events, "channel_vacated"), ["room"], "{events:?}");
    hall.remove(0).close();
    nodes.pop().unwrap().child.kill().unwrap();
    // "hall" is vacated after the node timeout (5 s) and the hold.
    events.extend(receiver.collect(Duration::from_secs(10)));
    assert_eq!(
        hooked(&events, "channel_occupied"),
        ["hall", "room"],
        "{events:?}"
    );
    assert_eq!(
        hooked(&events, "channel_vacated"),
        ["hall", "room"],
        "{events:?}"
    );
}

#[test]
fn a_channel_whose_slot_moves_to_another_master_is_followed_there() {
    let cluster = RedisCluster::start();
    let nodes = nodes(&cluster, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let (moved, stays) = (channel(0), channel(1));
    let moved_slot = slot(redis_channel(&moved).as_bytes());
    let masters = cluster.masters();
    let from = masters.iter().find(|m| m.serves(moved_slot)).unwrap().port;
    let to = masters.iter().find(|m| m.port != from).unwrap().port;
    let mut listener = b.client();
    for name in [&moved, &stays] {
        subscribed(&mut listener, name);
        wait_shard_subscribers(&cluster, name, 1);
    }

    let watched = [moved.clone(), stays.clone()];
    let reader = std::thread::spawn(move || {
        let watched: Vec<&str> = watched.iter().map(String::as_str).collect();
        collect_until_end(&mut listener, &watched)
    });
    let ticks: u64 = 120;
    let mut moved_at = None;
    for n in 0..ticks {
        if n == 20 {
            cluster.move_slot(moved_slot, from, to);
            moved_at = Some(Instant::now());
        }
        for name in [&moved, &stays] {
            a.publish(name, "tick", &n.to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Checked while the listener is still subscribed.
    let redis = redis_channel(&moved);
    assert!(
        cluster.shard_channels(to).contains(&redis),
        "now held on {to}"
    );
    assert!(
        !cluster.shard_channels(from).contains(&redis),
        "not on {from}"
    );
    for name in [&moved, &stays] {
        a.publish(name, "end", "");
    }
    let got = reader.join().unwrap();
    for (name, events) in &got {
        let numbers: Vec<u64> = events.iter().map(|&(n, _)| n).collect();
        assert!(
            numbers.windows(2).all(|pair| pair[0] < pair[1]),
            "{name}: in order, each once: {numbers:?}"
        );
        assert!(
            numbers.contains(&(ticks - 1)),
            "{name}: delivered after the move"
        );
    }
    let gap = longest_gap(&got[&moved], moved_at.unwrap());
    let lost = ticks as usize - got[&moved].len();
    println!("slot move: longest silence on the moved channel {gap:?}, {lost} of {ticks} lost");
    assert!(gap < Duration::from_secs(10), "{gap:?}");
}

#[test]
fn presence_crosses_a_redis_cluster_on_lanes_spread_over_its_masters() {
    let cluster = RedisCluster::start();
    let mut nodes = nodes(&cluster, 2);
    let mut alice = nodes[0].client();
    alice.join(ROOM, "alice", json!({"name": "Alice"}));
    let mut bob = nodes[1].client();
    bob.join(ROOM, "bob", json!(null));
    let added = alice.next_named("pusher_internal:member_added");
    assert_eq!(data(&added)["user_id"], "bob", "{added}");
    // A node that comes later learns both from the others' snapshots, lane by lane.
    nodes.push(cluster.gateway());
    let late = &nodes[2];
    assert!(
        wait_until(Duration::from_secs(10), || users(late)
            == ids(&["alice", "bob"])),
        "{:?}",
        users(late)
    );
    // The lanes live on more than one master, each on the master of its slot.
    let mut masters_with_lanes = 0;
    for master in cluster.masters() {
        let lanes: Vec<String> = (cluster.shard_channels(master.port).into_iter())
            .filter(|name| name.starts_with("gateway#lane:"))
            .collect();
        for lane in &lanes {
            assert!(master.serves(slot(lane.as_bytes())), "{lane}");
        }
        masters_with_lanes += usize::from(!lanes.is_empty());
    }
    assert!(
        masters_with_lanes >= 2,
        "lanes on {masters_with_lanes} master(s)"
    );
    bob.close();
    let removed = alice.next_named("pusher_internal:member_removed");
    assert_eq!(data(&removed)["user_id"], "bob", "{removed}");
}
