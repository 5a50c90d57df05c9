//! A Pusher Channels client connection: upgrade, `pusher:connection_established`, subscriptions,
//! pings, and the events that arrive.

use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::cause::FailureCause;
use crate::net::ClientStream;
use crate::target::{Expect, Url, UrlError};
use crate::tls::{TlsSetupError, TlsTarget};

/// Pusher frames are small. tungstenite allocates its read buffer eagerly per connection, and
/// its 128 KiB default would cost 2.5 GiB at 20,000 connections; 2 KiB still takes a burst of
/// fanout messages per read.
const READ_BUFFER_BYTES: usize = 2048;
/// The server's answer to the upgrade request is a short head; more than this is not one.
const MAX_UPGRADE_RESPONSE_BYTES: usize = 8192;
/// Larger than the 10 KiB event data limit plus the envelope; anything bigger is a server bug.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Used when `connection_established` carries no activity timeout (the protocol's default).
const DEFAULT_ACTIVITY_TIMEOUT: Duration = Duration::from_secs(120);

/// What a worker needs to rebuild the endpoint in its own process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetSettings {
    pub url: String,
    pub ca: Option<PathBuf>,
    pub insecure: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// A resolved WebSocket target, shared by every connection of a worker.
pub struct Endpoint {
    /// The Host header.
    authority: String,
    path_and_query: String,
    address: SocketAddr,
    tls: Option<TlsTarget>,
}

impl Endpoint {
    pub fn new(settings: &TargetSettings) -> Result<Self, EndpointError> {
        let url = Url::parse(&settings.url, Expect::WebSocket)?;
        let tls = if url.scheme.is_tls() {
            Some(TlsTarget::new(
                &url.host,
                settings.ca.as_deref(),
                settings.insecure,
            )?)
        } else {
            None
        };
        Ok(Endpoint {
            address: url.resolve()?,
            authority: url.authority(),
            path_and_query: url.path_and_query.clone(),
            tls,
        })
    }
}

/// A server-to-client Pusher event, borrowing from the frame it came in.
#[derive(Debug, Deserialize)]
pub struct ServerEvent<'a> {
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    #[serde(borrow, default)]
    pub channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

impl<'a> ServerEvent<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// `data` decoded, when it is a JSON string (how servers send every event but
    /// `pusher:error`).
    pub fn data_string(&self) -> Option<Cow<'a, str>> {
        self.data
            .and_then(|raw| serde_json::from_str::<Cow<'a, str>>(raw.get()).ok())
    }

    /// `data` as a JSON value, whether it holds the object itself or a string of it.
    fn data_object(&self) -> Option<serde_json::Value> {
        let raw = self.data?;
        match self.data_string() {
            Some(text) => serde_json::from_str(&text).ok(),
            None => serde_json::from_str(raw.get()).ok(),
        }
    }

    /// The `code` of a `pusher:error`, or the `status` of a `pusher:subscription_error`.
    fn numbered_field(&self, field: &str) -> Option<u16> {
        self.data_object()?.get(field)?.as_u64()?.try_into().ok()
    }

    /// A string field of `data`, such as the `type` of a `pusher:subscription_error`.
    pub fn text_field(&self, field: &str) -> Option<String> {
        Some(self.data_object()?.get(field)?.as_str()?.to_string())
    }
}

/// An open, established Pusher connection.
pub struct PusherSocket {
    stream: WebSocketStream<ClientStream>,
}

pub struct Opened {
    pub socket: PusherSocket,
    /// TCP connect.
    pub connect_time: Duration,
    /// TLS, WebSocket upgrade and `pusher:connection_established`.
    pub handshake_time: Duration,
    pub activity_timeout: Duration,
}

#[derive(Deserialize)]
struct Established {
    activity_timeout: Option<u64>,
}

