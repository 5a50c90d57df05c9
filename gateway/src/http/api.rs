//! The Pusher HTTP API: routes, request authentication and bodies, and JSON answers.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::admin::stats::Rejection;
use crate::config::App;
use crate::protocol::{channel, message, signature, ChannelKind};

/// How far `auth_timestamp` may stray from the server's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;
/// Channels one publish may name.
pub const MAX_CHANNELS_PER_PUBLISH: usize = 100;
/// Events one batch may carry.
pub const MAX_BATCH: usize = 10;

/// An API request refused: its status, the reason it is counted under, and a message for the
/// caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub reason: Rejection,
    pub message: String,
}

impl ApiError {
    fn new(status: u16, reason: Rejection, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            reason,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, Rejection::BadRequest, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(401, Rejection::Unauthorized, message)
    }

    pub fn app_disabled() -> ApiError {
        ApiError::new(403, Rejection::AppDisabled, "app is disabled")
    }

    pub fn unknown_app(app_id: &str) -> ApiError {
        ApiError::new(
            404,
            Rejection::UnknownApp,
            format!("unknown app id {app_id}"),
        )
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, Rejection::NotFound, message)
    }

    /// Pusher's status for an app over its request rate.
    pub fn rate_limited() -> ApiError {
        ApiError::new(
            429,
            Rejection::ApiRate,
            "too many requests for this app; try again in a second",
        )
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(413, Rejection::BodyTooLarge, message)
    }

    /// The node's fanout stayed behind for as long as a publish waits for it (see
    /// `Shard::wait_for_fanout`); the caller may try again.
    pub fn fanout_backlog() -> ApiError {
        ApiError::new(
            503,
            Rejection::FanoutBacklog,
            "the node cannot deliver publishes as fast as they come; try again",
        )
    }

    /// The node cannot answer now (a shard or the cluster is out of reach); the caller may try
    /// again.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, Rejection::Unavailable, message)
    }
}

/// Where a request goes, from its path alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/app/{key}`: a WebSocket client.
    Client {
        app_key: String,
    },
    Events {
        app_id: String,
    },
    BatchEvents {
        app_id: String,
    },
    Channels {
        app_id: String,
    },
    Channel {
        app_id: String,
        channel: String,
    },
    ChannelUsers {
        app_id: String,
        channel: String,
    },
    TerminateConnections {
        app_id: String,
        user_id: String,
    },
    Health,
    NotFound,
}

impl Route {
    /// Routes a request path (without its query).
    pub fn of(path: &str) -> Route {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["app", key] if !key.is_empty() => Route::Client {
                app_key: decode(key),
            },
            ["apps", id, "events"] => Route::Events { app_id: decode(id) },
            ["apps", id, "batch_events"] => Route::BatchEvents { app_id: decode(id) },
            ["apps", id, "channels"] => Route::Channels { app_id: decode(id) },
            ["apps", id, "channels", name] => Route::Channel {
                app_id: decode(id),
                channel: decode(name),
            },
            ["apps", id, "channels", name, "users"] => Route::ChannelUsers {
                app_id: decode(id),
                channel: decode(name),
            },
            ["apps", id, "users", user, "terminate_connections"] if !user.is_empty() => {
                Route::TerminateConnections {
                    app_id: decode(id),
                    user_id: decode(user),
                }
            }
            ["health"] => Route::Health,
            _ => Route::NotFound,
        }
    }

    /// The app an API route names.
    pub fn app_id(&self) -> Option<&str> {
        match self {
            Route::Events { app_id }
            | Route::BatchEvents { app_id }
            | Route::Channels { app_id }
            | Route::Channel { app_id, .. }
            | Route::ChannelUsers { app_id, .. }
            | Route::TerminateConnections { app_id, .. } => Some(app_id),
            Route::Client { .. } | Route::Health | Route::NotFound => None,
        }
    }

    /// The method the route answers to.
    pub fn method(&self) -> &'static str {
        match self {
            Route::Events { .. }
            | Route::BatchEvents { .. }
            | Route::TerminateConnections { .. } => "POST",
            _ => "GET",
        }
    }
}

/// Query parameters, decoded.
pub type Params = Vec<(String, String)>;

