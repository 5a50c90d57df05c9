//! Presence and signed-in users across nodes through a real Redis: members on every node,
//! member events across nodes, the users API answering for the cluster, a killed node's members
//! removed (no ghosts), and sign-in features (watchlists, `sendToUser`, terminating a user)
//! reaching other nodes, and member webhooks sent once for the whole cluster.

use std::time::{Duration, Instant};

use crate::common::redis::Redis;
use crate::common::webhooks::Receiver;
use crate::common::{wait_until, watch_events, Client, Ended, Gateway, KEY, SECRET};
use gateway::cluster::NODE_TIMEOUT;
use serde_json::{json, Value};

pub(crate) const ROOM: &str = "presence-room";

/// The JSON inside an event's `data` string.
fn data(event: &Value) -> Value {
    serde_json::from_str(event["data"].as_str().expect("data is a string")).unwrap()
}

/// Starts `n` nodes and waits until each hears the others.
fn cluster(redis: &Redis, n: usize) -> Vec<Gateway> {
    let nodes: Vec<Gateway> = (0..n).map(|_| redis.gateway()).collect();
    for node in &nodes {
        assert!(wait_until(Duration::from_secs(5), || node
            .metric("gateway_cluster_nodes")
            == (n - 1) as f64));
    }
    nodes
}

/// The members a node's HTTP API lists for the room, sorted.
pub(crate) fn users(gateway: &Gateway) -> Vec<String> {
    let (status, body) = gateway.api("GET", &format!("/apps/1/channels/{ROOM}/users"), &[], "");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let mut ids: Vec<String> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

pub(crate) fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Waits until every node's replica lists these members.
fn wait_members(nodes: &[&Gateway], expected: &[&str]) {
    for node in nodes {
        assert!(
            wait_until(Duration::from_secs(5), || users(node) == ids(expected)),
            "members {expected:?} (a node lists {:?})",
            users(node)
        );
    }
}

fn member_event(client: &mut Client) -> (String, String) {
    let event = client.next_event();
    let user = data(&event)["user_id"].as_str().unwrap_or("").to_string();
    (event["event"].as_str().unwrap_or("").to_string(), user)
}

#[test]
fn members_span_nodes_and_a_killed_node_leaves_no_ghosts() {
    let redis = Redis::start();
    let mut nodes = cluster(&redis, 3);
    let mut c = nodes.pop().unwrap();
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();

    let mut wendy = a.client();
    wendy.join(ROOM, "w", json!({"name": "Wendy"}));
    wait_members(&[&a, &b, &c], &["w"]);

    let mut bob = b.client();
    let joined = bob.join(ROOM, "b", json!({"name": "Bob"}));
    assert_eq!(
        data(&joined)["presence"]["hash"],
        json!({"w": {"name": "Wendy"}, "b": {"name": "Bob"}}),
        "a member on another node is in the list a subscriber gets"
    );
    assert_eq!(
        member_event(&mut wendy),
        ("pusher_internal:member_added".into(), "b".into())
    );

    let mut carol = c.client();
    carol.join(ROOM, "c", json!(null));
    for client in [&mut wendy, &mut bob] {
        assert_eq!(
            member_event(client),
            ("pusher_internal:member_added".into(), "c".into())
        );
    }
    wait_members(&[&a, &b, &c], &["b", "c", "w"]);
    let (_, body) = b.api(
        "GET",
        &format!("/apps/1/channels/{ROOM}"),
        &[("info", "user_count,subscription_count")],
        "",
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"occupied": true, "user_count": 3, "subscription_count": 3})
    );

    c.child.kill().unwrap();
    let killed = Instant::now();
    for client in [&mut wendy, &mut bob] {
        client.set_timeout(NODE_TIMEOUT + Duration::from_secs(3));
        assert_eq!(
            member_event(client),
            ("pusher_internal:member_removed".into(), "c".into()),
            "the killed node's member leaves"
        );
    }
    assert!(killed.elapsed() <= NODE_TIMEOUT + Duration::from_millis(1500));
    wait_members(&[&a, &b], &["b", "w"]);

    bob.close();
    assert_eq!(
        member_event(&mut wendy),
        ("pusher_internal:member_removed".into(), "b".into())
    );
    wait_members(&[&a], &["w"]);
}

