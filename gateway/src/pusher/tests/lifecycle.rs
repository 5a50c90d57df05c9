//! Sessions over time: activity timeouts, drain, termination, and what a closed session leaves.

use std::time::Duration;

use serde_json::Value;

use super::{config, counting_config, Client, Node};
use crate::admin::stats::Disconnect;
use crate::bus::{CacheAnswer, ShardMessage};
use crate::protocol::codes;

#[test]
fn a_silent_client_is_closed_after_the_inactivity_timeout_and_an_active_one_is_not() {
    let config = config();
    let limit = config.inactivity_timeout;
    let mut node = Node::new(1, config);
    let (silent, active) = (node.connect(0), node.connect(0));
    node.advance(Duration::from_secs(limit));
    active.active_at(limit as u32);
    node.tick();
    assert_eq!(silent.closed(), None, "exactly the limit is allowed");
    node.advance(Duration::from_secs(1));
    node.tick();
    let timed_out = Some((codes::PONG_NOT_RECEIVED, Disconnect::ActivityTimeout));
    assert_eq!(silent.closed(), timed_out);
    assert_eq!(active.closed(), None);
}

#[test]
fn a_drain_spreads_its_closes_over_the_window() {
    let mut node = Node::new(1, config());
    let clients: Vec<Client> = (0..25).map(|_| node.connect(0)).collect();
    let closed = |clients: &[Client]| clients.iter().filter(|c| c.closed().is_some()).count();
    let start = node.now;
    // One second: ten ticks of three closes.
    node.cores[0].start_drain(start, Duration::from_secs(1));
    assert!(!node.cores[0].drain(start));
    assert_eq!(closed(&clients), 3);
    assert!(!node.cores[0].drain(start + Duration::from_millis(450)));
    assert_eq!(closed(&clients), 15);
    assert!(node.cores[0].drain(start + Duration::from_millis(900)));
    assert_eq!(closed(&clients), 25);
    for client in &clients {
        assert_eq!(
            client.closed(),
            Some((codes::GOING_AWAY, Disconnect::Drain))
        );
    }
}

#[test]
fn an_empty_shard_has_drained_at_once() {
    let mut node = Node::new(1, config());
    let now = node.now;
    node.cores[0].start_drain(now, Duration::from_secs(30));
    assert!(node.cores[0].drain(now));
}

#[test]
fn terminating_a_user_closes_its_sockets_on_every_shard_only() {
    let mut node = Node::new(2, config());
    let erin: Vec<Client> = (0..2).map(|shard| node.connect(shard)).collect();
    let frank = node.connect(0);
    for client in &erin {
        node.sign_in(client, "erin", &[]);
    }
    node.sign_in(&frank, "frank", &[]);
    for core in &node.cores {
        core.terminate_user(0, "erin");
    }
    for client in &erin {
        let terminated = Some((codes::UNAUTHORIZED, Disconnect::Terminated));
        assert_eq!(client.closed(), terminated);
    }
    assert_eq!(frank.closed(), None);
}

#[test]
fn a_closed_session_leaves_its_channels_and_is_counted() {
    let mut node = Node::new(1, config());
    let client = node.connect(0);
    node.subscribe(&client, "a");
    node.subscribe(&client, "b");
    assert_eq!(node.cores[0].sessions(), 1);
    node.close(&client, Disconnect::ClientClose);
    assert_eq!(node.cores[0].sessions(), 0);
    assert!(node.cores[0].local_counts(0, None).is_empty());
    assert_eq!(node.stats[0].open_connections(), 0);
    // Closing twice changes nothing.
    node.close(&client, Disconnect::ClientClose);
    assert_eq!(node.stats[0].open_connections(), 0);
}

#[test]
fn a_clustered_shard_tells_the_bridge_when_it_gains_and_loses_a_channel() {
    let mut node = Node::clustered(1, config());
    let (a, b) = (node.connect(0), node.connect(0));
    node.subscribe(&a, "news");
    node.subscribe(&b, "news");
    node.close(&a, Disconnect::ClientGone);
    node.close(&b, Disconnect::ClientGone);
    let interest: Vec<bool> = node
        .bridge
        .iter()
        .filter_map(|m| match m {
            crate::cluster::BridgeMessage::Interest { occupied, .. } => Some(*occupied),
            _ => None,
        })
        .collect();
    assert_eq!(interest, [true, false]);
    node.publish(0, "news", "e", "x");
    assert_eq!(node.cluster_publishes.len(), 1);
}

