//! User sign-in across shards: watchlist online / offline events, `#server-to-user-{id}`
//! delivery from the HTTP API, terminating a user's connections, presence through a sign-in,
//! and every refusal answered and counted.

use crate::common::{channel_auth, user_auth, watch_events, Client, Ended, Gateway};
use serde_json::{json, Value};

fn watch(name: &str, ids: &[&str]) -> (String, Vec<String>) {
    (
        name.to_string(),
        ids.iter().map(|id| id.to_string()).collect(),
    )
}

fn signed_in(client: &mut Client, user_data: Value) {
    let answer = client.signin(&user_data);
    assert_eq!(answer["event"], "pusher:signin_success", "{answer}");
    assert_eq!(answer["data"]["user_data"], user_data.to_string());
}

#[test]
fn watchlists_follow_users_across_shards() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let [mut alice, mut carol]: [Client; 2] = gateway.client_per_shard(2).try_into().ok().unwrap();
    let [mut bob0, mut bob1]: [Client; 2] = gateway.client_per_shard(2).try_into().ok().unwrap();

    signed_in(
        &mut alice,
        json!({"id": "alice", "watchlist": ["bob", "carol"]}),
    );
    assert_eq!(
        watch_events(&mut alice),
        [watch("offline", &["bob", "carol"])],
        "the watchlist's state right after signing in"
    );

    // bob's first socket (shard 1) brings him online; his second (shard 0) changes nothing.
    signed_in(&mut bob1, json!({"id": "bob"}));
    assert_eq!(watch_events(&mut alice), [watch("online", &["bob"])]);
    signed_in(&mut bob0, json!({"id": "bob"}));
    // Answered after its shard told the other one: an "online" would come before the marker.
    let to_alice = "#server-to-user-alice";
    let marker = gateway.publish_marker(to_alice);
    alice.expect_next_is_marker(&marker, "bob was online already");

    // carol (shard 1) watches alice (shard 0).
    signed_in(&mut carol, json!({"id": "carol", "watchlist": ["alice"]}));
    let first = watch_events(&mut carol);
    if first == [watch("offline", &["alice"])] {
        // alice's sign-in on shard 0 had not reached shard 1 yet: it comes right after.
        assert_eq!(watch_events(&mut carol), [watch("online", &["alice"])]);
    } else {
        assert_eq!(first, [watch("online", &["alice"])]);
    }
    assert_eq!(watch_events(&mut alice), [watch("online", &["carol"])]);

    // bob goes offline only when his last socket, on either shard, goes.
    bob1.close();
    // Counted once its shard has signed it out and told the other shard.
    assert_eq!(
        gateway.wait_metric("gateway_disconnects_total{reason=\"client_close\"}", 1.0),
        1.0
    );
    let marker = gateway.publish_marker(to_alice);
    alice.expect_next_is_marker(&marker, "bob still has a socket on shard 0");
    bob0.close();
    assert_eq!(watch_events(&mut alice), [watch("offline", &["bob"])]);
    alice.close();
    assert_eq!(watch_events(&mut carol), [watch("offline", &["alice"])]);
}

#[test]
fn server_to_user_events_and_terminating_a_user() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let [mut u1a, mut u1b]: [Client; 2] = gateway.client_per_shard(2).try_into().ok().unwrap();
    let mut u2 = gateway.client();
    let mut anonymous = gateway.client();
    signed_in(&mut u1a, json!({"id": "u1"}));
    signed_in(&mut u1b, json!({"id": "u1"}));
    signed_in(&mut u2, json!({"id": "u2", "user_info": {"name": "Two"}}));

    gateway.publish("#server-to-user-u1", "note", "for u1");
    for client in [&mut u1a, &mut u1b] {
        assert_eq!(
            client.next_event(),
            json!({"event": "note", "channel": "#server-to-user-u1", "data": "for u1"})
        );
    }
    // u1's sockets, one per shard, have it: each shard has queued it wherever it went.
    u2.ping_barrier("another user's event");
    anonymous.ping_barrier("a user's event, not signed in");

    // pusher-js subscribes to its own user's channel after signing in; nobody else may.
    assert_eq!(
        u1a.subscribe("#server-to-user-u1")["event"],
        "pusher_internal:subscription_succeeded"
    );
    for client in [&mut u2, &mut anonymous] {
        let answer = client.subscribe("#server-to-user-u1");
        assert_eq!(answer["event"], "pusher:subscription_error");
        assert_eq!(client.next_event()["data"]["code"], 4009);
    }
    assert_eq!(
        gateway.metric("gateway_rejected_total{reason=\"server_to_user_channel\"}"),
        2.0
    );

    // A presence subscription without channel_data takes the member from the sign-in.
    let auth = channel_auth(&u2.socket_id, "presence-signed", None);
    u2.send(
        json!({"event": "pusher:subscribe", "data": {"channel": "presence-signed", "auth": auth}}),
    );
    let joined = u2.next_event();
    assert_eq!(joined["event"], "pusher_internal:subscription_succeeded");
    let presence: Value = serde_json::from_str(joined["data"].as_str().unwrap()).unwrap();
    assert_eq!(presence["presence"]["hash"], json!({"u2": {"name": "Two"}}));

    // Terminating u1 closes both its sockets, on both shards, with 4009; u2 stays.
    let (status, body) = gateway.api("POST", "/apps/1/users/u1/terminate_connections", &[], "{}");
    assert_eq!((status, body.as_str()), (200, "{}"));
    for client in [&mut u1a, &mut u1b] {
        assert_eq!(client.wait_close(), Ended::Closed(Some(4009)));
    }
    assert_eq!(
        gateway.wait_metric("gateway_disconnects_total{reason=\"terminated\"}", 2.0),
        2.0
    );
    gateway.publish("#server-to-user-u2", "still", "here");
    assert_eq!(u2.next_event()["event"], "still");
}

