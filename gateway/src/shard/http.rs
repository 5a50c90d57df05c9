//! The first bytes of every connection: the request head, then either a WebSocket session or
//! HTTP API requests on a keep-alive connection.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use monoio::net::TcpStream;

use super::session;
use super::transport::{HandshakeFailure, Transport};
use super::{pause, Conn, OpenSocket, Scope, Shard};
use crate::admin::stats::{self, Rejection, TlsFailure};
use crate::bus::ShardMessage;
use crate::http::api::{self, ApiError, Route};
use crate::http::{HeadError, RequestHead, Response};
use crate::node::COUNTS_PER_SLICE;
use crate::protocol::message;
use crate::pusher::{Core, Publish};
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
    // One try and no linger: the socket is one more than the node's limit, and a flood of them
    // must not hold descriptors. A fresh socket's buffer takes the short answer whole.
    let fd = stream.as_raw_fd();
    if super::io::send_some(fd, &response.to_bytes(false)).is_ok() {
        shard.stats().http_status(response.status);
        super::io::shutdown_write(fd);
    }
}

/// Serves one accepted connection until it closes. `pending` holds its first bytes when a PROXY
/// header came before them.
pub async fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    mut transport: Transport,
    open: OpenSocket,
    mut pending: Vec<u8>,
) {
    if transport.is_tls() {
        let first = std::mem::take(&mut pending);
        match Box::pin(handshake(&shard, &stream, &mut transport, first)).await {
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
        let Some((head, head_len)) =
            next_request(&shard, &stream, &mut transport, &mut pending, head_timeout).await
        else {
            return;
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

/// Reads the next request head within `limit`. When there is none (the client closed, sent
/// something that is not a request, or took too long), answers what the failure calls for,
/// counts it, and returns nothing: the connection ends.
async fn next_request(
    shard: &Shard,
    stream: &TcpStream,
    transport: &mut Transport,
    pending: &mut Vec<u8>,
    limit: Duration,
) -> Option<(RequestHead, usize)> {
    let read = monoio::time::timeout(limit, read_request(stream, transport, pending)).await;
    match read {
        Ok(Ok(found)) => return Some(found),
        Ok(Err(ReadFailure::Closed)) => {
            if transport.ends_with_alert() {
                let _ = Box::pin(transport.linger_close(stream, &[], shard.response_time())).await;
            }
        }
        Ok(Err(ReadFailure::TlsRecord)) => tls_record_failed(shard, stream, transport).await,
        Err(_) => shard.reject(Rejection::HeadTimeout),
        Ok(Err(ReadFailure::Head(error))) => {
            shard.reject(match error {
                HeadError::TooLarge(_) => Rejection::HeadTooLarge,
                _ => Rejection::BadRequest,
            });
            let response = Response::text(error.status(), error.to_string());
            Box::pin(respond(shard, stream, transport, &response, false)).await;
        }
    }
    None
}

/// Runs the TLS handshake within its time limit, counting how it ends. Returns the application
/// data that came with it, or nothing when it failed.
async fn handshake(
    shard: &Shard,
    stream: &TcpStream,
    transport: &mut Transport,
    first: Vec<u8>,
) -> Option<Vec<u8>> {
    let limit = Duration::from_secs(shard.node.config.tls_handshake_timeout);
    let stats = shard.stats();
    let failure = match monoio::time::timeout(limit, transport.handshake(stream, first)).await {
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
        let _ = transport
            .linger_close(stream, &[], shard.response_time())
            .await;
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
    let body = match read_body(shard, stream, transport, head, pending, timeout).await {
        Ok(body) => body,
        Err(BodyFailure::Refused(response)) => {
            respond(shard, stream, transport, &response, false).await;
            return false;
        }
        Err(BodyFailure::TlsRecord) => {
            tls_record_failed(shard, stream, transport).await;
            return false;
        }
        Err(BodyFailure::Closed) => return false,
    };
    let response = answer(shard, route, head, &body).await;
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

/// Reads the body the head announces, holding it against the node's input budget while it
/// arrives. On failure returns the response to close with.
async fn read_body(
    shard: &Shard,
    stream: &TcpStream,
    transport: &mut Transport,
    head: &RequestHead,
    pending: &mut Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, BodyFailure> {
    let length = head.content_length;
    let limit = shard.node.config.max_request_body_bytes;
    if length > limit {
        shard.reject(Rejection::BodyTooLarge);
        let response = Response::text(413, format!("request body larger than {limit} bytes"));
        return Err(BodyFailure::Refused(response));
    }
    let missing = length.saturating_sub(pending.len());
    let budget = &shard.node.input_budget;
    if !budget.reserve(missing) {
        shard.reject(Rejection::InputBudget);
        let response = Response::text(503, "too many requests are arriving at once; try again")
            .with_header("Retry-After", "1");
        return Err(BodyFailure::Refused(response));
    }
    // Exactly what the body needs: growing by doubling would hold up to twice it.
    pending.reserve_exact(missing);
    let fill = async {
        while pending.len() < length {
            let want = (length - pending.len()).min(64 * 1024);
            match transport.read_some(stream, pending, want).await {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(BodyFailure::TlsRecord)
                }
                _ => return Err(BodyFailure::Closed),
            }
        }
        Ok(pending.drain(..length).collect())
    };
    let read = monoio::time::timeout(timeout, fill).await;
    budget.release(missing);
    match read {
        Ok(read) => read,
        Err(_) => {
            shard.reject(Rejection::BodyTimeout);
            let response = Response::text(408, "request body not complete in time");
            Err(BodyFailure::Refused(response))
        }
    }
}

/// Why a request body was not read whole.
enum BodyFailure {
    /// Answered with this, then closed.
    Refused(Response),
    /// The client closed before the end.
    Closed,
    /// A TLS record broke the protocol; the alert that says so waits to be sent.
    TlsRecord,
}

/// Counts a TLS record that broke the protocol, and ends the connection with its alert.
async fn tls_record_failed(shard: &Shard, stream: &TcpStream, transport: &mut Transport) {
    stats::add(&shard.stats().tls_record_errors, 1);
    let _ = Box::pin(transport.linger_close(stream, &[], shard.response_time())).await;
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
    widen_send_buffer(shard, stream, bytes.len());
    let written = if keep_alive {
        transport
            .write_within(stream, &bytes, shard.response_time())
            .await
    } else {
        // A clean end (close_notify on TLS, then FIN), so the client knows nothing was cut off,
        // that reaches a client still sending its request.
        transport
            .linger_close(stream, &bytes, shard.response_time())
            .await
    };
    count_slow_reader(shard, &written);
    keep_alive && written.is_ok()
}

/// Most send buffer a large response gets.
const LARGE_RESPONSE_BUFFER: usize = 1024 * 1024;

/// Gives a response larger than the capped send buffer (`send_buffer_bytes`, sized for idle and
/// slow WebSocket clients) a buffer that fits it, up to 1 MiB: a connection moves at most one
/// buffer per round trip, and on loopback (64 KiB segments) a one-segment buffer waits for the
/// peer's delayed acknowledgement each time (a 7.5 MB channel listing took 4 s instead of 0.2).
fn widen_send_buffer(shard: &Shard, stream: &TcpStream, len: usize) {
    let capped = shard.node.config.send_buffer_bytes;
    if capped == 0 || len <= capped {
        return;
    }
    let wanted = len.min(LARGE_RESPONSE_BUFFER);
    if let Err(error) = super::io::set_send_buffer(stream.as_raw_fd(), wanted) {
        tracing::debug!(shard = shard.index, %error, "cannot widen the send buffer");
    }
}

/// Counts a response the client did not take within its time.
pub(super) fn count_slow_reader(shard: &Shard, written: &std::io::Result<()>) {
    if written
        .as_ref()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
    {
        shard.reject(Rejection::ResponseTimeout);
    }
}

async fn answer(shard: &Shard, route: &Route, head: &RequestHead, body: &[u8]) -> Response {
    let outcome = match route {
        Route::Health => return Response::json(200, shard.node.health()),
        Route::NotFound | Route::Client { .. } => {
            Err(ApiError::not_found(format!("no route for {}", head.path())))
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
            shard.reject(error.reason);
            Response::text(error.status, error.message)
        }
    }
}

/// An authenticated API request, as each route's handler gets it.
struct ApiRequest<'a> {
    shard: &'a Shard,
    app: usize,
    params: api::Params,
    body: &'a [u8],
}

async fn api_call(
    shard: &Shard,
    route: &Route,
    head: &RequestHead,
    body: &[u8],
) -> Result<String, ApiError> {
    let app_id = route
        .app_id()
        .ok_or_else(|| ApiError::not_found("not an API route"))?;
    let request = authenticate(shard, app_id, head, body)?;
    // Counted once signed, so that nobody without the secret can spend an app's rate.
    if !shard.node.api_rates.admit(request.app, shard.node.second()) {
        return Err(ApiError::rate_limited());
    }
    match route {
        Route::Events { .. } => publish_event(&request).await,
        Route::BatchEvents { .. } => publish_batch(&request).await,
        Route::Channels { .. } => list_channels(&request).await,
        Route::Channel { channel, .. } => channel_info(&request, channel).await,
        Route::ChannelUsers { channel, .. } => channel_users(&request, channel),
        Route::TerminateConnections { user_id, .. } => terminate_connections(&request, user_id),
        Route::Client { .. } | Route::Health | Route::NotFound => {
            Err(ApiError::not_found("not an API route"))
        }
    }
}

/// Finds the app and checks the request's signature.
fn authenticate<'a>(
    shard: &'a Shard,
    app_id: &str,
    head: &RequestHead,
    body: &'a [u8],
) -> Result<ApiRequest<'a>, ApiError> {
    let (app, config) = shard
        .node
        .config
        .app_by_id(app_id)
        .ok_or_else(|| ApiError::unknown_app(app_id))?;
    if !config.enabled {
        return Err(ApiError::app_disabled());
    }
    let params = api::parse_query(head.query());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    api::authenticate(config, &head.method, head.path(), &params, body, now)?;
    Ok(ApiRequest {
        shard,
        app,
        params,
        body,
    })
}

/// `POST /apps/{id}/events`
async fn publish_event(request: &ApiRequest<'_>) -> Result<String, ApiError> {
    let max_data = request.shard.node.config.max_event_data_bytes;
    let event = api::parse_publish(request.body, max_data)?;
    fanout_room(request.shard).await?;
    publish(request.shard, request.app, &event);
    let states = match event.info {
        Some(info) => {
            let names = boxed(&event.channels);
            channel_states(request, Scope::Named(&names), info).await?
        }
        None => BTreeMap::new(),
    };
    Ok(api::publish_response(event.info, &states))
}

/// `POST /apps/{id}/batch_events`
async fn publish_batch(request: &ApiRequest<'_>) -> Result<String, ApiError> {
    let max_data = request.shard.node.config.max_event_data_bytes;
    let events = api::parse_batch(request.body, max_data)?;
    fanout_room(request.shard).await?;
    for event in &events {
        publish(request.shard, request.app, event);
    }
    let asked: Vec<Box<str>> = events
        .iter()
        .filter(|e| e.info.is_some())
        .flat_map(|e| e.channels.iter().map(|c| c.as_str().into()))
        .collect();
    let info = events
        .iter()
        .filter_map(|e| e.info)
        .fold(api::InfoFields::default(), |all, one| api::InfoFields {
            subscription_count: all.subscription_count || one.subscription_count,
            user_count: all.user_count || one.user_count,
            cache: all.cache || one.cache,
        });
    let states = if asked.is_empty() {
        BTreeMap::new()
    } else {
        channel_states(request, Scope::Named(&asked), info).await?
    };
    Ok(api::batch_response(&events, &states))
}

/// `GET /apps/{id}/channels`. The answer may cover every channel of the app, so it is built
/// in slices with pauses between them: the shard's other clients are served meanwhile.
async fn list_channels(request: &ApiRequest<'_>) -> Result<String, ApiError> {
    let info = api::InfoFields::parse(&request.params)?;
    let mut body = api::ChannelsBody::new(&request.params)?;
    let prefix = api::prefix_filter(&request.params);
    let (shard, app) = (request.shard, request.app);
    let counts = shard.channel_counts(app, Scope::Prefix(prefix)).await?;
    let now = Instant::now();
    for (done, (name, subscriptions)) in counts.into_iter().enumerate() {
        let state = channel_state(
            &mut shard.core.borrow_mut(),
            (app, &name),
            subscriptions,
            info,
            now,
        );
        body.push(&name, &state);
        if done % COUNTS_PER_SLICE == COUNTS_PER_SLICE - 1 {
            pause().await;
        }
    }
    Ok(body.finish())
}

/// `GET /apps/{id}/channels/{channel}`
async fn channel_info(request: &ApiRequest<'_>, channel: &str) -> Result<String, ApiError> {
    let info = api::InfoFields::parse(&request.params)?;
    let names = [channel.into()];
    let states = channel_states(request, Scope::Named(&names), info).await?;
    let state = states.get(channel).cloned().unwrap_or_default();
    api::channel_response(channel, &state, &request.params)
}

/// `GET /apps/{id}/channels/{channel}/users`
fn channel_users(request: &ApiRequest<'_>, channel: &str) -> Result<String, ApiError> {
    let core = request.shard.core.borrow();
    let members = core.registry().presence(request.app, channel);
    let ids = members
        .into_iter()
        .flat_map(|p| p.roster.members().map(|(id, _)| id));
    api::users_response(channel, ids)
}

/// `POST /apps/{id}/users/{user_id}/terminate_connections`
fn terminate_connections(request: &ApiRequest<'_>, user_id: &str) -> Result<String, ApiError> {
    let (shard, app) = (request.shard, request.app);
    let user_id: Arc<str> = user_id.into();
    shard
        .to_other_shards(|| ShardMessage::TerminateUser {
            app,
            user_id: user_id.clone(),
        })
        .map_err(|_| ApiError::unavailable("a shard is overloaded; try again"))?;
    shard.core.borrow().terminate_user(app, &user_id);
    if let Some(cluster) = &shard.node.cluster {
        // This node's sockets are closed; the caller may repeat the call, which is harmless,
        // until the other nodes can be told.
        if !cluster.terminate(app, user_id) {
            return Err(ApiError::unavailable(
                "the user's connections on this node are closed, but the other nodes cannot be reached now; try again",
            ));
        }
    }
    Ok("{}".into())
}

fn boxed(names: &[String]) -> Vec<Box<str>> {
    names.iter().map(|n| n.as_str().into()).collect()
}

/// What an API answer says about some named channels: subscription counts (cluster-wide when
/// clustering is on), plus user counts and cached events from this shard's replicas (every
/// shard keeps both for the whole node).
async fn channel_states(
    request: &ApiRequest<'_>,
    scope: Scope<'_>,
    info: api::InfoFields,
) -> Result<BTreeMap<String, api::ChannelState>, ApiError> {
    let (shard, app) = (request.shard, request.app);
    let counts = shard.channel_counts(app, scope).await?;
    let mut core = shard.core.borrow_mut();
    let now = Instant::now();
    Ok(counts
        .into_iter()
        .map(|(name, subscriptions)| {
            let state = channel_state(&mut core, (app, &name), subscriptions, info, now);
            (name, state)
        })
        .collect())
}

/// One channel's state for an API answer, given its subscription count.
fn channel_state(
    core: &mut Core<Rc<Conn>>,
    (app, name): (usize, &str),
    subscriptions: u64,
    info: api::InfoFields,
    now: Instant,
) -> api::ChannelState {
    let users = core
        .registry()
        .presence(app, name)
        .map_or(0, |p| p.roster.len() as u64);
    let cached = info
        .cache
        .then(|| core.cached(app, name, now))
        .flatten()
        .and_then(|(frame, ttl)| cached_event(&frame, ttl));
    api::ChannelState {
        subscriptions,
        users,
        cached,
    }
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

/// Waits for the node's fanout to have room for a publish; 503 when it has none in time.
async fn fanout_room(shard: &Shard) -> Result<(), ApiError> {
    match shard.wait_for_fanout().await {
        true => Ok(()),
        false => Err(ApiError::fanout_backlog()),
    }
}

fn publish(shard: &Shard, app: usize, event: &api::Publish) {
    let except = event
        .socket_id
        .as_deref()
        .and_then(crate::protocol::SocketId::parse);
    let data = serde_json::Value::String(event.data.clone());
    for channel in &event.channels {
        let frame = text_frame(&message::channel_event(&event.name, channel, &data, None));
        shard.publish(Publish {
            app,
            channel,
            frame,
            except,
            cache: true,
        });
    }
}