#[test]
fn pings_are_answered_and_bad_messages_refused_and_counted() {
    let mut node = Node::new(1, config());
    let client = node.connect(0);
    node.say(
        &client,
        &serde_json::json!({"event": "pusher:ping", "data": {}}),
    );
    assert_eq!(client.event_names(), ["pusher:pong"]);
    let id = client.id;
    let now = node.now;
    node.apply(0, |core| core.client_message(id, "not json", now));
    assert_eq!(client.event_names(), ["pusher:error"]);
    use crate::admin::stats::{Labelled, Rejection};
    let bad_message = Rejection::BadMessage.index();
    let rejected = &node.stats[0].rejected[bad_message];
    assert_eq!(rejected.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// The cache asks the bridge has received, as (shard, channel).
fn cache_asks(node: &Node) -> Vec<(u16, String)> {
    let asks = node.bridge.iter().filter_map(|m| match m {
        crate::cluster::BridgeMessage::AskCache { shard, channel, .. } => {
            Some((*shard, channel.to_string()))
        }
        _ => None,
    });
    asks.collect()
}

#[test]
fn a_clustered_node_asks_the_cluster_for_a_cache_channels_last_event_it_never_saw() {
    let mut node = Node::clustered(2, counting_config());
    let (first, second) = (node.connect(1), node.connect(1));
    node.subscribe(&first, "cache-prices");
    node.subscribe(&second, "cache-prices");
    assert_eq!(
        cache_asks(&node),
        [(1, "cache-prices".to_owned())],
        "one ask for both"
    );
    for client in [&first, &second] {
        let names = client.event_names();
        assert_eq!(
            names,
            ["pusher_internal:subscription_succeeded"],
            "nothing yet"
        );
    }
    // The bridge's answer: the event another node published, with 10 minutes left.
    let frame =
        crate::ws::frame::text_frame(r#"{"event":"tick","channel":"cache-prices","data":"7"}"#);
    let cached = Some((frame, Duration::from_secs(600)));
    let answer = ShardMessage::Cached(Box::new(CacheAnswer {
        app: 0,
        channel: "cache-prices".into(),
        cached,
    }));
    node.inboxes[1].push_back(answer);
    node.handle_inbox(1, usize::MAX);
    for client in [&first, &second] {
        assert_eq!(client.events(), [("tick".to_owned(), Value::from("7"))]);
    }
    // Kept here now, for the time it has left: a later subscriber needs no ask.
    let late = node.connect(1);
    node.subscribe(&late, "cache-prices");
    assert_eq!(cache_asks(&node).len(), 1);
    assert_eq!(
        late.event_names(),
        ["pusher_internal:subscription_succeeded", "tick"]
    );
    node.advance(Duration::from_secs(601));
    let later = node.connect(1);
    node.subscribe(&later, "cache-prices");
    assert_eq!(cache_asks(&node).len(), 2, "expired: asked again");

    // The cluster has none either: a cache miss, and its webhook, for those still subscribed.
    let (gone, waiting) = (node.connect(0), node.connect(0));
    node.subscribe(&gone, "cache-empty");
    node.subscribe(&waiting, "cache-empty");
    node.close(&gone, Disconnect::ClientGone);
    let miss = ShardMessage::Cached(Box::new(CacheAnswer {
        app: 0,
        channel: "cache-empty".into(),
        cached: None,
    }));
    node.inboxes[0].push_back(miss);
    node.handle_inbox(0, usize::MAX);
    let names = waiting.event_names();
    assert_eq!(
        names,
        [
            "pusher_internal:subscription_succeeded",
            "pusher:cache_miss"
        ]
    );
    let misses = node.take_webhooks().into_iter().filter(|e| {
        matches!(e, crate::webhooks::WebhookEvent::CacheMiss { channel } if &**channel == "cache-empty")
    });
    assert_eq!(misses.count(), 1);
}

#[test]
fn a_cache_ask_the_cluster_never_answers_ends_in_a_miss_and_is_asked_again() {
    let mut node = Node::clustered(1, config());
    let client = node.connect(0);
    node.subscribe(&client, "cache-lost");
    node.advance(Duration::from_secs(5));
    node.tick();
    assert_eq!(
        client.event_names(),
        ["pusher_internal:subscription_succeeded"]
    );
    node.advance(Duration::from_secs(1));
    node.tick();
    assert_eq!(
        client.event_names(),
        ["pusher:cache_miss"],
        "given up after 5 s"
    );
    let late = node.connect(0);
    node.subscribe(&late, "cache-lost");
    assert_eq!(cache_asks(&node).len(), 2, "asked again");
}

#[test]
fn a_single_node_answers_a_cache_miss_at_once() {
    let mut node = Node::new(1, config());
    let client = node.connect(0);
    node.subscribe(&client, "cache-prices");
    let names = client.event_names();
    assert_eq!(
        names,
        [
            "pusher_internal:subscription_succeeded",
            "pusher:cache_miss"
        ]
    );
}