/// Decodes a query string.
pub fn parse_query(query: &str) -> Params {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Checks a request's signature, key, timestamp and body digest.
pub fn authenticate(
    app: &App,
    method: &str,
    path: &str,
    params: &Params,
    body: &[u8],
    now_secs: u64,
) -> Result<(), ApiError> {
    let unauthorized = |message: String| ApiError::unauthorized(message);
    match param(params, "auth_key") {
        Some(key) if key == app.key => {}
        Some(key) => {
            return Err(unauthorized(format!(
                "Unknown auth_key: {key:?} is not this app's key"
            )))
        }
        None => return Err(unauthorized("Missing auth_key".into())),
    }
    let timestamp: u64 = param(params, "auth_timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| unauthorized("Missing auth_timestamp, or not a number of seconds".into()))?;
    if timestamp.abs_diff(now_secs) > MAX_CLOCK_SKEW_SECS {
        return Err(unauthorized(format!(
            "Timestamp expired: given timestamp ({timestamp}) not within {MAX_CLOCK_SKEW_SECS}s of server time ({now_secs})"
        )));
    }
    if let Some(version) = param(params, "auth_version").filter(|v| *v != "1.0") {
        return Err(unauthorized(format!(
            "Unsupported auth_version {version:?}: only 1.0 is"
        )));
    }
    // The official Python SDK sends the empty body's digest on GET requests too: accept it.
    let digest = signature::body_md5(body);
    match param(params, "body_md5") {
        Some(md5) if md5 != digest => {
            return Err(unauthorized(format!(
                "Invalid body_md5: the {} bytes received hash to {digest}, but you sent {md5:?}",
                body.len()
            )))
        }
        None if !body.is_empty() => return Err(unauthorized("Missing body_md5".into())),
        _ => {}
    }
    let signature = param(params, "auth_signature")
        .ok_or_else(|| unauthorized("Missing auth_signature".into()))?;
    let to_sign = signature::api_string_to_sign(
        method,
        path,
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if signature::verify(&app.secret, &to_sign, signature) {
        return Ok(());
    }
    // Pusher's own answer: the string the signature covers, so that a client can see which part
    // it signed differently (never the secret).
    Err(unauthorized(format!(
        "Invalid signature: you should have sent HmacSHA256Hex({to_sign:?}, your_secret_key), but you sent {signature:?}"
    )))
}

/// An event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub name: String,
    /// The event's data, as the string subscribers receive.
    pub data: String,
    pub channels: Vec<String>,
    /// The socket that must not receive it (the one that caused it).
    pub socket_id: Option<String>,
    /// The channel attributes to answer with, when asked for.
    pub info: Option<InfoFields>,
}

#[derive(Deserialize)]
struct RawPublish {
    name: Option<String>,
    data: Option<Value>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    socket_id: Option<String>,
    info: Option<String>,
}

#[derive(Deserialize)]
struct RawBatch {
    batch: Vec<RawPublish>,
}

fn check_publish(raw: RawPublish, max_data: usize) -> Result<Publish, ApiError> {
    let bad = |message: &str| ApiError::bad_request(message);
    let name = raw.name.ok_or_else(|| bad("name is missing"))?;
    if name.is_empty() || !message::event_name_fits(&name) {
        return Err(bad("name must be 1 to 200 characters"));
    }
    let data = match raw.data {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => return Err(bad("data is missing")),
    };
    if data.len() > max_data {
        return Err(ApiError::too_large(format!(
            "The data content of this event exceeds the allowed maximum ({max_data} bytes)"
        )));
    }
    let channels = match (raw.channel, raw.channels) {
        (Some(one), None) => vec![one],
        (None, Some(many)) => many,
        (Some(_), Some(_)) => return Err(bad("give channel or channels, not both")),
        (None, None) => return Err(bad("channel or channels is missing")),
    };
    if channels.is_empty() || channels.len() > MAX_CHANNELS_PER_PUBLISH {
        return Err(bad("channels must name 1 to 100 channels"));
    }
    for name in &channels {
        channel::validate_publish_name(name).map_err(|e| bad(&format!("channel {name:?}: {e}")))?;
    }
    let info = raw
        .info
        .as_deref()
        .map(InfoFields::parse_list)
        .transpose()?;
    Ok(Publish {
        name,
        data,
        channels,
        socket_id: raw.socket_id,
        info,
    })
}

/// Parses a `POST /apps/{id}/events` body.
pub fn parse_publish(body: &[u8], max_data: usize) -> Result<Publish, ApiError> {
    let raw: RawPublish = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not a valid event: {e}")))?;
    check_publish(raw, max_data)
}

/// Parses a `POST /apps/{id}/batch_events` body.
pub fn parse_batch(body: &[u8], max_data: usize) -> Result<Vec<Publish>, ApiError> {
    let raw: RawBatch = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not a valid batch: {e}")))?;
    if raw.batch.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch holds at most {MAX_BATCH} events"
        )));
    }
    raw.batch
        .into_iter()
        .map(|event| check_publish(event, max_data))
        .collect()
}

