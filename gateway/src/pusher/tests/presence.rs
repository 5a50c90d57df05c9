//! Presence across shards: a user is a member of a channel while any of its sockets on any
//! shard is; others hear of its arrival and departure once, and the channel's owner shard sends
//! each webhook once.

use serde_json::{json, Value};

use super::{config, counting_config, Client, Node};
use crate::admin::stats::Disconnect;
use crate::webhooks::WebhookEvent;

const ROOM: &str = "presence-room";

/// Joins `user` to the room on `shard`; returns the client and the ids it was told are present.
fn join(node: &mut Node, shard: usize, user: &str) -> (Client, Vec<String>) {
    let client = node.connect(shard);
    node.join(&client, ROOM, user);
    node.settle();
    let events = client.internal();
    let (name, data) = &events[0];
    assert_eq!(name, "pusher_internal:subscription_succeeded");
    let ids = data["presence"]["ids"].as_array().expect("ids").clone();
    let ids = ids
        .iter()
        .map(|id| id.as_str().unwrap_or("").to_owned())
        .collect();
    (client, ids)
}

fn member_events(client: &Client) -> Vec<(String, Value)> {
    client
        .internal()
        .into_iter()
        .filter(|(name, _)| name.starts_with("pusher_internal:member_"))
        .map(|(name, data)| (name, data["user_id"].clone()))
        .collect()
}

fn added(user: &str) -> (String, Value) {
    ("pusher_internal:member_added".into(), json!(user))
}

fn removed(user: &str) -> (String, Value) {
    ("pusher_internal:member_removed".into(), json!(user))
}

fn member_webhooks(node: &mut Node) -> Vec<WebhookEvent> {
    let webhooks = node.take_webhooks().into_iter();
    let members = webhooks.filter(|w| {
        matches!(
            w,
            WebhookEvent::MemberAdded { .. } | WebhookEvent::MemberRemoved { .. }
        )
    });
    members.collect()
}

#[test]
fn members_on_other_shards_are_listed_and_arrivals_told_once() {
    let mut node = Node::new(3, config());
    let (watcher, present) = join(&mut node, 0, "w");
    assert_eq!(present, ["w"]);
    let (alice_1, present) = join(&mut node, 1, "alice");
    assert_eq!(present.len(), 2);
    // Alice's second socket, on another shard, is no new member.
    let (alice_2, present) = join(&mut node, 2, "alice");
    assert_eq!(present.len(), 2);
    assert_eq!(member_events(&watcher), [added("alice")]);
    assert!(member_events(&alice_1).is_empty());
    // Alice leaves only when her last socket does.
    node.close(&alice_1, Disconnect::ClientGone);
    node.settle();
    assert!(member_events(&watcher).is_empty());
    node.unsubscribe(&alice_2, ROOM);
    node.settle();
    assert_eq!(member_events(&watcher), [removed("alice")]);
}

#[test]
fn the_channels_owner_shard_sends_each_member_webhook_once() {
    let mut node = Node::new(4, counting_config());
    let (bob_1, _) = join(&mut node, 0, "bob");
    let (bob_2, _) = join(&mut node, 3, "bob");
    let channel: Box<str> = ROOM.into();
    let user_id: Box<str> = "bob".into();
    assert_eq!(
        member_webhooks(&mut node),
        [WebhookEvent::MemberAdded {
            channel: channel.clone(),
            user_id: user_id.clone()
        }]
    );
    node.close(&bob_1, Disconnect::ClientGone);
    node.close(&bob_2, Disconnect::ClientGone);
    node.settle();
    assert_eq!(
        member_webhooks(&mut node),
        [WebhookEvent::MemberRemoved { channel, user_id }]
    );
}

#[test]
fn a_clustered_node_tells_the_bridge_each_roster_change_once() {
    let mut node = Node::clustered(2, config());
    let (first, _) = join(&mut node, 0, "carol");
    join(&mut node, 1, "carol");
    node.close(&first, Disconnect::ClientGone);
    node.settle();
    let rosters: Vec<(bool, u32)> = node
        .bridge
        .iter()
        .filter_map(|message| match message {
            crate::cluster::BridgeMessage::Roster(delta) => {
                Some((delta.joined.is_some(), delta.source.shard))
            }
            _ => None,
        })
        .collect();
    // Each shard's own source joins once; shard 0's leaves once.
    assert_eq!(rosters, [(true, 0), (true, 1), (false, 0)]);
}

#[test]
fn a_full_presence_channel_refuses_new_members_but_not_their_other_sockets() {
    let mut config = config();
    config.max_presence_members = 2;
    let mut node = Node::new(2, config);
    join(&mut node, 0, "a");
    join(&mut node, 1, "b");
    let late = node.connect(1);
    node.join(&late, ROOM, "c");
    let refused = late.event_names();
    assert_eq!(refused[0], "pusher:subscription_error", "{refused:?}");
    let (_, present) = join(&mut node, 1, "a");
    assert_eq!(present.len(), 2);
}

#[test]
fn watchers_hear_when_a_user_comes_online_and_goes_offline_node_wide() {
    let mut node = Node::new(2, config());
    let watcher = node.connect(0);
    node.sign_in(&watcher, "w", &["dave"]);
    let answers = watcher.internal();
    assert_eq!(answers[0].0, "pusher:signin_success");
    assert_eq!(answers[1].0, "pusher_internal:watchlist_events");
    let dave = node.connect(1);
    node.sign_in(&dave, "dave", &[]);
    node.settle();
    let online = watcher.internal();
    assert_eq!(online[0].1["events"][0]["name"], "online");
    node.close(&dave, Disconnect::ClientGone);
    node.settle();
    let offline = watcher.internal();
    assert_eq!(offline[0].1["events"][0]["name"], "offline");
}

#[test]
fn a_member_keeps_the_info_it_arrived_with_and_a_repeated_subscribe_changes_nothing() {
    let mut node = Node::new(2, config());
    let first = node.connect(0);
    let channel_data = |n: u32| json!({"user_id": "u", "user_info": {"n": n}}).to_string();
    let subscribe = |node: &mut Node, client: &Client, data: String| {
        let auth = node.channel_auth(client, ROOM, Some(&data));
        let data = json!({"channel": ROOM, "auth": auth, "channel_data": data});
        node.say(client, &json!({"event": "pusher:subscribe", "data": data}));
        node.settle();
        client.internal().remove(0).1
    };
    subscribe(&mut node, &first, channel_data(1));
    let second = node.connect(1);
    let answer = subscribe(&mut node, &second, channel_data(2));
    assert_eq!(answer["presence"]["hash"]["u"], json!({"n": 1}));
    let again = subscribe(&mut node, &second, channel_data(2));
    assert_eq!(again["presence"]["count"], 1);
    assert!(member_events(&first).is_empty());
}

#[test]
fn a_client_event_on_a_presence_channel_names_its_sender() {
    let mut node = Node::new(2, config());
    let (sender, _) = join(&mut node, 0, "s");
    let (other, _) = join(&mut node, 1, "o");
    sender.take();
    let wave = json!({"event": "client-wave", "channel": ROOM, "data": {"hi": true}});
    node.say(&sender, &wave);
    node.settle();
    let received = other.take();
    let expected =
        json!({"event": "client-wave", "channel": ROOM, "data": {"hi": true}, "user_id": "s"});
    assert_eq!(received, [expected]);
    assert!(sender.take().is_empty());
}
