//! The official Pusher JavaScript libraries against a real gateway: pusher-js (the client, run in
//! Node) and the `pusher` npm server SDK. The checks themselves are in `tests/js/compat.mjs`
//! (channels, events, the HTTP API) and `tests/js/presence.mjs` (presence, client events with
//! user_id, sign-in and watchlists, sendToUser, terminating users, encrypted channels).
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
