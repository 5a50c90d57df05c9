//! WebSocket frames written by hand, for what a well-behaved client library would not send.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::Gateway;

/// Opens a raw WebSocket (handshake done by hand) to send frames tungstenite would refuse to.
pub fn raw_websocket(gateway: &Gateway) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    stream
}

/// Reads server frames until a close frame; returns its code.
pub fn read_close_code(stream: &mut TcpStream) -> Option<u16> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    let mut at = 0;
    while at + 2 <= all.len() {
        let opcode = all[at] & 0x0f;
        let (len, header) = match all[at + 1] & 0x7f {
            126 => (u16::from_be_bytes([all[at + 2], all[at + 3]]) as usize, 4),
            127 => return None,
            n => (n as usize, 2),
        };
        if opcode == 0x8 && len >= 2 {
            return Some(u16::from_be_bytes([all[at + header], all[at + header + 1]]));
        }
        at += header + len;
    }
    None
}

/// A client frame (masked) with this first byte and payload.
pub fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![first];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
    );
    frame
}
