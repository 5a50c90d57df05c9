//! The first bytes of every connection: the request head, then either a WebSocket session or
//! HTTP API requests on a keep-alive connection.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use monoio::net::TcpStream;

use super::session;
use super::transport::{HandshakeFailure, Transport};
use super::{OpenSocket, Scope, Shard};
use crate::admin::stats::{self, Rejection, TlsFailure};
use crate::bus::ShardMessage;
use crate::http::api::{self, ApiError, Route};
use crate::http::{HeadError, RequestHead, Response};
use crate::protocol::message;
use crate::ws::frame::{text_frame, text_payload};

/// Largest request head.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long an idle keep-alive connection waits for its next request.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);

/// How reading a request ended when it did not yield one.
enum ReadFailure {
    Closed,
    Head(HeadError),
    /// A TLS record after the handshake failed authentication or broke the protocol.
    TlsRecord,
}

/// Answers 503 to a connection over the node's limit (a TLS one is closed: answering would take
/// a handshake, which is the work being refused).
pub async fn refuse_over_capacity(
    shard: Rc<Shard>,
    stream: TcpStream,
    tls: bool,
    _open: OpenSocket,
) {
    if tls {
        return;
    }
    let response = Response::text(
        503,
        "over capacity: this node holds its maximum of connections",
    )
    .with_header("Retry-After", "1");
    respond(&shard, &stream, &mut Transport::Plain, &response, false).await;
}

