//! Node-wide subscriber counts: each channel's owner shard sums what the shards report, sends
//! occupied and vacated webhooks once, and a burst of subscriptions makes one count event. In a
//! cluster the owner reports the node's count to the bridge and sends what it is told.

use super::{config, counting_config, Client, Node};
use crate::admin::stats::Disconnect;
use crate::bus::ShardMessage;
use crate::channels::counts::{owner, Decision};
use crate::cluster::BridgeMessage;
use crate::webhooks::WebhookEvent;

fn counts_received(client: &Client) -> Vec<u64> {
    let events = client.internal().into_iter();
    events
        .filter(|(name, _)| name == "pusher_internal:subscription_count")
        .filter_map(|(_, data)| data["subscription_count"].as_u64())
        .collect()
}

#[test]
fn a_channel_is_occupied_and_vacated_once_across_shards() {
    let mut node = Node::new(3, counting_config());
    let clients: Vec<Client> = (0..3).map(|shard| node.connect(shard)).collect();
    for client in &clients {
        node.subscribe(client, "lobby");
    }
    node.settle();
    let occupied = WebhookEvent::ChannelOccupied {
        channel: "lobby".into(),
    };
    let webhooks = node.take_webhooks();
    assert_eq!(webhooks.iter().filter(|w| **w == occupied).count(), 1);
    for client in &clients {
        node.close(client, Disconnect::ClientGone);
    }
    node.settle();
    let vacated = WebhookEvent::ChannelVacated {
        channel: "lobby".into(),
    };
    let webhooks = node.take_webhooks();
    assert_eq!(webhooks.iter().filter(|w| **w == vacated).count(), 1);
}

#[test]
fn the_owner_sends_one_count_per_tick_to_subscribers_on_every_shard() {
    let mut node = Node::new(2, counting_config());
    let clients: Vec<Client> = (0..6).map(|n| node.connect(n % 2)).collect();
    for client in &clients {
        node.subscribe(client, "lobby");
    }
    node.settle();
    for client in &clients {
        client.take();
    }
    node.tick();
    node.settle();
    for client in &clients {
        assert_eq!(counts_received(client), [6], "shard {}", client.shard);
    }
    let owner = owner(0, "lobby", 2);
    let count_webhook = WebhookEvent::SubscriptionCount {
        channel: "lobby".into(),
        count: 6,
    };
    assert!(node.take_webhooks().contains(&count_webhook));
    // Nothing changed: nothing more to tell.
    node.tick();
    node.settle();
    assert!(counts_received(&clients[owner]).is_empty());
    node.unsubscribe(&clients[1], "lobby");
    node.settle();
    node.tick();
    node.settle();
    assert_eq!(counts_received(&clients[0]), [5]);
}

/// The node's counts the owner told the bridge, in order.
fn counts_told(node: &mut Node) -> Vec<u64> {
    let told = node.bridge.drain(..).filter_map(|message| match message {
        BridgeMessage::Count { count, .. } => Some(count),
        _ => None,
    });
    told.collect()
}

#[test]
fn in_a_cluster_the_owner_tells_the_bridge_and_sends_what_the_decider_says() {
    let mut node = Node::clustered(2, counting_config());
    let clients: Vec<Client> = (0..3).map(|n| node.connect(n % 2)).collect();
    for client in &clients {
        node.subscribe(client, "lobby");
    }
    node.settle();
    node.tick();
    node.settle();
    assert_eq!(
        counts_told(&mut node),
        [1, 2, 3],
        "the node's count as it changes"
    );
    assert!(
        node.take_webhooks().is_empty(),
        "the node decides nothing itself"
    );
    assert!(counts_received(&clients[0]).is_empty());

    let owner = owner(0, "lobby", 2);
    let decide = |node: &mut Node, decision| {
        let now = node.now;
        let message = ShardMessage::Decided {
            app: 0,
            channel: "lobby".into(),
            decision,
        };
        node.apply(owner, |core| core.handle_message(message, now));
        node.settle();
    };
    decide(&mut node, Decision::Occupied);
    decide(&mut node, Decision::Count(7));
    let webhooks = node.take_webhooks();
    let occupied = WebhookEvent::ChannelOccupied {
        channel: "lobby".into(),
    };
    let counted = WebhookEvent::SubscriptionCount {
        channel: "lobby".into(),
        count: 7,
    };
    assert_eq!(webhooks, [occupied, counted]);
    for client in &clients {
        assert_eq!(counts_received(client), [7], "the cluster's count");
    }
    assert_eq!(node.cluster_publishes.len(), 1, "and the other nodes'");

    for client in &clients {
        node.close(client, Disconnect::ClientGone);
    }
    node.settle();
    assert_eq!(counts_told(&mut node), [2, 1, 0]);
    decide(&mut node, Decision::Vacated);
    let vacated = WebhookEvent::ChannelVacated {
        channel: "lobby".into(),
    };
    assert_eq!(node.take_webhooks(), [vacated]);
}

#[test]
fn apps_that_need_no_counts_cost_no_messages() {
    let mut node = Node::new(2, config());
    let client = node.connect(1);
    node.subscribe(&client, "lobby");
    assert_eq!(node.handle_inbox(0, usize::MAX), 0);
    assert!(node.take_webhooks().is_empty());
}

#[test]
fn the_api_counts_of_each_shard_add_up_to_the_nodes() {
    let mut node = Node::new(2, config());
    let clients: Vec<Client> = (0..5).map(|n| node.connect(n % 2)).collect();
    for client in &clients {
        node.subscribe(client, "a");
    }
    node.subscribe(&clients[0], "b");
    let total: u64 = node
        .cores
        .iter()
        .flat_map(|core| core.local_counts(0, None))
        .filter(|(name, _)| &**name == "a")
        .map(|(_, count)| count)
        .sum();
    assert_eq!(total, 5);
    let named = node.cores[0].local_counts(0, Some(&["b".into(), "none".into()]));
    assert_eq!(named, [("b".into(), 1), ("none".into(), 0)]);
}