/// The code of the `pusher:error` that comes next.
fn error_code(client: &mut Client) -> Option<i64> {
    let error = client.next_event();
    assert_eq!(error["event"], "pusher:error", "{error}");
    error["data"]["code"].as_i64()
}

#[test]
fn sign_in_refusals_are_answered_and_counted() {
    let gateway = Gateway::start(&[]);
    let mut client = gateway.client();

    let user_data = json!({"id": "u1"}).to_string();
    let wrong = user_auth(&client.socket_id, r#"{"id":"u2"}"#);
    client.send(json!({"event": "pusher:signin", "data": {"auth": wrong, "user_data": user_data}}));
    assert_eq!(error_code(&mut client), Some(4009));

    for (user_data, what) in [
        (json!({"name": "no id"}), "user_data without an id"),
        (json!({"id": "x".repeat(129)}), "id too long"),
        (
            json!({"id": "u1", "watchlist": "u2"}),
            "watchlist not a list",
        ),
    ] {
        let answer = client.signin(&user_data);
        assert_eq!(answer["event"], "pusher:error", "{what}");
        assert_eq!(answer["data"]["code"], 4009, "{what}");
    }

    // A watchlist over 100 ids: signed in, told 4302, and the first 100 are watched.
    let ids: Vec<String> = (0..150).map(|i| format!("w{i}")).collect();
    let answer = client.signin(&json!({"id": "u1", "watchlist": ids}));
    assert_eq!(answer["event"], "pusher:signin_success");
    assert_eq!(error_code(&mut client), Some(4302));
    let status = watch_events(&mut client);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].0, "offline");
    assert_eq!(status[0].1.len(), 100);
    assert_eq!(status[0].1[99], "w99");

    let again = client.signin(&json!({"id": "u1"}));
    assert_eq!(again["data"]["code"], 4009, "signed in already");

    for (reason, count) in [
        ("signin_auth", 1.0),
        ("bad_user_data", 2.0),
        ("user_id_too_long", 1.0),
        ("watchlist_too_long", 1.0),
        ("already_signed_in", 1.0),
    ] {
        assert_eq!(
            gateway.metric(&format!("gateway_rejected_total{{reason=\"{reason}\"}}")),
            count,
            "{reason}"
        );
    }
}

#[test]
fn events_sent_to_a_user_one_after_the_other_arrive_in_order_on_every_shard() {
    const EVENTS: usize = 200;
    let gateway = Gateway::start(&["--shards", "2"]);
    let mut sockets: Vec<Client> = gateway.client_per_shard(2);
    for socket in &mut sockets {
        signed_in(socket, json!({"id": "u1"}));
    }
    // Each on a new connection, as sendToUser from an SDK without keep-alive: both shards
    // take some of them.
    for n in 0..EVENTS {
        gateway.publish("#server-to-user-u1", "note", &n.to_string());
    }
    let expected: Vec<String> = (0..EVENTS).map(|n| n.to_string()).collect();
    for socket in &mut sockets {
        assert_eq!(
            socket.next_data(EVENTS),
            expected,
            "socket on shard {}",
            socket.shard()
        );
    }
}
