//! Publish and fanout: every subscriber on every shard gets each event once, in publish order.

use std::time::Duration;

use serde_json::json;

use super::{config, Client, Node};
use crate::admin::stats::{Disconnect, Labelled, Rejection};
use crate::protocol::codes;

/// The `data` of the channel events a client received since the last call.
fn received(client: &Client, event: &str) -> Vec<String> {
    client
        .events()
        .into_iter()
        .filter(|(name, _)| name == event)
        .map(|(_, data)| data.as_str().expect("string data").to_owned())
        .collect()
}

/// Subscribers of `channel`, `per_shard` on each shard, their subscription answers taken.
fn subscribers(node: &mut Node, channel: &str, per_shard: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for shard in 0..node.cores.len() {
        for _ in 0..per_shard {
            let client = node.connect(shard);
            node.subscribe(&client, channel);
            let answers = client.event_names();
            assert_eq!(answers[0], "pusher_internal:subscription_succeeded");
            clients.push(client);
        }
    }
    clients
}

#[test]
fn sequential_publishes_on_different_shards_arrive_in_order_everywhere() {
    let mut node = Node::new(2, config());
    let clients = subscribers(&mut node, "orders", 2);
    // Each publish is answered before the next is made, on the other shard; no shard has
    // handled its inbox in between except as its own publish requires.
    for n in 0..10 {
        node.publish(n % 2, "orders", "e", &n.to_string());
    }
    node.settle();
    let expected: Vec<String> = (0..10).map(|n| n.to_string()).collect();
    for client in &clients {
        assert_eq!(received(client, "e"), expected, "on shard {}", client.shard);
    }
}

#[test]
fn a_publish_that_skipped_the_inbox_would_overtake_an_earlier_one() {
    // Why `Shard::publish` handles its inbox first: without it, shard 1's subscriber gets the
    // second event before the first, which waits in its inbox.
    let mut node = Node::new(2, config());
    let clients = subscribers(&mut node, "orders", 1);
    node.publish(0, "orders", "e", "first");
    node.publish_now(1, "orders", "e", "second");
    node.settle();
    assert_eq!(received(&clients[0], "e"), ["first", "second"]);
    assert_eq!(received(&clients[1], "e"), ["second", "first"]);
}

#[test]
fn order_holds_under_random_interleavings_of_inbox_handling() {
    for seed in 0..50 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let shards = rng.usize(2..=4);
        let mut node = Node::new(shards, config());
        let clients = subscribers(&mut node, "cache-orders", 1);
        let publishes = 60;
        for n in 0..publishes {
            // Between publishes, shards handle parts of their inboxes in any order.
            for _ in 0..rng.usize(0..3) {
                let shard = rng.usize(0..shards);
                node.handle_inbox(shard, rng.usize(0..4));
            }
            node.publish(rng.usize(0..shards), "cache-orders", "e", &n.to_string());
        }
        node.settle();
        let expected: Vec<String> = (0..publishes).map(|n| n.to_string()).collect();
        for client in &clients {
            assert_eq!(
                received(client, "e"),
                expected,
                "seed {seed}, shard {}",
                client.shard
            );
        }
        // Every shard's cache keeps the last event.
        for shard in 0..shards {
            let late = node.connect(shard);
            node.subscribe(&late, "cache-orders");
            let last = (publishes - 1).to_string();
            assert_eq!(received(&late, "e"), [last], "seed {seed}, shard {shard}");
        }
    }
}

#[test]
fn a_client_event_reaches_the_channel_on_every_shard_but_not_its_sender() {
    let mut node = Node::new(2, config());
    let clients = subscribers(&mut node, "private-room", 2);
    let sender = &clients[0];
    let event = json!({"event": "client-typing", "channel": "private-room", "data": {"a": 1}});
    node.say(sender, &event);
    node.settle();
    assert!(sender.take().is_empty());
    for client in &clients[1..] {
        assert_eq!(client.events(), [("client-typing".into(), json!({"a": 1}))]);
    }
}

