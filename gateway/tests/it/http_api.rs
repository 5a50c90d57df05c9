//! The HTTP API: signed publishing, channel queries, keep-alive, and each refusal counted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::{self, now_secs, signed_request, Gateway, APP_ID};
use serde_json::{json, Value};

#[test]
fn publish_reaches_subscribers_and_excludes_the_named_socket() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let mut a = gateway.client();
    let mut b = gateway.client();
    a.subscribe("news");
    b.subscribe("news");
    let body = json!({"name": "story", "channels": ["news"], "data": "{\"n\":1}", "socket_id": a.socket_id}).to_string();
    let (status, answer) = gateway.api("POST", "/apps/1/events", &[], &body);
    assert_eq!((status, answer.as_str()), (200, "{}"));
    let event = b.next_event();
    assert_eq!(
        event,
        json!({"event": "story", "channel": "news", "data": "{\"n\":1}"})
    );
    gateway.publish("news", "second", "2");
    assert_eq!(
        a.next_event()["event"],
        "second",
        "a missed only the excluded event"
    );
    assert_eq!(b.next_event()["event"], "second");
}

#[test]
fn batch_events_and_channel_queries() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let mut clients: Vec<_> = (0..4).map(|_| gateway.client()).collect();
    for client in &mut clients[..3] {
        client.subscribe("private-room");
    }
    clients[3].subscribe("lobby");
    let batch = json!({"batch": [
        {"name": "a", "channel": "private-room", "data": "1"},
        {"name": "b", "channel": "lobby", "data": "2"},
    ]})
    .to_string();
    let (status, answer) = gateway.api("POST", "/apps/1/batch_events", &[], &batch);
    assert_eq!((status, answer.as_str()), (200, r#"{"batch":[{},{}]}"#));
    for client in &mut clients[..3] {
        assert_eq!(client.next_event()["event"], "a");
    }
    assert_eq!(clients[3].next_event()["event"], "b");

    let (status, answer) = gateway.api(
        "GET",
        "/apps/1/channels",
        &[("info", "subscription_count")],
        "",
    );
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer["channels"]["private-room"]["subscription_count"], 3,
        "counted across shards"
    );
    assert_eq!(answer["channels"]["lobby"]["subscription_count"], 1);

    let (_, answer) = gateway.api(
        "GET",
        "/apps/1/channels",
        &[("filter_by_prefix", "private-")],
        "",
    );
    assert_eq!(answer, r#"{"channels":{"private-room":{}}}"#);

    let (status, answer) = gateway.api(
        "GET",
        "/apps/1/channels/private-room",
        &[("info", "subscription_count")],
        "",
    );
    assert_eq!(
        (status, answer.as_str()),
        (200, r#"{"occupied":true,"subscription_count":3}"#)
    );
    let (_, answer) = gateway.api("GET", "/apps/1/channels/empty", &[], "");
    assert_eq!(answer, r#"{"occupied":false}"#);
    let (status, _) = gateway.api("GET", "/apps/1/channels/lobby/users", &[], "");
    assert_eq!(status, 400, "users of a non-presence channel");
}

/// A listing longer than a slice (`COUNTS_PER_SLICE`, 2,048) is built in several, with pauses
/// between them: it must come out whole, in order, counted across shards.
#[test]
fn a_listing_of_thousands_of_channels_is_whole() {
    let gateway = Gateway::start(&[
        "--shards",
        "2",
        "--max-subscriptions-per-connection",
        "5000",
    ]);
    let mut clients = [gateway.client(), gateway.client()];
    for n in 0..5000 {
        let channel = json!({ "channel": format!("c-{n:04}") });
        for client in &mut clients {
            client.send(json!({"event": "pusher:subscribe", "data": channel}));
        }
    }
    for client in &mut clients {
        // The pong comes after every subscription's answer.
        client.send(json!({"event": "pusher:ping", "data": {}}));
        while client.next_event()["event"] != "pusher:pong" {}
    }
    let info = [("info", "subscription_count")];
    let (status, answer) = gateway.api("GET", "/apps/1/channels", &info, "");
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let channels = answer["channels"].as_object().unwrap();
    assert_eq!(channels.len(), 5000);
    for (n, (name, attributes)) in channels.iter().enumerate() {
        assert_eq!(name, &format!("c-{n:04}"));
        assert_eq!(attributes["subscription_count"], 2, "{name}");
    }
}

#[test]
fn refusals_have_their_status_and_are_counted() {
    let gateway = Gateway::start(&["--max-request-body-bytes", "4096"]);
    let good = json!({"name": "e", "channel": "c", "data": "d"}).to_string();
    let port = gateway.port;

    let stale = signed_request("POST", "/apps/1/events", &[], &good, now_secs() - 601);
    assert_eq!(common::raw_http(port, &stale).0, 401);
    let tampered = signed_request("POST", "/apps/1/events", &[], &good, now_secs())
        .replace("auth_version=1.0", "auth_version=1.0&extra=1");
    assert_eq!(common::raw_http(port, &tampered).0, 401);
    let wrong_body = signed_request("POST", "/apps/1/events", &[], &good, now_secs())
        .replace("\"data\":\"d\"", "\"data\":\"x\"");
    assert_eq!(
        common::raw_http(port, &wrong_body).0,
        401,
        "body_md5 mismatch"
    );
    assert_eq!(
        gateway.metric("gateway_rejected_total{reason=\"unauthorized\"}"),
        3.0
    );

    let big_data =
        json!({"name": "e", "channel": "c", "data": "x".repeat(10 * 1024 + 1)}).to_string();
    let (status, _) = gateway.api("POST", "/apps/1/events", &[], &big_data);
    assert_eq!(status, 413, "event data over 10 KiB");
    let huge_body = json!({"name": "e", "channel": "c", "data": "x".repeat(5000)}).to_string();
    let (status, _) = gateway.api("POST", "/apps/1/events", &[], &huge_body);
    assert_eq!(status, 413, "body over the request limit");
    assert_eq!(
        gateway.metric("gateway_rejected_total{reason=\"body_too_large\"}"),
        2.0
    );

    let (status, _) = gateway.api("POST", "/apps/99/events", &[], &good);
    assert_eq!(status, 404);
    let (status, _) = gateway.api("GET", "/apps/1/events", &[], "");
    assert_eq!(status, 405);
    let bad_channel = json!({"name": "e", "channel": "a b", "data": "d"}).to_string();
    assert_eq!(
        gateway.api("POST", "/apps/1/events", &[], &bad_channel).0,
        400
    );
    let (status, _) = gateway.api("POST", "/apps/1/events", &[], "{not json");
    assert_eq!(status, 400);
    assert!(gateway.metric("gateway_http_requests_total{status=\"413\"}") >= 2.0);

    let (status, _) = gateway.api("POST", &format!("/apps/{APP_ID}/events"), &[], &good);
    assert_eq!(status, 200, "the API still works");
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let gateway = Gateway::start(&[]);
    let mut stream = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let body = json!({"name": "e", "channel": "c", "data": "d"}).to_string();
    for _ in 0..5 {
        let request = signed_request("POST", "/apps/1/events", &[], &body, now_secs())
            .replace("Connection: close", "Connection: keep-alive");
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&response).ends_with("{}") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "connection stayed open");
            response.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(response).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("Connection: keep-alive"));
    }
}

