//! The TLS listener: real TLS clients, protocol versions and ALPN, resumption across shards,
//! certificate reload, and bad input on the TLS port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::tls::{certificates, client_config, tls_over, TlsStream};
use crate::common::{self, free_port, Gateway};
use rustls::{ClientConfig, ClientConnection};
use serde_json::json;
use tungstenite::{Message, WebSocket};

struct TlsGateway {
    gateway: Gateway,
    tls_port: u16,
}

fn start(certs: &Path, extra: &[&str]) -> TlsGateway {
    let tls_port = free_port();
    let mut args = vec![
        "--tls-port".to_string(),
        tls_port.to_string(),
        "--tls-cert".into(),
        certs.join("chain.pem").to_str().unwrap().into(),
        "--tls-key".into(),
        certs.join("key.pem").to_str().unwrap().into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TlsGateway {
        gateway: Gateway::start(&args),
        tls_port,
    }
}

fn tls_connect(config: &Arc<ClientConfig>, port: u16) -> std::io::Result<TlsStream> {
    tls_over(TcpStream::connect(("127.0.0.1", port))?, config)
}

fn leaf_of(stream: &TlsStream) -> Vec<u8> {
    stream.conn.peer_certificates().unwrap()[0].to_vec()
}

/// A Pusher client over TLS, subscribed to `channel`.
fn wss_client(stream: TlsStream, port: u16, channel: &str) -> WebSocket<TlsStream> {
    let url = format!("wss://localhost:{port}/app/app-key?protocol=7");
    let (mut socket, _) = tungstenite::client(url, stream).unwrap();
    let next = |socket: &mut WebSocket<TlsStream>| -> serde_json::Value {
        match socket.read().unwrap() {
            Message::Text(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(next(&mut socket)["event"], "pusher:connection_established");
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    socket.send(Message::text(subscribe.to_string())).unwrap();
    assert_eq!(
        next(&mut socket)["event"],
        "pusher_internal:subscription_succeeded"
    );
    socket
}

fn next_event(socket: &mut WebSocket<TlsStream>) -> serde_json::Value {
    loop {
        match socket.read().unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn python_websockets_receives_a_published_event_over_wss() {
    let dir = common::script::py_dir();
    common::script::require_python_packages(&dir);
    let certs = certificates("python");
    let tls = start(&certs, &["--shards", "2"]);
    let mut child = Command::new(common::script::python())
        .arg(dir.join("wss_client.py"))
        .arg(format!(
            "wss://localhost:{}/app/app-key?protocol=7",
            tls.tls_port
        ))
        .arg(certs.join("ca.pem"))
        .arg("secure-news")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    assert_eq!(common::read_line(&mut lines).trim(), "subscribed");
    tls.gateway.publish("secure-news", "story", "over tls");
    let event: serde_json::Value = serde_json::from_str(&common::read_line(&mut lines)).unwrap();
    assert_eq!(
        (event["event"].as_str(), event["data"].as_str()),
        (Some("story"), Some("over tls"))
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn pusher_js_with_force_tls_and_the_server_sdk_over_https() {
    let dir = common::script::js_dir();
    common::script::require_node_and_modules(&dir);
    let certs = certificates("pusher-js");
    let tls = start(&certs, &["--shards", "2"]);
    let mut command = Command::new("node");
    command
        .arg(dir.join("wss.mjs"))
        .arg(tls.tls_port.to_string())
        .env("NODE_EXTRA_CA_CERTS", certs.join("ca.pem"))
        .current_dir(&dir);
    common::script::run_compat("wss.mjs", command, 7);
}

#[test]
fn pusher_js_in_chromium_over_ws_and_wss() {
    let dir = common::script::js_dir();
    common::script::require_node_and_modules(&dir);
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} is missing: run `scripts/test` (it installs Debian's chromium), or set CHROMIUM"
    );
    let certs = certificates("browser");
    let tls = start(&certs, &["--shards", "2"]);
    let mut command = Command::new("node");
    command
        .arg(dir.join("browser.mjs"))
        .arg(tls.gateway.port.to_string())
        .arg(tls.tls_port.to_string())
        .env("CHROMIUM", &chromium)
        .current_dir(&dir);
    common::script::run_compat("browser.mjs", command, 9);
}

fn s_client(port: u16, flags: &[&str]) -> String {
    let output = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .args(flags)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn only_tls_1_2_and_1_3_are_spoken_with_alpn_http_1_1() {
    let certs = certificates("versions");
    let tls = start(&certs, &[]);
    for old in ["-tls1", "-tls1_1"] {
        let output = s_client(tls.tls_port, &[old]);
        assert!(
            !output.contains("Cipher is TLS")
                && !output.contains("New, TLSv1.0")
                && output.contains("Cipher is (NONE)"),
            "{old} refused:\n{output}"
        );
    }
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let output = s_client(tls.tls_port, &[flag, "-alpn", "http/1.1"]);
        assert!(
            output.contains(&format!("Protocol  : {version}"))
                || output.contains(&format!("New, {version}")),
            "{flag}:\n{output}"
        );
        assert!(
            output.contains("ALPN protocol: http/1.1"),
            "{flag}:\n{output}"
        );
    }
    // A client that speaks no protocol the gateway does hears why it is refused.
    let output = s_client(tls.tls_port, &["-tls1_3", "-alpn", "h2"]);
    assert!(
        output.contains("alert no application protocol"),
        "ALPN h2 only:\n{output}"
    );
}

#[test]
fn openssl_key_updates_are_followed_and_the_end_is_clean() {
    let certs = certificates("keyupdate");
    let tls = start(&certs, &[]);
    let mut openssl = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", tls.tls_port),
        ])
        .args(["-servername", "localhost", "-tls1_3", "-crlf", "-msg"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed");
    let mut input = openssl.stdin.take().unwrap();
    let (sender, printed) = std::sync::mpsc::channel();
    let stdout = openssl.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let mut output = String::new();
    // Each step waits for what the previous one brings back, so that s_client reads each one
    // on its own (`K` is a command only at the start of what it reads).
    let mut wait_for_output = |needle: &str| {
        while !output.contains(needle) {
            let line = printed
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("s_client did not print {needle:?}:\n{output}"));
            output.push_str(&line);
            output.push('\n');
        }
    };
    // A request, then a key update asking for one back (s_client's `K` command), then a request
    // under the new keys, after which the gateway closes the connection.
    input
        .write_all(b"GET /first HTTP/1.1\nHost: localhost\n\n")
        .unwrap();
    wait_for_output("no route for /first");
    input.write_all(b"K\n").unwrap();
    // The gateway's own key update comes with the next thing it sends.
    wait_for_output(">>> TLS 1.3, Handshake [length 0005], KeyUpdate");
    input
        .write_all(b"GET /second HTTP/1.1\nHost: localhost\nConnection: close\n\n")
        .unwrap();
    wait_for_output("Alert [length 0002], warning close_notify");
    drop(input);
    assert!(openssl.wait().unwrap().success());
    reader.join().unwrap();
    output.extend(printed.try_iter().map(|line| line + "\n"));
    let sent = output.find(">>> TLS 1.3, Handshake [length 0005], KeyUpdate");
    let answered = output.find("<<< TLS 1.3, Handshake [length 0005], KeyUpdate");
    assert!(
        sent.is_some() && answered > sent,
        "both sides change keys:\n{output}"
    );
    let second = output.find("no route for /second");
    assert!(
        second > answered,
        "a request under the new keys is answered:\n{output}"
    );
    assert!(
        output.contains("<<< TLS 1.3, Alert [length 0002], warning close_notify"),
        "the gateway ends the connection with close_notify:\n{output}"
    );
}

#[test]
fn sessions_resume_on_every_shard() {
    let certs = certificates("resume");
    let tls = start(&certs, &["--shards", "2"]);
    let config = client_config(&certs.join("ca.pem"));
    let mut resumed = 0;
    for attempt in 0..12 {
        let mut stream = tls_connect(&config, tls.tls_port).unwrap();
        if stream.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            resumed += 1;
        }
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "attempt {attempt}: {response}"
        );
    }
    assert_eq!(resumed, 11, "every connection after the first resumed");
    for shard in 0..2 {
        let handshakes = tls.gateway.metric(&format!(
            "gateway_tls_handshakes_total{{shard=\"{shard}\"}}"
        ));
        assert!(handshakes > 0.0, "shard {shard} handled handshakes");
    }
}

#[test]
fn a_client_that_closes_with_its_finished_still_gets_its_ticket() {
    let certs = certificates("close-at-once");
    let tls = start(&certs, &[]);
    let config = client_config(&certs.join("ca.pem"));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(config.clone(), name).unwrap();
    let mut tcp = TcpStream::connect(("127.0.0.1", tls.tls_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        while conn.wants_write() {
            conn.write_tls(&mut tcp).unwrap();
        }
        if conn.read_tls(&mut tcp).unwrap() == 0 {
            panic!("closed during the handshake");
        }
        conn.process_new_packets().unwrap();
    }
    // The client's Finished and its close_notify in one write, as a client that only wanted the
    // handshake sends them.
    conn.send_close_notify();
    let mut last_flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut last_flight).unwrap();
    }
    tcp.write_all(&last_flight).unwrap();
    while conn.read_tls(&mut tcp).unwrap_or(0) > 0 {
        conn.process_new_packets().unwrap();
    }

    let again = tls_connect(&config, tls.tls_port).unwrap();
    assert_eq!(
        again.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the ticket came before the gateway closed"
    );
    assert_eq!(
        tls.gateway.wait_metric("gateway_tls_handshakes_total", 2.0),
        2.0
    );
    let closed = "gateway_tls_handshake_failures_total{reason=\"closed\"}";
    assert_eq!(tls.gateway.metric(closed), 0.0, "a finished handshake");
}

/// The TCP ports a process listens on: its sockets found in the kernel's tables of listening
/// sockets (state 0A), by inode.
fn listening_ports(pid: u32) -> Vec<u16> {
    let sockets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) == Some(&"0A")
                && fields
                    .get(9)
                    .is_some_and(|i| sockets.iter().any(|s| s == i))
            {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort();
    ports.dedup();
    ports
}

#[test]
fn port_0_leaves_only_the_tls_listener() {
    let certs = certificates("tls-only");
    let tls = start(&certs, &["--port", "0"]);
    let mut expected = vec![tls.tls_port, tls.gateway.admin_port];
    expected.sort();
    assert_eq!(
        listening_ports(tls.gateway.child.id()),
        expected,
        "the TLS and admin ports, no plaintext port"
    );
    let mut stream = tls_connect(&client_config(&certs.join("ca.pem")), tls.tls_port).unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// A connection made before a reload still gets what is published to its channel.
fn assert_still_served(tls: &TlsGateway, client: &mut WebSocket<TlsStream>, channel: &str) {
    tls.gateway.publish(channel, "still", "here");
    assert_eq!(
        next_event(client)["event"],
        "still",
        "the old connection is untouched"
    );
}

/// Longer than the gateway takes to notice changed certificate files and load them (two polls a
/// second apart).
const CERT_SETTLE_TIME: Duration = Duration::from_millis(2_500);

/// Asks the gateway to reload its certificate.
fn sighup(tls: &TlsGateway) {
    // SAFETY: kill takes no pointers; the pid is our own child's.
    unsafe { libc::kill(tls.gateway.child.id() as i32, libc::SIGHUP) };
}

/// Changes `path` with `change`, then puts its modification time back, so that only SIGHUP can
/// make the gateway load it.
fn unnoticed(path: &Path, change: impl FnOnce()) {
    let modified = std::fs::metadata(path).unwrap().modified().unwrap();
    change();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
}

#[test]
fn a_reloaded_certificate_serves_new_handshakes_and_a_broken_one_is_refused() {
    let certs = certificates("reload");
    let tls = start(&certs, &[]);
    let old_config = client_config(&certs.join("ca.pem"));
    let old_stream = tls_connect(&old_config, tls.tls_port).unwrap();
    let old_leaf = leaf_of(&old_stream);
    let mut old_client = wss_client(old_stream, tls.tls_port, "updates");

    let fresh = certificates("reload-new");
    for file in ["chain.pem", "key.pem"] {
        unnoticed(&certs.join(file), || {
            std::fs::copy(fresh.join(file), certs.join(file)).unwrap();
        });
    }
    sighup(&tls);
    assert!(
        tls.gateway
            .wait_metric("gateway_tls_cert_reloads_total", 1.0)
            >= 1.0,
        "the reload"
    );

    let new_config = client_config(&fresh.join("ca.pem"));
    let new_stream = tls_connect(&new_config, tls.tls_port).unwrap();
    assert_ne!(
        leaf_of(&new_stream),
        old_leaf,
        "new handshakes get the new certificate"
    );
    assert_still_served(&tls, &mut old_client, "updates");

    unnoticed(&certs.join("chain.pem"), || {
        std::fs::write(
            certs.join("chain.pem"),
            "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
    });
    sighup(&tls);
    assert!(
        tls.gateway
            .wait_metric("gateway_tls_cert_reload_failures_total", 1.0)
            >= 1.0,
        "the refusal"
    );
    let after = tls_connect(&new_config, tls.tls_port).unwrap();
    assert_eq!(
        leaf_of(&after),
        leaf_of(&new_stream),
        "the good certificate stays in service"
    );
}

#[test]
fn certificate_files_replaced_on_disk_are_picked_up_without_a_signal() {
    let certs = certificates("watch");
    let tls = start(&certs, &[]);
    let old_config = client_config(&certs.join("ca.pem"));
    let mut old_client = wss_client(
        tls_connect(&old_config, tls.tls_port).unwrap(),
        tls.tls_port,
        "renewals",
    );

    // A renewal as tools write it: the chain first, the key a moment later. Whether a poll falls
    // in between is up to timing; the unit tests of `SettledChange` cover that case for certain.
    let fresh = certificates("watch-new");
    std::fs::copy(fresh.join("chain.pem"), certs.join("chain.pem")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::copy(fresh.join("key.pem"), certs.join("key.pem")).unwrap();
    assert!(
        tls.gateway
            .wait_metric("gateway_tls_cert_reloads_total", 1.0)
            >= 1.0,
        "the reload"
    );
    assert_eq!(
        tls.gateway.metric("gateway_tls_cert_reload_failures_total"),
        0.0,
        "the half-written pair was never loaded"
    );

    let new_config = client_config(&fresh.join("ca.pem"));
    assert!(
        tls_connect(&new_config, tls.tls_port).is_ok(),
        "new handshakes get the new certificate"
    );
    // A fresh client, so that no ticket lets it resume past the certificate check.
    assert!(
        tls_connect(&client_config(&certs.join("ca.pem")), tls.tls_port).is_err(),
        "the old certificate is out of service"
    );
    assert_still_served(&tls, &mut old_client, "renewals");

    // Files renewed and SIGHUP sent at once: one reload, not one for the signal and another when
    // the watcher notices the files.
    let third = certificates("watch-third");
    for file in ["chain.pem", "key.pem"] {
        std::fs::copy(third.join(file), certs.join(file)).unwrap();
    }
    sighup(&tls);
    assert!(
        tls.gateway
            .wait_metric("gateway_tls_cert_reloads_total", 2.0)
            >= 2.0,
        "the second reload"
    );
    std::thread::sleep(CERT_SETTLE_TIME);
    assert_eq!(
        tls.gateway.metric("gateway_tls_cert_reloads_total"),
        2.0,
        "the files the signal loaded are not loaded again"
    );
}

/// A TLS record trickled in is input not complete yet, like a WebSocket message: it must
/// arrive whole within `head_timeout` of its first byte, whatever trickles in meanwhile.
#[test]
fn a_record_trickled_in_closes_with_1008_once_head_timeout_has_passed() {
    let certs = certificates("trickle");
    let tls = start(&certs, &["--head-timeout", "1", "--shards", "1"]);
    let config = client_config(&certs.join("ca.pem"));
    let stream = tls_connect(&config, tls.tls_port).unwrap();
    let mut socket = wss_client(stream, tls.tls_port, "watch");
    // The header of an application-data record of 100 bytes, then a byte every 200 ms.
    let mut raw = socket.get_ref().sock.try_clone().unwrap();
    raw.write_all(&[23, 3, 3, 0, 100, 0]).unwrap();
    let started = Instant::now();
    let trickle = std::thread::spawn(move || {
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(200));
            if raw.write_all(&[0]).is_err() {
                return;
            }
        }
    });
    let close = loop {
        match socket.read() {
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(error) => panic!("no close frame: {error}"),
        }
    };
    assert_eq!(close, Some(1008));
    let took = started.elapsed();
    assert!(
        took > Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    trickle.join().unwrap();
    let timed_out = "gateway_rejected_total{reason=\"message_timeout\"}";
    assert_eq!(tls.gateway.metric(timed_out), 1.0);
}

#[test]
fn bad_input_on_the_tls_port_is_closed_and_counted() {
    let certs = certificates("bad");
    let tls = start(&certs, &["--tls-handshake-timeout", "1"]);
    let config = client_config(&certs.join("ca.pem"));
    let mut good = wss_client(
        tls_connect(&config, tls.tls_port).unwrap(),
        tls.tls_port,
        "watch",
    );

    let closed_after = |bytes: &[u8]| {
        let mut stream = TcpStream::connect(("127.0.0.1", tls.tls_port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
        sink
    };
    closed_after(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    closed_after(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
    let stalled = TcpStream::connect(("127.0.0.1", tls.tls_port)).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = [0u8; 16];
    assert_eq!(
        (&stalled).read(&mut sink).unwrap_or(0),
        0,
        "a stalled handshake is closed"
    );

    // After the handshake, a record that fails authentication: on an HTTP connection and on a
    // WebSocket session.
    let plain_http = tls_connect(&config, tls.tls_port).unwrap();
    let session = wss_client(
        tls_connect(&config, tls.tls_port).unwrap(),
        tls.tls_port,
        "other",
    );
    for (count, mut stream) in [plain_http, session.into_inner()].into_iter().enumerate() {
        assert_eq!(
            forged_record_answer(&mut stream),
            Err(rustls::Error::AlertReceived(
                rustls::AlertDescription::BadRecordMac
            )),
            "the gateway says why it closes"
        );
        let expected = count as f64 + 1.0;
        let metric = "gateway_tls_record_errors_total";
        assert_eq!(tls.gateway.wait_metric(metric, expected), expected);
    }

    for reason in ["plain_http", "protocol", "timeout"] {
        let metric = format!("gateway_tls_handshake_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(tls.gateway.wait_metric(&metric, 1.0), 1.0, "{reason}");
    }
    tls.gateway.publish("watch", "fine", "yes");
    assert_eq!(
        next_event(&mut good)["event"],
        "fine",
        "other TLS clients keep working"
    );
}

/// Writes a record no key made and returns what the client makes of the gateway's answer.
fn forged_record_answer(stream: &mut TlsStream) -> Result<(), rustls::Error> {
    let forged = [&[23, 3, 3, 0, 32][..], &[0x5a; 32]].concat();
    stream.sock.write_all(&forged).unwrap();
    let mut answer = Vec::new();
    let _ = stream.sock.read_to_end(&mut answer);
    let mut unread = &answer[..];
    while !unread.is_empty() {
        stream.conn.read_tls(&mut unread).unwrap();
        stream.conn.process_new_packets()?;
    }
    Ok(())
}

#[test]
fn python_ssl_unwrap_gets_the_gateways_close_notify() {
    let certs = certificates("unwrap");
    let tls = start(&certs, &[]);
    // After an HTTP request on a keep-alive connection, and in a WebSocket session.
    for mode in ["http", "websocket"] {
        let output = Command::new(common::script::python())
            .arg(common::script::py_dir().join("tls_unwrap.py"))
            .arg(tls.tls_port.to_string())
            .arg(certs.join("ca.pem"))
            .arg(mode)
            .stdin(Stdio::null())
            .output()
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.trim() == "unwrapped",
            "{mode}: the gateway answers close_notify with its own:\n{stdout}{stderr}"
        );
    }
}

#[test]
fn an_alert_reaches_a_client_that_is_still_sending() {
    let certs = certificates("alert-linger");
    let tls = start(&certs, &[]);
    let config = client_config(&certs.join("ca.pem"));
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small receive window, so that what the gateway sends soon waits for the client.
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], tls.tls_port));
    socket.connect(&address.into()).unwrap();
    let stream = tls_over(socket.into(), &config).unwrap();
    let client = wss_client(stream, tls.tls_port, "firehose");

    // The client reads nothing for a while: events fill its window and wait at the gateway, so
    // the alert waits behind them.
    let data = "x".repeat(10_000);
    for _ in 0..40 {
        tls.gateway.publish("firehose", "bulk", &data);
    }
    // Counted once queued to the client, whichever shard took each publish.
    assert_eq!(
        tls.gateway.wait_metric("gateway_messages_out_total", 40.0),
        40.0
    );
    let mut stream = client.into_inner();
    let forged = [&[23, 3, 3, 0, 32][..], &[0x5a; 32]].concat();
    stream.sock.write_all(&forged).unwrap();
    // It goes on sending after the record the gateway refuses, and only then reads.
    let mut writer = stream.sock.try_clone().unwrap();
    let (sent, first_sent) = std::sync::mpsc::channel();
    let sending = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until && writer.write_all(&[0x5a; 1024]).is_ok() {
            let _ = sent.send(());
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    first_sent
        .recv_timeout(Duration::from_secs(5))
        .expect("the client sends after the forged record");
    let answer = read_to_the_end(&mut stream);
    sending.join().unwrap();
    assert_eq!(
        answer,
        Err(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadRecordMac
        )),
        "the alert arrives, not a reset"
    );
    assert_eq!(
        tls.gateway
            .wait_metric("gateway_tls_record_errors_total", 1.0),
        1.0
    );
}

#[test]
fn a_bad_record_in_a_request_body_ends_the_connection_with_its_alert() {
    let certs = certificates("body-record");
    let tls = start(&certs, &[]);
    let config = client_config(&certs.join("ca.pem"));
    let mut stream = tls_connect(&config, tls.tls_port).unwrap();
    stream
        .write_all(b"POST /apps/1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    stream.flush().unwrap();
    // Time for the gateway to read the head and wait for the body (nothing tells when it has;
    // if it had not, the record would fail while it reads the head, which passes here too).
    std::thread::sleep(Duration::from_millis(200));
    // A forged record comes instead of the body.
    let forged = [&[23, 3, 3, 0, 32][..], &[0x5a; 32]].concat();
    stream.sock.write_all(&forged).unwrap();
    assert_eq!(
        read_to_the_end(&mut stream),
        Err(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadRecordMac
        ))
    );
    assert_eq!(
        tls.gateway
            .wait_metric("gateway_tls_record_errors_total", 1.0),
        1.0
    );
    assert_eq!(
        tls.gateway
            .metric("gateway_http_requests_total{status=\"400\"}"),
        0.0,
        "no answer is counted that could not be sent"
    );
    assert_eq!(
        tls.gateway
            .metric("gateway_rejected_total{reason=\"head_timeout\"}"),
        0.0
    );
}

/// Reads and decrypts until the connection ends; the TLS error that ended it, if one did.
fn read_to_the_end(stream: &mut TlsStream) -> Result<(), rustls::Error> {
    let mut plain = [0; 16 * 1024];
    loop {
        match stream.conn.read_tls(&mut stream.sock) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A reset, or silence.
            Err(_) => return Ok(()),
        }
        stream.conn.process_new_packets()?;
        while matches!(stream.conn.reader().read(&mut plain), Ok(n) if n > 0) {}
    }
}

/// Runs openssl to make a key in a given PEM form (`OUT` in the command stands for the key file)
/// and a self-signed certificate for it.
fn openssl_identity(dir: &Path, name: &str, key_command: &[&str]) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    let key_path = key.to_str().unwrap();
    let status = Command::new("openssl")
        .args(
            key_command
                .iter()
                .map(|arg| if *arg == "OUT" { key_path } else { arg }),
        )
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl made the {name} key");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-key",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl made the {name} certificate");
    (cert, key)
}

#[test]
fn rsa_pkcs1_and_ec_sec1_keys_serve_handshakes() {
    let dir = certificates("formats");
    let cases: [(&str, &[&str], &str); 2] = [
        (
            "rsa",
            &["genrsa", "-traditional", "-out", "OUT", "2048"],
            "BEGIN RSA PRIVATE KEY",
        ),
        (
            "ec",
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "OUT",
            ],
            "BEGIN EC PRIVATE KEY",
        ),
    ];
    for (name, key_command, pem_label) in cases {
        let (cert, key) = openssl_identity(&dir, name, key_command);
        assert!(
            std::fs::read_to_string(&key).unwrap().contains(pem_label),
            "{name} key form"
        );
        let tls_port = free_port();
        let gateway = Gateway::start(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]);
        let output = s_client(tls_port, &["-tls1_3"]);
        assert!(
            output.contains("Protocol  : TLSv1.3") || output.contains("New, TLSv1.3"),
            "{name}:\n{output}"
        );
        drop(gateway);
    }
}

#[test]
fn a_key_that_does_not_match_is_refused_at_start_naming_the_files() {
    let first = certificates("mismatch-a");
    let second = certificates("mismatch-b");
    let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--port",
            &free_port().to_string(),
            "--admin-port",
            &free_port().to_string(),
        ])
        .args(["--tls-port", &free_port().to_string()])
        .arg("--tls-cert")
        .arg(first.join("chain.pem"))
        .arg("--tls-key")
        .arg(second.join("key.pem"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not match") && stderr.contains("key.pem"),
        "{stderr}"
    );
}
