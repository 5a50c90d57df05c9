//! Several apps from one config file, each with its own limits and options: connection quota,
//! allowed origins, client event rate, subscription_count events; and, for every app, encrypted
//! payloads relayed untouched and channel attributes on the HTTP API.

use std::time::{Duration, Instant};

use crate::common::{wait_until, Client, Gateway};
use gateway::channels::counts;
use gateway::protocol::signature;
use serde_json::{json, Value};

fn config() -> Value {
    json!({"apps": [
        {"id": "1", "key": "app-key", "secret": "app-secret", "client_events": true},
        {"id": "2", "key": "key-two", "secret": "secret-two", "client_events": true,
         "max_connections": 2, "client_event_rate": 2, "subscription_count_events": true},
        {"id": "3", "key": "key-three", "secret": "secret-three",
         "allowed_origins": ["https://good.example", "https://*.good.example"]},
    ]})
}

/// Subscribes a client of app 2 to a private channel, signed with app 2's secret.
fn subscribe_app_two(client: &mut Client, channel: &str) {
    let to_sign = signature::channel_auth_message(&client.socket_id, channel, None);
    let auth = format!("key-two:{}", signature::sign("secret-two", &to_sign));
    client.send(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}}));
}

#[test]
fn each_app_has_its_own_quota_and_origins() {
    let gateway = Gateway::start_with_config(&config(), &["--shards", "2"]);
    let first = gateway.client_for("key-two");
    let _second = gateway.client_for("key-two");
    gateway.refused_with("key-two", None, 4004);
    assert_eq!(
        gateway.metric("gateway_rejected_total{reason=\"app_over_quota\"}"),
        1.0
    );
    let _other_app = gateway.client();
    first.close();
    assert!(wait_until(Duration::from_secs(5), || gateway
        .metric("gateway_connections{")
        <= 2.0));
    let _third = gateway.client_for("key-two");

    gateway.refused_with("key-three", None, 4009);
    gateway.refused_with("key-three", Some("https://evil.example"), 4009);
    gateway.refused_with("key-three", Some("https://good.example.evil"), 4009);
    assert_eq!(
        gateway.metric("gateway_rejected_total{reason=\"origin_not_allowed\"}"),
        3.0
    );
    for origin in ["https://good.example", "https://app.good.example"] {
        let socket = gateway.socket_for("key-three", Some(origin));
        let client = Client::established(socket);
        assert!(!client.socket_id.is_empty(), "{origin}");
    }
    gateway.refused_with("no-such-key", None, 4001);
}

#[test]
fn client_event_rate_and_subscription_counts_per_app() {
    let gateway = Gateway::start_with_config(&config(), &["--shards", "2"]);
    let mut sender = gateway.client_for("key-two");
    let mut receiver = gateway.client_for("key-two");
    for client in [&mut sender, &mut receiver] {
        subscribe_app_two(client, "private-counted");
        assert_eq!(
            client.next_event()["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    // Both subscribers are told the node-wide count (2) within about a second.
    for client in [&mut sender, &mut receiver] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let event = client.next_named("pusher_internal:subscription_count");
            let data: Value = serde_json::from_str(event["data"].as_str().unwrap()).unwrap();
            if data["subscription_count"] == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "count 2 never came");
        }
    }

    // This app allows 2 client events per second, not the global 10.
    for n in 0..3 {
        sender.send(json!({"event": "client-n", "channel": "private-counted", "data": {"n": n}}));
    }
    for n in 0..2 {
        assert_eq!(receiver.next_named("client-n")["data"]["n"], n);
    }
    assert_eq!(sender.next_named("pusher:error")["data"]["code"], 4301);

    // App 1 did not ask for subscription counts. Its channel's owner shard would send them,
    // after it hears from both shards. On the other shard, `receiver` subscribes to a channel of
    // app 2 with the same owner: by the time the owner sends that count it has heard from every
    // shard about app 1's channel too, and sends app 1's counts first.
    let owner = 1 - receiver.shard() as usize;
    let with_owner = |app: usize, prefix: &str| {
        (0..)
            .map(|n| format!("{prefix}-{n}"))
            .find(|name| counts::owner(app, name, 2) == owner)
            .unwrap()
    };
    let (uncounted, probe) = (with_owner(0, "uncounted"), with_owner(1, "private-probe"));
    let mut clients = gateway.client_per_shard(2);
    for client in &mut clients {
        client.subscribe(&uncounted);
    }
    subscribe_app_two(&mut receiver, &probe);
    loop {
        let event = receiver.next_named("pusher_internal:subscription_count");
        if event["channel"] == probe.as_str() {
            break;
        }
    }
    let marker = gateway.publish_marker(&uncounted);
    for client in &mut clients {
        client.expect_next_is_marker(&marker, "a subscription count of app 1");
    }
}

