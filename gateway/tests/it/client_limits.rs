//! Limits per client address (connections held, connections opened per second), per shard (TLS
//! handshakes per second) and per app (HTTP API requests per second): each one's answer, its
//! counter in /metrics, and clients under no limit served meanwhile. Clients come from
//! 127.0.0.2, 127.0.0.3, ... to be different addresses.

use std::time::{Duration, Instant};

use crate::common::net::{connect_from, refusal_status, Session};
use crate::common::tls::{certificates, client_config, tls_over};
use crate::common::{self, free_port, wait_until, Gateway, KEY};

/// A gateway with a TLS port beside the plaintext one, its TLS port, and its certificates.
fn with_tls(name: &str, extra: &[&str]) -> (Gateway, u16, std::path::PathBuf) {
    let certs = certificates(name);
    let tls_port = free_port();
    let mut args = vec![
        "--tls-port".to_string(),
        tls_port.to_string(),
        "--tls-cert".into(),
        certs.join("chain.pem").to_str().unwrap().into(),
        "--tls-key".into(),
        certs.join("key.pem").to_str().unwrap().into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Gateway::start(&args), tls_port, certs)
}

/// A Pusher session on the plaintext port from `source`.
fn plain_from(gateway: &Gateway, source: &str) -> Result<Session, tungstenite::Error> {
    Session::open(
        Box::new(connect_from(source, gateway.port)),
        &gateway.url(KEY),
    )
}

/// A session from `source`, subscribed to the channel `assert_served` publishes on.
fn bystander(gateway: &Gateway, source: &str) -> Session {
    let mut session = plain_from(gateway, source).expect("the bystander connects");
    session.subscribe("bystanders");
    session
}

fn assert_served(gateway: &Gateway, bystander: &mut Session) {
    gateway.publish("bystanders", "still-here", "yes");
    assert_eq!(bystander.next_event()["event"], "still-here");
}

fn rejected(gateway: &Gateway, reason: &str, at_least: f64) -> f64 {
    gateway.wait_metric(
        &format!("gateway_rejected_total{{reason=\"{reason}\"}}"),
        at_least,
    )
}

#[test]
fn connections_per_address_are_limited_on_both_ports() {
    let (gateway, tls_port, certs) = with_tls(
        "per-ip",
        &["--shards", "2", "--max-connections-per-ip", "2"],
    );
    let tls = client_config(&certs.join("ca.pem"));
    let mut watcher = bystander(&gateway, "127.0.0.5");
    let first = plain_from(&gateway, "127.0.0.2").unwrap();
    let _second = tls_over(connect_from("127.0.0.2", tls_port), &tls).expect("TLS counts too");

    let refused = plain_from(&gateway, "127.0.0.2").err().expect("refused");
    assert_eq!(refusal_status(&refused), 429, "{refused}");
    assert!(
        tls_over(connect_from("127.0.0.2", tls_port), &tls).is_err(),
        "closed before its handshake"
    );
    assert_eq!(rejected(&gateway, "ip_connections", 2.0), 2.0);
    assert_eq!(
        gateway.metric("gateway_http_requests_total{status=\"429\"}"),
        1.0
    );

    let _other = plain_from(&gateway, "127.0.0.3").expect("another address is not limited");
    assert_served(&gateway, &mut watcher);
    // A connection that ends gives its place back.
    drop(first);
    assert!(wait_until(Duration::from_secs(5), || plain_from(
        &gateway,
        "127.0.0.2"
    )
    .is_ok()));
    assert_served(&gateway, &mut watcher);
}

/// Most attempts a per-second limit of `rate` lets through in `elapsed`: the seconds it spans,
/// counted whole, and a second begun on either side.
fn most_in(rate: usize, elapsed: Duration) -> usize {
    rate * (elapsed.as_secs() as usize + 2)
}

