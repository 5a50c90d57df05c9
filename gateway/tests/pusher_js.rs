//! The official Pusher JavaScript libraries against a real gateway: pusher-js (the client, run in
//! Node) and the `pusher` npm server SDK. The checks themselves are in `tests/js/compat.mjs`.
//!
//! Needs Node and `npm ci` in `gateway/tests/js` (done by `scripts/test`); without them this test
//! fails rather than passing silently.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Gateway;

/// compat.mjs gives up after 60 s on its own; this is the backstop.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// compat.mjs runs 67 checks today; far fewer means some were skipped.
const MIN_CHECKS: u32 = 60;

/// What a finished script printed.
struct Output {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs a command to completion (killing it after `timeout`), collecting both output streams.
fn run_script(mut command: Command, timeout: Duration) -> Output {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let (success, status) = loop {
        if let Some(status) = child.try_wait().expect("waiting for the script") {
            break (status.success(), status.to_string());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break (false, format!("killed after {} s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        success,
        status,
        stdout: stdout_reader.join().unwrap(),
        stderr: stderr_reader.join().unwrap(),
    }
}

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
    let output = run_script(command, SCRIPT_TIMEOUT);

    println!("--- compat.mjs stdout ---\n{}", output.stdout);
    println!("--- compat.mjs stderr ---\n{}", output.stderr);
    assert!(
        output.success,
        "compat.mjs failed ({}):\n{}{}",
        output.status, output.stderr, output.stdout
    );
    let last = output.stdout.lines().last().unwrap_or("");
    let count: u32 = last
        .strip_prefix("ok ")
        .and_then(|rest| rest.strip_suffix(" checks"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("compat.mjs should end with `ok N checks`, printed {last:?}"));
    assert!(
        count >= MIN_CHECKS,
        "compat.mjs ran only {count} checks (expected at least {MIN_CHECKS})"
    );
}