fn watch(name: &str, users: &[&str]) -> Vec<(String, Vec<String>)> {
    vec![(name.to_string(), ids(users))]
}

fn signed_in(client: &mut Client, user_data: Value) {
    let answer = client.signin(&user_data);
    assert_eq!(answer["event"], "pusher:signin_success", "{answer}");
}

#[test]
fn watchlists_send_to_user_and_terminate_reach_other_nodes() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2);
    let (a, b) = (&nodes[0], &nodes[1]);

    let mut alice = a.client();
    signed_in(&mut alice, json!({"id": "alice", "watchlist": ["u1"]}));
    assert_eq!(watch_events(&mut alice), watch("offline", &["u1"]));
    let mut u1 = b.client();
    signed_in(&mut u1, json!({"id": "u1"}));
    assert_eq!(
        watch_events(&mut alice),
        watch("online", &["u1"]),
        "u1 signed in on another node"
    );

    redis.wait_subscribers("#server-to-user-u1", 1);
    a.publish("#server-to-user-u1", "note", "for u1");
    assert_eq!(
        u1.next_event(),
        json!({"event": "note", "channel": "#server-to-user-u1", "data": "for u1"})
    );

    let (status, body) = a.api("POST", "/apps/1/users/u1/terminate_connections", &[], "{}");
    assert_eq!((status, body.as_str()), (200, "{}"));
    assert_eq!(u1.wait_close(), Ended::Closed(Some(4009)));
    assert_eq!(watch_events(&mut alice), watch("offline", &["u1"]));
    redis.wait_subscribers("#server-to-user-u1", 0);
}

#[test]
fn member_webhooks_are_sent_once_for_the_whole_cluster() {
    let receiver = Receiver::start(0);
    let app = json!({"id": "1", "key": KEY, "secret": SECRET, "webhook_url": receiver.url(),
                     "webhook_events": ["member_added", "member_removed"]});
    let config = json!({ "apps": [app] });
    let redis = Redis::start();
    let mut nodes: Vec<Gateway> = (0..3).map(|_| redis.gateway_with_config(&config)).collect();
    for node in &nodes {
        assert!(wait_until(Duration::from_secs(5), || node
            .metric("gateway_cluster_nodes")
            == 2.0));
    }
    let mut members: Vec<Client> = nodes
        .iter()
        .zip(["a", "b", "c"])
        .map(|(node, user)| {
            let mut client = node.client();
            client.join(ROOM, user, json!(null));
            client
        })
        .collect();
    let added = hook_users(&receiver, "member_added", Duration::from_secs(2));
    assert_eq!(added, ids(&["a", "b", "c"]), "one member_added per user");

    // "a" leaves normally; "c" goes with its node.
    members.remove(0).close();
    nodes.pop().unwrap().child.kill().unwrap();
    // "a" is reported after the 3 s hold, "c" after the node timeout and the hold.
    let removed = hook_users(&receiver, "member_removed", Duration::from_secs(7));
    assert_eq!(removed, ids(&["a", "c"]), "one member_removed per user");
}

/// The users of every webhook event named `name` until none has come for `quiet`, sorted.
fn hook_users(receiver: &Receiver, name: &str, quiet: Duration) -> Vec<String> {
    let mut users: Vec<String> = receiver
        .collect(quiet)
        .into_iter()
        .filter(|(event, _)| event["name"] == name)
        .map(|(event, _)| event["user_id"].as_str().unwrap_or("").to_string())
        .collect();
    users.sort();
    users
}
