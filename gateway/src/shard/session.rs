//! A WebSocket session: the upgrade, then frames in and Pusher events out until it closes.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use monoio::net::TcpStream;

use super::conn::{Conn, Flush, Reader};
use super::http::{count_slow_reader, respond};
use super::transport::{self, TlsSession, Transport};
use super::{io, OpenSocket, Shard};
use crate::admin::stats::{self, Disconnect, Rejection};
use crate::http::api::parse_query;
use crate::http::response::switching_protocols;
use crate::http::{RequestHead, Response};
use crate::protocol::member::{self, Member};
use crate::protocol::message::{self, ClientMessage};
use crate::protocol::{codes, ChannelKind};
use crate::pusher::requests::{self, Answer, Occupancy, Refusal, Subscription};
use crate::webhooks::{WebhookEvent, WebhookKind};
use crate::ws::frame::{close_frame, pong_frame, text_frame};
use crate::ws::{accept_upgrade, Assembler, FrameHead, Message, WsError};

/// How long a closing session may take to write what is queued, its close frame last.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Reads handled per wake-up before other connections get their turn.
const READS_PER_WAKE: usize = 4;

/// Validates the upgrade and runs the session.
pub async fn upgrade(
    shard: Rc<Shard>,
    stream: TcpStream,
    mut transport: Transport,
    head: RequestHead,
    app_key: String,
    leftover: Vec<u8>,
    open: OpenSocket,
) {
    let accept = match accept_upgrade(&head.method, |name| head.header(name)) {
        Ok(accept) => accept,
        Err(error) => {
            shard.reject(Rejection::BadUpgrade);
            let response = Response::text(error.status(), error.to_string())
                .with_header("Sec-WebSocket-Version", "13")
                .with_header("Upgrade", "websocket");
            Box::pin(respond(&shard, &stream, &mut transport, &response, false)).await;
            return;
        }
    };
    let protocol = parse_query(head.query())
        .into_iter()
        .find_map(|(k, v)| (k == "protocol").then_some(v));
    let origin = head.header("origin").map(str::to_owned);
    drop(head);
    shard.stats().http_status(101);
    let switching = switching_protocols(&accept);
    drop(accept);
    let written =
        Box::pin(transport.write_within(&stream, &switching, shard.response_time())).await;
    if written.is_err() {
        return count_slow_reader(&shard, &written);
    }
    let node = &shard.node;
    let occupancy = Occupancy {
        node_full: node.connections() >= node.max_connections as i64,
        app_sessions: |app| node.app_connections(app),
    };
    let checked = requests::connection(
        &node.config,
        &app_key,
        protocol.as_deref(),
        origin.as_deref(),
        occupancy,
    );
    drop((protocol, origin));
    let app = match checked {
        Ok(app) => app,
        Err(closing) => {
            shard.reject(closing.rejection);
            let (code, reason) = (closing.code, &closing.reason);
            let mut bytes = text_frame(&message::error(Some(code), reason)).to_vec();
            bytes.extend_from_slice(&close_frame(code, reason));
            let _ = Box::pin(transport.linger_close(&stream, &bytes, shard.response_time())).await;
            return;
        }
    };
    drop(app_key);
    // A task of its own again: this one's state is sized for the upgrade, not for idling. The
    // session starts here so that the task keeps only what waiting needs.
    let (id, socket_id) = shard.next_socket_id();
    let tls = transport.is_tls();
    let conn = Rc::new(Conn::new(id, app, stream, open, tls, shard.now()));
    shard.register(conn.clone());
    let established =
        message::connection_established(&socket_id.to_string(), shard.node.config.activity_timeout);
    shard.send(&conn, text_frame(&established));
    if !leftover.is_empty() {
        handle_bytes(&shard, &conn, leftover);
    }
    monoio::spawn(run(shard, transport, conn));
}

/// What woke a session.
enum Wake {
    Readable(std::io::Result<()>),
    Writable(std::io::Result<()>),
    Queued,
}

