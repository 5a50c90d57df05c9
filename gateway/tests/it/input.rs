//! Input that never completes: a message or a request body trickled in, or held half sent by
//! many connections at once. Each is bounded in time (`head_timeout`) and, node-wide, in bytes
//! (`input_budget_bytes`); each refusal has its code and counter, and others are still served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::raw::{masked, raw_websocket, read_close_code};
use crate::common::Gateway;

fn rejected(gateway: &Gateway, reason: &str) -> f64 {
    gateway.metric(&format!("gateway_rejected_total{{reason=\"{reason}\"}}"))
}

/// The start of a text frame of `payload` bytes: its header and `sent` bytes of payload.
fn frame_start(payload: usize, sent: usize) -> Vec<u8> {
    let frame = masked(0x81, &vec![b'a'; payload]);
    let header = frame.len() - payload;
    frame[..header + sent].to_vec()
}

#[test]
fn a_message_trickled_in_closes_with_1008_once_head_timeout_has_passed() {
    let gateway = Gateway::start(&["--head-timeout", "1", "--shards", "1"]);
    let mut watcher = gateway.bystander();
    let mut stream = raw_websocket(&gateway);
    stream.write_all(&frame_start(100, 1)).unwrap();
    let started = Instant::now();
    let mut writer = stream.try_clone().unwrap();
    // A byte every 200 ms: never silent, never finished.
    let trickle = thread::spawn(move || {
        for _ in 0..50 {
            thread::sleep(Duration::from_millis(200));
            if writer.write_all(b"a").is_err() {
                return;
            }
        }
    });
    assert_eq!(read_close_code(&mut stream), Some(1008));
    let took = started.elapsed();
    assert!(took > Duration::from_secs(1), "closed after {took:?}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    trickle.join().unwrap();
    assert_eq!(rejected(&gateway, "message_timeout"), 1.0);
    gateway.assert_still_serves(&mut watcher);
}

#[test]
fn half_sent_input_past_the_node_budget_is_refused_and_its_bytes_come_back() {
    let gateway = Gateway::start(&["--input-budget-bytes", "40000"]);
    let mut watcher = gateway.bystander();
    // Two connections each hold a 15,000-byte message of which 100 bytes came.
    let holders: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = raw_websocket(&gateway);
            stream.write_all(&frame_start(15_000, 100)).unwrap();
            stream
        })
        .collect();
    assert_eq!(
        gateway.wait_metric("gateway_input_held_bytes", 30_000.0),
        30_000.0
    );
    // A third would pass the budget.
    let mut third = raw_websocket(&gateway);
    third.write_all(&frame_start(15_000, 100)).unwrap();
    assert_eq!(read_close_code(&mut third), Some(1013));
    // So would a request body.
    let mut api = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    api.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = "POST /apps/1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n";
    api.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = api.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After: 1"), "{answer}");
    assert_eq!(rejected(&gateway, "input_budget"), 2.0);
    gateway.assert_still_serves(&mut watcher);
    drop(holders);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.metric("gateway_input_held_bytes") > 0.0 {
        assert!(Instant::now() < deadline, "the held bytes come back");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_body_trickled_in_gets_408() {
    let gateway = Gateway::start(&["--head-timeout", "1"]);
    let mut api = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    api.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = "POST /apps/1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{";
    api.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = api.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(rejected(&gateway, "body_timeout"), 1.0);
    assert_eq!(gateway.metric("gateway_input_held_bytes"), 0.0);
}

#[test]
fn a_connection_past_its_channels_is_refused_the_next_and_keeps_the_others() {
    let gateway = Gateway::start(&["--max-subscriptions-per-connection", "3"]);
    let mut client = gateway.client();
    for channel in ["a", "b", "c"] {
        let answer = client.subscribe(channel);
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded");
    }
    let refused = client.subscribe("d");
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    let data = &refused["data"];
    assert_eq!(
        (&data["type"], &data["status"]),
        (&"LimitReached".into(), &403.into())
    );
    assert_eq!(rejected(&gateway, "subscriptions_per_connection"), 1.0);
    gateway.publish("a", "still", "here");
    loop {
        let event = client.next_event();
        if event["event"] == "still" {
            break;
        }
        assert_eq!(event["event"], "pusher:error", "{event}");
    }
}