#[test]
fn new_connections_per_address_per_second_are_limited() {
    let gateway = Gateway::start(&["--shards", "2", "--connection-rate-per-ip", "5"]);
    let mut watcher = bystander(&gateway, "127.0.0.5");
    let started = Instant::now();
    let mut admitted = Vec::new();
    let refused = loop {
        match plain_from(&gateway, "127.0.0.2") {
            Ok(session) => admitted.push(session),
            Err(error) => break error,
        }
        assert!(admitted.len() < 100, "never refused");
    };
    assert_eq!(refusal_status(&refused), 429, "{refused}");
    let admitted = admitted.len();
    assert!(
        admitted >= 5 && admitted <= most_in(5, started.elapsed()),
        "{admitted}"
    );
    assert_eq!(rejected(&gateway, "ip_connection_rate", 1.0), 1.0);
    assert!(plain_from(&gateway, "127.0.0.3").is_ok(), "another address");
    assert_served(&gateway, &mut watcher);
    std::thread::sleep(Duration::from_millis(1100));
    assert!(plain_from(&gateway, "127.0.0.2").is_ok(), "a second later");
}

#[test]
fn a_shard_starts_at_most_its_budget_of_tls_handshakes() {
    let (gateway, tls_port, certs) =
        with_tls("budget", &["--shards", "1", "--tls-handshake-rate", "5"]);
    let tls = client_config(&certs.join("ca.pem"));
    let mut watcher = bystander(&gateway, "127.0.0.5");
    let started = Instant::now();
    let established = tls_over(connect_from("127.0.0.6", tls_port), &tls).unwrap();
    let mut over_tls = Session::open(
        Box::new(established),
        &format!("wss://localhost:{tls_port}/app/{KEY}?protocol=7"),
    )
    .unwrap();
    over_tls.subscribe("bystanders");

    // From many addresses, so that only the shard's budget stands in the way.
    let flood: Vec<bool> = (0..30)
        .map(|n| tls_over(connect_from(&format!("127.0.1.{n}"), tls_port), &tls).is_ok())
        .collect();
    let done = flood.iter().filter(|done| **done).count();
    let refused = flood.len() - done;
    // The established connection took a handshake of the budget too.
    assert!(done < most_in(5, started.elapsed()), "{done} of 30 done");
    assert!(refused >= 1, "{refused} of 30 refused");
    assert_eq!(
        rejected(&gateway, "tls_handshake_rate", refused as f64),
        refused as f64
    );
    assert_served(&gateway, &mut watcher);
    assert_eq!(over_tls.next_event()["event"], "still-here");
    std::thread::sleep(Duration::from_millis(1100));
    assert!(tls_over(connect_from("127.0.0.7", tls_port), &tls).is_ok());
    // Plaintext connections are not handshakes.
    assert!(plain_from(&gateway, "127.0.0.8").is_ok());
}

#[test]
fn api_requests_past_an_apps_rate_are_answered_429() {
    let gateway = Gateway::start(&["--shards", "2", "--api-request-rate", "4"]);
    let mut watcher = bystander(&gateway, "127.0.0.5");
    watcher.subscribe("news");
    let path = format!("/apps/{}/events", common::APP_ID);
    let started = Instant::now();
    let mut published = 0;
    loop {
        let body = serde_json::json!({"name": "story", "channel": "news", "data": published});
        let (status, answer) = gateway.api("POST", &path, &[], &body.to_string());
        if status == 429 {
            break;
        }
        assert_eq!(status, 200, "{answer}");
        published += 1;
        assert!(published < 100, "never limited");
    }
    assert!(
        published >= 4 && published <= most_in(4, started.elapsed()),
        "{published}"
    );
    assert_eq!(rejected(&gateway, "api_rate", 1.0), 1.0);
    assert_eq!(
        gateway.metric("gateway_http_requests_total{status=\"429\"}"),
        1.0
    );
    for n in 0..published {
        assert_eq!(watcher.next_event()["data"], n.to_string());
    }
    std::thread::sleep(Duration::from_millis(1100));
    assert_served(&gateway, &mut watcher);
}
