//! The official Python server SDK (PyPI `pusher`) against a real gateway, with a PyPI `websockets`
//! client subscribed. The checks themselves are in `tests/py/sdk_compat.py`.
//!
//! Needs Python 3 with the packages in `gateway/tests/py/requirements.txt` (installed by
//! `scripts/test`); without them this test fails rather than passing silently. Set `PYTHON` to use
//! another interpreter than `python3`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Gateway;

/// sdk_compat.py runs 35 checks today; far fewer means some were skipped.
const MIN_CHECKS: u32 = 30;

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
    common::script::run_compat("sdk_compat.py", command, MIN_CHECKS);
}
