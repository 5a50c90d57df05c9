//! What a client asks of its session, and whether it may: subscriptions, sign-ins and client
//! events, checked against the app's settings and its server's signatures. No IO and no shard
//! state: the caller says what it knows (the socket id, the user the socket signed in as,
//! whether it holds the channel) and carries out the answer.

use crate::admin::stats::Rejection;
use crate::config::{App, Config};
use crate::protocol::member::{self, Member, MemberError, User};
use crate::protocol::{channel, codes, message, signature, ChannelKind};

/// A request refused: what it is counted as, how the client is told, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rejection: Rejection,
    pub answer: Answer,
    pub reason: String,
}

/// How a refusal is told to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `pusher:subscription_error` with this type and status, then `pusher:error` 4009 because
    /// the client must not retry unchanged.
    SubscriptionError { kind: &'static str, status: u16 },
    /// `pusher:error`, with this code or none.
    Error(Option<u16>),
    /// `pusher:error` with this code, naming the channel (pusher-js hands it to the channel's
    /// `pusher:error` binding as well as to the connection's `error`).
    ChannelError(u16),
}

/// A new session refused: `pusher:error` with `code`, then a close frame with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub rejection: Rejection,
    pub code: u16,
    pub reason: String,
}

fn refused(rejection: Rejection, answer: Answer, reason: impl Into<String>) -> Refusal {
    Refusal {
        rejection,
        answer,
        reason: reason.into(),
    }
}

fn subscription_error(kind: &'static str, status: u16) -> Answer {
    Answer::SubscriptionError { kind, status }
}

/// How full the node is, for the connection checks.
pub struct Occupancy<F: Fn(usize) -> i64> {
    /// Whether the node holds its maximum of WebSocket sessions.
    pub node_full: bool,
    /// An app's sessions, by app index: on the node, plus on the other nodes of a cluster.
    pub app_sessions: F,
}

/// Checks a new WebSocket session once its upgrade is done: the app key, the app enabled, the
/// protocol version, the `Origin`, then the node's and the app's connection limits. Returns the
/// app's index. Refusals are told after the upgrade rather than as an HTTP status before it: a
/// browser shows the reason, pusher-js does not retry a 4009 and backs off after a 4100,
/// whereas a failed upgrade is retried at once and explains nothing.
pub fn connection<F: Fn(usize) -> i64>(
    config: &Config,
    app_key: &str,
    protocol: Option<&str>,
    origin: Option<&str>,
    occupancy: Occupancy<F>,
) -> Result<usize, Closing> {
    let close = |code, rejection, reason: String| Closing {
        rejection,
        code,
        reason,
    };
    let Some((index, app)) = config.app_by_key(app_key) else {
        let reason = format!("App key {app_key} not in this cluster");
        return Err(close(codes::APP_MISSING, Rejection::UnknownApp, reason));
    };
    if !app.enabled {
        let reason = "App disabled".to_owned();
        return Err(close(codes::APP_DISABLED, Rejection::AppDisabled, reason));
    }
    if !matches!(protocol.map_or(Ok(7), str::parse::<u8>), Ok(5..=7)) {
        let reason = "Unsupported protocol version".to_owned();
        return Err(close(
            codes::UNSUPPORTED_PROTOCOL,
            Rejection::UnsupportedProtocol,
            reason,
        ));
    }
    if !app.allows_origin(origin) {
        let origin = origin.unwrap_or("(none)");
        let reason = format!("Origin {origin} is not allowed for this app");
        return Err(close(
            codes::UNAUTHORIZED,
            Rejection::OriginNotAllowed,
            reason,
        ));
    }
    if occupancy.node_full {
        let reason = "Over capacity: this node holds its maximum of connections".to_owned();
        return Err(close(codes::OVER_CAPACITY, Rejection::OverCapacity, reason));
    }
    if app.max_connections > 0 && (occupancy.app_sessions)(index) >= app.max_connections as i64 {
        let reason = "App is over its connection quota".to_owned();
        return Err(close(codes::OVER_QUOTA, Rejection::AppOverQuota, reason));
    }
    Ok(index)
}