/// Serves one accepted connection until it closes.
pub async fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    mut transport: Transport,
    open: OpenSocket,
) {
    let mut pending = Vec::new();
    if transport.is_tls() {
        match Box::pin(handshake(&shard, &stream, &mut transport)).await {
            Some(early) => pending = early,
            None => return,
        }
    }
    let head_timeout = Duration::from_secs(shard.node.config.head_timeout);
    let mut first = true;
    loop {
        if !first && pending.is_empty() {
            // An idle keep-alive connection keeps no buffer.
            pending = Vec::new();
            match monoio::time::timeout(KEEP_ALIVE_IDLE, stream.readable(false)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        first = false;
        let read = monoio::time::timeout(
            head_timeout,
            read_request(&stream, &mut transport, &mut pending),
        )
        .await;
        let (head, head_len) = match read {
            Ok(Ok(found)) => found,
            Ok(Err(ReadFailure::Closed)) => {
                if transport.ends_with_alert() {
                    Box::pin(transport.linger_close(&stream, &[])).await;
                }
                return;
            }
            Ok(Err(ReadFailure::TlsRecord)) => {
                stats::add(&shard.stats().tls_record_errors, 1);
                Box::pin(transport.linger_close(&stream, &[])).await;
                return;
            }
            Err(_) => {
                shard.reject(Rejection::HeadTimeout);
                return;
            }
            Ok(Err(ReadFailure::Head(error))) => {
                shard.reject(match error {
                    HeadError::TooLarge(_) => Rejection::HeadTooLarge,
                    _ => Rejection::BadRequest,
                });
                let response = Response::text(error.status(), error.to_string());
                Box::pin(respond(&shard, &stream, &mut transport, &response, false)).await;
                return;
            }
        };
        pending.drain(..head_len);
        let route = Route::of(head.path());
        if let Route::Client { app_key } = route {
            // The session gets a task of its own, sized for a long idle life, instead of
            // living inside this one, which is sized for HTTP requests.
            monoio::spawn(session::upgrade(
                shard, stream, transport, head, app_key, pending, open,
            ));
            return;
        }
        // Boxed: API requests are rare next to WebSocket upgrades, and unboxed their state
        // would make every connection's first task several kilobytes.
        let more = Box::pin(api_request(
            &shard,
            &stream,
            &mut transport,
            &head,
            &route,
            &mut pending,
        ))
        .await;
        if !more {
            return;
        }
    }
}

/// Runs the TLS handshake within its time limit, counting how it ends. Returns the application
/// data that came with it, or nothing when it failed.
async fn handshake(
    shard: &Shard,
    stream: &TcpStream,
    transport: &mut Transport,
) -> Option<Vec<u8>> {
    let limit = Duration::from_secs(shard.node.config.tls_handshake_timeout);
    let stats = shard.stats();
    let failure = match monoio::time::timeout(limit, transport.handshake(stream)).await {
        Ok(Ok(early)) => {
            stats::add(&stats.tls_handshakes, 1);
            return Some(early);
        }
        Err(_) => TlsFailure::Timeout,
        Ok(Err(HandshakeFailure::PlainHttp)) => TlsFailure::PlainHttp,
        Ok(Err(HandshakeFailure::Protocol(error))) => {
            tracing::debug!(shard = shard.index, %error, "TLS handshake refused");
            TlsFailure::Protocol
        }
        Ok(Err(HandshakeFailure::Closed)) => TlsFailure::Closed,
    };
    stats.tls_failure(failure);
    if transport.ends_with_alert() {
        // The alert that says why the handshake failed reaches even a client still sending.
        transport.linger_close(stream, &[]).await;
    }
    None
}

/// Reads the body, answers one HTTP request and says whether the connection stays open.
async fn api_request(
    shard: &Shard,
    stream: &TcpStream,
    transport: &mut Transport,
    head: &RequestHead,
    route: &Route,
    pending: &mut Vec<u8>,
) -> bool {
    let timeout = Duration::from_secs(shard.node.config.head_timeout);
    let keep_alive = head.keep_alive();
    let response = match read_body(shard, stream, transport, head, pending, timeout).await {
        Ok(body) => answer(shard, route, head, &body).await,
        Err(response) => {
            respond(shard, stream, transport, &response, false).await;
            return false;
        }
    };
    respond(shard, stream, transport, &response, keep_alive).await
}

async fn read_request(
    stream: &TcpStream,
    transport: &mut Transport,
    pending: &mut Vec<u8>,
) -> Result<(RequestHead, usize), ReadFailure> {
    loop {
        if !pending.is_empty() {
            match RequestHead::parse(pending, MAX_HEAD_BYTES) {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => {}
                Err(error) => return Err(ReadFailure::Head(error)),
            }
        }
        match transport.read_some(stream, pending, 4096).await {
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(ReadFailure::TlsRecord)
            }
            Ok(0) | Err(_) => return Err(ReadFailure::Closed),
            Ok(_) => {}
        }
    }
}

/// Reads the body the head announces. On failure returns the response to close with.
async fn read_body(
    shard: &Shard,
    stream: &TcpStream,
    transport: &mut Transport,
    head: &RequestHead,
    pending: &mut Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, Response> {
    let length = head.content_length;
    let limit = shard.node.config.max_request_body_bytes;
    if length > limit {
        shard.reject(Rejection::BodyTooLarge);
        return Err(Response::text(
            413,
            format!("request body larger than {limit} bytes"),
        ));
    }
    let fill = async {
        while pending.len() < length {
            let want = (length - pending.len()).min(64 * 1024);
            if !matches!(transport.read_some(stream, pending, want).await, Ok(n) if n > 0) {
                return false;
            }
        }
        true
    };
    match monoio::time::timeout(timeout, fill).await {
        Ok(true) => Ok(pending.drain(..length).collect()),
        _ => {
            shard.reject(Rejection::HeadTimeout);
            Err(Response::text(400, "request body incomplete"))
        }
    }
}

/// Writes a response; true when the connection stays open for the next request, false when
/// the client has gone or `keep_alive` is false.
pub(super) async fn respond(
    shard: &Shard,
    stream: &TcpStream,
    transport: &mut Transport,
    response: &Response,
    keep_alive: bool,
) -> bool {
    shard.stats().http_status(response.status);
    let bytes = response.to_bytes(keep_alive);
    if keep_alive {
        return transport.write_all(stream, &bytes).await.is_ok();
    }
    // A clean end (close_notify on TLS, then FIN), so the client knows nothing was cut off, that
    // reaches a client still sending its request.
    transport.linger_close(stream, &bytes).await;
    false
}

async fn answer(shard: &Shard, route: &Route, head: &RequestHead, body: &[u8]) -> Response {
    let outcome = match route {
        Route::Health => return Response::json(200, shard.node.health()),
        Route::NotFound | Route::Client { .. } => {
            shard.reject(Rejection::NotFound);
            return Response::text(404, format!("no route for {}", head.path()));
        }
        _ if head.method != route.method() => {
            shard.reject(Rejection::BadRequest);
            return Response::text(405, format!("{} takes {}", head.path(), route.method()))
                .with_header("Allow", route.method());
        }
        _ => api_call(shard, route, head, body).await,
    };
    match outcome {
        Ok(body) => Response::json(200, body),
        Err(error) => {
            shard.reject(match error.status {
                401 => Rejection::Unauthorized,
                413 => Rejection::BodyTooLarge,
                404 => Rejection::UnknownApp,
                403 => Rejection::AppDisabled,
                _ => Rejection::BadRequest,
            });
            Response::text(error.status, error.message)
        }
    }
}

async fn api_call(
    shard: &Shard,
    route: &Route,
    head: &RequestHead,
    body: &[u8],
) -> Result<String, ApiError> {
    let app_id = route
        .app_id()
        .ok_or_else(|| ApiError::new(404, "not an API route"))?;
    let config = &shard.node.config;
    let (app_index, app) = config
        .app_by_id(app_id)
        .ok_or_else(|| ApiError::new(404, format!("unknown app id {app_id}")))?;
    if !app.enabled {
        return Err(ApiError::new(403, "app is disabled"));
    }
    let params = api::parse_query(head.query());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    api::authenticate(app, &head.method, head.path(), &params, body, now)?;
    let max_data = config.max_event_data_bytes;
    match route {
        Route::Events { .. } => {
            let event = api::parse_publish(body, max_data)?;
            publish(shard, app_index, &event);
            let states = match event.info {
                Some(info) => {
                    let names = boxed(&event.channels);
                    channel_states(shard, app_index, Scope::Named(&names), info).await?
                }
                None => BTreeMap::new(),
            };
            Ok(api::publish_response(event.info, &states))
        }
        Route::BatchEvents { .. } => {
            let events = api::parse_batch(body, max_data)?;
            for event in &events {
                publish(shard, app_index, event);
            }
            let asked: Vec<Box<str>> = events
                .iter()
                .filter(|e| e.info.is_some())
                .flat_map(|e| e.channels.iter().map(|c| c.as_str().into()))
                .collect();
            let info = events.iter().filter_map(|e| e.info).fold(
                api::InfoFields::default(),
                |all, one| api::InfoFields {
                    subscription_count: all.subscription_count || one.subscription_count,
                    user_count: all.user_count || one.user_count,
                    cache: all.cache || one.cache,
                },
            );
            let states = if asked.is_empty() {
                BTreeMap::new()
            } else {
                channel_states(shard, app_index, Scope::Named(&asked), info).await?
            };
            Ok(api::batch_response(&events, &states))
        }
        Route::Channels { .. } => {
            let info = api::InfoFields::parse(&params)?;
            let prefix = api::prefix_filter(&params);
            let states = channel_states(shard, app_index, Scope::Prefix(prefix), info).await?;
            api::channels_response(&states, &params)
        }
        Route::Channel { channel, .. } => {
            let info = api::InfoFields::parse(&params)?;
            let names = [channel.as_str().into()];
            let states = channel_states(shard, app_index, Scope::Named(&names), info).await?;
            let state = states.get(channel.as_str()).cloned().unwrap_or_default();
            api::channel_response(channel, &state, &params)
        }
        Route::ChannelUsers { channel, .. } => {
            let registry = shard.registry.borrow();
            let members = registry.presence(app_index, channel);
            let ids = members
                .into_iter()
                .flat_map(|p| p.roster.members().map(|(id, _)| id));
            api::users_response(channel, ids)
        }
        Route::TerminateConnections { user_id, .. } => {
            let user_id: Arc<str> = user_id.as_str().into();
            for (index, link) in shard.node.shards.iter().enumerate() {
                if index == shard.index {
                    continue;
                }
                let message = ShardMessage::TerminateUser {
                    app: app_index,
                    user_id: user_id.clone(),
                };
                if link.inbox.send(message).is_err() {
                    stats::add(&link.stats.inbox_drops, 1);
                    return Err(ApiError::new(503, "a shard is overloaded; try again"));
                }
            }
            shard.terminate_user(app_index, &user_id);
            if let Some(cluster) = &shard.node.cluster {
                // This node's sockets are closed; the caller may repeat the call, which is
                // harmless, until the other nodes can be told.
                if !cluster.terminate(app_index, user_id) {
                    return Err(ApiError::new(
                        503,
                        "the user's connections on this node are closed, but the other nodes cannot be reached now; try again",
                    ));
                }
            }
            Ok("{}".into())
        }
        Route::Client { .. } | Route::Health | Route::NotFound => {
            Err(ApiError::new(404, "not an API route"))
        }
    }
}

fn boxed(names: &[String]) -> Vec<Box<str>> {
    names.iter().map(|n| n.as_str().into()).collect()
}

/// What an API answer says about channels: subscription counts (cluster-wide when clustering is
/// on), plus user counts and cached events from this shard's replicas (every shard keeps both
/// for the whole node).
async fn channel_states(
    shard: &Shard,
    app: usize,
    scope: Scope<'_>,
    info: api::InfoFields,
) -> Result<BTreeMap<String, api::ChannelState>, ApiError> {
    let counts = shard.channel_counts(app, scope).await?;
    let mut registry = shard.registry.borrow_mut();
    let now = Instant::now();
    Ok(counts
        .into_iter()
        .map(|(name, subscriptions)| {
            let users = registry
                .presence(app, &name)
                .map_or(0, |p| p.roster.len() as u64);
            let cached = info
                .cache
                .then(|| registry.cached(app, &name, now))
                .flatten()
                .and_then(|(frame, ttl)| cached_event(&frame, ttl));
            let state = api::ChannelState {
                subscriptions,
                users,
                cached,
            };
            (name, state)
        })
        .collect())
}

/// A cache channel's kept frame, read back into its event name and data.
fn cached_event(frame: &[u8], ttl: Duration) -> Option<api::CachedEvent> {
    let mut event: serde_json::Value = serde_json::from_str(text_payload(frame)?).ok()?;
    Some(api::CachedEvent {
        event: event["event"].take(),
        data: event["data"].take(),
        ttl: ttl.as_secs(),
    })
}

fn publish(shard: &Shard, app: usize, event: &api::Publish) {
    let except = event
        .socket_id
        .as_deref()
        .and_then(crate::protocol::SocketId::parse);
    let data = serde_json::Value::String(event.data.clone());
    for channel in &event.channels {
        let frame = text_frame(&message::channel_event(&event.name, channel, &data, None));
        shard.publish(app, channel, frame, except, true);
    }
}
