//! What a client says on its session, one message per line: parsed as the core parses it
//! (`ClientMessage::parse`), then asked of `pusher::requests` as the core asks, with what the
//! session holds so far (its channels, the user it signed in as). Never a panic, and:
//! - parsing refuses exactly what is not a JSON object with an `event` string;
//! - a subscription is granted only to a valid name, with the app server's signature where the
//!   channel needs one, within the connection's caps, and a public channel always is;
//! - a presence member and a signed-in user keep the limits on ids and info;
//! - a user who signed in may subscribe to its own `#server-to-user-` channel, which the HTTP
//!   API may publish to;
//! - a client event passes only on a private or presence channel the session holds, with a
//!   name and data within Pusher's limits.
//!
//! An `auth` of `sign` is replaced by the app server's valid signature, so that inputs reach
//! what comes after the signature check.
#![no_main]

use std::sync::LazyLock;

use gateway::config::{App, Config};
use gateway::protocol::member::{Member, MAX_USER_ID_LEN, MAX_USER_INFO_BYTES, MAX_WATCHLIST};
use gateway::protocol::message::{self, ClientMessage, MessageError};
use gateway::protocol::{channel, signature, ChannelKind};
use gateway::pusher::requests::{self, Subscription};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SOCKET: &str = "123.456";
/// Stands for the app server's valid signature.
const SIGN: &str = "sign";
/// Largest client event data: small, so that inputs reach past it.
const MAX_DATA: usize = 64;

static APP: LazyLock<App> = LazyLock::new(|| App {
    client_events: true,
    ..App::new("1", "app-key", "app-secret")
});

// Small caps, so that inputs reach them.
static CONFIG: LazyLock<Config> = LazyLock::new(|| Config {
    max_subscriptions_per_connection: 4,
    max_presence_per_connection: 2,
    ..Config::default()
});

/// What the session holds.
#[derive(Default)]
struct Session {
    channels: Vec<Box<str>>,
    user: Option<Member>,
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut session = Session::default();
    for line in text.split('\n') {
        message(&mut session, line);
    }
});

fn message(session: &mut Session, text: &str) {
    let parsed = ClientMessage::parse(text);
    let json = serde_json::from_str::<Value>(text).ok();
    let refused = match json.as_ref().and_then(Value::as_object) {
        None => Some(MessageError::NotJson),
        Some(object) if !object.get("event").is_some_and(Value::is_string) => {
            Some(MessageError::NoEvent)
        }
        Some(_) => None,
    };
    let message = match (parsed, refused) {
        (Ok(message), None) => message,
        (Err(MessageError::MissingField { .. }), None) => return,
        (Err(error), Some(refused)) if error == refused => return,
        (parsed, refused) => panic!("{text:?} parsed as {parsed:?}, should be {refused:?}"),
    };
    match message {
        ClientMessage::Subscribe {
            channel,
            auth,
            channel_data,
        } => subscribe(session, &channel, auth, channel_data.as_deref()),
        ClientMessage::Unsubscribe { channel } => {
            session.channels.retain(|held| **held != *channel);
        }
        ClientMessage::Signin { auth, user_data } => signin(session, &auth, &user_data),
        ClientMessage::ClientEvent {
            event,
            channel,
            data,
        } => {
            assert!(event.starts_with("client-"));
            let held = session.channels.iter().any(|held| **held == *channel);
            let data_len = message::event_data_text(&data).len();
            let request = requests::ClientEvent {
                event: &event,
                channel: &channel,
                data_len,
            };
            if requests::client_event(&APP, request, MAX_DATA, held).is_ok() {
                assert!(held && ChannelKind::of(&channel).allows_client_events());
                assert!(message::event_name_fits(&event) && data_len <= MAX_DATA);
            }
        }
        ClientMessage::Unsupported { event } => {
            assert!(!event.starts_with("client-"));
        }
        ClientMessage::Ping | ClientMessage::Pong => {}
    }
}

fn subscribe(session: &mut Session, name: &str, auth: Option<String>, data: Option<&str>) {
    let kind = ChannelKind::of(name);
    let auth = match auth.as_deref() {
        Some(SIGN) => {
            let signed = data.filter(|_| kind.is_presence());
            let message = signature::channel_auth_message(SOCKET, name, signed);
            Some(format!(
                "{}:{}",
                APP.key,
                signature::sign(&APP.secret, &message)
            ))
        }
        _ => auth,
    };
    let held = session.channels.iter().any(|held| **held == *name);
    if requests::within_caps(&CONFIG, &session.channels, name).is_err() {
        assert!(!held, "a channel held is within the caps");
        return;
    }
    let asked = (auth.as_deref(), data);
    let granted = requests::subscription(&APP, SOCKET, name, asked, session.user.clone());
    let valid_name = channel::validate_name(name).is_ok();
    let signed = auth.as_deref().is_some_and(|auth| {
        let signed = data.filter(|_| kind.is_presence());
        signature::verify_channel_auth(&APP.key, &APP.secret, SOCKET, name, signed, auth)
    });
    let own = channel::server_to_user(name).is_some();
    match granted {
        Ok(Subscription::OwnUserChannel) => {
            let user = session.user.as_ref().expect("signed in");
            assert_eq!(channel::server_to_user(name), Some(user.user_id.as_str()));
            return;
        }
        Ok(Subscription::Channel) => {
            assert!(valid_name && !kind.is_presence());
            assert!(signed || !kind.needs_auth(), "{name} without a signature");
        }
        Ok(Subscription::Presence(member)) => {
            assert!(valid_name && kind.is_presence() && signed);
            check_member(&member.user_id, &member.user_info);
            if data.is_none() {
                assert_eq!(Some(&member), session.user.as_ref(), "the user signed in");
            }
        }
        Err(refusal) => {
            assert!(!refusal.reason.is_empty());
            assert!(
                own || !valid_name || kind.needs_auth(),
                "public channel {name:?} refused: {}",
                refusal.reason
            );
            return;
        }
    }
    if !held {
        session.channels.push(name.into());
    }
}

fn signin(session: &mut Session, auth: &str, user_data: &str) {
    let auth = match auth {
        SIGN => {
            let message = format!("{SOCKET}::user::{user_data}");
            format!("{}:{}", APP.key, signature::sign(&APP.secret, &message))
        }
        _ => auth.to_owned(),
    };
    let Ok(user) = requests::signin(&APP, SOCKET, &auth, user_data) else {
        return;
    };
    assert!(signature::verify_user_auth(
        &APP.key,
        &APP.secret,
        SOCKET,
        user_data,
        &auth
    ));
    check_member(&user.id, &user.user_info);
    assert!(user.watchlist.len() <= MAX_WATCHLIST);
    assert!(user.watchlist.iter().all(|id| !id.is_empty()));
    let member = Member {
        user_id: user.id,
        user_info: user.user_info,
    };
    // The user's own channel: the HTTP API reaches it, and the user may subscribe to it.
    let own = channel::server_to_user_channel(&member.user_id);
    assert!(
        channel::validate_publish_name(&own).is_ok(),
        "the API cannot publish to {own:?}"
    );
    let granted = requests::subscription(&APP, SOCKET, &own, (None, None), Some(member.clone()));
    assert_eq!(granted, Ok(Subscription::OwnUserChannel), "{own:?}");
    session.user = Some(member);
}

fn check_member(id: &str, info: &Value) {
    assert!(!id.is_empty());
    assert!(id.chars().count() <= MAX_USER_ID_LEN);
    assert!(info.to_string().len() <= MAX_USER_INFO_BYTES);
}
