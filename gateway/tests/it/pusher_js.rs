//! The official Pusher JavaScript libraries against a real gateway: pusher-js (the client, run in
//! Node) and the `pusher` npm server SDK. The checks themselves are in `tests/js/compat.mjs`
//! (channels, events, the HTTP API) and `tests/js/presence.mjs` (presence, client events with
//! user_id, sign-in and watchlists, sendToUser, terminating users, encrypted channels) and
//! `tests/js/parity.mjs` (HTTP API error bodies, authorized connections, client-event limits,
//! several webhook endpoints).
//!
//! Needs Node and `npm ci` in `gateway/tests/js` (done by `scripts/test`); without them this test
//! fails rather than passing silently.

use std::process::Command;

use crate::common::{self, Gateway};

/// compat.mjs runs 67 checks today; far fewer means some were skipped.
const MIN_CHECKS: u32 = 60;
/// presence.mjs runs 49 checks today; far fewer means some were skipped.
const MIN_PRESENCE_CHECKS: u32 = 45;

/// Runs one script against a fresh gateway with two shards.
fn run_script(script: &str, min_checks: u32) {
    let dir = common::script::js_dir();
    common::script::require_node_and_modules(&dir);

    let gateway = Gateway::start(&["--shards", "2"]);
    let mut command = Command::new("node");
    command
        .arg(dir.join(script))
        .arg(gateway.port.to_string())
        .current_dir(&dir);
    common::script::run_compat(script, command, min_checks);
}

#[test]
fn pusher_js_and_the_node_server_sdk_work_against_the_gateway() {
    run_script("compat.mjs", MIN_CHECKS);
}

#[test]
fn presence_users_and_encrypted_channels_work_with_pusher_js_and_the_node_sdk() {
    run_script("presence.mjs", MIN_PRESENCE_CHECKS);
}

/// parity.mjs runs 42 checks today; far fewer means some were skipped.
const MIN_PARITY_CHECKS: u32 = 38;
/// Short, so that the script waits little for the stranger to be closed.
const SIGNIN_TIMEOUT_SECS: u64 = 2;

#[test]
fn error_bodies_authorized_connections_client_event_limits_and_webhooks_work_with_the_sdks() {
    let dir = common::script::js_dir();
    common::script::require_node_and_modules(&dir);
    let hook_ports = [common::free_port(), common::free_port()];
    let webhooks = serde_json::json!([
        {"url": format!("http://127.0.0.1:{}/hooks", hook_ports[0]),
         "headers": {"X-Team": "realtime"}},
        {"url": format!("http://127.0.0.1:{}/hooks", hook_ports[1]),
         "event_types": ["client_event", "member_added"],
         "filter": {"channel_name_starts_with": "presence-"}},
    ]);
    let app = serde_json::json!({"id": "1", "key": common::KEY, "secret": common::SECRET,
                                 "client_events": true, "authorized_connections": true,
                                 "webhooks": webhooks});
    let config = serde_json::json!({ "apps": [app], "signin_timeout": SIGNIN_TIMEOUT_SECS });
    let gateway = Gateway::start_with_config(&config, &["--shards", "2"]);
    let mut command = Command::new("node");
    command
        .arg(dir.join("parity.mjs"))
        .args([&gateway.port.to_string(), "1", common::KEY, common::SECRET])
        .arg(SIGNIN_TIMEOUT_SECS.to_string())
        .args(hook_ports.map(|port| port.to_string()))
        .current_dir(&dir);
    common::script::run_compat("parity.mjs", command, MIN_PARITY_CHECKS);
    let rejected =
        |reason: &str| gateway.metric(&format!("gateway_rejected_total{{reason=\"{reason}\"}}"));
    assert_eq!(rejected("signin_timeout"), 1.0);
    assert_eq!(rejected("client_event_too_large"), 1.0);
    assert_eq!(rejected("client_event_name_too_long"), 1.0);
    let closed = gateway.metric("gateway_disconnects_total{reason=\"signin_timeout\"}");
    assert_eq!(closed, 1.0);
}