/// The answer to a publish: `{}`, or with `info`, the attributes of each channel published to.
pub fn publish_response(
    info: Option<InfoFields>,
    states: &BTreeMap<String, ChannelState>,
) -> String {
    let Some(info) = info else {
        return "{}".into();
    };
    let channels: Map<String, Value> = states
        .iter()
        .map(|(name, state)| (name.clone(), attributes(info, name, state)))
        .collect();
    json!({ "channels": channels }).to_string()
}

/// The answer to a batch: per event, `{}` or the attributes of its channel when it asked.
pub fn batch_response(events: &[Publish], states: &BTreeMap<String, ChannelState>) -> String {
    let answers: Vec<Value> = events
        .iter()
        .map(|event| {
            let channel = event.channels.first().map_or("", String::as_str);
            match (event.info, states.get(channel)) {
                (Some(info), Some(state)) => attributes(info, channel, state),
                _ => json!({}),
            }
        })
        .collect();
    json!({ "batch": answers }).to_string()
}

/// Which attributes a channel query asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InfoFields {
    pub subscription_count: bool,
    pub user_count: bool,
    pub cache: bool,
}

impl InfoFields {
    /// The `info` query parameter.
    pub fn parse(params: &Params) -> Result<InfoFields, ApiError> {
        InfoFields::parse_list(param(params, "info").unwrap_or(""))
    }

    /// A comma-separated list of attributes.
    pub fn parse_list(list: &str) -> Result<InfoFields, ApiError> {
        let mut fields = InfoFields::default();
        for attribute in list.split(',').map(str::trim) {
            match attribute {
                "" => {}
                "cache" => fields.cache = true,
                "subscription_count" => fields.subscription_count = true,
                "user_count" => fields.user_count = true,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown info attribute {other:?}"
                    )))
                }
            }
        }
        Ok(fields)
    }
}

/// The last event a cache channel holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedEvent {
    pub event: Value,
    pub data: Value,
    /// Seconds it stays cached.
    pub ttl: u64,
}

/// What the gateway knows about a channel, node-wide.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelState {
    /// Sockets subscribed.
    pub subscriptions: u64,
    /// Distinct users, on presence channels.
    pub users: u64,
    pub cached: Option<CachedEvent>,
}

/// The `filter_by_prefix` of a channels query; empty when there is none.
pub fn prefix_filter(params: &Params) -> &str {
    param(params, "filter_by_prefix").unwrap_or("")
}

/// `GET /apps/{id}/channels`: occupied channels, filtered by prefix.
pub fn channels_response(
    states: &BTreeMap<String, ChannelState>,
    params: &Params,
) -> Result<String, ApiError> {
    let mut body = ChannelsBody::new(params)?;
    for (name, state) in states {
        body.push(name, state);
    }
    Ok(body.finish())
}

/// The body of `GET /apps/{id}/channels`, written channel by channel (in name order), so that
/// a long one can be written in slices.
#[derive(Debug)]
pub struct ChannelsBody {
    info: InfoFields,
    prefix: String,
    out: String,
    empty: bool,
}

