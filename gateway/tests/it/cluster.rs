//! Clustering through a real Redis: several gateway processes on one `redis-server`, each test
//! with its own server on a free loopback port.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::redis::Redis;
use crate::common::{wait_until, Client, Gateway, Marker, APP_ID};
use gateway::cluster::NODE_TIMEOUT;
use serde_json::{json, Value};

/// Starts `n` nodes and waits until each hears the others' heartbeats.
fn cluster(redis: &Redis, n: usize) -> Vec<Gateway> {
    all_heard((0..n).map(|_| redis.gateway()).collect())
}

/// Waits until each node hears the others' heartbeats.
fn all_heard(nodes: Vec<Gateway>) -> Vec<Gateway> {
    let n = nodes.len();
    for node in &nodes {
        assert!(
            wait_until(Duration::from_secs(5), || node
                .metric("gateway_cluster_nodes")
                == (n - 1) as f64),
            "every node hears the others"
        );
    }
    nodes
}

/// What each client received, as sorted `channel/event/data` lines, before a barrier: a marker
/// published on `channel` (which every client holds) through each node, since order holds only
/// among events published through one node. Two rounds: once every client has the first,
/// every node has handed Redis what was published through it, so whatever Redis brings back
/// for it (a second copy, a node's own echo) reaches the clients before the second round.
pub(crate) fn received(
    nodes: &[&Gateway],
    clients: &mut [&mut Client],
    channel: &str,
) -> Vec<Vec<String>> {
    let mut lines = vec![Vec::new(); clients.len()];
    for _round in 0..2 {
        let markers: Vec<Marker> = nodes.iter().map(|n| n.publish_marker(channel)).collect();
        for (client, lines) in clients.iter_mut().zip(&mut lines) {
            let mut waiting: Vec<&Marker> = markers.iter().collect();
            while !waiting.is_empty() {
                let event = client.next_event();
                if let Some(at) = waiting.iter().position(|m| m.is(&event)) {
                    waiting.swap_remove(at);
                    continue;
                }
                lines.push(format!(
                    "{}/{}/{}",
                    event["channel"].as_str().unwrap_or(""),
                    event["event"].as_str().unwrap_or(""),
                    event["data"].as_str().unwrap_or("")
                ));
            }
        }
    }
    for lines in &mut lines {
        lines.sort();
    }
    lines
}

pub(crate) fn lines(list: &[&str]) -> Vec<String> {
    let mut lines: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    lines.sort();
    lines
}

pub(crate) fn subscribed(client: &mut Client, channel: &str) {
    assert_eq!(
        client.subscribe(channel)["event"],
        "pusher_internal:subscription_succeeded"
    );
}

/// `GET /apps/1/channels` with subscription counts, as a map.
fn channel_counts(gateway: &Gateway, query: &[(&str, &str)]) -> BTreeMap<String, u64> {
    let mut query = query.to_vec();
    query.push(("info", "subscription_count"));
    let (status, body) = gateway.api("GET", &format!("/apps/{APP_ID}/channels"), &query, "");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["channels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, info)| (name.clone(), info["subscription_count"].as_u64().unwrap()))
        .collect()
}

fn counts(list: &[(&str, u64)]) -> BTreeMap<String, u64> {
    list.iter().map(|(c, n)| (c.to_string(), *n)).collect()
}

#[test]
fn a_publish_reaches_every_node_exactly_once_and_only_the_nodes_that_need_it() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 3);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut a1 = a.client();
    let mut a2 = a.client();
    let mut b1 = b.client();
    let mut c1 = c.client();
    for client in [&mut a1, &mut a2, &mut b1, &mut c1] {
        subscribed(client, "news");
    }
    subscribed(&mut a1, "sports");
    subscribed(&mut b1, "sports");
    redis.wait_subscribers("news", 3);
    redis.wait_subscribers("sports", 2);
    assert_eq!(c.metric("gateway_redis_subscriptions"), 1.0);

    a.publish("news", "hello", "1");
    for score in ["0", "1", "2"] {
        a.publish("sports", "score", score);
    }
    let excluding_a2 =
        json!({"name": "marker", "channel": "news", "data": "2", "socket_id": a2.socket_id});
    let (status, _) = b.api("POST", "/apps/1/events", &[], &excluding_a2.to_string());
    assert_eq!(status, 200);
    c.publish("news", "end", "3");

    let news = ["news/hello/1", "news/marker/2", "news/end/3"];
    let sports = ["sports/score/0", "sports/score/1", "sports/score/2"];
    let both = lines(&[&news[..], &sports[..]].concat());
    let got = received(
        &[a, b, c],
        &mut [&mut a1, &mut a2, &mut b1, &mut c1],
        "news",
    );
    assert_eq!(got[0], both, "a1 on the publishing node");
    assert_eq!(
        got[1],
        lines(&["news/hello/1", "news/end/3"]),
        "a2 was excluded by socket id from another node"
    );
    assert_eq!(got[2], both, "b1 on another node");
    assert_eq!(got[3], lines(&news), "c1 on a third node");

    // Counted after the events are handed on, so possibly after a client has them.
    assert_eq!(
        c.wait_metric("gateway_redis_messages_in_total", 6.0),
        6.0,
        "C received hello, marker and the barrier's 4 markers from A and B, nothing of sports"
    );
    let subscribed_channels = redis.cli(&["PUBSUB", "CHANNELS", "gateway:1:*"]);
    assert_eq!(subscribed_channels.len(), 2, "{subscribed_channels:?}");
    assert_eq!(
        a.wait_metric("gateway_redis_messages_out_total", 6.0),
        6.0,
        "4 publishes and the barrier's 2 markers"
    );
    for node in &nodes {
        assert_eq!(node.metric("gateway_redis_publish_failures_total"), 0.0);
    }

    c1.socket
        .send(tungstenite::Message::text(
            json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}}).to_string(),
        ))
        .unwrap();
    redis.wait_subscribers("news", 2);
    assert_eq!(c.metric("gateway_redis_subscriptions"), 0.0);
}

