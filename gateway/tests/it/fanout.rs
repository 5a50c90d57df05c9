//! Fanout across shards: every subscriber on every shard receives a publish exactly once.

use std::time::Duration;

use crate::common::{self, Gateway};

#[test]
fn hundreds_of_subscribers_over_every_shard_receive_one_publish_once() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let mut clients: Vec<_> = (0..300).map(|_| gateway.client()).collect();
    for client in &mut clients {
        assert_eq!(
            client.subscribe("broadcast")["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    for shard in 0..2 {
        let held = gateway.metric(&format!("gateway_connections{{shard=\"{shard}\""));
        assert!(held > 0.0, "shard {shard} holds connections ({held})");
    }
    gateway.publish("broadcast", "hello", "everyone");
    for client in &mut clients {
        let event = client.next_event();
        assert_eq!(
            (event["event"].as_str(), event["data"].as_str()),
            (Some("hello"), Some("everyone"))
        );
    }
    gateway.publish("broadcast", "marker", "end");
    for client in &mut clients {
        client.set_timeout(Duration::from_secs(5));
        assert_eq!(
            client.next_event()["event"],
            "marker",
            "no duplicate before the next event"
        );
    }
    assert_eq!(gateway.metric("gateway_messages_out_total"), 600.0);
    assert_eq!(gateway.metric("gateway_inbox_drops_total"), 0.0);
    let (_, metrics) = common::http_get(gateway.admin_port, "/metrics").unwrap();
    for shard in 0..2 {
        let line = format!("gateway_cluster_backlog{{shard=\"{shard}\"}} 0");
        assert!(metrics.lines().any(|l| l == line), "{line} in /metrics");
    }
}

/// Publishes made one after the other, each on a new connection so that the kernel spreads them
/// over the shards, reach every subscriber on every shard in publish order.
fn sequential_publishes_keep_their_order(shards: u32) {
    const PUBLISHES: usize = 500;
    let gateway = Gateway::start(&["--shards", &shards.to_string()]);
    let mut subscribers = gateway.client_per_shard(shards);
    subscribers.extend((0..4).map(|_| gateway.client()));
    for subscriber in &mut subscribers {
        assert_eq!(
            subscriber.subscribe("ticks")["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    for round in 0..3 {
        for n in 0..PUBLISHES {
            gateway.publish("ticks", "tick", &n.to_string());
        }
        for subscriber in &mut subscribers {
            let received: Vec<usize> = (0..PUBLISHES)
                .map(|_| {
                    subscriber.next_event()["data"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            let inversions = received.windows(2).filter(|w| w[0] > w[1]).count();
            assert_eq!(
                (inversions, received.first(), received.last()),
                (0, Some(&0), Some(&(PUBLISHES - 1))),
                "round {round}, subscriber on shard {}",
                subscriber.shard()
            );
        }
    }
}

#[test]
fn sequential_publishes_keep_their_order_over_two_shards() {
    sequential_publishes_keep_their_order(2);
}

#[test]
fn sequential_publishes_keep_their_order_over_four_shards() {
    sequential_publishes_keep_their_order(4);
}

#[test]
fn cache_channels_replay_the_last_event_on_every_shard() {
    let gateway = Gateway::start(&["--shards", "2"]);
    // A subscriber on each shard: once each has the last event, so has its shard's cache.
    let mut watchers = gateway.client_per_shard(2);
    for watcher in &mut watchers {
        watcher.subscribe("cache-score");
        assert_eq!(watcher.next_event()["event"], "pusher:cache_miss");
    }
    for score in ["1-0", "2-0", "2-1"] {
        gateway.publish("cache-score", "score", score);
    }
    for watcher in &mut watchers {
        let scores: Vec<_> = (0..3)
            .map(|_| watcher.next_event()["data"].clone())
            .collect();
        assert_eq!(scores, ["1-0", "2-0", "2-1"], "shard {}", watcher.shard());
    }
    for client in &mut gateway.client_per_shard(2) {
        assert_eq!(
            client.subscribe("cache-score")["event"],
            "pusher_internal:subscription_succeeded"
        );
        let replay = client.next_event();
        assert_eq!(
            (replay["event"].as_str(), replay["data"].as_str()),
            (Some("score"), Some("2-1")),
            "shard {}",
            client.shard()
        );
    }
}

/// More subscribers on a shard than one slice of fanout (`FANOUT_SLICE`, 512) make their
/// channel's broadcasts wait and go out a slice at a time; a narrow channel's publishes made
/// between them wait behind them, so a client of both gets everything in publish order. A burst
/// to the wide channel alone waits in groups that reach each subscriber together, in order.
#[test]
fn a_wide_channel_delivered_in_slices_keeps_publish_order_with_a_narrow_one() {
    const WIDE: usize = 1_400;
    const ROUNDS: usize = 30;
    const BURST: usize = 60;
    let gateway = Gateway::start(&["--shards", "2"]);
    let mut clients: Vec<_> = (0..WIDE).map(|_| gateway.client()).collect();
    for client in &mut clients {
        assert_eq!(
            client.subscribe("wide")["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    let both = &mut clients[0];
    assert_eq!(
        both.subscribe("narrow")["event"],
        "pusher_internal:subscription_succeeded"
    );
    let mut expected = Vec::new();
    for n in 0..ROUNDS {
        gateway.publish("wide", "w", &n.to_string());
        gateway.publish("narrow", "n", &n.to_string());
        expected.extend([format!("w{n}"), format!("n{n}")]);
    }
    let got: Vec<String> = (0..2 * ROUNDS)
        .map(|_| {
            let event = clients[0].next_event();
            format!(
                "{}{}",
                event["event"].as_str().unwrap(),
                event["data"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(got, expected, "in publish order");
    let wide: Vec<String> = (0..ROUNDS).map(|n| format!("w{n}")).collect();
    for client in &mut clients[1..] {
        let got: Vec<String> = (0..ROUNDS)
            .map(|_| {
                let event = client.next_event();
                format!(
                    "{}{}",
                    event["event"].as_str().unwrap(),
                    event["data"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(got, wide);
    }
    for n in 0..BURST {
        gateway.publish("wide", "b", &n.to_string());
    }
    let burst: Vec<String> = (0..BURST).map(|n| n.to_string()).collect();
    for client in &mut clients {
        assert_eq!(client.next_data(BURST), burst);
    }
    assert_eq!(gateway.metric("gateway_fanout_waiting"), 0.0);
    assert_eq!(
        gateway.metric("gateway_messages_out_total"),
        (WIDE * (ROUNDS + BURST) + ROUNDS) as f64
    );
}

/// With no wait allowed (`fanout_wait_ms` 0) and a backlog of one write, publishes that come
/// while a shard still delivers a wide channel are refused: 503, counted as `fanout_backlog`.
/// Those accepted reach every subscriber, each publisher's in its order.
#[test]
fn publishes_past_the_fanout_backlog_are_refused_with_503_and_counted() {
    // Over the most a slice serves (512) on each of the two shards: every publish leaves
    // writes waiting there until the shard's next slice.
    const WIDE: usize = 1_400;
    const PUBLISHERS: usize = 6;
    const MOST_EACH: usize = 300;
    let gateway = Gateway::start(&[
        "--shards",
        "2",
        "--fanout-backlog",
        "1",
        "--fanout-wait-ms",
        "0",
    ]);
    let mut clients: Vec<_> = (0..WIDE).map(|_| gateway.client()).collect();
    for client in &mut clients {
        assert_eq!(
            client.subscribe("wide")["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    let refused = std::sync::atomic::AtomicUsize::new(0);
    let accepted: Vec<Vec<String>> = std::thread::scope(|scope| {
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|publisher| {
                let (gateway, refused) = (&gateway, &refused);
                scope.spawn(move || publish_until_refused(gateway, refused, publisher, MOST_EACH))
            })
            .collect();
        publishers.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let refused = refused.into_inner();
    assert!(refused > 0, "no publish met the backlog");
    assert_eq!(
        gateway.metric("gateway_rejected_total{reason=\"fanout_backlog\"}"),
        refused as f64
    );
    let total: usize = accepted.iter().map(Vec::len).sum();
    assert!(total > 0, "every publish was refused");
    let mut on_shard = [false; 2];
    for client in &mut clients {
        let shard = client.shard() as usize;
        if std::mem::replace(&mut on_shard[shard], true) {
            continue;
        }
        let mut got = vec![Vec::new(); PUBLISHERS];
        for data in client.next_data(total) {
            let (publisher, _) = data.split_once(':').unwrap();
            got[publisher.parse::<usize>().unwrap()].push(data);
        }
        assert_eq!(got, accepted, "shard {shard}: each publisher's, in order");
    }
    assert_eq!(on_shard, [true, true]);
    assert_eq!(
        gateway.wait_metric("gateway_messages_out_total", (WIDE * total) as f64),
        (WIDE * total) as f64
    );
}

/// Publishes `publisher:n` to "wide" until three publishes (of all publishers) were refused and
/// five of this one's accepted, or `most` were sent; the data of those accepted, in order.
fn publish_until_refused(
    gateway: &Gateway,
    refused: &std::sync::atomic::AtomicUsize,
    publisher: usize,
    most: usize,
) -> Vec<String> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut accepted = Vec::new();
    for n in 0..most {
        if refused.load(Relaxed) >= 3 && accepted.len() >= 5 {
            break;
        }
        let data = format!("{publisher}:{n}");
        let body = serde_json::json!({"name": "e", "channel": "wide", "data": data}).to_string();
        let (status, answer) = gateway.api(
            "POST",
            &format!("/apps/{}/events", common::APP_ID),
            &[],
            &body,
        );
        match status {
            200 => accepted.push(data),
            503 => {
                assert!(answer.contains("cannot deliver publishes"), "{answer}");
                refused.fetch_add(1, Relaxed);
            }
            other => panic!("publish answered {other}: {answer}"),
        }
    }
    accepted
}