impl ChannelsBody {
    /// Checks the query's fields; a listing of user counts must be of presence channels.
    pub fn new(params: &Params) -> Result<ChannelsBody, ApiError> {
        let prefix = prefix_filter(params);
        let info = InfoFields::parse(params)?;
        if info.user_count && !prefix.starts_with("presence-") {
            return Err(ApiError::bad_request(
                "user_count needs filter_by_prefix=presence-",
            ));
        }
        Ok(ChannelsBody {
            info,
            prefix: prefix.to_owned(),
            out: String::from("{\"channels\":{"),
            empty: true,
        })
    }

    /// Adds a channel, unless its name is outside the prefix.
    pub fn push(&mut self, name: &str, state: &ChannelState) {
        if !name.starts_with(&self.prefix) {
            return;
        }
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        self.out.push_str(&Value::from(name).to_string());
        self.out.push(':');
        self.out
            .push_str(&attributes(self.info, name, state).to_string());
    }

    pub fn finish(mut self) -> String {
        self.out.push_str("}}");
        self.out
    }
}

/// `GET /apps/{id}/channels/{name}`.
pub fn channel_response(
    channel: &str,
    state: &ChannelState,
    params: &Params,
) -> Result<String, ApiError> {
    let info = InfoFields::parse(params)?;
    let kind = ChannelKind::of(channel);
    if info.user_count && !kind.is_presence() {
        return Err(ApiError::bad_request(
            "user_count is only for presence channels",
        ));
    }
    if info.cache && !kind.is_cache() {
        return Err(ApiError::bad_request("cache is only for cache channels"));
    }
    let mut body = attributes(info, channel, state);
    body["occupied"] = Value::Bool(state.subscriptions > 0);
    Ok(body.to_string())
}

/// The attributes asked for that apply to the channel.
fn attributes(info: InfoFields, channel: &str, state: &ChannelState) -> Value {
    let kind = ChannelKind::of(channel);
    let mut attributes = json!({});
    if info.subscription_count {
        attributes["subscription_count"] = json!(state.subscriptions);
    }
    if info.user_count && kind.is_presence() {
        attributes["user_count"] = json!(state.users);
    }
    if let Some(cached) = state.cached.as_ref().filter(|_| info.cache) {
        attributes["cache"] =
            json!({"event": cached.event, "data": cached.data, "ttl": cached.ttl});
    }
    attributes
}