/// Not an `async fn`: its arguments would be stored twice in the future (once as captured, once
/// as locals), and this future lives as long as the connection.
#[expect(
    clippy::manual_async_fn,
    reason = "async fn would store the arguments twice"
)]
fn run(shard: Rc<Shard>, mut transport: Transport, conn: Rc<Conn>) -> impl Future<Output = ()> {
    async move {
        let stream = conn.stream();
        // A future of its own, so that what lives across the idle wait is only what waiting needs.
        let reason = pump(&shard, stream, &conn, &mut transport).await;
        shard.unregister(&conn, reason);
        if reason == Disconnect::ClientGone {
            if transport.ends_with_alert() {
                let _ = Box::pin(transport.linger_close(stream, &[], shard.response_time())).await;
            }
            return;
        }
        let code = conn
            .close_requested()
            .map_or(codes::WS_NORMAL, |(code, _)| code);
        shard.send(&conn, close_frame(code, ""));
        // Boxed: the closing steps are rare, and unboxed they would grow every idle session's task.
        Box::pin(finish_close(&shard, stream, &conn, &mut transport)).await;
    }
}

/// Writes queued frames: shared bytes as they are, or encrypted for this connection.
fn flush(shard: &Shard, conn: &Conn, transport: &mut Transport) -> std::io::Result<Flush> {
    let (flushed, written) = match transport {
        Transport::Plain => conn.flush()?,
        Transport::Tls(tls) => conn.flush_tls(tls, &mut shard.tls_scratch.borrow_mut())?,
    };
    stats::add(&shard.stats().bytes_out, written as u64);
    Ok(flushed)
}

/// Whether anything waits to be written.
fn has_output(conn: &Conn, transport: &Transport) -> bool {
    conn.has_outbound() || matches!(transport, Transport::Tls(tls) if tls.has_outgoing())
}