/// A subscription the socket may make.
#[derive(Debug, Clone, PartialEq)]
pub enum Subscription {
    /// Its own user's `#server-to-user-` channel: acknowledged, nothing to register (the
    /// gateway delivers to signed-in sockets whether or not they subscribe).
    OwnUserChannel,
    /// A channel without members.
    Channel,
    /// A presence channel, joined as this member.
    Presence(Member),
}

/// Checks `pusher:subscribe`: the channel's name, the app server's signature where the channel
/// needs one, and on presence channels who joins (`channel_data`, or the user the socket signed
/// in as).
pub fn subscription(
    app: &App,
    socket_id: &str,
    name: &str,
    (auth, data): (Option<&str>, Option<&str>),
    signed_in: Option<Member>,
) -> Result<Subscription, Refusal> {
    if let Some(user_id) = channel::server_to_user(name) {
        if signed_in.is_some_and(|user| user.user_id == user_id) {
            return Ok(Subscription::OwnUserChannel);
        }
        let reason = "a #server-to-user channel is only for the user signed in as that user";
        return Err(refused(
            Rejection::ServerToUser,
            subscription_error("AuthError", 403),
            reason,
        ));
    }
    if let Err(error) = channel::validate_name(name) {
        let reason = format!("invalid channel name {name:?}: {error}");
        return Err(refused(
            Rejection::BadChannel,
            subscription_error("InvalidChannel", 400),
            reason,
        ));
    }
    let kind = ChannelKind::of(name);
    if kind.needs_auth() {
        let signed = data.filter(|_| kind.is_presence());
        let valid = auth.is_some_and(|auth| {
            signature::verify_channel_auth(&app.key, &app.secret, socket_id, name, signed, auth)
        });
        if !valid {
            let reason = format!("invalid signature for channel {name}");
            return Err(refused(
                Rejection::SubscriptionAuth,
                subscription_error("AuthError", 401),
                reason,
            ));
        }
    }
    if !kind.is_presence() {
        return Ok(Subscription::Channel);
    }
    presence_member(data, signed_in)
        .map(Subscription::Presence)
        .map_err(|error| {
            let reason = format!("invalid channel_data for {name}: {error}");
            refused(
                member_rejection(&error, Rejection::BadChannelData),
                subscription_error("InvalidChannelData", 400),
                reason,
            )
        })
}

/// Who a presence subscriber is: its channel_data, or, without one, the user it signed in as.
fn presence_member(data: Option<&str>, signed_in: Option<Member>) -> Result<Member, MemberError> {
    match (data, signed_in) {
        (Some(data), _) => member::parse_channel_data(data),
        (None, Some(user)) => Ok(user),
        (None, None) => Err(MemberError::NoId("channel_data (or a sign-in)")),
    }
}

fn member_rejection(error: &MemberError, otherwise: Rejection) -> Rejection {
    match error {
        MemberError::IdTooLong => Rejection::UserIdTooLong,
        MemberError::InfoTooLarge => Rejection::UserInfoTooLarge,
        _ => otherwise,
    }
}

/// Checks a subscription against what one connection may hold (`held`: its channels now), so
/// that one connection cannot pin an unbounded share of the shard. A repeated subscription
/// holds nothing new and passes.
pub fn within_caps(config: &Config, held: &[Box<str>], name: &str) -> Result<(), Refusal> {
    if held.iter().any(|channel| **channel == *name) {
        return Ok(());
    }
    let refuse = |reason: String| {
        let answer = subscription_error("LimitReached", 403);
        Err(refused(Rejection::TooManySubscriptions, answer, reason))
    };
    let most = config.max_subscriptions_per_connection;
    if held.len() >= most {
        return refuse(format!(
            "a connection may subscribe to at most {most} channels"
        ));
    }
    let is_presence = |channel: &str| ChannelKind::of(channel).is_presence();
    let most = config.max_presence_per_connection;
    if is_presence(name) && held.iter().filter(|c| is_presence(c)).count() >= most {
        return refuse(format!(
            "a connection may join at most {most} presence channels"
        ));
    }
    Ok(())
}

/// A presence channel that cannot take the member: refused as Pusher does.
pub fn presence_full(name: &str, why: &dyn std::fmt::Display) -> Refusal {
    refused(
        Rejection::PresenceFull,
        subscription_error("LimitReached", 403),
        format!("cannot join {name}: {why}"),
    )
}