/// `GET /apps/{id}/channels/{name}/users`, for presence channels only.
pub fn users_response<'a>(
    channel: &str,
    users: impl Iterator<Item = &'a str>,
) -> Result<String, ApiError> {
    if !ChannelKind::of(channel).is_presence() {
        return Err(ApiError::bad_request(
            "users are listed for presence channels only",
        ));
    }
    let users: Vec<Value> = users.map(|id| json!({ "id": id })).collect();
    Ok(json!({ "users": users }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        App::new("3", "278d425bdf160c739803", "7ad3773142a6692b25b8")
    }

    fn signed(method: &str, path: &str, body: &[u8], timestamp: u64) -> Params {
        let mut params = vec![
            ("auth_key".to_string(), app().key),
            ("auth_timestamp".into(), timestamp.to_string()),
            ("auth_version".into(), "1.0".into()),
        ];
        if !body.is_empty() {
            params.push(("body_md5".into(), signature::body_md5(body)));
        }
        let to_sign = signature::api_string_to_sign(
            method,
            path,
            params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        params.push((
            "auth_signature".into(),
            signature::sign(&app().secret, &to_sign),
        ));
        params
    }

    #[test]
    fn routes() {
        assert_eq!(
            Route::of("/app/app-key"),
            Route::Client {
                app_key: "app-key".into()
            }
        );
        assert_eq!(
            Route::of("/apps/1/events"),
            Route::Events { app_id: "1".into() }
        );
        assert_eq!(
            Route::of("/apps/1/batch_events"),
            Route::BatchEvents { app_id: "1".into() }
        );
        assert_eq!(
            Route::of("/apps/1/channels/presence%2Dx/users"),
            Route::ChannelUsers {
                app_id: "1".into(),
                channel: "presence-x".into()
            }
        );
        assert_eq!(
            Route::of("/apps/1/users/u%201/terminate_connections"),
            Route::TerminateConnections {
                app_id: "1".into(),
                user_id: "u 1".into()
            }
        );
        assert_eq!(
            Route::of("/apps/1/users/u1/terminate_connections").method(),
            "POST"
        );
        assert_eq!(Route::of("/health"), Route::Health);
        assert_eq!(Route::of("/app/"), Route::NotFound);
        assert_eq!(Route::of("/apps/1/events/x"), Route::NotFound);
    }

    #[test]
    fn accepts_a_signed_request_and_names_each_fault() {
        let body = br#"{"name":"e","channel":"c","data":"d"}"#;
        let params = signed("POST", "/apps/3/events", body, 1000);
        assert_eq!(
            authenticate(&app(), "POST", "/apps/3/events", &params, body, 1500),
            Ok(())
        );
        let fault = |params: &Params, body: &[u8], now: u64| {
            authenticate(&app(), "POST", "/apps/3/events", params, body, now).unwrap_err()
        };
        assert_eq!(
            fault(&params, body, 1601).message,
            "Timestamp expired: given timestamp (1000) not within 600s of server time (1601)"
        );
        let md5 = fault(&params, b"{}", 1000).message;
        assert!(
            md5.starts_with("Invalid body_md5: the 2 bytes received hash to 99914b93"),
            "{md5}"
        );
        let mut tampered = params.clone();
        tampered.push(("extra".into(), "1".into()));
        let invalid = fault(&tampered, body, 1000).message;
        let to_sign = r#"HmacSHA256Hex("POST\n/apps/3/events\nauth_key="#;
        assert!(
            invalid.starts_with("Invalid signature: you should have sent "),
            "{invalid}"
        );
        assert!(
            invalid.contains(to_sign) && invalid.contains("&extra=1"),
            "{invalid}"
        );
        assert!(!invalid.contains(&app().secret), "never the secret");
        let no_key: Params = params
            .iter()
            .filter(|(k, _)| k != "auth_key")
            .cloned()
            .collect();
        assert_eq!(fault(&no_key, body, 1000).status, 401);
    }

    #[test]
    fn get_requests_may_carry_the_empty_body_digest() {
        let mut params = vec![
            ("auth_key".to_string(), app().key),
            ("auth_timestamp".into(), "1000".into()),
            ("auth_version".into(), "1.0".into()),
            ("body_md5".into(), "d41d8cd98f00b204e9800998ecf8427e".into()),
        ];
        let to_sign = signature::api_string_to_sign(
            "GET",
            "/apps/3/channels",
            params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        params.push((
            "auth_signature".into(),
            signature::sign(&app().secret, &to_sign),
        ));
        assert_eq!(
            authenticate(&app(), "GET", "/apps/3/channels", &params, b"", 1000),
            Ok(())
        );
    }

    #[test]
    fn publish_bodies() {
        let one = parse_publish(
            br#"{"name":"e","channel":"a","data":{"x":1},"socket_id":"1.2"}"#,
            100,
        )
        .unwrap();
        assert_eq!(one.channels, vec!["a"]);
        assert_eq!(one.data, r#"{"x":1}"#);
        assert_eq!(one.socket_id.as_deref(), Some("1.2"));
        let many = parse_publish(br#"{"name":"e","channels":["a","b"],"data":"d"}"#, 100).unwrap();
        assert_eq!(many.channels, vec!["a", "b"]);
        let status = |body: &[u8]| parse_publish(body, 10).unwrap_err().status;
        assert_eq!(
            status(br#"{"name":"e","channel":"a","data":"01234567890"}"#),
            413
        );
        assert_eq!(status(br#"{"name":"e","channel":"a b","data":"d"}"#), 400);
        assert_eq!(status(br#"{"name":"e","data":"d"}"#), 400);
        assert_eq!(status(br#"{"channel":"a","data":"d"}"#), 400);
        assert_eq!(status(b"not json"), 400);
        let too_many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
        let body = json!({"name": "e", "channels": too_many, "data": "d"}).to_string();
        assert_eq!(status(body.as_bytes()), 400);
        assert_eq!(
            status(br#"{"name":"e","channel":"a","data":"d","info":"bogus"}"#),
            400
        );
        let to_user = parse_publish(
            br##"{"name":"e","channel":"#server-to-user-u 1","data":"d","info":"user_count"}"##,
            100,
        )
        .unwrap();
        assert_eq!(to_user.channels, vec!["#server-to-user-u 1"]);
        assert_eq!(
            to_user.info,
            Some(InfoFields {
                user_count: true,
                ..InfoFields::default()
            })
        );
    }

    #[test]
    fn batches() {
        let body = br#"{"batch":[{"name":"e","channel":"a","data":"1"},{"name":"f","channel":"presence-b","data":"2","info":"user_count,subscription_count"}]}"#;
        let events = parse_batch(body, 100).unwrap();
        assert_eq!(events.len(), 2);
        let states = BTreeMap::from([
            ("a".to_string(), state(1, 0)),
            ("presence-b".to_string(), state(3, 2)),
        ]);
        assert_eq!(
            batch_response(&events, &states),
            r#"{"batch":[{},{"subscription_count":3,"user_count":2}]}"#
        );
        let eleven: Vec<Value> = (0..11)
            .map(|_| json!({"name": "e", "channel": "a", "data": "1"}))
            .collect();
        let body = json!({ "batch": eleven }).to_string();
        assert_eq!(parse_batch(body.as_bytes(), 100).unwrap_err().status, 400);
    }

    fn state(subscriptions: u64, users: u64) -> ChannelState {
        ChannelState {
            subscriptions,
            users,
            cached: None,
        }
    }

    #[test]
    fn channel_queries() {
        let states = BTreeMap::from([
            ("a".to_string(), state(2, 0)),
            ("presence-r".into(), state(3, 2)),
            ("private-b".into(), state(3, 0)),
        ]);
        let params = parse_query("filter_by_prefix=private-&info=subscription_count");
        assert_eq!(
            channels_response(&states, &params).unwrap(),
            r#"{"channels":{"private-b":{"subscription_count":3}}}"#
        );
        assert_eq!(
            channels_response(&states, &parse_query("info=user_count"))
                .unwrap_err()
                .status,
            400
        );
        let params = parse_query("filter_by_prefix=presence-&info=user_count");
        assert_eq!(
            channels_response(&states, &params).unwrap(),
            r#"{"channels":{"presence-r":{"user_count":2}}}"#
        );
        assert_eq!(
            channel_response("a", &state(2, 0), &parse_query("info=subscription_count")).unwrap(),
            r#"{"occupied":true,"subscription_count":2}"#
        );
        assert_eq!(
            channel_response("presence-r", &state(3, 2), &parse_query("info=user_count")).unwrap(),
            r#"{"occupied":true,"user_count":2}"#
        );
        assert_eq!(
            channel_response("a", &state(0, 0), &Params::new()).unwrap(),
            r#"{"occupied":false}"#
        );
        for bad in ["info=bogus", "info=user_count", "info=cache"] {
            assert_eq!(
                channel_response("a", &state(0, 0), &parse_query(bad))
                    .unwrap_err()
                    .status,
                400,
                "{bad}"
            );
        }
        assert_eq!(
            users_response("a", std::iter::empty()).unwrap_err().status,
            400
        );
        assert_eq!(
            users_response("presence-a", ["1", "2"].into_iter()).unwrap(),
            r#"{"users":[{"id":"1"},{"id":"2"}]}"#
        );
    }

    #[test]
    fn cache_and_publish_info() {
        let cached = ChannelState {
            subscriptions: 1,
            users: 0,
            cached: Some(CachedEvent {
                event: json!("score"),
                data: json!("2-0"),
                ttl: 1799,
            }),
        };
        assert_eq!(
            channel_response("cache-s", &cached, &parse_query("info=cache")).unwrap(),
            r#"{"cache":{"data":"2-0","event":"score","ttl":1799},"occupied":true}"#
        );
        let states = BTreeMap::from([
            ("a".to_string(), state(2, 0)),
            ("presence-r".into(), state(3, 2)),
        ]);
        assert_eq!(publish_response(None, &states), "{}");
        let info = InfoFields::parse_list("subscription_count,user_count").unwrap();
        assert_eq!(
            publish_response(Some(info), &states),
            r#"{"channels":{"a":{"subscription_count":2},"presence-r":{"subscription_count":3,"user_count":2}}}"#
        );
    }
}
