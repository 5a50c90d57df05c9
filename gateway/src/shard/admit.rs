//! Between accepting a connection and reading its first request: the PROXY header on listeners
//! that expect one, then the limits of the client's address and the shard's TLS handshake
//! budget. A refused connection gets no task of its own and nothing of it is read, but for the
//! PROXY header that says who it is.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;
use rustls::ServerConfig;

use super::transport::{TlsSession, Transport};
use super::{http, io, OpenSocket, Shard};
use crate::admin::stats::{Labelled, Rejection};
use crate::http::Response;
use crate::limits::IpRefusal;
use crate::proxy::{self, Parsed, ProxyError};

/// Most bytes read and dropped from a refused connection before it closes: what the client sent
/// already would otherwise turn the close into a reset that can destroy the answer.
const DRAIN_ON_REFUSAL: usize = 4096;

/// Serves a connection from `client` on its own task, or refuses it. `pending` holds what came
/// after a PROXY header.
pub fn start(
    shard: &Rc<Shard>,
    stream: TcpStream,
    client: IpAddr,
    tls: Option<&Arc<ServerConfig>>,
    mut open: OpenSocket,
    pending: Vec<u8>,
) {
    if let Err(reason) = admit(shard, client, tls.is_some(), &mut open) {
        tracing::debug!(shard = shard.index, %client, reason = reason.label(), "connection refused");
        shard.reject(reason);
        // On the TLS port an answer would take the handshake being refused.
        if tls.is_none() {
            refuse(shard, &stream);
        }
        return;
    }
    tune(shard, &stream);
    let transport = match tls {
        None => Transport::Plain,
        Some(config) => match TlsSession::new(config.clone()) {
            Ok(session) => Transport::Tls(Box::new(session)),
            Err(error) => {
                tracing::warn!(shard = shard.index, %error, "cannot start a TLS session");
                return;
            }
        },
    };
    monoio::spawn(http::serve(shard.clone(), stream, transport, open, pending));
}

/// Socket options of an admitted connection; a refused one is spared the calls.
fn tune(shard: &Shard, stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let send_buffer = shard.node.config.send_buffer_bytes;
    if send_buffer > 0 {
        if let Err(error) = io::set_send_buffer(stream.as_raw_fd(), send_buffer) {
            tracing::debug!(shard = shard.index, %error, "cannot cap the send buffer");
        }
    }
}

/// Counts the connection against its client's address, then against the shard's handshake
/// budget; or says which limit refuses it. Checked in that order so that a few addresses
/// flooding the port are stopped by their own limits before they spend the budget of everyone.
fn admit(shard: &Shard, client: IpAddr, tls: bool, open: &mut OpenSocket) -> Result<(), Rejection> {
    let node = &shard.node;
    if let Some(limits) = &node.ip_limits {
        open.1 = limits
            .admit(client, node.second())
            .map_err(|refusal| match refusal {
                IpRefusal::Connections => Rejection::IpConnections,
                IpRefusal::Rate => Rejection::IpConnectionRate,
            })?;
    }
    if tls {
        if let Some(budget) = shard.handshakes.borrow_mut().as_mut() {
            if !budget.admit(shard.started.elapsed()) {
                return Err(Rejection::TlsHandshakeRate);
            }
        }
    }
    Ok(())
}

/// Answers 429 in one try, without reading the request, and closes: a refused connection must
/// cost no more than its accept. Browsers and pusher-js see a failed upgrade and wait before the
/// next attempt (pusher-js: its 15 s strategy timeout, doubling to 60 s).
fn refuse(shard: &Shard, stream: &TcpStream) {
    let response = Response::text(429, "too many connections from this address")
        .with_header("Retry-After", "1");
    let fd = stream.as_raw_fd();
    if io::send_some(fd, &response.to_bytes(false)).is_ok() {
        shard.stats().http_status(response.status);
        io::shutdown_write(fd);
    }
    let mut sink = [0u8; 1024];
    let mut left = DRAIN_ON_REFUSAL;
    while left > 0 {
        match io::recv(fd, &mut sink) {
            Ok(n) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

/// Reads the PROXY header of a connection from a trusted proxy within `head_timeout`, then
/// starts it as its client's; refuses it when the header is late or malformed.
pub async fn proxied(
    shard: Rc<Shard>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    open: OpenSocket,
) {
    let limit = Duration::from_secs(shard.node.config.head_timeout);
    let (client, pending) = match monoio::time::timeout(limit, read_header(&stream)).await {
        Ok(Ok((source, pending))) => (source.map_or(peer.ip(), |s| s.ip()), pending),
        Ok(Err(HeaderFailure::Closed)) => return,
        Ok(Err(HeaderFailure::Refused(error))) => {
            tracing::debug!(shard = shard.index, %peer, %error, "PROXY header refused");
            return shard.reject(Rejection::ProxyBadHeader);
        }
        Err(_) => return shard.reject(Rejection::ProxyTimeout),
    };
    start(&shard, stream, client, tls.as_ref(), open, pending);
}

/// Why no PROXY header was read.
enum HeaderFailure {
    Closed,
    Refused(ProxyError),
}

/// Reads until the PROXY header is whole. Returns the client it names, if any, and the bytes that
/// came after it, which belong to the TLS handshake or the first request.
async fn read_header(stream: &TcpStream) -> Result<(Option<SocketAddr>, Vec<u8>), HeaderFailure> {
    let fd = stream.as_raw_fd();
    let mut buf = Vec::new();
    loop {
        // Bounded by the parser: at MAX_HEADER bytes it has answered one way or the other.
        let room = proxy::MAX_HEADER - buf.len();
        match io::recv_into(stream, fd, &mut buf, room).await {
            Ok(0) | Err(_) => return Err(HeaderFailure::Closed),
            Ok(_) => {}
        }
        match proxy::parse(&buf).map_err(HeaderFailure::Refused)? {
            Parsed::Incomplete => {}
            Parsed::Header { len, source } => {
                buf.drain(..len);
                return Ok((source, buf));
            }
        }
    }
}
