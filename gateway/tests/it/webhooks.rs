//! Webhooks to a receiver on loopback that checks every signature: channel and member events
//! decided once per node, the 3 s hold on departures (and its cancellation by a quick return),
//! client events and cache misses, retries, and a full queue counted.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::common::webhooks::Receiver;
use crate::common::{Client, Gateway, KEY, SECRET};
use serde_json::{json, Value};

fn start(receiver: &Receiver, extra_app: Value, flags: &[&str]) -> Gateway {
    let mut app = json!({"id": "1", "key": KEY, "secret": SECRET, "client_events": true,
                         "webhook_url": receiver.url()});
    for (k, v) in extra_app.as_object().unwrap() {
        app[k] = v.clone();
    }
    Gateway::start_with_config(&json!({ "apps": [app] }), flags)
}

/// The events named `name`, by channel (and user when there is one).
fn named<'a>(events: &'a [(Value, Instant)], name: &str) -> Vec<&'a (Value, Instant)> {
    events.iter().filter(|(e, _)| e["name"] == name).collect()
}

/// The sorted channels of some events.
fn channels(events: &[&(Value, Instant)]) -> Vec<String> {
    let names = events.iter().map(|(e, _)| e["channel"].as_str().unwrap());
    let mut names: Vec<String> = names.map(str::to_owned).collect();
    names.sort();
    names
}

/// The bodies of the events named `name`.
fn bodies(events: &[(Value, Instant)], name: &str) -> Vec<Value> {
    named(events, name)
        .into_iter()
        .map(|(e, _)| e.clone())
        .collect()
}

/// Which shard decides each event is tested on the core (`pusher::tests`); this checks what
/// the receiver gets from a running node: the bodies, signed, once each, and the hold.
#[test]
fn occupied_vacated_and_members_are_decided_once_per_node() {
    let receiver = Receiver::start(0);
    let gateway = start(&receiver, json!({}), &["--shards", "2"]);
    let [mut a, mut b]: [Client; 2] = gateway.client_per_shard(2).try_into().ok().unwrap();

    // The same channel on both shards: occupied once.
    a.subscribe("room");
    b.subscribe("room");
    a.join("presence-lobby", "u1", json!(null));
    b.join("presence-lobby", "u1", json!(null));
    a.subscribe("cache-empty");
    a.next_named("pusher:cache_miss");
    b.subscribe("private-chat");
    a.subscribe("private-chat");
    a.send(json!({"event": "client-hi", "channel": "private-chat", "data": {"x": 1}}));
    a.send(json!({"event": "client-wave", "channel": "presence-lobby", "data": "hey"}));
    b.next_named("client-wave");
    // A quiet window: events are decided on either shard and lingered over for 100 ms, and
    // the check below is that no more than these come.
    let started = receiver.collect(Duration::from_millis(800));
    assert_arrivals(&started, &a.socket_id);

    // Leaving one shard changes nothing (but for cache-empty, which only a was on); leaving
    // the last one is reported after the hold.
    let a_left = Instant::now();
    a.close();
    // Also keeps the two departures apart, so that an event held from the first one would come
    // too early for the hold checked below.
    assert!(receiver.collect(Duration::from_millis(500)).is_empty());
    let b_left = Instant::now();
    b.close();
    let ended = receiver.collect(Duration::from_secs(4));
    assert_departures(&ended, |channel| {
        if channel == "cache-empty" {
            a_left
        } else {
            b_left
        }
    });
    assert_eq!(
        gateway.metric("gateway_webhook_events_total{outcome=\"sent\"}"),
        13.0
    );
}

fn assert_arrivals(started: &[(Value, Instant)], socket_id: &str) {
    assert_eq!(
        channels(&named(started, "channel_occupied")),
        ["cache-empty", "presence-lobby", "private-chat", "room"]
    );
    assert_eq!(
        bodies(started, "member_added"),
        [json!({"name": "member_added", "channel": "presence-lobby", "user_id": "u1"})]
    );
    assert_eq!(
        bodies(started, "cache_miss"),
        [json!({"name": "cache_miss", "channel": "cache-empty"})]
    );
    let client_events = bodies(started, "client_event");
    assert_eq!(client_events.len(), 2);
    assert!(
        client_events.contains(&json!({"name": "client_event", "channel": "private-chat",
        "event": "client-hi", "data": "{\"x\":1}", "socket_id": socket_id}))
    );
    assert!(
        client_events.contains(&json!({"name": "client_event", "channel": "presence-lobby",
        "event": "client-wave", "data": "hey", "socket_id": socket_id, "user_id": "u1"}))
    );
    assert_eq!(started.len(), 8, "nothing else: {started:?}");
}

