//! What one connection may hold, and how long it may take to send a message.

use std::time::Duration;

use super::{config, Node};
use crate::admin::stats::{Disconnect, Labelled, Rejection};
use crate::protocol::codes;

fn rejected(node: &Node, reason: Rejection) -> u64 {
    node.stats[0].rejected[reason.index()].load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_connection_holds_at_most_its_share_of_channels_and_presence_channels() {
    let mut config = config();
    config.max_subscriptions_per_connection = 3;
    config.max_presence_per_connection = 1;
    let mut node = Node::new(1, config);
    let client = node.connect(0);
    node.join(&client, "presence-a", "u");
    node.join(&client, "presence-b", "u");
    let refused = client.internal();
    let error = refused
        .iter()
        .find(|(name, _)| name == "pusher:subscription_error");
    let (_, data) = error.expect("a subscription_error");
    assert_eq!(data["type"], "LimitReached");
    assert_eq!(data["status"], 403);
    for channel in ["a", "b", "c"] {
        node.subscribe(&client, channel);
    }
    let answers = client.event_names();
    assert_eq!(answers[..2], ["pusher_internal:subscription_succeeded"; 2]);
    assert!(answers.contains(&"pusher:subscription_error".to_owned()));
    assert_eq!(rejected(&node, Rejection::TooManySubscriptions), 2);
    // The refused channel was never joined; leaving one makes room again.
    assert_eq!(node.cores[0].local_counts(0, None).len(), 3);
    node.unsubscribe(&client, "a");
    node.subscribe(&client, "c");
    assert_eq!(
        client.event_names(),
        ["pusher_internal:subscription_succeeded"]
    );
}

#[test]
fn a_message_that_takes_longer_than_a_request_head_closes_with_1008() {
    let config = config();
    let limit = config.head_timeout as u32;
    let mut node = Node::new(1, config);
    let (slow, quick) = (node.connect(0), node.connect(0));
    slow.sending_since(0);
    quick.sending_since(limit);
    node.advance(Duration::from_secs(u64::from(limit)));
    // Bytes keep coming, so the connection is not silent: only the message's age counts.
    slow.active_at(limit);
    quick.active_at(limit);
    node.tick();
    assert_eq!(slow.closed(), None, "exactly the limit is allowed");
    node.advance(Duration::from_secs(1));
    node.tick();
    let timed_out = Some((codes::WS_POLICY_VIOLATION, Disconnect::ProtocolError));
    assert_eq!(slow.closed(), timed_out);
    assert_eq!(quick.closed(), None);
    assert_eq!(rejected(&node, Rejection::MessageTimeout), 1);
}

#[test]
fn an_app_with_authorized_connections_closes_those_that_do_not_sign_in_in_time() {
    let mut config = config();
    config.apps[0].authorized_connections = true;
    config.signin_timeout = 30;
    let mut node = Node::new(2, config);
    let (signs_in, silent, late) = (node.connect(0), node.connect(1), node.connect(1));
    let private = node.connect(0);
    node.subscribe(&silent, "public");
    node.sign_in(&signs_in, "u1", &[]);
    // Pusher counts a subscription to a channel that needs a signature as authorized too.
    node.subscribe(&private, "private-room");
    node.advance(Duration::from_secs(29));
    node.tick();
    node.sign_in(&late, "u2", &[]);
    assert_eq!(silent.closed(), None, "29 s is within the timeout");
    node.advance(Duration::from_secs(1));
    node.tick();
    let unauthorized = Some((codes::UNAUTHORIZED, Disconnect::SigninTimeout));
    assert_eq!(silent.closed(), unauthorized);
    for signed_in in [&signs_in, &late, &private] {
        assert_eq!(signed_in.closed(), None);
    }
    let counted: u64 = (0..2)
        .map(|shard| {
            let counter = &node.stats[shard].rejected[Rejection::SigninTimeout.index()];
            counter.load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert_eq!(counted, 1);
    // Later ticks close nobody else, and an app without the setting is never concerned.
    node.advance(Duration::from_secs(60));
    node.tick();
    assert_eq!(signs_in.closed(), None);
}

#[test]
fn connections_of_apps_without_authorized_connections_need_no_sign_in() {
    let mut node = Node::new(1, config());
    let client = node.connect(0);
    node.advance(Duration::from_secs(120));
    node.tick();
    assert_eq!(client.closed(), None);
}