#[test]
fn client_events_reach_other_nodes_but_not_their_sender() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2);
    let mut a1 = nodes[0].client();
    let mut b1 = nodes[1].client();
    subscribed(&mut a1, "private-chat");
    subscribed(&mut b1, "private-chat");
    redis.wait_subscribers("private-chat", 2);
    a1.send(json!({"event": "client-typing", "channel": "private-chat", "data": {"who": "a1"}}));
    let event = b1.next_event();
    assert_eq!(
        (event["event"].as_str(), event["channel"].as_str()),
        (Some("client-typing"), Some("private-chat"))
    );
    let got = received(
        &nodes.iter().collect::<Vec<_>>(),
        &mut [&mut a1, &mut b1],
        "private-chat",
    );
    assert_eq!(got[0], Vec::<String>::new(), "never echoed");
    assert_eq!(got[1], Vec::<String>::new(), "delivered once");
}

#[test]
fn without_redis_nodes_deliver_locally_and_recover_on_their_own() {
    let mut redis = Redis::start();
    let nodes = cluster(&redis, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut a1 = a.client();
    let mut a2 = a.client();
    let mut b1 = b.client();
    for client in [&mut a1, &mut a2, &mut b1] {
        subscribed(client, "news");
    }
    redis.wait_subscribers("news", 2);
    a.publish("news", "before", "1");
    let got = received(&[a, b], &mut [&mut a1, &mut a2, &mut b1], "news");
    assert_eq!(got, vec![lines(&["news/before/1"]); 3]);

    redis.stop();
    for node in [a, b] {
        assert!(
            wait_until(Duration::from_secs(5), || node.health()["cluster"]
                == "degraded"),
            "health shows the outage"
        );
        let health = node.health();
        assert_eq!(health["status"], "ok", "still alive: {health}");
        assert_eq!(node.metric("gateway_redis_up"), 0.0);
    }
    a.publish("news", "during", "a");
    b.publish("news", "during", "b");
    assert_eq!(
        a.metric("gateway_redis_publish_failures_total{reason=\"disconnected\"}"),
        1.0
    );
    // Subscriptions made while Redis is away take effect when it is back.
    let mut a3 = a.client();
    let mut b2 = b.client();
    subscribed(&mut a3, "late");
    subscribed(&mut b2, "late");

    let restarted = Instant::now();
    redis.restart();
    redis.wait_subscribers("news", 2);
    redis.wait_subscribers("late", 2);
    let recovered = restarted.elapsed();
    assert!(
        recovered < Duration::from_secs(4),
        "subscribed again {recovered:?} after redis came back"
    );
    for node in [a, b] {
        assert!(wait_until(Duration::from_secs(2), || node.health()
            ["cluster"]
            == "ok"));
    }
    a.publish("news", "after", "2");
    b.publish("late", "news", "3");

    let on_a = lines(&["news/during/a", "news/after/2"]);
    let on_b = lines(&["news/during/b", "news/after/2"]);
    let got = received(&[a, b], &mut [&mut a1, &mut a2, &mut b1], "news");
    assert_eq!(got, [on_a.clone(), on_a, on_b]);
    let got = received(&[a, b], &mut [&mut a3, &mut b2], "late");
    assert_eq!(got, vec![lines(&["late/news/3"]); 2]);
    assert_eq!(a.metric("gateway_redis_connects_total"), 2.0);
}

#[test]
fn channel_queries_answer_for_the_whole_cluster_and_drop_a_killed_node() {
    let redis = Redis::start();
    let mut nodes = cluster(&redis, 2);
    let mut b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    let mut on_a: Vec<Client> = (0..2).map(|_| a.client()).collect();
    for client in &mut on_a {
        subscribed(client, "private-room");
    }
    let mut on_b: Vec<Client> = (0..2).map(|_| b.client()).collect();
    subscribed(&mut on_b[0], "private-room");
    subscribed(&mut on_b[1], "lobby");

    let everything = counts(&[("lobby", 1), ("private-room", 3)]);
    assert_eq!(channel_counts(&a, &[]), everything);
    assert_eq!(channel_counts(&b, &[]), everything);
    assert_eq!(
        channel_counts(&b, &[("filter_by_prefix", "private-")]),
        counts(&[("private-room", 3)])
    );
    let (status, body) = a.api(
        "GET",
        "/apps/1/channels/lobby",
        &[("info", "subscription_count")],
        "",
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"occupied":true,"subscription_count":1}"#),
        "a channel held only by another node"
    );

    b.child.kill().unwrap();
    let killed = Instant::now();
    assert_eq!(
        channel_counts(&a, &[]),
        counts(&[("private-room", 2)]),
        "a dead node cannot answer, so its share is gone at once"
    );
    assert_eq!(a.metric("gateway_cluster_partial_answers_total"), 1.0);
    assert!(
        wait_until(NODE_TIMEOUT + Duration::from_secs(3), || a
            .metric("gateway_cluster_nodes")
            == 0.0),
        "the killed node expires"
    );
    let expired = killed.elapsed();
    assert!(
        expired <= NODE_TIMEOUT + Duration::from_millis(1500),
        "expired after {expired:?}"
    );
    let asked = Instant::now();
    assert_eq!(channel_counts(&a, &[]), counts(&[("private-room", 2)]));
    let (_, body) = a.api("GET", "/apps/1/channels/lobby", &[], "");
    assert_eq!(body, r#"{"occupied":false}"#);
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "an expired node is not waited for"
    );
    assert_eq!(a.metric("gateway_cluster_partial_answers_total"), 1.0);
}