/// The WebSocket upgrade, done here rather than by tungstenite's client handshake because that
/// one leaves its 4 KiB handshake buffer behind as the connection's read buffer for good.
async fn upgrade(
    mut stream: ClientStream,
    endpoint: &Endpoint,
) -> Result<WebSocketStream<ClientStream>, FailureCause> {
    let key = generate_key();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        endpoint.path_and_query, endpoint.authority
    );
    let io_failure = |error: std::io::Error| FailureCause::from_io(&error);
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_failure)?;
    stream.flush().await.map_err(io_failure)?;
    let mut received = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let read = stream.read(&mut chunk).await.map_err(io_failure)?;
        if read == 0 {
            return Err(FailureCause::EndOfStream);
        }
        received.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head_length = match response.parse(&received) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if received.len() < MAX_UPGRADE_RESPONSE_BYTES => {
                continue
            }
            _ => return Err(FailureCause::Protocol),
        };
        match response.code {
            Some(101) => {}
            Some(status) => return Err(FailureCause::HttpStatus(status)),
            None => return Err(FailureCause::Protocol),
        }
        let accept = response
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|header| header.value);
        if accept != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
            return Err(FailureCause::Protocol);
        }
        // Frames that came with the head, in an exact-size Vec: tungstenite builds the
        // connection's read buffer on it, which then stays at READ_BUFFER_BYTES.
        let early_frames = received[head_length..].to_vec();
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        return Ok(WebSocketStream::from_partially_read(
            stream,
            early_frames,
            Role::Client,
            Some(config),
        )
        .await);
    }
}

impl PusherSocket {
    pub async fn open(
        endpoint: &Endpoint,
        source: Option<IpAddr>,
        step_timeout: Duration,
    ) -> Result<Opened, FailureCause> {
        let started = Instant::now();
        let tcp = ClientStream::connect_tcp(endpoint.address, source, step_timeout).await?;
        let connected = Instant::now();
        let handshake = async {
            let stream = ClientStream::wrap(tcp, endpoint.tls.as_ref()).await?;
            let mut socket = PusherSocket {
                stream: upgrade(stream, endpoint).await?,
            };
            let activity_timeout = socket.await_established().await?;
            Ok::<_, FailureCause>((socket, activity_timeout))
        };
        let (socket, activity_timeout) = timeout(step_timeout, handshake)
            .await
            .map_err(|_| FailureCause::Timeout)??;
        Ok(Opened {
            socket,
            connect_time: connected - started,
            handshake_time: connected.elapsed(),
            activity_timeout,
        })
    }

    async fn await_established(&mut self) -> Result<Duration, FailureCause> {
        let text = self.next_text().await?;
        let event = ServerEvent::parse(&text).ok_or(FailureCause::UnexpectedMessage)?;
        match event.event.as_ref() {
            "pusher:connection_established" => {
                let seconds = event
                    .data_string()
                    .and_then(|data| serde_json::from_str::<Established>(&data).ok())
                    .and_then(|established| established.activity_timeout);
                Ok(seconds.map_or(DEFAULT_ACTIVITY_TIMEOUT, Duration::from_secs))
            }
            "pusher:error" => Err(FailureCause::PusherError(event.numbered_field("code"))),
            _ => Err(FailureCause::UnexpectedMessage),
        }
    }