/// Moves frames both ways until the session ends; returns why it ended.
async fn pump(
    shard: &Shard,
    stream: &TcpStream,
    conn: &Conn,
    transport: &mut Transport,
) -> Disconnect {
    let mut readable = pin!(stream.readable(false));
    // Only while the socket's send buffer is full; boxed so idle sessions do not carry it.
    let mut writable = None;
    loop {
        if writable.is_none() && has_output(conn, transport) {
            match flush(shard, conn, transport) {
                Ok(Flush::Drained) => {}
                Ok(Flush::Blocked) => writable = Some(Box::pin(stream.writable(false))),
                Err(_) => return Disconnect::ClientGone,
            }
        }
        if let Some((_, reason)) = conn.close_requested() {
            return reason;
        }
        let wake = poll_fn(|cx| {
            if let Poll::Ready(result) = readable.as_mut().poll(cx) {
                return Poll::Ready(Wake::Readable(result));
            }
            if let Some(waiting) = writable.as_mut() {
                if let Poll::Ready(result) = waiting.as_mut().poll(cx) {
                    return Poll::Ready(Wake::Writable(result));
                }
            }
            if (writable.is_none() && has_output(conn, transport))
                || conn.close_requested().is_some()
            {
                return Poll::Ready(Wake::Queued);
            }
            conn.park(cx.waker());
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Readable(Ok(())) => {
                readable.set(stream.readable(false));
                let alive = match transport {
                    Transport::Plain => read(shard, conn),
                    Transport::Tls(tls) => read_tls(shard, conn, tls),
                };
                if !alive {
                    return Disconnect::ClientGone;
                }
            }
            Wake::Writable(Ok(())) => writable = None,
            Wake::Readable(Err(_)) | Wake::Writable(Err(_)) => return Disconnect::ClientGone,
            Wake::Queued => {}
        }
    }
}

/// Writes what is queued (ending with the close frame), then lingers for the client's close.
async fn finish_close(shard: &Shard, stream: &TcpStream, conn: &Conn, transport: &mut Transport) {
    let finish = async {
        loop {
            match flush(shard, conn, transport) {
                Ok(Flush::Drained) => return true,
                Ok(Flush::Blocked) => {
                    if stream.writable(false).await.is_err() {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    };
    if matches!(monoio::time::timeout(CLOSE_LINGER, finish).await, Ok(true)) {
        let _ = transport
            .linger_close(stream, &[], shard.response_time())
            .await;
    }
}

/// Reads what the socket has into the shard's scratch buffer and handles every whole frame.
/// False when the client has gone.
fn read(shard: &Shard, conn: &Conn) -> bool {
    let mut scratch = shard.scratch.borrow_mut();
    for _ in 0..READS_PER_WAKE {
        let n = match io::recv(conn.fd(), &mut scratch) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        stats::add(&shard.stats().bytes_in, n as u64);
        conn.touch(shard.now());
        consume(shard, conn, &mut scratch[..n]);
        if conn.close_requested().is_some() || n < scratch.len() {
            return true;
        }
    }
    true
}

/// Reads ciphertext into the shard's TLS buffer, decrypts it and handles the frames inside.
/// False when the client has gone or broke the TLS protocol.
fn read_tls(shard: &Shard, conn: &Conn, tls: &mut TlsSession) -> bool {
    let mut cipher = shard.tls_scratch.borrow_mut();
    cipher.clear();
    cipher.extend_from_slice(&tls.take_incoming());
    for _ in 0..READS_PER_WAKE {
        let n = match io::recv_appending(conn.fd(), &mut cipher, super::SCRATCH_BYTES) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        stats::add(&shard.stats().bytes_in, n as u64);
        conn.touch(shard.now());
        let used = match tls.absorb(&mut cipher, &mut |plain| consume_plain(shard, conn, plain)) {
            Ok(used) => used,
            Err(error) => {
                let error = transport::refuse(conn.fd(), tls, error);
                tracing::debug!(shard = shard.index, %error, "TLS connection broke the protocol");
                stats::add(&shard.stats().tls_record_errors, 1);
                return false;
            }
        };
        cipher.drain(..used);
        if tls.peer_closed() {
            return false;
        }
        if conn.close_requested().is_some() || n < super::SCRATCH_BYTES {
            break;
        }
    }
    if !cipher.is_empty() {
        tls.keep_incoming(&cipher);
    }
    true
}

/// Handles decrypted bytes: copied into the shard's scratch buffer, where frames are unmasked.
fn consume_plain(shard: &Shard, conn: &Conn, plain: &[u8]) {
    let mut scratch = shard.scratch.borrow_mut();
    scratch[..plain.len()].copy_from_slice(plain);
    consume(shard, conn, &mut scratch[..plain.len()]);
}

/// Handles the bytes of one read, with whatever an earlier read left incomplete.
fn consume(shard: &Shard, conn: &Conn, bytes: &mut [u8]) {
    match conn.reader.take() {
        None => {
            let mut assembler = Assembler::default();
            let used = process(shard, conn, bytes, &mut assembler);
            if used < bytes.len() || !assembler.is_idle() {
                conn.reader.set(Some(Box::new(Reader {
                    carry: bytes[used..].to_vec(),
                    assembler,
                })));
            }
        }
        Some(mut reader) => {
            reader.carry.extend_from_slice(bytes);
            conn.reader.set(Some(reader));
            read_carried(shard, conn);
        }
    }
}

/// Handles bytes that arrived with the request head.
fn handle_bytes(shard: &Shard, conn: &Conn, bytes: Vec<u8>) {
    conn.reader.set(Some(Box::new(Reader {
        carry: bytes,
        assembler: Assembler::default(),
    })));
    read_carried(shard, conn);
}

/// Handles the whole frames among the bytes carried over from earlier reads, and lets the
/// reader go once nothing is in flight: an idle connection keeps no buffer.
fn read_carried(shard: &Shard, conn: &Conn) {
    let Some(mut reader) = conn.reader.take() else {
        return;
    };
    let Reader { carry, assembler } = &mut *reader;
    let used = process(shard, conn, carry, assembler);
    carry.drain(..used);
    if !carry.is_empty() || !assembler.is_idle() {
        conn.reader.set(Some(reader));
    }
}

/// Decodes and handles the whole frames at the start of `buf`; returns the bytes used.
fn process(shard: &Shard, conn: &Conn, buf: &mut [u8], assembler: &mut Assembler) -> usize {
    let max = shard.node.config.max_message_bytes;
    let mut used = 0;
    while used < buf.len() && conn.close_requested().is_none() {
        let head = match FrameHead::decode(&mut buf[used..], max) {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(error) => {
                protocol_error(shard, conn, &error);
                break;
            }
        };
        let payload = &buf[used + head.header_len..used + head.frame_len()];
        used += head.frame_len();
        match assembler.push(head, payload, max) {
            Ok(Some(message)) => handle_frame(shard, conn, message),
            Ok(None) => {}
            Err(error) => protocol_error(shard, conn, &error),
        }
    }
    used
}

fn protocol_error(shard: &Shard, conn: &Conn, error: &WsError) {
    shard.reject(match error {
        WsError::TooBig(_) => Rejection::FrameTooBig,
        WsError::InvalidUtf8 => Rejection::InvalidUtf8,
        WsError::Protocol(_) => Rejection::ProtocolError,
    });
    conn.request_close(error.close_code(), Disconnect::ProtocolError);
}

fn handle_frame(shard: &Shard, conn: &Conn, message: Message<'_>) {
    match message {
        Message::Text(text) => {
            stats::add(&shard.stats().messages_in, 1);
            handle_event(shard, conn, &text);
        }
        Message::Binary => {
            shard.reject(Rejection::BinaryFrame);
            conn.request_close(codes::WS_UNSUPPORTED_DATA, Disconnect::ProtocolError);
        }
        Message::Ping(payload) => {
            shard.send(conn, pong_frame(payload));
        }
        Message::Pong => {}
        Message::Close(code) => {
            conn.request_close(code.unwrap_or(codes::WS_NORMAL), Disconnect::ClientClose)
        }
    }
}

fn send_error(shard: &Shard, conn: &Conn, code: Option<u16>, text: &str) {
    shard.send(conn, text_frame(&message::error(code, text)));
}

fn handle_event(shard: &Shard, conn: &Conn, text: &str) {
    match ClientMessage::parse(text) {
        Err(error) => {
            shard.reject(Rejection::BadMessage);
            send_error(shard, conn, None, &error.to_string());
        }
        Ok(ClientMessage::Ping) => {
            shard.send(conn, shard.pong.clone());
        }
        Ok(ClientMessage::Pong) => {}
        Ok(ClientMessage::Subscribe {
            channel,
            auth,
            channel_data,
        }) => subscribe(
            shard,
            conn,
            &channel,
            auth.as_deref(),
            channel_data.as_deref(),
        ),
        Ok(ClientMessage::Unsubscribe { channel }) => {
            shard.remove_subscriber(conn, &channel);
            conn.subscriptions.borrow_mut().retain(|c| **c != *channel);
        }
        Ok(ClientMessage::Signin { auth, user_data }) => signin(shard, conn, &auth, &user_data),
        Ok(ClientMessage::ClientEvent {
            event,
            channel,
            data,
        }) => client_event(shard, conn, &event, &channel, &data),
        Ok(ClientMessage::Unsupported { event }) => {
            shard.reject(Rejection::UnsupportedEvent);
            send_error(shard, conn, None, &format!("unsupported event {event}"));
        }
    }
}

/// Tells the client why its request was refused, and counts it.
fn refuse(shard: &Shard, conn: &Conn, channel: &str, refusal: &Refusal) {
    shard.reject(refusal.rejection);
    match refusal.answer {
        Answer::SubscriptionError { kind, status } => {
            let error = message::subscription_error(channel, kind, &refusal.reason, status);
            shard.send(conn, text_frame(&error));
            send_error(shard, conn, Some(codes::UNAUTHORIZED), &refusal.reason);
        }
        Answer::Error(code) => send_error(shard, conn, code, &refusal.reason),
    }
}

/// The user a socket signed in as, as a presence member.
fn signed_in_member(shard: &Shard, conn: &Conn) -> Option<Member> {
    let registry = shard.registry.borrow();
    let user = registry.users(conn.app).signed_in(conn.id)?;
    Some(Member {
        user_id: user.user_id.to_string(),
        user_info: user.user_info.clone(),
    })
}

fn subscribe(shard: &Shard, conn: &Conn, name: &str, auth: Option<&str>, data: Option<&str>) {
    let app = &shard.node.config.apps[conn.app];
    let socket_id = shard.socket_id(conn).to_string();
    let signed_in = signed_in_member(shard, conn);
    let subscription = requests::subscription(app, &socket_id, name, (auth, data), signed_in);
    let presence = match subscription {
        Err(refusal) => return refuse(shard, conn, name, &refusal),
        Ok(Subscription::OwnUserChannel) => {
            shard.send(conn, text_frame(&message::subscription_succeeded(name)));
            return;
        }
        Ok(Subscription::Channel) => false,
        Ok(Subscription::Presence(member)) => {
            if let Err(full) = shard.join_presence(conn, name, &member) {
                return refuse(shard, conn, name, &requests::presence_full(name, &full));
            }
            true
        }
    };
    shard.add_subscriber(conn, name);
    let succeeded = if presence {
        let registry = shard.registry.borrow();
        let members = registry
            .presence(conn.app, name)
            .map(|p| p.roster.members());
        message::presence_subscription_succeeded(name, members.into_iter().flatten())
    } else {
        message::subscription_succeeded(name)
    };
    shard.send(conn, text_frame(&succeeded));
    if ChannelKind::of(name).is_cache() {
        replay_cached(shard, conn, name);
    }
}

/// Sends a cache channel's last event to a new subscriber, or tells it there is none.
fn replay_cached(shard: &Shard, conn: &Conn, name: &str) {
    let cached = shard
        .registry
        .borrow_mut()
        .cached(conn.app, name, std::time::Instant::now());
    match cached {
        Some((frame, _)) => {
            shard.send(conn, frame);
        }
        None => {
            shard.send(conn, text_frame(&message::cache_miss(name)));
            shard.webhook(conn.app, WebhookKind::CacheMiss, || {
                WebhookEvent::CacheMiss {
                    channel: name.into(),
                }
            });
        }
    }
}

fn signin(shard: &Shard, conn: &Conn, auth: &str, user_data: &str) {
    let app = &shard.node.config.apps[conn.app];
    let socket_id = shard.socket_id(conn).to_string();
    let user = match requests::signin(app, &socket_id, auth, user_data) {
        Ok(user) => user,
        Err(refusal) => return refuse(shard, conn, "", &refusal),
    };
    let truncated = user.watchlist_truncated;
    let watchlist = match shard.sign_in(conn, user) {
        Ok(watchlist) => watchlist,
        Err(error) => {
            shard.reject(Rejection::AlreadySignedIn);
            return send_error(shard, conn, Some(codes::UNAUTHORIZED), &error.to_string());
        }
    };
    shard.send(conn, text_frame(&message::signin_success(user_data)));
    if truncated {
        shard.reject(Rejection::WatchlistTooLong);
        let reason = format!(
            "the watchlist holds more than {} user ids; only the first {} are watched",
            member::MAX_WATCHLIST,
            member::MAX_WATCHLIST
        );
        send_error(shard, conn, Some(codes::WATCHLIST_TOO_LONG), &reason);
    }
    if let Some(frame) = watchlist {
        shard.send(conn, frame);
    }
}

fn client_event(shard: &Shard, conn: &Conn, event: &str, name: &str, data: &serde_json::Value) {
    let config = &shard.node.config;
    let app = &config.apps[conn.app];
    let kind = ChannelKind::of(name);
    if let Err(refusal) = requests::client_event(app, name, conn.is_subscribed(name)) {
        return refuse(shard, conn, name, &refusal);
    }
    let rate = app.client_event_rate.unwrap_or(config.client_event_rate);
    if !conn.allow_client_event(shard.now(), rate) {
        shard.reject(Rejection::ClientEventRate);
        let reason = format!("more than {rate} client events per second");
        return send_error(shard, conn, Some(codes::CLIENT_EVENT_RATE_LIMIT), &reason);
    }
    // On presence channels the others learn who sent it.
    let user_id: Option<Box<str>> = kind
        .is_presence()
        .then(|| {
            let registry = shard.registry.borrow();
            registry
                .presence(conn.app, name)
                .and_then(|p| p.user_of(conn.id))
                .map(Into::into)
        })
        .flatten();
    let frame = text_frame(&message::channel_event(
        event,
        name,
        data,
        user_id.as_deref(),
    ));
    shard.publish(conn.app, name, frame, Some(shard.socket_id(conn)), false);
    shard.webhook(conn.app, WebhookKind::ClientEvent, || {
        WebhookEvent::ClientEvent {
            channel: name.into(),
            event: event.into(),
            data: match data {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            },
            socket_id: shard.socket_id(conn).to_string(),
            user_id,
        }
    });
}
