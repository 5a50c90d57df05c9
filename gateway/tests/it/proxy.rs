//! The PROXY protocol on the listeners: the client a header names is the one per-address limits
//! count, on the plaintext and TLS ports, with headers written by hand and with a real HAProxy in
//! front; headers from untrusted sources, malformed or late ones are refused and counted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::haproxy::HaProxy;
use crate::common::net::{connect_from, refusal_status, AnyStream, Session};
use crate::common::tls::{certificates, client_config, tls_over};
use crate::common::{self, free_port, parse_response, Gateway, KEY};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn v1(source: &str) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    let to = if source.is_ipv4() { "127.0.0.1" } else { "::1" };
    let (ip, port) = (source.ip(), source.port());
    format!("PROXY {family} {ip} {to} {port} 6001\r\n").into_bytes()
}

/// A v2 PROXY header for a TCP/IPv4 client.
fn v2(source: &str) -> Vec<u8> {
    let source: std::net::SocketAddrV4 = source.parse().unwrap();
    let mut header = V2_SIGNATURE.to_vec();
    header.extend([0x21, 0x11, 0, 12]);
    header.extend(source.ip().octets());
    header.extend([127, 0, 0, 1]);
    header.extend(source.port().to_be_bytes());
    header.extend(6001u16.to_be_bytes());
    header
}

/// A v2 LOCAL header, as a load balancer's health checks send.
fn v2_local() -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend([0x20, 0x00, 0, 0]);
    header
}

/// A connection from 127.0.0.1 that starts with `header`.
fn with_header(port: u16, header: &[u8]) -> TcpStream {
    let mut stream = connect_from("127.0.0.1", port);
    stream.write_all(header).unwrap();
    stream
}

/// A Pusher session on the plaintext port after `header`.
fn plain(gateway: &Gateway, header: &[u8]) -> Result<Session, tungstenite::Error> {
    let stream = with_header(gateway.port, header);
    Session::open(Box::new(stream), &gateway.url(KEY))
}

/// A Pusher session over TLS after `header`.
fn tls(port: u16, ca: &std::path::Path, header: &[u8]) -> Result<Session, tungstenite::Error> {
    let stream = tls_over(with_header(port, header), &client_config(ca))?;
    let url = format!("wss://localhost:{port}/app/{KEY}?protocol=7");
    Session::open(Box::new(stream), &url)
}

/// Publishes over `stream` (already past its PROXY header, if any); returns the status.
fn publish_over(mut stream: impl Read + Write, channel: &str, data: &str) -> u16 {
    let body = serde_json::json!({"name": "news", "channel": channel, "data": data});
    let path = format!("/apps/{}/events", common::APP_ID);
    let request = common::signed_request("POST", &path, &[], &body.to_string(), common::now_secs());
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    parse_response(&String::from_utf8_lossy(&response)).0
}

/// Whether the gateway closed the connection without a byte of answer.
fn closed_unanswered(mut stream: TcpStream) -> bool {
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => answer.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn rejected(gateway: &Gateway, reason: &str) -> f64 {
    gateway.metric(&format!("gateway_rejected_total{{reason=\"{reason}\"}}"))
}

#[test]
fn the_client_a_header_names_is_the_one_limits_count() {
    let certs = certificates("proxy-direct");
    let tls_port = free_port().to_string();
    let (chain, key) = (certs.join("chain.pem"), certs.join("key.pem"));
    let gateway = Gateway::start(&[
        "--shards",
        "2",
        "--tls-port",
        &tls_port,
        "--tls-cert",
        chain.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--proxy-protocol",
        "both",
        "--proxy-trusted",
        "127.0.0.1/32,::1",
        "--max-connections-per-ip",
        "1",
    ]);
    let (tls_port, ca) = (tls_port.parse().unwrap(), certs.join("ca.pem"));
    let mut sessions = Vec::new();
    // Every connection comes from 127.0.0.1, but each counts as the client its header names.
    sessions.push(plain(&gateway, &v1("198.51.100.7:5000")).unwrap());
    let refused = plain(&gateway, &v2("198.51.100.7:5001"))
        .err()
        .expect("a second one");
    assert_eq!(refusal_status(&refused), 429, "{refused}");
    sessions.push(tls(tls_port, &ca, &v2("198.51.100.8:5000")).unwrap());
    assert!(
        tls(tls_port, &ca, &v1("198.51.100.8:5001")).is_err(),
        "a second one"
    );
    sessions.push(plain(&gateway, &v1("[2001:db8::1]:5000")).unwrap());
    // LOCAL: the proxy's own connection, counted as 127.0.0.1.
    sessions.push(plain(&gateway, &v2_local()).unwrap());
    assert_eq!(
        gateway.wait_metric("gateway_rejected_total{reason=\"ip_connections\"}", 2.0),
        2.0
    );

    for session in &mut sessions {
        session.subscribe("news");
    }
    let stream = with_header(gateway.port, &v1("203.0.113.1:7000"));
    assert_eq!(publish_over(stream, "news", "hello"), 200);
    for session in &mut sessions {
        assert_eq!(session.next_event()["data"], "hello");
    }
    for reason in ["proxy_untrusted", "proxy_bad_header", "proxy_timeout"] {
        assert_eq!(rejected(&gateway, reason), 0.0, "{reason}");
    }
}

#[test]
fn untrusted_malformed_and_late_headers_are_refused() {
    let gateway = Gateway::start(&[
        "--proxy-protocol",
        "plain",
        "--proxy-trusted",
        "127.0.0.1",
        "--head-timeout",
        "1",
    ]);
    let mut watcher = plain(&gateway, &v1("198.51.100.1:1000")).unwrap();
    watcher.subscribe("bystanders");

    // A valid header from 127.0.0.2, which is not trusted: closed unread (so soon that writing
    // may already fail).
    let mut untrusted = connect_from("127.0.0.2", gateway.port);
    let mut request = v1("198.51.100.2:1000");
    request.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
    let _ = untrusted.write_all(&request);
    assert!(closed_unanswered(untrusted));
    assert_eq!(
        gateway.wait_metric("gateway_rejected_total{reason=\"proxy_untrusted\"}", 1.0),
        1.0
    );

    // No header, a bad one, and one that declares more than is ever read.
    let mut oversized = V2_SIGNATURE.to_vec();
    oversized.extend([0x21, 0x11, 0xea, 0x60]);
    let bad: [&[u8]; 3] = [
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROXY TCP4 198.51.100.3 127.0.0.1 99999 6001\r\n",
        &oversized,
    ];
    for header in bad {
        assert!(closed_unanswered(with_header(gateway.port, header)));
    }
    assert_eq!(
        gateway.wait_metric("gateway_rejected_total{reason=\"proxy_bad_header\"}", 3.0),
        3.0
    );

    // Half a header, then nothing: closed once head_timeout has passed.
    let started = Instant::now();
    assert!(closed_unanswered(with_header(
        gateway.port,
        b"PROXY TCP4 198.51."
    )));
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        gateway.wait_metric("gateway_rejected_total{reason=\"proxy_timeout\"}", 1.0),
        1.0
    );

    let stream = with_header(gateway.port, &v1("203.0.113.1:7000"));
    assert_eq!(publish_over(stream, "bystanders", "still here"), 200);
    assert_eq!(watcher.next_event()["data"], "still here");
}

