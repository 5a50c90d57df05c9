//! Runs the `loadtest` binary against the real `gateway` binary of this workspace.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The gateway binary to test against.
///
/// Cargo only tells integration tests where this package's own binaries are, and a
/// dev-dependency on the gateway would build its library, not its binary. Looking for a
/// prebuilt `target/*/gateway` risks testing a stale build, or none. So the binary is built here
/// with the cargo and the target directory that built this test (found from the test's own
/// path, which honours CARGO_TARGET_DIR and build.target-dir): a quick no-op when it is up to
/// date. The release profile is used because the `cargo test` running us holds the debug
/// profile's build lock. `LOADTEST_GATEWAY_BIN` names a ready binary instead.
fn gateway_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("LOADTEST_GATEWAY_BIN") {
            return PathBuf::from(path);
        }
        let test_executable = std::env::current_exe().expect("test executable path");
        // <target>/<profile>/deps/<test executable>
        let target_dir = test_executable
            .ancestors()
            .nth(3)
            .expect("test executable lives in <target>/<profile>/deps")
            .to_path_buf();
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "gateway", "--target-dir"])
            .arg(&target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the gateway failed");
        target_dir.join("release").join("gateway")
    })
}

/// A port nothing listens on right now, and not handed out before in this process (the kernel
/// may offer the same port twice in a row).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut given = GIVEN.lock().expect("port list");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// A running gateway, killed when dropped.
struct Gateway {
    child: Child,
    port: u16,
    admin_port: u16,
}

