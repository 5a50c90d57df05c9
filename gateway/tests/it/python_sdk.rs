//! The official Python server SDK (PyPI `pusher`) against a real gateway, with a PyPI `websockets`
//! client subscribed. The checks themselves are in `tests/py/sdk_compat.py`.
//!
//! Needs Python 3 with the packages in `gateway/tests/py/requirements.txt` (installed by
//! `scripts/test`); without them this test fails rather than passing silently. Set `PYTHON` to use
//! another interpreter than `python3`.

use std::process::Command;

use crate::common::{self, Gateway};

/// sdk_compat.py runs 35 checks today; far fewer means some were skipped.
const MIN_CHECKS: u32 = 30;

#[test]
fn the_python_server_sdk_works_against_the_gateway() {
    let dir = common::script::py_dir();
    common::script::require_python_packages(&dir);

    let gateway = Gateway::start(&["--shards", "2"]);
    let mut command = Command::new(common::script::python());
    command
        .arg(dir.join("sdk_compat.py"))
        .arg(gateway.port.to_string())
        .current_dir(&dir);
    common::script::run_compat("sdk_compat.py", command, MIN_CHECKS);
}
