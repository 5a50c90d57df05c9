//! The official Pusher JavaScript libraries against a real gateway: pusher-js (the client, run in
//! Node) and the `pusher` npm server SDK. The checks themselves are in `tests/js/compat.mjs`.
//!
//! Needs Node and `npm ci` in `gateway/tests/js` (done by `scripts/test`); without them this test
//! fails rather than passing silently.

mod common;

use std::process::Command;

use common::Gateway;

/// compat.mjs runs 67 checks today; far fewer means some were skipped.
const MIN_CHECKS: u32 = 60;

#[test]
fn pusher_js_and_the_node_server_sdk_work_against_the_gateway() {
    let dir = common::script::js_dir();
    common::script::require_node_and_modules(&dir);

    let gateway = Gateway::start(&["--shards", "2"]);
    let mut command = Command::new("node");
    command
        .arg(dir.join("compat.mjs"))
        .arg(gateway.port.to_string())
        .current_dir(&dir);
    common::script::run_compat("compat.mjs", command, MIN_CHECKS);
}
