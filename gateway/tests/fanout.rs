//! Fanout across shards: every subscriber on every shard receives a publish exactly once.

mod common;

use std::time::Duration;

use common::Gateway;

#[test]
fn hundreds_of_subscribers_over_every_shard_receive_one_publish_once() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let mut clients: Vec<_> = (0..300).map(|_| gateway.client()).collect();
    for client in &mut clients {
        assert_eq!(
            client.subscribe("broadcast")["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    for shard in 0..2 {
        let held = gateway.metric(&format!("gateway_connections{{shard=\"{shard}\""));
        assert!(held > 0.0, "shard {shard} holds connections ({held})");
    }
    gateway.publish("broadcast", "hello", "everyone");
    for client in &mut clients {
        let event = client.next_event();
        assert_eq!(
            (event["event"].as_str(), event["data"].as_str()),
            (Some("hello"), Some("everyone"))
        );
    }
    gateway.publish("broadcast", "marker", "end");
    for client in &mut clients {
        client.set_timeout(Duration::from_secs(5));
        assert_eq!(
            client.next_event()["event"],
            "marker",
            "no duplicate before the next event"
        );
    }
    assert_eq!(gateway.metric("gateway_messages_out_total"), 600.0);
    assert_eq!(gateway.metric("gateway_inbox_drops_total"), 0.0);
    let (_, metrics) = common::http_get(gateway.admin_port, "/metrics").unwrap();
    for shard in 0..2 {
        let line = format!("gateway_cluster_backlog{{shard=\"{shard}\"}} 0");
        assert!(metrics.lines().any(|l| l == line), "{line} in /metrics");
    }
}

#[test]
fn cache_channels_replay_the_last_event_on_every_shard() {
    let gateway = Gateway::start(&["--shards", "2"]);
    // A subscriber on each shard: once each has the last event, so has its shard's cache.
    let mut watchers = gateway.client_per_shard(2);
    for watcher in &mut watchers {
        watcher.subscribe("cache-score");
        assert_eq!(watcher.next_event()["event"], "pusher:cache_miss");
    }
    gateway.publish("cache-score", "score", "1-0");
    // A shard learns of the other's new subscriber a moment after it subscribed, and until then
    // does not send it the channel's events: the last event goes out until both shards had it.
    let mut seen = [false; 2];
    for _ in 0..50 {
        gateway.publish("cache-score", "score", "2-0");
        for (watcher, seen) in watchers.iter_mut().zip(&mut seen) {
            while let Some(event) = watcher.event_within(Duration::from_millis(100)) {
                *seen |= event["data"] == "2-0";
            }
        }
        if seen.iter().all(|&seen| seen) {
            break;
        }
    }
    assert_eq!(seen, [true; 2], "both shards had the last event");
    let mut late: Vec<_> = (0..6).map(|_| gateway.client()).collect();
    for client in &mut late {
        assert_eq!(
            client.subscribe("cache-score")["event"],
            "pusher_internal:subscription_succeeded"
        );
        let replay = client.next_event();
        assert_eq!(
            (replay["event"].as_str(), replay["data"].as_str()),
            (Some("score"), Some("2-0"))
        );
    }
}
