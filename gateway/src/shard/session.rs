//! A WebSocket session: the upgrade, then frames in and Pusher events out until it closes.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::conn::{Conn, Flush};
use super::http::{count_slow_reader, respond};
use super::transport::{self, TlsSession, Transport};
use super::{io, OpenSocket, Shard};
use crate::admin::stats::{self, Disconnect, Rejection};
use crate::http::api::parse_query;
use crate::http::response::switching_protocols;
use crate::http::{RequestHead, Response};
use crate::protocol::codes;
use crate::protocol::message;
use crate::pusher::requests::{self, Occupancy};
use crate::ws::frame::{close_frame, pong_frame, text_frame};
use crate::ws::{accept_upgrade, incoming, Message, WsError};

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
        app_sessions: |app| node.cluster_app_connections(app),
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
    let (id, _) = shard.core.borrow_mut().next_socket_id();
    let tls = transport.is_tls();
    let conn = Rc::new(Conn::new(id, app, stream, open, tls, shard.now()));
    shard.apply(|core| core.open(id, conn.clone(), Instant::now()));
    if !leftover.is_empty() {
        let mut leftover = leftover;
        consume(&shard, &conn, &mut leftover);
    }
    monoio::spawn(run(shard, transport, conn));
}

/// The text a close frame carries: Pusher's words where pusher-js hands them to the app.
fn close_reason(reason: Disconnect) -> &'static str {
    match reason {
        Disconnect::SigninTimeout => "Connection not authorized within timeout",
        _ => "",
    }
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
        shard.apply(|core| core.close(conn.id, reason));
        if reason == Disconnect::ClientGone {
            if transport.ends_with_alert() {
                let _ = Box::pin(transport.linger_close(stream, &[], shard.response_time())).await;
            }
            return;
        }
        let code = conn
            .close_requested()
            .map_or(codes::WS_NORMAL, |(code, _)| code);
        shard.send(&conn, close_frame(code, close_reason(reason)));
        // Boxed: the closing steps are rare, and unboxed they would grow every idle session's task.
        Box::pin(finish_close(&shard, stream, &conn, &mut transport)).await;
    }
}

/// Writes queued frames: shared bytes as they are, or encrypted for this connection.
fn flush(shard: &Shard, conn: &Rc<Conn>, transport: &mut Transport) -> std::io::Result<Flush> {
    let (flushed, written) = match transport {
        Transport::Plain => conn.flush()?,
        Transport::Tls(tls) => conn.flush_tls(tls, &mut shard.tls_scratch.borrow_mut())?,
    };
    stats::add(&shard.stats().bytes_out, written as u64);
    Ok(flushed)
}

/// Whether anything waits to be written.
fn has_output(conn: &Rc<Conn>, transport: &Transport) -> bool {
    conn.has_outbound() || matches!(transport, Transport::Tls(tls) if tls.has_outgoing())
}

/// Moves frames both ways until the session ends; returns why it ended.
async fn pump(
    shard: &Shard,
    stream: &TcpStream,
    conn: &Rc<Conn>,
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
async fn finish_close(
    shard: &Shard,
    stream: &TcpStream,
    conn: &Rc<Conn>,
    transport: &mut Transport,
) {
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
fn read(shard: &Shard, conn: &Rc<Conn>) -> bool {
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
fn read_tls(shard: &Shard, conn: &Rc<Conn>, tls: &mut TlsSession) -> bool {
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
    // A record cut by the read is input not complete yet, bounded and timed like a message.
    hold_input(shard, conn, tls.incoming_held(), false);
    true
}

/// Handles decrypted bytes: copied into the shard's scratch buffer, where frames are unmasked.
fn consume_plain(shard: &Shard, conn: &Rc<Conn>, plain: &[u8]) {
    let mut scratch = shard.scratch.borrow_mut();
    scratch[..plain.len()].copy_from_slice(plain);
    consume(shard, conn, &mut scratch[..plain.len()]);
}

/// Handles the bytes of one read, with whatever earlier reads left incomplete, and keeps what
/// this one leaves incomplete within the node's input budget.
fn consume(shard: &Shard, conn: &Rc<Conn>, bytes: &mut [u8]) {
    let mut input = conn.take_input();
    let max = shard.node.config.max_message_bytes;
    let mut completed = false;
    let fed = incoming::feed(&mut input, bytes, max, &mut |message| {
        completed = true;
        handle_frame(shard, conn, message);
        conn.close_requested().is_none()
    });
    if let Err(error) = fed {
        protocol_error(shard, conn, &error);
        input = None;
    }
    conn.keep_input(input);
    hold_input(shard, conn, 0, completed);
}

/// Holds what the connection keeps of its client's input against the node's budget, or closes
/// it with 1013 when the budget is spent.
fn hold_input(shard: &Shard, conn: &Rc<Conn>, extra: usize, restarted: bool) {
    if !conn.hold_input(extra, shard.now(), restarted, &shard.node.input_budget) {
        shard.reject(Rejection::InputBudget);
        conn.request_close(codes::WS_TRY_AGAIN_LATER, Disconnect::ProtocolError);
    }
}

fn protocol_error(shard: &Shard, conn: &Rc<Conn>, error: &WsError) {
    shard.reject(match error {
        WsError::TooBig(_) => Rejection::FrameTooBig,
        WsError::InvalidUtf8 => Rejection::InvalidUtf8,
        WsError::Protocol(_) => Rejection::ProtocolError,
    });
    conn.request_close(error.close_code(), Disconnect::ProtocolError);
}

fn handle_frame(shard: &Shard, conn: &Rc<Conn>, message: Message<'_>) {
    match message {
        Message::Text(text) => shard.client_message(conn, &text),
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