/// HAProxy's frontends: name, whether the gateway's TLS port is behind it, the server options.
const FRONTENDS: [(&str, bool, &str); 4] = [
    ("plain_v1", false, "send-proxy"),
    // Health checks send a v2 LOCAL header.
    ("plain_v2", false, "send-proxy-v2 check inter 500"),
    ("tls_v1", true, "send-proxy"),
    ("tls_v2", true, "send-proxy-v2"),
];

fn haproxy_config(ports: &[u16], gateway_port: u16, tls_port: u16) -> String {
    let mut config = String::new();
    for ((name, tls, options), port) in FRONTENDS.iter().zip(ports) {
        let to = if *tls { tls_port } else { gateway_port };
        config += &format!(
            "frontend {name}\n    bind 127.0.0.1:{port}\n    default_backend {name}\n\n\
             backend {name}\n    server gateway 127.0.0.1:{to} {options}\n\n"
        );
    }
    config
}

#[test]
fn behind_haproxy_each_client_counts_as_its_own_address() {
    if !HaProxy::available("behind_haproxy_each_client_counts_as_its_own_address") {
        return;
    }
    let certs = certificates("haproxy");
    let tls_port = free_port();
    let (chain, key) = (certs.join("chain.pem"), certs.join("key.pem"));
    let gateway = Gateway::start(&[
        "--shards",
        "2",
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert",
        chain.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--proxy-protocol",
        "both",
        "--proxy-trusted",
        "127.0.0.1/32",
        "--max-connections-per-ip",
        "1",
    ]);
    let ports: Vec<u16> = FRONTENDS.iter().map(|_| free_port()).collect();
    let _haproxy = HaProxy::start(&haproxy_config(&ports, gateway.port, tls_port), &ports);
    let ca = client_config(&certs.join("ca.pem"));
    let open = |frontend: usize, source: &str| -> Result<Session, tungstenite::Error> {
        let tcp = connect_from(source, ports[frontend]);
        let (stream, scheme): (AnyStream, &str) = match FRONTENDS[frontend].1 {
            true => (Box::new(tls_over(tcp, &ca)?), "wss"),
            false => (Box::new(tcp), "ws"),
        };
        let url = format!(
            "{scheme}://localhost:{}/app/{KEY}?protocol=7",
            ports[frontend]
        );
        Session::open(stream, &url)
    };

    // HAProxy connects to the gateway from 127.0.0.1 each time; a limit of one connection per
    // address still lets one client from each address in, and only one.
    let mut sessions = Vec::new();
    for (frontend, (name, tls, _)) in FRONTENDS.iter().enumerate() {
        let source = format!("127.0.0.{}", 10 + frontend);
        let mut session = open(frontend, &source).unwrap_or_else(|e| panic!("{name}: {e}"));
        session.subscribe("through-haproxy");
        sessions.push(session);
        let refused = open(frontend, &source).err().expect("a second connection");
        if !tls {
            assert_eq!(refusal_status(&refused), 429, "{name}: {refused}");
        }
    }
    let refusals = gateway.wait_metric("gateway_rejected_total{reason=\"ip_connections\"}", 4.0);
    assert_eq!(refusals, 4.0);

    let publisher = connect_from("127.0.0.20", ports[0]);
    assert_eq!(publish_over(publisher, "through-haproxy", "seen"), 200);
    for session in &mut sessions {
        assert_eq!(session.next_event()["data"], "seen");
    }
    // A client that sends its own header straight to the gateway is not trusted.
    let mut forger = connect_from("127.0.0.2", gateway.port);
    let _ = forger.write_all(&v2("203.0.113.9:1"));
    assert!(closed_unanswered(forger));
    assert_eq!(rejected(&gateway, "proxy_untrusted"), 1.0);
    for reason in ["proxy_bad_header", "proxy_timeout"] {
        assert_eq!(rejected(&gateway, reason), 0.0, "{reason}");
    }
}