/// Checks `pusher:signin`: the app server's signature of `user_data`, then `user_data` itself.
/// A refusal keeps the connection: the client learns why with `pusher:error` 4009.
pub fn signin(app: &App, socket_id: &str, auth: &str, user_data: &str) -> Result<User, Refusal> {
    let refuse = |rejection, reason: String| {
        refused(rejection, Answer::Error(Some(codes::UNAUTHORIZED)), reason)
    };
    if !signature::verify_user_auth(&app.key, &app.secret, socket_id, user_data, auth) {
        let reason = "invalid signature for pusher:signin".to_owned();
        return Err(refuse(Rejection::SigninAuth, reason));
    }
    member::parse_user_data(user_data).map_err(|error| {
        let rejection = member_rejection(&error, Rejection::BadUserData);
        refuse(rejection, format!("invalid user_data: {error}"))
    })
}

/// A client event as its sender sent it.
#[derive(Debug, Clone, Copy)]
pub struct ClientEvent<'a> {
    pub event: &'a str,
    pub channel: &'a str,
    /// Bytes of its data: the string, or the JSON value as text.
    pub data_len: usize,
}

/// Checks a client event: the app allows them, on private and presence channels only, from a
/// subscriber of the channel, within what the HTTP API allows an event (a name of at most 200
/// characters, at most `max_data` bytes of data). (The rate is the connection's own, counted by
/// its session.)
pub fn client_event(
    app: &App,
    event: ClientEvent<'_>,
    max_data: usize,
    subscribed: bool,
) -> Result<(), Refusal> {
    let reason = if !app.client_events {
        "client events are not enabled for this app"
    } else if !ChannelKind::of(event.channel).allows_client_events() {
        "client events are only accepted on private and presence channels"
    } else if !subscribed {
        "client events need a subscription to the channel"
    } else {
        return within_event_limits(event, max_data);
    };
    Err(refused(
        Rejection::ClientEventRefused,
        Answer::Error(None),
        reason,
    ))
}

