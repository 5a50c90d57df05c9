//! Start-up checks and the graceful drain.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, Ended, Gateway};

#[test]
fn a_second_gateway_on_the_same_port_refuses_to_start() {
    let first = Gateway::start(&[]);
    let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &first.port.to_string(),
            "--admin-port",
            &common::free_port().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already in use"), "{stderr}");
    // The refused one took nothing from the first.
    assert_eq!(common::http_get(first.admin_port, "/ready").unwrap().0, 200);
    first.client();
}

/// A process manager restarts the gateway the moment the old one has exited, with the same
/// ports: every new one must start and serve, although the old one's sockets may still be
/// closing.
#[test]
fn a_gateway_restarted_at_once_on_the_same_ports_starts() {
    let (port, admin_port) = (common::free_port(), common::free_port());
    let flags = ["--shards", "2", "--drain-seconds", "0"];
    for start in 0..=20 {
        let mut gateway = Gateway::start_on(port, admin_port, &flags);
        let clients: Vec<_> = (0..3).map(|_| gateway.client()).collect();
        gateway.terminate();
        for mut client in clients {
            assert_eq!(
                client.wait_close(),
                Ended::Closed(Some(4200)),
                "start {start}"
            );
        }
        assert!(gateway.wait_exit(Duration::from_secs(10)).success());
    }
}

/// Killed, the gateway closes nothing itself; its replacement waits for the old listeners to go.
#[test]
fn a_killed_gateway_can_be_replaced_at_once() {
    let (port, admin_port) = (common::free_port(), common::free_port());
    for _ in 0..5 {
        let mut gateway = Gateway::start_on(port, admin_port, &["--shards", "2"]);
        let _client = gateway.client();
        gateway.child.kill().unwrap();
        gateway.child.wait().unwrap();
    }
    Gateway::start_on(port, admin_port, &["--shards", "2"]).client();
}

#[test]
fn bad_settings_name_the_setting_and_exit_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--port", "http"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("setting port"));
}

#[test]
fn text_that_is_not_utf8_is_refused_or_ignored_but_never_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let not_utf8 = std::ffi::OsStr::from_bytes(b"\xff\xfe");
    let run = |command: &mut Command| {
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stderr)
    };
    let gateway = || Command::new(env!("CARGO_BIN_EXE_gateway"));
    // Someone else's variable is none of the gateway's business: the bad setting is what fails.
    let (code, stderr) = run(gateway().env("OTHER", not_utf8).args(["--port", "http"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("setting port"), "{stderr}");
    let (code, stderr) = run(gateway().env("GATEWAY_PORT", not_utf8));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("GATEWAY_PORT is not UTF-8"), "{stderr}");
    let (code, stderr) = run(gateway().arg("--port").arg(not_utf8));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is not UTF-8"), "{stderr}");
}

fn drains(start_drain: impl FnOnce(&Gateway)) {
    let mut gateway = Gateway::start(&["--shards", "2", "--drain-seconds", "1"]);
    let mut clients: Vec<_> = (0..20).map(|_| gateway.client()).collect();
    let started = Instant::now();
    start_drain(&gateway);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match common::http_get(gateway.admin_port, "/ready") {
            Ok((503, _)) => break,
            _ if Instant::now() > deadline => panic!("/ready did not turn 503"),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    for client in &mut clients {
        client.set_timeout(Duration::from_secs(5));
        assert_eq!(client.wait_close(), Ended::Closed(Some(4200)));
    }
    let status = gateway.wait_exit(Duration::from_secs(10).saturating_sub(started.elapsed()));
    assert!(status.success());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", gateway.port)).is_err(),
        "listeners closed"
    );
}

#[test]
fn sigterm_drains_clients_with_4200_then_exits() {
    drains(Gateway::terminate);
}

#[test]
fn post_drain_on_the_admin_port_drains_too() {
    drains(|gateway| {
        let (status, _) = common::raw_http(
            gateway.admin_port,
            "POST /drain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 202);
    });
}