#[test]
fn a_client_event_needs_a_subscription_and_keeps_to_its_rate() {
    let mut config = config();
    config.apps[0].client_event_rate = Some(2);
    let mut node = Node::new(1, config);
    let clients = subscribers(&mut node, "private-room", 2);
    let (sender, other) = (&clients[0], &clients[1]);
    let elsewhere = json!({"event": "client-x", "channel": "private-other", "data": {}});
    node.say(sender, &elsewhere);
    let error = sender.take();
    assert_eq!(error[0]["event"], "pusher:error");
    let event = json!({"event": "client-x", "channel": "private-room", "data": {}});
    for _ in 0..3 {
        node.say(sender, &event);
    }
    assert_eq!(other.event_names(), ["client-x", "client-x"]);
    let refused = sender.take();
    assert_eq!(refused[0]["data"]["code"], codes::CLIENT_EVENT_REJECTED);
    assert_eq!(refused[0]["channel"], "private-room");
    // A new second, a new allowance.
    node.advance(std::time::Duration::from_secs(1));
    node.say(sender, &event);
    assert_eq!(other.event_names(), ["client-x"]);
}

#[test]
fn a_client_event_keeps_to_pushers_limits_of_name_and_data() {
    let mut config = config();
    config.max_event_data_bytes = 100;
    let mut node = Node::new(2, config);
    let clients = subscribers(&mut node, "private-room", 2);
    let (sender, other) = (&clients[0], &clients[1]);
    // Data counts as sent: a string's own bytes, any other value's JSON text. Names count in
    // characters, as Pusher's SDKs count them.
    let at_most = [
        json!("x".repeat(100)),
        json!({"t": "x".repeat(92)}),
        json!("é".repeat(50)),
    ];
    let longest_name = format!("client-{}", "é".repeat(193));
    for data in at_most {
        node.say(
            sender,
            &json!({"event": longest_name, "channel": "private-room", "data": data}),
        );
    }
    node.settle();
    assert_eq!(other.events().len(), 3, "events at the limits are relayed");
    assert!(sender.take().is_empty());
    let over = [
        json!({"event": "client-x", "channel": "private-room", "data": "x".repeat(101)}),
        json!({"event": "client-x", "channel": "private-room", "data": {"t": "x".repeat(93)}}),
        json!({"event": format!("{longest_name}x"), "channel": "private-room", "data": "{}"}),
    ];
    for event in &over {
        node.say(sender, event);
    }
    node.settle();
    assert!(other.take().is_empty(), "nothing over a limit is relayed");
    let errors = sender.take();
    assert_eq!(errors.len(), 3);
    for error in &errors {
        assert_eq!(error["event"], "pusher:error");
        assert_eq!(error["channel"], "private-room");
        assert_eq!(error["data"]["code"], codes::CLIENT_EVENT_REJECTED);
    }
    assert!(errors[0]["data"]["message"]
        .as_str()
        .unwrap()
        .contains("100 are allowed"));
    assert!(errors[2]["data"]["message"]
        .as_str()
        .unwrap()
        .contains("200 characters"));
    let count = |reason: Rejection| -> u64 {
        let counter = &node.stats[sender.shard].rejected[reason.index()];
        counter.load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(count(Rejection::ClientEventTooLarge), 2);
    assert_eq!(count(Rejection::ClientEventNameTooLong), 1);
    // The sender stays connected and subscribed: the next event within the limits goes out.
    assert_eq!(sender.closed(), None);
    node.say(
        sender,
        &json!({"event": "client-x", "channel": "private-room", "data": {}}),
    );
    node.settle();
    assert_eq!(other.event_names(), ["client-x"]);
}

#[test]
fn a_user_channel_publish_reaches_the_users_sockets_on_every_shard() {
    let mut node = Node::new(2, config());
    let alice: Vec<Client> = (0..2).map(|shard| node.connect(shard)).collect();
    let bob = node.connect(1);
    for client in &alice {
        node.sign_in(client, "alice", &[]);
        assert_eq!(client.event_names(), ["pusher:signin_success"]);
    }
    node.sign_in(&bob, "bob", &[]);
    bob.take();
    node.publish(1, "#server-to-user-alice", "note", "hi");
    node.settle();
    for client in &alice {
        assert_eq!(received(client, "note"), ["hi"]);
    }
    assert!(bob.take().is_empty());
}

#[test]
fn a_client_that_cannot_keep_up_is_closed_and_the_others_still_get_everything() {
    let mut config = config();
    config.outbound_queue_bytes = 1000;
    let mut node = Node::new(1, config);
    let clients = subscribers(&mut node, "feed", 2);
    let (slow, fast) = (&clients[0], &clients[1]);
    slow.stall();
    let data = "x".repeat(300);
    for _ in 0..5 {
        node.publish(0, "feed", "e", &data);
    }
    assert_eq!(
        slow.closed(),
        Some((codes::OVER_CAPACITY, Disconnect::SlowConsumer))
    );
    assert_eq!(received(fast, "e").len(), 5);
    let stats = &node.stats[0];
    assert_eq!(
        stats
            .slow_consumer_disconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Once it is closing, fanout skips it.
    slow.take();
    node.publish(0, "feed", "e", "after");
    assert!(slow.take().is_empty());
}

#[test]
fn an_unsubscribed_client_gets_nothing_more() {
    let mut node = Node::new(2, config());
    let clients = subscribers(&mut node, "news", 1);
    node.unsubscribe(&clients[1], "news");
    node.publish(0, "news", "e", "1");
    node.settle();
    assert_eq!(received(&clients[0], "e"), ["1"]);
    assert!(clients[1].take().is_empty());
}

#[test]
fn a_wide_broadcast_is_delivered_in_slices_and_what_follows_waits_behind_it() {
    let mut node = Node::new(1, config());
    node.cores[0].set_fanout_slice(2);
    node.manual_fanout = true;
    let wide = subscribers(&mut node, "wide", 5);
    let narrow = node.connect(0);
    node.subscribe(&narrow, "narrow");
    node.subscribe(&wide[0], "narrow");
    narrow.take();
    wide[0].take();

    node.publish(0, "wide", "e", "first");
    let got = |clients: &[Client]| {
        clients
            .iter()
            .filter(|c| !received(c, "e").is_empty())
            .count()
    };
    assert_eq!(got(&wide), 0, "answered before any delivery");
    node.publish(0, "narrow", "e", "second");
    assert!(
        received(&narrow, "e").is_empty(),
        "queued behind the wide one"
    );
    let mut slices = 0;
    while node.fan_out_slice(0) {
        slices += 1;
    }
    assert_eq!(slices, 3, "five frames, then two more, two at a time");
    assert_eq!(
        received(&wide[0], "e"),
        ["first", "second"],
        "in publish order"
    );
    assert_eq!(received(&narrow, "e"), ["second"]);
    for client in &wide[1..] {
        assert_eq!(received(client, "e"), ["first"]);
    }
    node.publish(0, "narrow", "e", "third");
    assert_eq!(received(&narrow, "e"), ["third"], "nothing waits: at once");
}

#[test]
fn broadcasts_waiting_next_to_each_other_for_one_channel_go_to_each_recipient_together() {
    let mut node = Node::new(1, config());
    node.cores[0].set_fanout_slice(2);
    node.manual_fanout = true;
    let wide = subscribers(&mut node, "wide", 5);
    node.subscribe(&wide[0], "narrow");
    wide[0].take();
    for (channel, data) in [("wide", "1"), ("wide", "2"), ("narrow", "x"), ("wide", "3")] {
        node.publish(0, channel, "e", data);
    }
    let stats = node.stats[0].clone();
    let waiting = || {
        stats
            .fanout_waiting
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(waiting(), 11, "writes: 5 for 1 and 2, 1 for x, 5 for 3");
    assert!(node.fan_out_slice(0));
    assert_eq!(waiting(), 9, "two recipients of the first group served");
    let mut slices = 1;
    while node.fan_out_slice(0) {
        slices += 1;
    }
    assert_eq!(waiting(), 0);
    // 1 and 2 together to 5 recipients, x to 1, 3 to 5: 11 recipients' turns, 2 a slice. One
    // at a time it would be 16.
    assert_eq!(slices, 5);
    assert_eq!(
        received(&wide[0], "e"),
        ["1", "2", "x", "3"],
        "publish order"
    );
    for client in &wide[1..] {
        assert_eq!(received(client, "e"), ["1", "2", "3"]);
    }
}

#[test]
fn a_client_event_delivered_together_with_others_still_skips_its_sender() {
    let mut node = Node::new(1, config());
    node.cores[0].set_fanout_slice(1);
    node.manual_fanout = true;
    let clients = subscribers(&mut node, "private-wide", 3);
    node.publish(0, "private-wide", "e", "1");
    let typing = json!({"event": "client-e", "channel": "private-wide", "data": "typing"});
    node.say(&clients[0], &typing);
    node.publish(0, "private-wide", "e", "2");
    while node.fan_out_slice(0) {}
    let names = |client: &Client| -> Vec<String> {
        let events = client.events().into_iter();
        events
            .map(|(name, data)| format!("{name}:{}", data.as_str().unwrap_or("")))
            .collect()
    };
    assert_eq!(names(&clients[0]), ["e:1", "e:2"]);
    for client in &clients[1..] {
        assert_eq!(names(client), ["e:1", "client-e:typing", "e:2"]);
    }
}

#[test]
fn slices_are_sized_by_how_long_the_last_one_took() {
    let mut node = Node::new(1, config());
    node.manual_fanout = true;
    let clients = subscribers(&mut node, "wide", 1_500);
    let reached = |clients: &[Client]| clients.iter().filter(|c| !c.take().is_empty()).count();
    node.publish(0, "wide", "e", "1");
    assert!(node.fan_out_slice(0));
    assert_eq!(reached(&clients), 512, "FANOUT_SLICE at first");
    node.cores[0].slice_took(Duration::from_millis(4));
    assert!(node.fan_out_slice(0));
    assert_eq!(reached(&clients), 320, "halfway to the 128 that take 1 ms");
    node.cores[0].slice_took(Duration::from_micros(100));
    assert!(node.fan_out_slice(0));
    assert_eq!(reached(&clients), 512, "never more than FANOUT_SLICE");
    node.cores[0].slice_took(Duration::from_secs(1));
    assert!(!node.fan_out_slice(0));
    assert_eq!(reached(&clients), 156, "the rest");
}

#[test]
fn a_subscriber_that_leaves_while_a_broadcast_waits_does_not_get_it() {
    let mut node = Node::new(1, config());
    node.cores[0].set_fanout_slice(1);
    node.manual_fanout = true;
    let clients = subscribers(&mut node, "wide", 3);
    node.publish(0, "wide", "e", "first");
    node.fan_out_slice(0);
    let reached = clients.iter().position(|c| !received(c, "e").is_empty());
    let gone = (0..3).find(|&n| Some(n) != reached).unwrap();
    node.close(&clients[gone], Disconnect::ClientGone);
    while node.fan_out_slice(0) {}
    assert!(received(&clients[gone], "e").is_empty());
}

#[test]
fn a_cache_channel_subscriber_that_comes_while_a_broadcast_waits_gets_it_once() {
    let mut node = Node::new(1, config());
    node.cores[0].set_fanout_slice(1);
    node.manual_fanout = true;
    let _earlier = subscribers(&mut node, "cache-wide", 3);
    node.publish(0, "cache-wide", "e", "first");
    while node.fan_out_slice(0) {}
    node.publish(0, "cache-wide", "e", "second");
    let late = node.connect(0);
    node.subscribe(&late, "cache-wide");
    assert_eq!(received(&late, "e"), ["first"], "the event kept before it");
    while node.fan_out_slice(0) {}
    assert_eq!(received(&late, "e"), ["second"]);
}

#[test]
fn client_events_are_refused_while_the_shard_is_far_behind_with_its_fanout() {
    let mut node = Node::new(1, config());
    node.cores[0].set_fanout_slice(1);
    node.cores[0].set_fanout_backlog(2);
    node.manual_fanout = true;
    let clients = subscribers(&mut node, "private-room", 3);
    for client in &clients {
        node.subscribe(client, "private-hall");
        client.take();
    }
    let sender = &clients[0];
    let event = |channel| json!({"event": "client-typing", "channel": channel, "data": {}});
    node.say(sender, &event("private-room"));
    node.say(sender, &event("private-room"));
    node.say(sender, &event("private-hall"));
    assert!(
        sender.take().is_empty(),
        "the second joins the first's group; then one group waits: under twice the backlog"
    );
    node.say(sender, &event("private-room"));
    let refused = sender.take();
    assert_eq!(refused.len(), 1, "with two groups waiting: {refused:?}");
    assert_eq!(refused[0]["event"], "pusher:error");
    assert_eq!(refused[0]["data"]["code"], codes::CLIENT_EVENT_REJECTED);
    let counter = &node.stats[0].rejected[Rejection::FanoutBacklog.index()];
    assert_eq!(counter.load(std::sync::atomic::Ordering::Relaxed), 1);
    while node.fan_out_slice(0) {}
    for client in &clients[1..] {
        assert_eq!(client.event_names(), ["client-typing"; 3]);
    }
    node.say(sender, &event("private-room"));
    assert!(sender.take().is_empty(), "caught up: taken again");
}
