//! Pusher messages: parsing what clients send, serializing what the server sends.

use serde_json::{json, Value};

/// Longest event name, in characters, a client event or a published one may have (Pusher's
/// limit, which its server SDKs check too).
pub const MAX_EVENT_NAME_CHARS: usize = 200;

/// A client event's data as its sender sent it: a string as it is, any other value as its JSON
/// text. Its size is what Pusher's limit counts, and webhooks carry it so.
pub fn event_data_text(data: &Value) -> std::borrow::Cow<'_, str> {
    match data {
        Value::String(text) => std::borrow::Cow::Borrowed(text),
        other => std::borrow::Cow::Owned(other.to_string()),
    }
}

/// Whether an event name is within Pusher's limit.
pub fn event_name_fits(name: &str) -> bool {
    name.chars().count() <= MAX_EVENT_NAME_CHARS
}

/// A message a client sent, reduced to what the gateway acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Ping,
    Pong,
    Subscribe {
        channel: String,
        auth: Option<String>,
        channel_data: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    /// A user signs in: `auth` signs `user_data`, as the app's server issued them.
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-` event to relay to the channel's other subscribers.
    ClientEvent {
        event: String,
        channel: String,
        data: Value,
    },
    /// Any other event; answered with an error, never silently dropped.
    Unsupported {
        event: String,
    },
}

/// Why a client message could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message is not a JSON object")]
    NotJson,
    #[error("message has no \"event\" string")]
    NoEvent,
    #[error("{event} needs a \"{field}\" string")]
    MissingField { event: String, field: &'static str },
}

impl ClientMessage {
    /// Parses one text frame's payload.
    pub fn parse(text: &str) -> Result<ClientMessage, MessageError> {
        let Ok(Value::Object(mut message)) = serde_json::from_str::<Value>(text) else {
            return Err(MessageError::NotJson);
        };
        let Some(Value::String(event)) = message.remove("event") else {
            return Err(MessageError::NoEvent);
        };
        // Some clients send `data` as a JSON string holding the object.
        let data = match message.remove("data") {
            Some(Value::String(s)) if s.starts_with('{') => {
                serde_json::from_str(&s).unwrap_or(Value::String(s))
            }
            Some(data) => data,
            None => Value::Null,
        };
        let field = |data: &Value, name: &'static str| -> Option<String> {
            data.get(name).and_then(Value::as_str).map(str::to_owned)
        };
        let required = |data: &Value, name: &'static str| {
            field(data, name).ok_or_else(|| MessageError::MissingField {
                event: event.clone(),
                field: name,
            })
        };
        Ok(match event.as_str() {
            "pusher:ping" => ClientMessage::Ping,
            "pusher:pong" => ClientMessage::Pong,
            "pusher:subscribe" => ClientMessage::Subscribe {
                channel: required(&data, "channel")?,
                auth: field(&data, "auth"),
                channel_data: field(&data, "channel_data"),
            },
            "pusher:unsubscribe" => ClientMessage::Unsubscribe {
                channel: required(&data, "channel")?,
            },
            "pusher:signin" => ClientMessage::Signin {
                auth: required(&data, "auth")?,
                user_data: required(&data, "user_data")?,
            },
            name if name.starts_with("client-") => {
                let Some(Value::String(channel)) = message.remove("channel") else {
                    return Err(MessageError::MissingField {
                        event,
                        field: "channel",
                    });
                };
                ClientMessage::ClientEvent {
                    event,
                    channel,
                    data,
                }
            }
            _ => ClientMessage::Unsupported { event },
        })
    }
}

/// `pusher:connection_established`, whose data is a JSON string holding JSON.
pub fn connection_established(socket_id: &str, activity_timeout: u64) -> String {
    let data = json!({"socket_id": socket_id, "activity_timeout": activity_timeout}).to_string();
    json!({"event": "pusher:connection_established", "data": data}).to_string()
}

/// `pusher:error`, whose data is an object (unlike every other server event).
pub fn error(code: Option<u16>, message: &str) -> String {
    json!({"event": "pusher:error", "data": {"code": code, "message": message}}).to_string()
}

/// `pusher:error` about one channel: pusher-js hands it to that channel's `pusher:error`
/// binding as well as to the connection's `error`.
pub fn channel_error(channel: &str, code: u16, message: &str) -> String {
    json!({"event": "pusher:error", "channel": channel, "data": {"code": code, "message": message}})
        .to_string()
}

/// The answer to `pusher:ping`.
pub const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

/// `pusher_internal:subscription_succeeded` for a channel without members.
pub fn subscription_succeeded(channel: &str) -> String {
    json!({"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"})
        .to_string()
}

/// `pusher_internal:subscription_succeeded` for a presence channel: every member node-wide.
pub fn presence_subscription_succeeded<'a>(
    channel: &str,
    members: impl Iterator<Item = (&'a str, &'a Value)>,
) -> String {
    let mut ids = Vec::new();
    let mut hash = serde_json::Map::new();
    for (id, info) in members {
        ids.push(Value::String(id.to_owned()));
        hash.insert(id.to_owned(), info.clone());
    }
    let count = ids.len();
    let data = json!({"presence": {"ids": ids, "hash": hash, "count": count}}).to_string();
    json!({"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": data})
        .to_string()
}

/// `pusher_internal:member_added`: a user's first socket joined the presence channel.
pub fn member_added(channel: &str, user_id: &str, user_info: &Value) -> String {
    let data = json!({"user_id": user_id, "user_info": user_info}).to_string();
    json!({"event": "pusher_internal:member_added", "channel": channel, "data": data}).to_string()
}

/// `pusher_internal:member_removed`: a user's last socket left the presence channel.
pub fn member_removed(channel: &str, user_id: &str) -> String {
    let data = json!({ "user_id": user_id }).to_string();
    json!({"event": "pusher_internal:member_removed", "channel": channel, "data": data}).to_string()
}

/// `pusher_internal:subscription_count`: how many sockets are subscribed node-wide.
pub fn subscription_count(channel: &str, count: u64) -> String {
    let data = json!({ "subscription_count": count }).to_string();
    json!({"event": "pusher_internal:subscription_count", "channel": channel, "data": data})
        .to_string()
}

/// `pusher:signin_success`, echoing the `user_data` the user signed in with.
pub fn signin_success(user_data: &str) -> String {
    json!({"event": "pusher:signin_success", "data": {"user_data": user_data}}).to_string()
}

/// Which watched users came online or went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    Online,
    Offline,
}

/// `pusher_internal:watchlist_events`, in the shape pusher-js hands to `user.watchlist`. Lists
/// without ids are left out.
pub fn watchlist_events(events: &[(Watch, Vec<&str>)]) -> String {
    let events: Vec<Value> = events
        .iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(watch, ids)| {
            let name = match watch {
                Watch::Online => "online",
                Watch::Offline => "offline",
            };
            json!({"name": name, "user_ids": ids})
        })
        .collect();
    json!({"event": "pusher_internal:watchlist_events", "data": {"events": events}}).to_string()
}

/// `pusher:subscription_error`, in the shape pusher-js reports to the app.
pub fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> String {
    json!({
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": {"type": kind, "error": error, "status": status},
    })
    .to_string()
}

/// `pusher:cache_miss`: a cache channel had no event to replay.
pub fn cache_miss(channel: &str) -> String {
    json!({"event": "pusher:cache_miss", "channel": channel}).to_string()
}

/// An event delivered to a channel's subscribers. `data` is relayed as given: a string from the
/// HTTP API, any JSON value from a client event.
pub fn channel_event(event: &str, channel: &str, data: &Value, user_id: Option<&str>) -> String {
    let mut message = json!({"event": event, "channel": channel, "data": data});
    if let Some(user_id) = user_id {
        message["user_id"] = Value::String(user_id.to_owned());
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subscribe_with_object_or_string_data() {
        let expected = ClientMessage::Subscribe {
            channel: "private-a".into(),
            auth: Some("k:s".into()),
            channel_data: None,
        };
        let object = r#"{"event":"pusher:subscribe","data":{"channel":"private-a","auth":"k:s"}}"#;
        assert_eq!(ClientMessage::parse(object), Ok(expected.clone()));
        let string =
            r#"{"event":"pusher:subscribe","data":"{\"channel\":\"private-a\",\"auth\":\"k:s\"}"}"#;
        assert_eq!(ClientMessage::parse(string), Ok(expected));
    }

    #[test]
    fn parses_ping_unsubscribe_and_client_events() {
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:unsubscribe","data":{"channel":"a"}}"#),
            Ok(ClientMessage::Unsubscribe {
                channel: "a".into()
            })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"client-x","channel":"private-a","data":{"n":1}}"#),
            Ok(ClientMessage::ClientEvent {
                event: "client-x".into(),
                channel: "private-a".into(),
                data: json!({"n": 1}),
            })
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{}"}}"#
            ),
            Ok(ClientMessage::Signin {
                auth: "k:s".into(),
                user_data: "{}".into()
            })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:bogus","data":{}}"#),
            Ok(ClientMessage::Unsupported {
                event: "pusher:bogus".into()
            })
        );
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(ClientMessage::parse("nope"), Err(MessageError::NotJson));
        assert_eq!(ClientMessage::parse("[1]"), Err(MessageError::NotJson));
        assert_eq!(
            ClientMessage::parse(r#"{"data":{}}"#),
            Err(MessageError::NoEvent)
        );
        assert!(matches!(
            ClientMessage::parse(r#"{"event":"pusher:subscribe","data":{}}"#),
            Err(MessageError::MissingField {
                field: "channel",
                ..
            })
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"event":"pusher:signin","data":{"auth":"k:s"}}"#),
            Err(MessageError::MissingField {
                field: "user_data",
                ..
            })
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"event":"client-x","data":{}}"#),
            Err(MessageError::MissingField {
                field: "channel",
                ..
            })
        ));
    }

    #[test]
    fn server_messages_have_pusher_shapes() {
        let established: Value = serde_json::from_str(&connection_established("1.2", 120)).unwrap();
        let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({"socket_id": "1.2", "activity_timeout": 120}));
        let error: Value = serde_json::from_str(&error(Some(4009), "no")).unwrap();
        assert_eq!(error["data"], json!({"code": 4009, "message": "no"}));
        let event: Value =
            serde_json::from_str(&channel_event("e", "c", &json!("d"), Some("u"))).unwrap();
        assert_eq!(
            event,
            json!({"event": "e", "channel": "c", "data": "d", "user_id": "u"})
        );
    }

    /// Server events whose `data` is a JSON string holding JSON, decoded.
    fn inner(message: &str) -> (Value, Value) {
        let outer: Value = serde_json::from_str(message).unwrap();
        let data = serde_json::from_str(outer["data"].as_str().unwrap()).unwrap();
        (outer, data)
    }

    #[test]
    fn presence_messages() {
        let info = json!({"name": "Ann"});
        let null = Value::Null;
        let members = [("u1", &info), ("u2", &null)];
        let (outer, data) = inner(&presence_subscription_succeeded(
            "presence-a",
            members.into_iter(),
        ));
        assert_eq!(outer["event"], "pusher_internal:subscription_succeeded");
        assert_eq!(outer["channel"], "presence-a");
        assert_eq!(
            data,
            json!({"presence": {"ids": ["u1", "u2"], "hash": {"u1": {"name": "Ann"}, "u2": null}, "count": 2}})
        );
        let (outer, data) = inner(&member_added("presence-a", "u1", &info));
        assert_eq!(outer["event"], "pusher_internal:member_added");
        assert_eq!(data, json!({"user_id": "u1", "user_info": {"name": "Ann"}}));
        let (outer, data) = inner(&member_removed("presence-a", "u1"));
        assert_eq!(outer["event"], "pusher_internal:member_removed");
        assert_eq!(data, json!({"user_id": "u1"}));
        let (outer, data) = inner(&subscription_count("a", 3));
        assert_eq!(
            (outer["event"].as_str(), outer["channel"].as_str()),
            (Some("pusher_internal:subscription_count"), Some("a"))
        );
        assert_eq!(data, json!({"subscription_count": 3}));
    }

    #[test]
    fn user_messages() {
        let success: Value = serde_json::from_str(&signin_success(r#"{"id":"u1"}"#)).unwrap();
        assert_eq!(
            success,
            json!({"event": "pusher:signin_success", "data": {"user_data": "{\"id\":\"u1\"}"}})
        );
        let events: Value = serde_json::from_str(&watchlist_events(&[
            (Watch::Online, vec!["u2"]),
            (Watch::Offline, vec![]),
        ]))
        .unwrap();
        assert_eq!(
            events,
            json!({"event": "pusher_internal:watchlist_events", "data": {"events": [{"name": "online", "user_ids": ["u2"]}]}})
        );
    }
}
