//! The official Pusher JavaScript libraries against a real gateway: pusher-js (the client, run in
//! Node) and the `pusher` npm server SDK. The checks themselves are in `tests/js/compat.mjs`.
//!
//! Needs Node and `npm ci` in `gateway/tests/js` (done by `scripts/test`); without them this test
//! fails rather than passing silently.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Gateway;

/// compat.mjs runs 67 checks today; far fewer means some were skipped.
const MIN_CHECKS: u32 = 60;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

fn require_node_and_modules(dir: &Path) {
    let modules = dir.join("node_modules");
    for package in ["pusher-js", "pusher"] {
        assert!(
            modules.join(package).join("package.json").is_file(),
            "{} is missing npm package `{package}`: run `scripts/test` (it runs `npm ci` in {}), \
             or run `npm ci` there yourself",
            modules.display(),
            dir.display(),
        );
    }
    let node = Command::new("node").arg("--version").output();
    assert!(
        matches!(&node, Ok(output) if output.status.success()),
        "`node` is not runnable ({node:?}): install Node.js (18 or newer) to run the pusher-js compatibility test",
    );
}

#[test]
fn pusher_js_and_the_node_server_sdk_work_against_the_gateway() {
    let dir = js_dir();
    require_node_and_modules(&dir);

    let gateway = Gateway::start(&["--shards", "2"]);
    let mut command = Command::new("node");
    command
        .arg(dir.join("compat.mjs"))
        .arg(gateway.port.to_string())
        .current_dir(&dir);
    common::script::run_compat("compat.mjs", command, MIN_CHECKS);
}
