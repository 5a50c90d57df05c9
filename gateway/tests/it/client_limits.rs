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

#[test]
fn new_connections_per_address_per_second_are_limited() {
    let gateway = Gateway::start(&["--shards", "2", "--connection-rate-per-ip", "5"]);
    let mut watcher = bystander(&gateway, "127.0.0.5");
    let started = Instant::now();
    let attempts: Vec<_> = (0..11).map(|_| plain_from(&gateway, "127.0.0.2")).collect();
    // Within a second, the attempts span two of the gateway's seconds at most: 10 admitted at
    // most, and at least the first 5.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "too slow to test"
    );
    let refused: Vec<_> = attempts.iter().filter_map(|a| a.as_ref().err()).collect();
    let admitted = attempts.len() - refused.len();
    assert!((5..=10).contains(&admitted), "{admitted} admitted");
    assert!(refused.iter().all(|e| refusal_status(e) == 429));
    assert_eq!(
        rejected(&gateway, "ip_connection_rate", refused.len() as f64),
        refused.len() as f64
    );
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
    let established = tls_over(connect_from("127.0.0.6", tls_port), &tls).unwrap();
    let mut over_tls = Session::open(
        Box::new(established),
        &format!("wss://localhost:{tls_port}/app/{KEY}?protocol=7"),
    )
    .unwrap();
    over_tls.subscribe("bystanders");

    let flood: Vec<bool> = (0..20)
        .map(|n| tls_over(connect_from(&format!("127.0.1.{n}"), tls_port), &tls).is_ok())
        .collect();
    let refused = flood.iter().filter(|done| !**done).count();
    assert!(refused >= 10, "{refused} of 20 refused");
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
    let answers: Vec<(u16, usize)> = (0..10)
        .map(|n| {
            let body =
                serde_json::json!({"name": "story", "channel": "news", "data": n.to_string()});
            (gateway.api("POST", &path, &[], &body.to_string()).0, n)
        })
        .collect();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "too slow to test"
    );
    let published: Vec<usize> = answers.iter().filter(|a| a.0 == 200).map(|a| a.1).collect();
    let limited = answers.iter().filter(|a| a.0 == 429).count();
    assert_eq!(published.len() + limited, 10, "{answers:?}");
    assert!((4..=8).contains(&published.len()), "{answers:?}");
    assert_eq!(
        rejected(&gateway, "api_rate", limited as f64),
        limited as f64
    );
    assert_eq!(
        gateway.metric("gateway_http_requests_total{status=\"429\"}"),
        limited as f64
    );
    for n in published {
        assert_eq!(watcher.next_event()["data"], n.to_string());
    }
    std::thread::sleep(Duration::from_millis(1100));
    assert_served(&gateway, &mut watcher);
}