    /// The next text frame. WebSocket pings are answered by tungstenite as frames are read.
    pub async fn next_text(&mut self) -> Result<Utf8Bytes, FailureCause> {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text),
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Err(FailureCause::CloseCode(u16::from(frame.code)))
                }
                Some(Ok(Message::Close(None))) => return Err(FailureCause::CloseWithoutCode),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(FailureCause::from_websocket(&error)),
                None => return Err(FailureCause::EndOfStream),
            }
        }
    }

    async fn send_text(&mut self, text: String) -> Result<(), FailureCause> {
        self.stream
            .send(Message::text(text))
            .await
            .map_err(|error| FailureCause::from_websocket(&error))
    }

    /// The client side of Pusher liveness: sent after `activity_timeout` of silence.
    pub async fn ping(&mut self) -> Result<(), FailureCause> {
        self.send_text(r#"{"event":"pusher:ping","data":{}}"#.into())
            .await
    }

    /// Answers the server's `pusher:ping`; returns whether the event was one.
    pub async fn answer_ping(&mut self, event: &ServerEvent<'_>) -> Result<bool, FailureCause> {
        if event.event != "pusher:ping" {
            return Ok(false);
        }
        self.send_text(r#"{"event":"pusher:pong","data":{}}"#.into())
            .await?;
        Ok(true)
    }

    /// Asks to subscribe to a public channel, without waiting for the answer.
    pub async fn send_subscribe(&mut self, channel: &str) -> Result<(), FailureCause> {
        let request =
            serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}});
        self.send_text(request.to_string()).await
    }

    /// Subscribes to a public channel and waits for `pusher_internal:subscription_succeeded`.
    pub async fn subscribe(
        &mut self,
        channel: &str,
        step_timeout: Duration,
    ) -> Result<(), FailureCause> {
        self.send_subscribe(channel).await?;
        let awaited = async {
            loop {
                let text = self.next_text().await?;
                let Some(event) = ServerEvent::parse(&text) else {
                    return Err(FailureCause::UnexpectedMessage);
                };
                if self.answer_ping(&event).await? {
                    continue;
                }
                let for_channel = event.channel.as_deref() == Some(channel);
                match event.event.as_ref() {
                    "pusher_internal:subscription_succeeded" if for_channel => return Ok(()),
                    "pusher:subscription_error" => {
                        return Err(FailureCause::SubscriptionError(
                            event.numbered_field("status"),
                        ))
                    }
                    "pusher:error" => {
                        return Err(FailureCause::PusherError(event.numbered_field("code")))
                    }
                    _ => continue,
                }
            }
        };
        timeout(step_timeout, awaited)
            .await
            .map_err(|_| FailureCause::Timeout)?
    }

    /// The connection under the WebSocket, for a client that writes its own bytes from here on.
    /// Only what the server sent after the frames read so far is left to read on it.
    pub fn into_stream(self) -> ClientStream {
        self.stream.into_inner()
    }

    /// Sends a normal close and waits up to `wait` for the server's close frame, so that the
    /// server sees an orderly disconnect. Fails when the server does not complete the close.
    ///
    /// Boxed: callers are futures that live as long as their connection, and would otherwise
    /// carry this rarely used state for all that time.
    pub fn close(self, wait: Duration) -> Pin<Box<impl Future<Output = Result<(), FailureCause>>>> {
        Box::pin(self.close_and_await_answer(wait))
    }

    async fn close_and_await_answer(mut self, wait: Duration) -> Result<(), FailureCause> {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: Utf8Bytes::from_static(""),
        };
        self.stream
            .close(Some(frame))
            .await
            .map_err(|error| FailureCause::from_websocket(&error))?;
        let answered = async {
            loop {
                match self.stream.next().await {
                    Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return Err(FailureCause::from_websocket(&error)),
                    None => return Err(FailureCause::EndOfStream),
                }
            }
        };
        timeout(wait, answered)
            .await
            .map_err(|_| FailureCause::Timeout)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_data_is_decoded() {
        let text = r#"{"event":"e","channel":"c","data":"{\"seq\":3}"}"#;
        let event = ServerEvent::parse(text).expect("parses");
        assert_eq!(event.channel.as_deref(), Some("c"));
        assert_eq!(event.data_string().as_deref(), Some(r#"{"seq":3}"#));
    }

    #[test]
    fn error_codes_are_read_from_objects_and_strings() {
        let object = r#"{"event":"pusher:error","data":{"code":4301,"message":"slow down"}}"#;
        let event = ServerEvent::parse(object).expect("parses");
        assert_eq!(event.numbered_field("code"), Some(4301));
        let string = r#"{"event":"pusher:subscription_error","channel":"x","data":"{\"type\":\"AuthError\",\"status\":401}"}"#;
        let event = ServerEvent::parse(string).expect("parses");
        assert_eq!(event.numbered_field("status"), Some(401));
        assert_eq!(event.text_field("type").as_deref(), Some("AuthError"));
        assert_eq!(event.text_field("status"), None);
    }
}