#[test]
fn sequential_publishes_through_one_node_keep_their_order_on_every_node() {
    const PUBLISHES: usize = 300;
    let redis = Redis::start();
    let nodes = cluster(&redis, 2);
    let mut subscribers: Vec<Client> = nodes
        .iter()
        .flat_map(|node| node.client_per_shard(2))
        .collect();
    for client in &mut subscribers {
        subscribed(client, "ticks");
    }
    redis.wait_subscribers("ticks", 2);
    // Each on a new connection, so they land on both of node A's shards.
    for n in 0..PUBLISHES {
        nodes[0].publish("ticks", "tick", &n.to_string());
    }
    let expected: Vec<String> = (0..PUBLISHES).map(|n| n.to_string()).collect();
    for (index, client) in subscribers.iter_mut().enumerate() {
        assert_eq!(
            client.next_data(PUBLISHES),
            expected,
            "subscriber {index} (node {})",
            index / 2
        );
    }
}

/// Waits until `node` counts `expected` connections of app 2 on the other nodes against the
/// app's quota; returns how long that took.
fn wait_peer_connections(node: &Gateway, expected: f64) -> Duration {
    let start = Instant::now();
    let counted = || node.metric("gateway_cluster_app_connections{app=\"2\"}");
    assert!(
        wait_until(Duration::from_secs(5), || counted() == expected),
        "{expected} counted on the other nodes (now {})",
        counted()
    );
    start.elapsed()
}

#[test]
fn an_apps_connection_quota_holds_across_the_cluster() {
    let redis = Redis::start();
    let config = json!({"apps": [
        {"id": "1", "key": "app-key", "secret": "app-secret"},
        {"id": "2", "key": "key-two", "secret": "secret-two", "max_connections": 4},
    ]});
    let nodes = all_heard(vec![
        redis.gateway_with_config(&config),
        redis.gateway_with_config(&config),
    ]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let on_a: Vec<Client> = (0..3).map(|_| a.client_for("key-two")).collect();
    // At most a heartbeat interval plus the trip through Redis (and the polling).
    let counted = wait_peer_connections(b, 3.0);
    eprintln!("B counted A's connections {counted:?} after they opened");

    let _on_b = b.client_for("key-two");
    b.refused_with("key-two", None, 4004);
    assert_eq!(
        b.metric("gateway_rejected_total{reason=\"app_over_quota\"}"),
        1.0
    );
    wait_peer_connections(a, 1.0);
    a.refused_with("key-two", None, 4004);
    let _unlimited: Vec<Client> = (0..5).map(|_| b.client()).collect();

    for client in on_a {
        client.close();
    }
    let freed = wait_peer_connections(b, 0.0);
    eprintln!("B saw A's connections go {freed:?} after they closed");
    let _room: Vec<Client> = (0..3).map(|_| b.client_for("key-two")).collect();
    b.refused_with("key-two", None, 4004);
}

/// A cache channel's last event published on one node reaches a late subscriber on another
/// node that had no subscriber when it was published (and so never received it).
pub(crate) fn late_subscriber_gets_the_last_event(first: &Gateway, second: &Gateway) {
    first.publish("cache-prices", "price", "1");
    first.publish("cache-prices", "price", "2");
    let mut late = second.client();
    subscribed(&mut late, "cache-prices");
    let event = late.next_event();
    assert_eq!(
        (event["event"].as_str(), event["data"].as_str()),
        (Some("price"), Some("2"))
    );
    let mut empty = second.client();
    subscribed(&mut empty, "cache-nothing");
    assert_eq!(empty.next_event()["event"], "pusher:cache_miss");
}

#[test]
fn a_cache_channels_last_event_reaches_a_late_subscriber_on_another_node() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2);
    late_subscriber_gets_the_last_event(&nodes[0], &nodes[1]);
}
