//! Frames that arrive in pieces: split across reads, fragmented, or sent with the request head.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::raw::masked;
use crate::common::Gateway;

const UPGRADE: &str = "GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Reads until `needle` has been seen in the server's output.
fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = stream.read(&mut buf).expect("server answers in time");
        assert!(n > 0, "server closed before sending {needle}");
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn frames_split_across_reads_fragmented_or_sent_with_the_head_are_understood() {
    let gateway = Gateway::start(&[]);
    let mut stream = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let ping = masked(0x81, br#"{"event":"pusher:ping","data":{}}"#);
    let mut opening = UPGRADE.as_bytes().to_vec();
    opening.extend_from_slice(&ping);
    stream.write_all(&opening).unwrap();
    read_until(&mut stream, "pusher:pong");

    let subscribe = masked(
        0x81,
        &format!(
            r#"{{"event":"pusher:subscribe","data":{{"channel":"{}"}}}}"#,
            "a".repeat(150)
        )
        .into_bytes(),
    );
    // Each piece is read by the gateway (its byte count says so) before the next is sent.
    let mut bytes_in = gateway.metric("gateway_bytes_in_total");
    for piece in subscribe.chunks(7) {
        stream.write_all(piece).unwrap();
        bytes_in += piece.len() as f64;
        assert_eq!(
            gateway.wait_metric("gateway_bytes_in_total", bytes_in),
            bytes_in
        );
    }
    read_until(&mut stream, "subscription_succeeded");

    let message = br#"{"event":"pusher:subscribe","data":{"channel":"fragmented"}}"#;
    let (first, rest) = message.split_at(20);
    let (middle, last) = rest.split_at(15);
    // A ping after each fragment but the last: its pong says the fragment has been read.
    stream.write_all(&masked(0x01, first)).unwrap();
    stream.write_all(&masked(0x89, b"between")).unwrap();
    read_until(&mut stream, "between");
    stream.write_all(&masked(0x00, middle)).unwrap();
    stream.write_all(&masked(0x89, b"again")).unwrap();
    read_until(&mut stream, "again");
    stream.write_all(&masked(0x80, last)).unwrap();
    let answer = read_until(&mut stream, "\"fragmented\"");
    assert!(answer.contains("subscription_succeeded"));
}
