//! Presence channels across shards: one member per user however many sockets and shards it
//! has, member events once per user, member lists and counts in the HTTP API, client events
//! carrying the sender's user id, and every limit answered and counted.

use crate::common::{channel_auth, Client, Gateway};
use serde_json::{json, Value};

/// The JSON inside an event's `data` string.
fn data(event: &Value) -> Value {
    serde_json::from_str(event["data"].as_str().expect("data is a string")).unwrap()
}

#[test]
fn a_user_on_two_shards_is_one_member() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let [mut watcher0, mut watcher1]: [Client; 2] =
        gateway.client_per_shard(2).try_into().ok().unwrap();
    let [mut user0, mut user1]: [Client; 2] = gateway.client_per_shard(2).try_into().ok().unwrap();
    let room = "presence-room";
    watcher0.join(room, "w", json!({"name": "Wendy"}));
    watcher1.join(room, "v", json!(null));
    user0.join(room, "u1", json!({"n": 1}));
    let joined = user1.join(room, "u1", json!({"n": 2}));
    assert_eq!(data(&joined)["presence"]["count"], 3);
    // Each watcher hears of the others' arrivals, u1's once, whichever shard told it first.
    gateway.publish_marker(room);
    for watcher in [&mut watcher0, &mut watcher1] {
        let mut added = Vec::new();
        loop {
            let event = watcher.next_event();
            if event["event"] == "marker" {
                break;
            }
            assert_eq!(event["event"], "pusher_internal:member_added");
            added.push(data(&event)["user_id"].as_str().unwrap().to_owned());
        }
        added.sort();
        // v's arrival reaches w; w's reaches v unless v's answer listed w already.
        assert!(matches!(&added[..], [u, _] | [u] if u == "u1"), "{added:?}");
    }

    let (status, users) = gateway.api("GET", "/apps/1/channels/presence-room/users", &[], "");
    assert_eq!(status, 200, "{users}");
    let users: Value = serde_json::from_str(&users).unwrap();
    let ids = users["users"].as_array().unwrap().iter();
    let mut ids: Vec<&str> = ids.map(|u| u["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["u1", "v", "w"]);
    let info = ("info", "user_count,subscription_count");
    let (_, info) = gateway.api("GET", "/apps/1/channels/presence-room", &[info], "");
    assert_eq!(
        info,
        r#"{"occupied":true,"subscription_count":4,"user_count":3}"#
    );

    // u1 leaves one shard: still a member. Then the other: removed, once, everywhere.
    user0.close();
    user1.close();
    for watcher in [&mut watcher0, &mut watcher1] {
        let removed = watcher.next_event();
        assert_eq!(removed["event"], "pusher_internal:member_removed");
        assert_eq!(data(&removed), json!({"user_id": "u1"}));
    }
    let marker = gateway.publish_marker(room);
    for watcher in [&mut watcher0, &mut watcher1] {
        watcher.expect_next_is_marker(&marker, "member_removed comes once");
    }
    let info = ("info", "user_count");
    let (_, info) = gateway.api("GET", "/apps/1/channels/presence-room", &[info], "");
    assert_eq!(info, r#"{"occupied":true,"user_count":2}"#);
}

/// Sends a presence subscribe with a given channel_data, correctly signed.
fn join_raw(client: &mut Client, channel: &str, channel_data: &str) -> Value {
    let auth = channel_auth(&client.socket_id, channel, Some(channel_data));
    client.send(json!({"event": "pusher:subscribe", "data": {
        "channel": channel, "auth": auth, "channel_data": channel_data}}));
    client.next_event()
}

#[test]
fn presence_limits_are_answered_and_counted() {
    // One shard: the limit is checked against the shard's replica, which on several shards may
    // lag a member that joined elsewhere an instant before.
    let gateway = Gateway::start(&["--shards", "1", "--max-presence-members", "2"]);
    let mut first = gateway.client();
    let mut second = gateway.client();
    let mut late = gateway.client();
    assert_eq!(
        first.join("presence-full", "u1", json!(null))["event"],
        "pusher_internal:subscription_succeeded"
    );
    second.join("presence-full", "u2", json!(null));

    let refused = late.join("presence-full", "u3", json!(null));
    assert_eq!(refused["event"], "pusher:subscription_error");
    assert_eq!(
        (
            refused["data"]["type"].as_str(),
            refused["data"]["status"].as_i64()
        ),
        (Some("LimitReached"), Some(403))
    );
    assert_eq!(late.next_event()["data"]["code"], 4009);
    assert_eq!(
        late.join("presence-full", "u1", json!(null))["event"],
        "pusher_internal:subscription_succeeded",
        "a member's further sockets fit at the limit"
    );

    let long_id = "x".repeat(129);
    let big_info = json!({"bio": "x".repeat(1024)});
    let cases = [
        (json!({"user_id": long_id}).to_string(), "user_id_too_long"),
        (
            json!({"user_id": "u9", "user_info": big_info}).to_string(),
            "user_info_too_large",
        ),
        ("not json".to_string(), "bad_channel_data"),
        (json!({"user_info": {}}).to_string(), "bad_channel_data"),
    ];
    let mut client = gateway.client();
    for (channel_data, reason) in cases {
        let answer = join_raw(&mut client, "presence-limits", &channel_data);
        assert_eq!(answer["event"], "pusher:subscription_error", "{reason}");
        assert_eq!(answer["data"]["type"], "InvalidChannelData", "{reason}");
        assert_eq!(client.next_event()["data"]["code"], 4009);
    }
    // Signed for other channel_data than the one sent.
    let auth = channel_auth(
        &client.socket_id,
        "presence-limits",
        Some(r#"{"user_id":"a"}"#),
    );
    client.send(json!({"event": "pusher:subscribe", "data": {
        "channel": "presence-limits", "auth": auth, "channel_data": r#"{"user_id":"b"}"#}}));
    assert_eq!(client.next_event()["data"]["type"], "AuthError");
    client.next_event();

    for (reason, count) in [
        ("presence_members_limit", 1.0),
        ("user_id_too_long", 1.0),
        ("user_info_too_large", 1.0),
        ("bad_channel_data", 2.0),
        ("subscription_auth", 1.0),
    ] {
        assert_eq!(
            gateway.metric(&format!("gateway_rejected_total{{reason=\"{reason}\"}}")),
            count,
            "{reason}"
        );
    }
    let (_, info) = gateway.api(
        "GET",
        "/apps/1/channels/presence-limits",
        &[("info", "user_count")],
        "",
    );
    assert_eq!(info, r#"{"occupied":false,"user_count":0}"#);
}
