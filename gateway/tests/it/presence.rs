//! Presence channels across shards: one member per user however many sockets and shards it
//! has, member events once per user, member lists and counts in the HTTP API, client events
//! carrying the sender's user id, and every limit answered and counted.

use crate::common::{channel_auth, Client, Gateway};
use serde_json::{json, Value};

/// The JSON inside an event's `data` string.
fn data(event: &Value) -> Value {
    serde_json::from_str(event["data"].as_str().expect("data is a string")).unwrap()
}

fn sorted_ids(presence: &Value) -> Vec<String> {
    let mut ids: Vec<String> = presence["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_user_on_two_shards_is_one_member() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let [mut watcher0, mut watcher1]: [Client; 2] =
        gateway.client_per_shard(2).try_into().ok().unwrap();
    let [mut user0, mut user1]: [Client; 2] = gateway.client_per_shard(2).try_into().ok().unwrap();
    let room = "presence-room";

    let joined = watcher0.join(room, "w", json!({"name": "Wendy"}));
    assert_eq!(joined["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(
        data(&joined),
        json!({"presence": {"ids": ["w"], "hash": {"w": {"name": "Wendy"}}, "count": 1}})
    );
    let joined = watcher1.join(room, "v", json!(null));
    if !sorted_ids(&data(&joined)["presence"]).contains(&"w".to_string()) {
        // w's arrival on shard 0 had not reached shard 1 yet: it comes right after.
        let added = watcher1.next_event();
        assert_eq!(
            data(&added),
            json!({"user_id": "w", "user_info": {"name": "Wendy"}})
        );
    }
    let added = watcher0.next_event();
    assert_eq!(
        (added["event"].as_str(), added["channel"].as_str()),
        (Some("pusher_internal:member_added"), Some(room))
    );
    assert_eq!(data(&added), json!({"user_id": "v", "user_info": null}));

    // u1's first socket (shard 0): both watchers hear of it once, from either shard.
    let joined = user0.join(room, "u1", json!({"n": 1}));
    assert_eq!(sorted_ids(&data(&joined)["presence"]), ["u1", "v", "w"]);
    assert_eq!(data(&joined)["presence"]["count"], 3);
    for watcher in [&mut watcher0, &mut watcher1] {
        let added = watcher.next_event();
        assert_eq!(added["event"], "pusher_internal:member_added");
        assert_eq!(
            data(&added),
            json!({"user_id": "u1", "user_info": {"n": 1}})
        );
    }
    // u1's second socket, on the other shard: already a member, so nobody is told.
    let joined = user1.join(room, "u1", json!({"n": 2}));
    assert_eq!(data(&joined)["presence"]["count"], 3);
    assert_eq!(
        data(&joined)["presence"]["hash"]["u1"],
        json!({"n": 1}),
        "a member keeps the info it arrived with"
    );
    // A repeated subscribe answers again and changes nothing.
    assert_eq!(
        user1.join(room, "u1", json!({"n": 2}))["event"],
        "pusher_internal:subscription_succeeded"
    );
    // Its answer came after its shard told the other one, so a marker published now comes
    // after any member_added either shard would have sent.
    let marker = gateway.publish_marker(room);
    for client in [&mut watcher0, &mut watcher1, &mut user0, &mut user1] {
        client.expect_next_is_marker(&marker, "a second socket of a present user");
    }

    // The HTTP API sees the node-wide members.
    let (status, users) = gateway.api("GET", "/apps/1/channels/presence-room/users", &[], "");
    assert_eq!(status, 200, "{users}");
    let users: Value = serde_json::from_str(&users).unwrap();
    let mut ids: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["u1", "v", "w"]);
    let (_, info) = gateway.api(
        "GET",
        "/apps/1/channels/presence-room",
        &[("info", "user_count,subscription_count")],
        "",
    );
    assert_eq!(
        info,
        r#"{"occupied":true,"subscription_count":4,"user_count":3}"#
    );
    let (_, list) = gateway.api(
        "GET",
        "/apps/1/channels",
        &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        "",
    );
    assert_eq!(list, r#"{"channels":{"presence-room":{"user_count":3}}}"#);

    // Client events name their sender and do not come back to it.
    watcher0.send(json!({"event": "client-wave", "channel": room, "data": {"hi": true}}));
    for other in [&mut watcher1, &mut user0, &mut user1] {
        let event = other.next_event();
        assert_eq!(
            event,
            json!({"event": "client-wave", "channel": room, "data": {"hi": true}, "user_id": "w"})
        );
    }
    let marker = gateway.publish_marker(room);
    watcher0.expect_next_is_marker(&marker, "the sender of a client event");
    for other in [&mut watcher1, &mut user0, &mut user1] {
        other.expect_next_is_marker(&marker, "a client event comes once");
    }

    // u1 leaves one shard: still a member. Then the other: removed, once, everywhere.
    user0.send(json!({"event": "pusher:unsubscribe", "data": {"channel": room}}));
    // The pong says the unsubscribe was handled, and its roster delta sent to the other shard.
    user0.ping_barrier("after unsubscribing");
    let marker = gateway.publish_marker(room);
    for client in [&mut watcher0, &mut watcher1, &mut user1] {
        client.expect_next_is_marker(&marker, "u1 still has a socket on the other shard");
    }
    user1.close();
    for watcher in [&mut watcher0, &mut watcher1] {
        let removed = watcher.next_event();
        assert_eq!(removed["event"], "pusher_internal:member_removed");
        assert_eq!(data(&removed), json!({"user_id": "u1"}));
    }
    // Both shards have handled the close: a second member_removed would come before this.
    let marker = gateway.publish_marker(room);
    for watcher in [&mut watcher0, &mut watcher1] {
        watcher.expect_next_is_marker(&marker, "member_removed comes once");
    }
    let (_, info) = gateway.api(
        "GET",
        "/apps/1/channels/presence-room",
        &[("info", "user_count")],
        "",
    );
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