#[test]
fn encrypted_payloads_are_relayed_untouched() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let mut clients = gateway.client_per_shard(2);
    for client in &mut clients {
        assert_eq!(
            client.subscribe("private-encrypted-vault")["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    // What the server SDKs send: a JSON string of nonce and ciphertext, base64.
    let sealed = r#"{"nonce":"aGVsbG8gbm9uY2UgMTIzNDU2Nzg5MA==","ciphertext":"c2VjcmV0IGJ5dGVzIFx1MDAwMCDwn5SS"}"#;
    gateway.publish("private-encrypted-vault", "sealed", sealed);
    for client in &mut clients {
        assert_eq!(
            client.next_event(),
            json!({"event": "sealed", "channel": "private-encrypted-vault", "data": sealed}),
            "byte for byte"
        );
    }
    let unsigned = gateway.client();
    let mut unsigned = unsigned;
    unsigned
        .send(json!({"event": "pusher:subscribe", "data": {"channel": "private-encrypted-vault"}}));
    assert_eq!(unsigned.next_event()["data"]["type"], "AuthError");
    clients[0].send(json!({"event": "client-x", "channel": "private-encrypted-vault", "data": {}}));
    assert_eq!(
        clients[0].next_event()["event"],
        "pusher:error",
        "the server never relays client events it cannot see into"
    );
}

#[test]
fn channel_attributes_on_publish_and_queries() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let mut clients = gateway.client_per_shard(2);
    clients[0].subscribe("news");
    clients[1].subscribe("news");
    // One member on each shard; both shards know both once each member has seen the other.
    clients[0].join("presence-room", "u0", json!(null));
    let joined = clients[1].join("presence-room", "u1", json!(null));
    let presence: Value = serde_json::from_str(joined["data"].as_str().unwrap()).unwrap();
    if presence["presence"]["count"] == 1 {
        clients[1].next_named("pusher_internal:member_added");
    }
    clients[0].next_named("pusher_internal:member_added");

    let body = json!({"name": "e", "channels": ["news", "presence-room", "empty"], "data": "d",
                      "info": "subscription_count,user_count"})
    .to_string();
    let (status, answer) = gateway.api("POST", "/apps/1/events", &[], &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        json!({"channels": {
            "news": {"subscription_count": 2},
            "presence-room": {"subscription_count": 2, "user_count": 2},
            "empty": {"subscription_count": 0},
        }})
    );
    let batch = json!({"batch": [
        {"name": "a", "channel": "news", "data": "1"},
        {"name": "b", "channel": "presence-room", "data": "2", "info": "user_count"},
    ]})
    .to_string();
    let (_, answer) = gateway.api("POST", "/apps/1/batch_events", &[], &batch);
    assert_eq!(answer, r#"{"batch":[{},{"user_count":2}]}"#);

    gateway.publish("cache-score", "goal", "1-0");
    // Each shard keeps what cache channels hold; the one answering may get the publish a moment
    // after the publisher's shard did.
    let mut answer = Value::Null;
    wait_until(Duration::from_secs(2), || {
        let (status, body) = gateway.api(
            "GET",
            "/apps/1/channels/cache-score",
            &[("info", "cache")],
            "",
        );
        assert_eq!(status, 200, "{body}");
        answer = serde_json::from_str(&body).unwrap();
        answer.get("cache").is_some()
    });
    assert_eq!(answer["occupied"], false);
    assert_eq!(answer["cache"]["event"], "goal");
    assert_eq!(answer["cache"]["data"], "1-0");
    let ttl = answer["cache"]["ttl"].as_u64().unwrap();
    assert!((1790..=1800).contains(&ttl), "{ttl}");
}