/// Vacated channels and the removed member, each reported about 3 s after its last subscriber
/// left (`left` says when that was, by channel).
fn assert_departures(ended: &[(Value, Instant)], left: impl Fn(&str) -> Instant) {
    assert_eq!(
        channels(&named(ended, "channel_vacated")),
        ["cache-empty", "presence-lobby", "private-chat", "room"]
    );
    assert_eq!(
        bodies(ended, "member_removed"),
        [json!({"name": "member_removed", "channel": "presence-lobby", "user_id": "u1"})]
    );
    assert_eq!(ended.len(), 5, "{ended:?}");
    for (event, at) in ended {
        let held = at.duration_since(left(event["channel"].as_str().unwrap()));
        assert!(
            held >= Duration::from_millis(2900) && held < Duration::from_secs(5),
            "{event} after {held:?}"
        );
    }
}

#[test]
fn a_quick_return_cancels_the_held_webhooks() {
    let receiver = Receiver::start(0);
    let gateway = start(&receiver, json!({}), &["--shards", "2"]);
    let mut first = gateway.client();
    first.subscribe("flap");
    first.join("presence-flap", "u1", json!(null));
    let opened = receiver.collect(Duration::from_millis(500));
    assert_eq!(opened.len(), 3, "{opened:?}");

    // A page reload: the socket goes, a new one comes back within a second.
    first.close();
    assert_eq!(
        gateway.wait_metric("gateway_disconnects_total{reason=\"client_close\"}", 1.0),
        1.0,
        "gone before the new socket comes"
    );
    let mut second = gateway.client();
    second.subscribe("flap");
    second.join("presence-flap", "u1", json!(null));
    // Counted as the sender drops each held event with the one that undoes it: those can no
    // longer go. A second occupied / added would not be held, only lingered over for 100 ms.
    assert_eq!(
        gateway.wait_metric("gateway_webhook_events_total{outcome=\"cancelled\"}", 6.0),
        6.0
    );
    assert!(
        receiver.collect(Duration::from_secs(1)).is_empty(),
        "no vacated / removed, and no second occupied / added"
    );

    // Leaving for good is reported, 3 s later: vacated twice and the member removed, in one
    // request or, when the shards' events fall due a moment apart, in more.
    second.close();
    let mut events = receiver.next().events;
    while events.len() < 3 {
        events.extend(receiver.next().events);
    }
    let mut names: Vec<&str> = events.iter().filter_map(|e| e["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["channel_vacated", "channel_vacated", "member_removed"],
        "{events:?}"
    );
}

#[test]
fn failed_requests_are_retried() {
    let receiver = Receiver::start(1);
    let gateway = start(
        &receiver,
        json!({"webhook_events": ["channel_occupied"]}),
        &[],
    );
    let mut client = gateway.client();
    let subscribed = Instant::now();
    client.subscribe("retried");
    client.subscribe("cache-retried");
    let hook = receiver.next();
    assert_eq!(
        hook.events,
        [
            json!({"name": "channel_occupied", "channel": "retried"}),
            json!({"name": "channel_occupied", "channel": "cache-retried"}),
        ],
        "the same request again, without the cache_miss nobody asked for"
    );
    assert!(
        hook.at.duration_since(subscribed) >= Duration::from_millis(900),
        "the retry waits about a second"
    );
    assert_eq!(
        gateway.wait_metric("gateway_webhook_retries_total", 1.0),
        1.0
    );
    client.close();
    // Nothing to wait for: a vacated would be held 3 s after the close before it went.
    assert!(
        receiver.collect(Duration::from_secs(4)).is_empty(),
        "channel_vacated was not asked for"
    );
}

#[test]
fn a_full_queue_drops_and_counts() {
    // An endpoint that takes the request and never answers holds the sender for its timeout.
    let stall = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/", stall.local_addr().unwrap().port());
    let (accepted, stalled) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in stall.incoming().flatten() {
            let _ = accepted.send(());
            held.push(stream);
        }
    });
    let app = json!({"id": "1", "key": KEY, "secret": SECRET, "webhook_url": url});
    let gateway = Gateway::start_with_config(
        &json!({ "apps": [app] }),
        &["--webhook-queue-capacity", "1"],
    );
    let mut client = gateway.client();
    client.subscribe("c0");
    stalled
        .recv_timeout(Duration::from_secs(5))
        .expect("the sender sends c0's occupied");
    // The sender waits for an answer: the queue of 1 fills.
    for n in 1..20 {
        client.subscribe(&format!("c{n}"));
    }
    let dropped = gateway.wait_metric("gateway_webhook_events_total{outcome=\"dropped\"}", 1.0);
    assert!(dropped >= 1.0, "{dropped}");
    assert_eq!(
        client.subscribe("still-served")["event"],
        "pusher_internal:subscription_succeeded",
        "the shard never waits for the sender"
    );
}