/// Pusher's limits of an event, which the HTTP API applies too: refused with `pusher:error`
/// 4301 naming the channel, as other Pusher servers answer them.
fn within_event_limits(event: ClientEvent<'_>, max_data: usize) -> Result<(), Refusal> {
    let answer = Answer::ChannelError(codes::CLIENT_EVENT_REJECTED);
    if !message::event_name_fits(event.event) {
        let most = message::MAX_EVENT_NAME_CHARS;
        let reason = format!("Event name is too long: at most {most} characters are allowed");
        return Err(refused(Rejection::ClientEventNameTooLong, answer, reason));
    }
    if event.data_len > max_data {
        let reason = format!(
            "Event data is too large: {} bytes; at most {max_data} are allowed",
            event.data_len
        );
        return Err(refused(Rejection::ClientEventTooLarge, answer, reason));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    const SOCKET: &str = "123.456";

    fn app() -> App {
        App {
            client_events: true,
            ..App::new("1", "app-key", "app-secret")
        }
    }

    fn channel_auth(name: &str, data: Option<&str>) -> String {
        let app = app();
        let to_sign = signature::channel_auth_message(SOCKET, name, data);
        format!("{}:{}", app.key, signature::sign(&app.secret, &to_sign))
    }

    fn member(id: &str) -> Member {
        Member {
            user_id: id.into(),
            user_info: Value::Null,
        }
    }

    fn refusal<T: std::fmt::Debug>(result: Result<T, Refusal>) -> (Rejection, Answer) {
        let refusal = result.expect_err("refused");
        (refusal.rejection, refusal.answer)
    }

    fn connect(
        config: &Config,
        key: &str,
        protocol: Option<&str>,
        origin: Option<&str>,
    ) -> Result<usize, (u16, Rejection)> {
        let occupancy = Occupancy {
            node_full: false,
            app_sessions: |_| 1,
        };
        connection(config, key, protocol, origin, occupancy).map_err(|c| (c.code, c.rejection))
    }

    #[test]
    fn new_sessions_are_checked_in_pusher_order() {
        let mut config = Config::default();
        let mut other = App::new("2", "key-two", "secret-two");
        other.allowed_origins = vec!["https://example.com".into()];
        other.max_connections = 1;
        config.apps.push(other);
        assert_eq!(connect(&config, "app-key", None, None), Ok(0));
        assert_eq!(connect(&config, "app-key", Some("5"), None), Ok(0));
        assert_eq!(
            connect(&config, "nobody", None, None),
            Err((codes::APP_MISSING, Rejection::UnknownApp))
        );
        assert_eq!(
            connect(&config, "app-key", Some("4"), None),
            Err((codes::UNSUPPORTED_PROTOCOL, Rejection::UnsupportedProtocol))
        );
        assert_eq!(
            connect(&config, "key-two", None, Some("https://evil.example")),
            Err((codes::UNAUTHORIZED, Rejection::OriginNotAllowed))
        );
        assert_eq!(
            connect(&config, "key-two", None, Some("https://example.com")),
            Err((codes::OVER_QUOTA, Rejection::AppOverQuota)),
            "app two holds its one connection"
        );
        config.apps[1].enabled = false;
        assert_eq!(
            connect(&config, "key-two", None, Some("https://example.com")),
            Err((codes::APP_DISABLED, Rejection::AppDisabled))
        );
        let full = Occupancy {
            node_full: true,
            app_sessions: |_| 0,
        };
        let closing = connection(&config, "app-key", None, None, full).unwrap_err();
        assert_eq!(
            (closing.code, closing.rejection),
            (codes::OVER_CAPACITY, Rejection::OverCapacity)
        );
    }

    #[test]
    fn public_and_signed_private_channels_are_allowed() {
        let app = app();
        let sub = |name, auth: Option<&str>| subscription(&app, SOCKET, name, (auth, None), None);
        assert_eq!(sub("news", None), Ok(Subscription::Channel));
        let auth = channel_auth("private-room", None);
        assert_eq!(sub("private-room", Some(&auth)), Ok(Subscription::Channel));
        assert_eq!(
            refusal(sub("private-room", None)),
            (
                Rejection::SubscriptionAuth,
                subscription_error("AuthError", 401)
            )
        );
        assert_eq!(
            refusal(sub("private-other", Some(&auth))),
            (
                Rejection::SubscriptionAuth,
                subscription_error("AuthError", 401)
            ),
            "a signature is for one channel"
        );
        assert_eq!(
            refusal(sub("bad name!", None)),
            (
                Rejection::BadChannel,
                subscription_error("InvalidChannel", 400)
            )
        );
    }

    #[test]
    fn presence_members_come_from_channel_data_or_the_sign_in() {
        let app = app();
        let data = json!({"user_id": "u1", "user_info": {"name": "Ann"}}).to_string();
        let auth = channel_auth("presence-room", Some(&data));
        let joined = subscription(
            &app,
            SOCKET,
            "presence-room",
            (Some(&auth), Some(&data)),
            None,
        );
        let Ok(Subscription::Presence(joined)) = joined else {
            panic!("joined: {joined:?}");
        };
        assert_eq!(
            (joined.user_id.as_str(), &joined.user_info),
            ("u1", &json!({"name": "Ann"}))
        );

        let auth = channel_auth("presence-room", None);
        let signed_in = Some(member("u2"));
        assert_eq!(
            subscription(
                &app,
                SOCKET,
                "presence-room",
                (Some(&auth), None),
                signed_in
            ),
            Ok(Subscription::Presence(member("u2")))
        );
        assert_eq!(
            refusal(subscription(
                &app,
                SOCKET,
                "presence-room",
                (Some(&auth), None),
                None
            )),
            (
                Rejection::BadChannelData,
                subscription_error("InvalidChannelData", 400)
            )
        );
        let long = json!({"user_id": "x".repeat(129)}).to_string();
        let auth = channel_auth("presence-room", Some(&long));
        assert_eq!(
            refusal(subscription(
                &app,
                SOCKET,
                "presence-room",
                (Some(&auth), Some(&long)),
                None
            )),
            (
                Rejection::UserIdTooLong,
                subscription_error("InvalidChannelData", 400)
            )
        );
    }

    #[test]
    fn a_server_to_user_channel_is_only_its_own_users() {
        let app = app();
        let own =
            |signed_in| subscription(&app, SOCKET, "#server-to-user-u1", (None, None), signed_in);
        assert_eq!(own(Some(member("u1"))), Ok(Subscription::OwnUserChannel));
        for someone_else in [Some(member("u2")), None] {
            assert_eq!(
                refusal(own(someone_else)),
                (
                    Rejection::ServerToUser,
                    subscription_error("AuthError", 403)
                )
            );
        }
    }

    #[test]
    fn sign_ins_need_the_servers_signature_and_valid_user_data() {
        let app = app();
        let user_data = json!({"id": "u1", "watchlist": ["u2"]}).to_string();
        let to_sign = format!("{SOCKET}::user::{user_data}");
        let auth = format!("{}:{}", app.key, signature::sign(&app.secret, &to_sign));
        let user = signin(&app, SOCKET, &auth, &user_data).expect("signed in");
        assert_eq!(
            (user.id.as_str(), user.watchlist),
            ("u1", vec!["u2".into()])
        );
        let unauthorized = Answer::Error(Some(codes::UNAUTHORIZED));
        assert_eq!(
            refusal(signin(&app, "1.2", &auth, &user_data)),
            (Rejection::SigninAuth, unauthorized),
            "a signature is for one socket"
        );
        let bad = r#"{"user_info": {}}"#;
        let to_sign = format!("{SOCKET}::user::{bad}");
        let auth = format!("{}:{}", app.key, signature::sign(&app.secret, &to_sign));
        assert_eq!(
            refusal(signin(&app, SOCKET, &auth, bad)),
            (Rejection::BadUserData, unauthorized)
        );
    }

    fn event<'a>(channel: &'a str, name: &'a str, data_len: usize) -> ClientEvent<'a> {
        ClientEvent {
            event: name,
            channel,
            data_len,
        }
    }

    #[test]
    fn client_events_need_the_app_a_private_channel_and_a_subscription() {
        let mut app = app();
        let on = |channel| event(channel, "client-x", 2);
        assert_eq!(client_event(&app, on("private-room"), 10, true), Ok(()));
        assert_eq!(client_event(&app, on("presence-room"), 10, true), Ok(()));
        let refused = (Rejection::ClientEventRefused, Answer::Error(None));
        assert_eq!(refusal(client_event(&app, on("news"), 10, true)), refused);
        let unsubscribed = client_event(&app, on("private-room"), 10, false);
        assert_eq!(refusal(unsubscribed), refused);
        app.client_events = false;
        assert_eq!(
            refusal(client_event(&app, on("private-room"), 10, true)),
            refused
        );
    }

    #[test]
    fn client_events_keep_to_the_name_and_data_limits() {
        let app = app();
        let name = "é".repeat(200);
        let over_name = format!("{name}e");
        let answer = Answer::ChannelError(codes::CLIENT_EVENT_REJECTED);
        assert_eq!(
            client_event(&app, event("private-a", &name, 10), 10, true),
            Ok(())
        );
        let long = client_event(&app, event("private-a", &over_name, 10), 10, true);
        assert_eq!(refusal(long), (Rejection::ClientEventNameTooLong, answer));
        let large = client_event(&app, event("private-a", "client-x", 11), 10, true);
        assert_eq!(refusal(large), (Rejection::ClientEventTooLarge, answer));
    }

    #[test]
    fn a_connection_holds_a_bounded_number_of_channels() {
        let config = Config {
            max_subscriptions_per_connection: 3,
            max_presence_per_connection: 1,
            ..Config::default()
        };
        let held: Vec<Box<str>> = vec!["a".into(), "presence-x".into()];
        assert_eq!(within_caps(&config, &held, "b"), Ok(()));
        assert_eq!(
            within_caps(&config, &held, "presence-x"),
            Ok(()),
            "held already"
        );
        let refused = within_caps(&config, &held, "presence-y");
        assert_eq!(refusal(refused).0, Rejection::TooManySubscriptions);
        let three: Vec<Box<str>> = vec!["a".into(), "b".into(), "c".into()];
        let (rejection, answer) = refusal(within_caps(&config, &three, "d"));
        assert_eq!(rejection, Rejection::TooManySubscriptions);
        assert_eq!(answer, subscription_error("LimitReached", 403));
    }
}
