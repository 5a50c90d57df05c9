//! The official Python server SDK (PyPI `pusher`) against a real gateway, with a PyPI `websockets`
//! client subscribed. The checks themselves are in `tests/py/sdk_compat.py`.
//!
//! Needs Python 3 with the packages in `gateway/tests/py/requirements.txt` (installed by
//! `scripts/test`); without them this test fails rather than passing silently. Set `PYTHON` to use
//! another interpreter than `python3`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Gateway;

/// sdk_compat.py gives up after 60 s on its own; this is the backstop.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// sdk_compat.py runs 35 checks today; far fewer means some were skipped.
const MIN_CHECKS: u32 = 30;

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

fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("py")
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn require_python_packages(dir: &Path) {
    let probe = Command::new(python())
        .args(["-c", "import pusher, websockets.sync.client"])
        .current_dir(dir)
        .output();
    match probe {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "the Python packages for this test are missing ({}): run `scripts/test`, or \
             `{} -m pip install -r {}`",
            String::from_utf8_lossy(&output.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or(""),
            python(),
            dir.join("requirements.txt").display(),
        ),
        Err(e) => panic!(
            "cannot run `{}` ({e}): install Python 3 to run the Python SDK test",
            python()
        ),
    }
}

#[test]
fn the_python_server_sdk_works_against_the_gateway() {
    let dir = py_dir();
    require_python_packages(&dir);

    let gateway = Gateway::start(&["--shards", "2"]);
    let mut command = Command::new(python());
    command
        .arg(dir.join("sdk_compat.py"))
        .arg(gateway.port.to_string())
        .current_dir(&dir);
    let output = run_script(command, SCRIPT_TIMEOUT);

    println!("--- sdk_compat.py stdout ---\n{}", output.stdout);
    println!("--- sdk_compat.py stderr ---\n{}", output.stderr);
    assert!(
        output.success,
        "sdk_compat.py failed ({}):\n{}{}",
        output.status, output.stderr, output.stdout
    );
    let last = output.stdout.lines().last().unwrap_or("");
    let count: u32 = last
        .strip_prefix("ok ")
        .and_then(|rest| rest.strip_suffix(" checks"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("sdk_compat.py should end with `ok N checks`, printed {last:?}"));
    assert!(
        count >= MIN_CHECKS,
        "sdk_compat.py ran only {count} checks (expected at least {MIN_CHECKS})"
    );
}