#[test]
fn health_reports_status_and_connections() {
    let gateway = Gateway::start(&[]);
    let _client = gateway.client();
    for port in [gateway.port, gateway.admin_port] {
        let (status, body) = common::http_get(port, "/health").unwrap();
        let health: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (
                status,
                health["status"].as_str(),
                health["connections"].as_i64()
            ),
            (200, Some("ok"), Some(1))
        );
    }
}

/// Sends `raw` on one connection and reads until the server closes it; returns every status line
/// it answered with.
fn statuses_until_closed(gateway: &Gateway, raw: &[u8]) -> Vec<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(raw).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // A reset after the answer (the request behind it was never read) ends the reading too.
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer)
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|response| response.get(..3)?.parse().ok())
        .collect()
}

#[test]
fn ambiguous_framing_is_refused_and_nothing_behind_it_is_read() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let mut subscriber = gateway.client();
    subscriber.subscribe("vault");
    // A validly signed publish, kept alive, that a smuggler hides behind a request whose framing
    // a proxy might read differently.
    let hidden = signed_request(
        "POST",
        &format!("/apps/{APP_ID}/events"),
        &[],
        &json!({"name": "smuggled", "channel": "vault", "data": "x"}).to_string(),
        now_secs(),
    )
    .replace("Connection: close", "Connection: keep-alive");
    let cases = [
        format!(
            "POST /apps/1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n",
            hidden.len()
        ),
        format!(
            "POST /apps/1/events HTTP/1.1\r\nHost: x\r\nContent-Length: +{}\r\n\r\n",
            hidden.len()
        ),
        "POST /apps/1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n".into(),
        "POST /apps/1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".into(),
        "POST /apps/1/events HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n".into(),
        "POST /apps/1/events HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n".into(),
        "POST /apps/1/events HTTP/1.1\rHost: x\r\nContent-Length: 0\r\n\r\n".into(),
        "POST /apps/1/events HTTP/1.1\r\nHost: x\rContent-Length: 0\r\n\r\n".into(),
    ];
    for case in &cases {
        let raw = format!("{case}{hidden}");
        assert_eq!(
            statuses_until_closed(&gateway, raw.as_bytes()),
            [400],
            "{case:?}"
        );
    }
    assert_eq!(
        gateway.metric("gateway_rejected_total{reason=\"bad_request\"}"),
        cases.len() as f64
    );
    // The hidden publishes were never read: the next event is this one.
    gateway.publish("vault", "marker", "m");
    assert_eq!(subscriber.next_event()["event"], "marker");
    // The same hidden request behind a well-framed one is served, as keep-alive allows.
    let framed =
        format!("GET /apps/1/channels HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n{hidden}");
    assert_eq!(
        statuses_until_closed(&gateway, framed.replace("keep-alive", "close").as_bytes()),
        [401, 200]
    );
    assert_eq!(subscriber.next_event()["event"], "smuggled");
}
