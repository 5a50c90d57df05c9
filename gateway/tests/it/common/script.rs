//! Runs a compatibility script written against an official SDK and checks what it reports.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The scripts give up after 60 s on their own; this is the backstop.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

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

/// Runs `command`, prints its output, and checks that it succeeded and ended with a line
/// `ok N checks` where N is at least `min_checks` (far fewer means checks were skipped).
pub fn run_compat(name: &str, command: Command, min_checks: u32) {
    let output = run_script(command, SCRIPT_TIMEOUT);
    println!("--- {name} stdout ---\n{}", output.stdout);
    println!("--- {name} stderr ---\n{}", output.stderr);
    assert!(
        output.success,
        "{name} failed ({}):\n{}{}",
        output.status, output.stderr, output.stdout
    );
    let last = output.stdout.lines().last().unwrap_or("");
    let count: u32 = last
        .strip_prefix("ok ")
        .and_then(|rest| rest.strip_suffix(" checks"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} should end with `ok N checks`, printed {last:?}"));
    assert!(
        count >= min_checks,
        "{name} ran only {count} checks (expected at least {min_checks})"
    );
}

/// The directory of the Node compatibility scripts.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// Fails, saying how to fix it, when Node or the npm packages are missing.
pub fn require_node_and_modules(dir: &Path) {
    let modules = dir.join("node_modules");
    for package in ["pusher-js", "pusher", "playwright-core"] {
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

/// The directory of the Python compatibility scripts.
pub fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("py")
}

/// The Python interpreter: `PYTHON`, or python3.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Fails, saying how to fix it, when Python or its packages are missing.
pub fn require_python_packages(dir: &Path) {
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
