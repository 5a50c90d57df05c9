//! Clients from other loopback addresses (127.0.0.2, 127.0.0.3, ...), which the gateway sees as
//! other clients, over any stream: plain, TLS, or after a PROXY header.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// A byte stream a WebSocket can run over.
pub trait Duplex: Read + Write {}

impl<T: Read + Write> Duplex for T {}

pub type AnyStream = Box<dyn Duplex>;

/// A TCP connection to the loopback `port` from the loopback address `source`.
pub fn connect_from(source: &str, port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// A Pusher session over any stream.
pub struct Session {
    pub socket: WebSocket<AnyStream>,
    pub socket_id: String,
}

impl Session {
    /// Upgrades `stream` (`url` gives the path and Host) and reads connection_established; the
    /// error is the upgrade's (an HTTP refusal, or the connection closed).
    pub fn open(stream: AnyStream, url: &str) -> Result<Session, tungstenite::Error> {
        let (socket, _) = tungstenite::client(url, stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(error) => error,
            tungstenite::HandshakeError::Interrupted(_) => {
                tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
            }
        })?;
        let mut session = Session {
            socket,
            socket_id: String::new(),
        };
        let established = session.next_event();
        assert_eq!(established["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
        session.socket_id = data["socket_id"].as_str().unwrap().to_string();
        Ok(session)
    }

    pub fn next_event(&mut self) -> Value {
        loop {
            match self.socket.read().expect("an event arrives") {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    pub fn subscribe(&mut self, channel: &str) {
        let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": channel}});
        self.socket
            .send(Message::text(subscribe.to_string()))
            .unwrap();
        assert_eq!(
            self.next_event()["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
}

/// The HTTP status a refused upgrade got, or 0 when the connection ended without one.
pub fn refusal_status(error: &tungstenite::Error) -> u16 {
    match error {
        tungstenite::Error::Http(response) => response.status().as_u16(),
        _ => 0,
    }
}