impl Gateway {
    fn start() -> Gateway {
        Gateway::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Gateway {
        let port = free_port();
        let admin_port = free_port();
        let child = Command::new(gateway_binary())
            .args(["--bind", "127.0.0.1", "--shards", "2", "--port"])
            .arg(port.to_string())
            .arg("--admin-port")
            .arg(admin_port.to_string())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gateway starts");
        let gateway = Gateway {
            child,
            port,
            admin_port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if http_status(admin_port, "/ready") == Some(200) {
                return gateway;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not become ready");
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/app/app-key", self.port)
    }

    fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.admin_port)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs loadtest with `args` plus `--json FILE --quiet`; returns its output and the report.
fn loadtest(args: &[&str]) -> (Output, Value) {
    let directory = tempfile::tempdir().expect("temporary directory");
    let json_path = directory.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .arg("--json")
        .arg(&json_path)
        .arg("--quiet")
        .output()
        .expect("loadtest runs");
    let text = std::fs::read_to_string(&json_path).unwrap_or_else(|_| {
        panic!(
            "no JSON report; status {:?}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let report: Value = serde_json::from_str(&text).expect("the JSON report parses");
    assert_documented(&report);
    (output, report)
}

fn describe(output: &Output, report: &Value) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}\nreport:\n{report:#}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Maps whose keys are failure causes, statuses or types rather than fixed names.
const CAUSE_MAPS: [&str; 7] = [
    "failures",
    "drops",
    "subscribe_failures",
    "publish_failures",
    "endings",
    "refused",
    "query_statuses",
];

fn collect_keys(value: &Value, keys: &mut BTreeSet<String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                keys.insert(key.clone());
                match child {
                    // Their keys are not names, but what their values hold may be.
                    Value::Object(entries) if CAUSE_MAPS.contains(&key.as_str()) => {
                        entries.values().for_each(|entry| collect_keys(entry, keys))
                    }
                    _ => collect_keys(child, keys),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_keys(item, keys)),
        _ => {}
    }
}

/// Every key of the report is named in README.md.
fn assert_documented(report: &Value) {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md is readable");
    let mut keys = BTreeSet::new();
    collect_keys(report, &mut keys);
    let undocumented: Vec<&String> = keys
        .iter()
        .filter(|key| !readme.contains(&format!("`{key}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from README.md: {undocumented:?}"
    );
}

#[test]
fn connect_run_holds_every_connection() {
    let gateway = Gateway::start();
    let (output, report) = loadtest(&[
        "connect",
        "--url",
        &gateway.ws_url(),
        "--connections",
        "300",
        "--rate",
        "1000",
        "--hold",
        "1",
        "--server-pid",
        &gateway.pid(),
        "--metrics-url",
        &gateway.metrics_url(),
    ]);
    let context = describe(&output, &report);
    assert_eq!(output.status.code(), Some(0), "{context}");
    let connect = &report["connect"];
    assert_eq!(connect["requested"], 300, "{context}");
    assert_eq!(connect["reached"], 300, "{context}");
    assert_eq!(connect["held"], 300, "{context}");
    assert_eq!(connect["failures"], serde_json::json!({}), "{context}");
    assert_eq!(connect["server_gauge_during_hold"], 300, "{context}");
    assert_eq!(connect["handshake_latency_ms"]["count"], 300, "{context}");
    assert!(
        report["server_memory"]["rss_after_kib"].as_u64() > Some(0),
        "{context}"
    );
    assert_eq!(report["clean"], true, "{context}");
}

#[test]
fn handshakes_full_and_resumed_are_counted_against_the_servers_cpu() {
    let certs = tempfile::tempdir().expect("temporary directory");
    let made = Command::new(gateway_binary())
        .arg("cert")
        .arg("--dir")
        .arg(certs.path())
        .stdout(Stdio::null())
        .status()
        .expect("gateway cert runs");
    assert!(made.success());
    let tls_port = free_port().to_string();
    let path = |name: &str| certs.path().join(name).to_str().expect("utf-8").to_owned();
    let (chain, key, ca) = (path("chain.pem"), path("key.pem"), path("ca.pem"));
    // What is measured is the handshakes a shard can do: no budget.
    let gateway = Gateway::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert",
        &chain,
        "--tls-key",
        &key,
        "--tls-handshake-rate",
        "0",
    ]);
    let url = format!("wss://localhost:{tls_port}/app/app-key");
    for (version, resume) in [("1.3", false), ("1.3", true), ("1.2", true)] {
        let mut args = vec![
            "handshakes",
            "--url",
            &url,
            "--ca",
            &ca,
            "--duration",
            "1",
            "--concurrency",
            "4",
            "--tls-version",
            version,
            "--server-pid",
        ];
        let pid = gateway.pid();
        args.push(&pid);
        if resume {
            args.push("--resume");
        }
        let (output, report) = loadtest(&args);
        let context = describe(&output, &report);
        assert_eq!(output.status.code(), Some(0), "{context}");
        let handshakes = &report["handshakes"];
        let completed = handshakes["completed"].as_u64().expect("a count");
        assert!(completed > 4, "{context}");
        assert_eq!(handshakes["failures"], serde_json::json!({}), "{context}");
        let resumed = handshakes["resumed"].as_u64().expect("a count");
        if resume {
            assert!(
                resumed + 4 >= completed,
                "all but each loop's first: {context}"
            );
        } else {
            assert_eq!(resumed, 0, "{context}");
        }
        assert!(
            handshakes["server_cpu_seconds"].as_f64() > Some(0.0),
            "{context}"
        );
        assert!(
            handshakes["handshakes_per_server_cpu_second"].as_f64() > Some(0.0),
            "{context}"
        );
        assert_eq!(handshakes["latency_ms"]["count"], completed, "{context}");
    }
}

#[test]
fn connections_split_over_worker_processes_add_up() {
    let gateway = Gateway::start();
    let (output, report) = loadtest(&[
        "connect",
        "--url",
        &gateway.ws_url(),
        "--connections",
        "200",
        "--rate",
        "1000",
        "--hold",
        "0.5",
        "--workers",
        "2",
        "--source-ips",
        "127.0.0.2-127.0.0.5",
    ]);
    let context = describe(&output, &report);
    assert_eq!(output.status.code(), Some(0), "{context}");
    assert_eq!(report["workers"], 2, "{context}");
    assert_eq!(report["source_ips"], 4, "{context}");
    assert_eq!(report["connect"]["held"], 200, "{context}");
    assert_eq!(
        report["connect"]["connect_latency_ms"]["count"], 200,
        "{context}"
    );
}

#[test]
fn fanout_run_loses_nothing() {
    let gateway = Gateway::start();
    let (output, report) = loadtest(&[
        "fanout",
        // No --api-url: it publishes to the server of --url, on its random port.
        "--url",
        &gateway.ws_url(),
        "--subscribers",
        "200",
        "--channels",
        "4",
        "--publish-rate",
        "40",
        "--duration",
        "2",
    ]);
    let context = describe(&output, &report);
    assert_eq!(output.status.code(), Some(0), "{context}");
    let fanout = &report["fanout"];
    assert_eq!(fanout["subscribed"], 200, "{context}");
    assert_eq!(
        fanout["publish_failures"],
        serde_json::json!({}),
        "{context}"
    );
    assert_eq!(fanout["lost"], 0, "{context}");
    assert_eq!(fanout["duplicated"], 0, "{context}");
    assert_eq!(fanout["out_of_order"], 0, "{context}");
    assert_eq!(fanout["malformed"], 0, "{context}");
    let accepted = fanout["publishes_accepted"].as_u64().expect("a count");
    assert!(accepted >= 60, "{context}");
    // Each publish reaches the 50 subscribers of its channel.
    assert_eq!(
        fanout["expected_deliveries"].as_u64(),
        Some(accepted * 50),
        "{context}"
    );
    assert_eq!(
        fanout["deliveries"], fanout["expected_deliveries"],
        "{context}"
    );
    let latency = &fanout["latency_ms"];
    let p99 = latency["p99"].as_f64().expect("a latency");
    assert!(p99 > 0.0 && p99 < 1000.0, "{context}");
    assert!(
        latency["p50"].as_f64() <= latency["max"].as_f64(),
        "{context}"
    );
}

#[test]
fn refused_connections_are_counted_by_cause() {
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/app/app-key");
    let (output, report) = loadtest(&[
        "connect",
        "--url",
        &url,
        "--connections",
        "25",
        "--rate",
        "500",
        "--hold",
        "0",
    ]);
    let context = describe(&output, &report);
    assert_eq!(output.status.code(), Some(2), "{context}");
    let connect = &report["connect"];
    assert_eq!(
        connect["failures"],
        serde_json::json!({"refused": 25}),
        "{context}"
    );
    assert_eq!(connect["held"], 0, "{context}");
    assert_eq!(report["clean"], false, "{context}");
}

#[test]
fn churn_returns_the_gauge_to_its_baseline() {
    let gateway = Gateway::start();
    let (output, report) = loadtest(&[
        "churn",
        "--url",
        &gateway.ws_url(),
        "--metrics-url",
        &gateway.metrics_url(),
        "--connections",
        "20",
        "--rate",
        "100",
        "--duration",
        "2",
    ]);
    let context = describe(&output, &report);
    assert_eq!(output.status.code(), Some(0), "{context}");
    let churn = &report["churn"];
    assert!(churn["attempted"].as_u64() >= Some(150), "{context}");
    assert_eq!(churn["success_rate"], 1.0, "{context}");
    assert_eq!(churn["gauge"]["baseline"], 0, "{context}");
    assert_eq!(churn["gauge"]["returned_to_baseline"], true, "{context}");
}

#[test]
fn hostile_clients_are_answered_and_measured() {
    // Unfinished input is answered after a second rather than ten.
    let gateway = Gateway::start_with(&["--head-timeout", "1"]);
    let url = gateway.ws_url();
    let pid = gateway.pid();
    let runs: [(&str, &[&str], &str); 4] = [
        ("partial-message", &["--server-pid", &pid], "close_1008"),
        // Over the gateway's 15,360-byte messages: refused on its header.
        (
            "partial-message",
            &["--message-bytes", "65536"],
            "close_1009",
        ),
        ("trickle", &["--interval-ms", "200"], "close_1008"),
        ("partial-body", &["--body-bytes", "20000"], "http_408"),
    ];
    for (mode, extra, ending) in runs {
        let mut args = vec![
            "hostile",
            "--mode",
            mode,
            "--url",
            &url,
            "--connections",
            "20",
            "--hold",
            "3",
        ];
        args.extend(extra);
        let (output, report) = loadtest(&args);
        let context = describe(&output, &report);
        assert_eq!(output.status.code(), Some(0), "{context}");
        assert_eq!(report["command"], "hostile", "{context}");
        let hostile = &report["hostile"];
        assert_eq!(hostile["mode"], mode, "{context}");
        assert_eq!(hostile["opened"], 20, "{context}");
        assert_eq!(hostile["failures"], serde_json::json!({}), "{context}");
        assert_eq!(hostile["closed_by_server"], 20, "{context}");
        assert_eq!(hostile["held"], 0, "{context}");
        assert_eq!(hostile["endings"][ending]["count"], 20, "{context}");
        let after = hostile["endings"][ending]["after_ms"]["max"]
            .as_f64()
            .expect("a time");
        if ending == "close_1009" {
            assert!(after < 1000.0, "{context}");
        } else {
            assert!((900.0..3000.0).contains(&after), "{context}");
        }
    }

    let (output, report) = loadtest(&[
        "hostile",
        "--mode",
        "many-channels",
        "--url",
        &url,
        // Ten connections of 101 channels each, over the gateway's 100 a connection.
        "--channels",
        "1010",
        "--per-connection",
        "101",
        "--publish-rate",
        "200",
        "--queries",
        "3",
    ]);
    let context = describe(&output, &report);
    assert_eq!(output.status.code(), Some(0), "{context}");
    let channels = &report["hostile"];
    assert_eq!(channels["mode"], "many-channels", "{context}");
    assert_eq!(channels["connected"], 10, "{context}");
    assert_eq!(channels["subscribed"], 1000, "{context}");
    assert_eq!(
        channels["refused"],
        serde_json::json!({"LimitReached": 10}),
        "{context}"
    );
    assert_eq!(
        channels["query_statuses"],
        serde_json::json!({"http_200": 3}),
        "{context}"
    );
    assert_eq!(channels["query_latency_ms"]["count"], 3, "{context}");
    // The occupied channels and the bystanders' own.
    assert_eq!(channels["channels_listed"], 1001, "{context}");
    assert_eq!(channels["bystanders_subscribed"], 4, "{context}");
    assert!(channels["deliveries"].as_u64() > Some(0), "{context}");
    assert_eq!(
        channels["deliveries"], channels["expected_deliveries"],
        "{context}"
    );
}

#[test]
fn remote_targets_are_refused_before_anything_starts() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "connect",
            "--url",
            "ws://192.0.2.1:6001/app/k",
            "--connections",
            "1",
        ])
        .output()
        .expect("loadtest runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-remote"), "{stderr}");
}
