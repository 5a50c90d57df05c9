//! An HTTP API request past its head: the request target (up to the first newline) and the
//! body (the rest), through what `shard::http` does with them (`http::api`): the route, the
//! query, the signature check, the publish or batch body, and the JSON answers. Never a panic,
//! and:
//! - a request passes `authenticate` only with this app's key, a timestamp within the allowed
//!   skew, the body's digest when there is a body, and the secret's signature of what the
//!   Pusher SDKs sign; and one with all of those passes;
//! - an event accepted has a name of 1 to 200 bytes, data within the limit and 1 to 100
//!   channels that may be published to; a batch holds at most 10;
//! - every answer is a JSON object.
//!
//! In the query, `auth_signature=sign` stands for the valid signature and `body_md5=md5` for
//! the body's digest, so that inputs reach past them.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use gateway::config::App;
use gateway::http::api::{self, ChannelState, ChannelsBody, Params, Publish, Route};
use gateway::http::api::{CachedEvent, MAX_BATCH, MAX_CHANNELS_PER_PUBLISH, MAX_CLOCK_SKEW_SECS};
use gateway::protocol::{channel, message, signature};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// The server's clock, in seconds since the Unix epoch.
const NOW: u64 = 1_700_000_000;
const MAX_DATA: usize = 1024;

static APP: LazyLock<App> = LazyLock::new(|| App::new("1", "app-key", "app-secret"));

fuzz_target!(|data: &[u8]| {
    let (target, body) = match data.iter().position(|&byte| byte == b'\n') {
        Some(end) => (&data[..end], &data[end + 1..]),
        None => (data, &[][..]),
    };
    let target = String::from_utf8_lossy(target);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let route = Route::of(path);
    let method = route.method();
    let params = signed(method, path, api::parse_query(query), body);
    authenticate(method, path, &params, body);
    answers(&route, &params);
    match route {
        Route::BatchEvents { .. } => batch(body),
        _ => publish(body),
    }
});

/// The query with its stand-ins replaced: the digest first, as it is signed too.
fn signed(method: &str, path: &str, mut params: Params, body: &[u8]) -> Params {
    for (name, value) in &mut params {
        if name == "body_md5" && value == "md5" {
            *value = signature::body_md5(body);
        }
    }
    let pairs = params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let to_sign = signature::api_string_to_sign(method, path, pairs);
    let valid = signature::sign(&APP.secret, &to_sign);
    for (name, value) in &mut params {
        if name == "auth_signature" && value == "sign" {
            value.clone_from(&valid);
        }
    }
    params
}

/// The first value of a query parameter, as the gateway reads it.
fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn authenticate(method: &str, path: &str, params: &Params, body: &[u8]) {
    let passed = api::authenticate(&APP, method, path, params, body, NOW).is_ok();
    let key = param(params, "auth_key") == Some(APP.key.as_str());
    let timestamp = param(params, "auth_timestamp")
        .and_then(|t| t.parse::<u64>().ok())
        .is_some_and(|t| t.abs_diff(NOW) <= MAX_CLOCK_SKEW_SECS);
    let version = param(params, "auth_version").is_none_or(|v| v == "1.0");
    let digest = match param(params, "body_md5") {
        Some(md5) => md5 == signature::body_md5(body),
        None => body.is_empty(),
    };
    let pairs = params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let to_sign = signature::api_string_to_sign(method, path, pairs);
    let signature = param(params, "auth_signature")
        .is_some_and(|given| signature::verify(&APP.secret, &to_sign, given));
    let expected = key && timestamp && version && digest && signature;
    assert_eq!(passed, expected, "{method} {path} {params:?}");
}

/// The answers to channel queries, for channels of every kind.
fn answers(route: &Route, params: &Params) {
    let cached = CachedEvent {
        event: json!("an-event"),
        data: json!("{\"a\":1}"),
        ttl: 30,
    };
    let state = ChannelState {
        subscriptions: 2,
        users: 1,
        cached: Some(cached),
    };
    let mut states = BTreeMap::new();
    for name in [
        "cache-a",
        "presence-b",
        "presence-cache-c",
        "private-d",
        "e",
    ] {
        states.insert(name.to_owned(), state.clone());
    }
    if let Route::Channel { channel, .. } | Route::ChannelUsers { channel, .. } = route {
        states.insert(channel.clone(), state.clone());
        if let Ok(answer) = api::channel_response(channel, &state, params) {
            assert_object(&answer);
        }
        if let Ok(answer) = api::users_response(channel, ["u1", "u2"].into_iter()) {
            assert_object(&answer);
        }
    }
    let listed = api::channels_response(&states, params);
    if let Ok(mut body) = ChannelsBody::new(params) {
        for (name, state) in &states {
            body.push(name, state);
        }
        let answer = body.finish();
        assert_object(&answer);
        assert_eq!(
            listed.as_ref().ok(),
            Some(&answer),
            "written in slices or whole"
        );
    } else {
        assert!(listed.is_err());
    }
}

fn publish(body: &[u8]) {
    let Ok(event) = api::parse_publish(body, MAX_DATA) else {
        return;
    };
    check_event(&event);
    let states = event
        .channels
        .iter()
        .map(|name| (name.clone(), ChannelState::default()))
        .collect();
    assert_object(&api::publish_response(event.info, &states));
}

fn batch(body: &[u8]) {
    let Ok(events) = api::parse_batch(body, MAX_DATA) else {
        return;
    };
    assert!(events.len() <= MAX_BATCH);
    events.iter().for_each(check_event);
    let states = events
        .iter()
        .flat_map(|event| event.channels.first())
        .map(|name| (name.clone(), ChannelState::default()))
        .collect();
    assert_object(&api::batch_response(&events, &states));
}

fn check_event(event: &Publish) {
    assert!(!event.name.is_empty() && message::event_name_fits(&event.name));
    assert!(event.data.len() <= MAX_DATA);
    assert!(!event.channels.is_empty() && event.channels.len() <= MAX_CHANNELS_PER_PUBLISH);
    for name in &event.channels {
        assert!(channel::validate_publish_name(name).is_ok(), "{name:?}");
    }
}

fn assert_object(answer: &str) {
    let parsed: Value = serde_json::from_str(answer).expect("an answer is JSON");
    assert!(parsed.is_object(), "{answer}");
}
