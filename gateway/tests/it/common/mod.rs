//! Runs the real `gateway` binary for integration tests, and talks to it as clients do.

pub mod haproxy;
pub mod net;
pub mod raw;
pub mod redis;
pub mod redis_cluster;
pub mod script;
pub mod tls;
pub mod webhooks;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gateway::protocol::signature;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub const KEY: &str = "app-key";
pub const SECRET: &str = "app-secret";
pub const APP_ID: &str = "1";

/// A port nothing listens on right now, and not handed out before in this process: the kernel
/// may offer a port it just offered again, and a gateway given the same port twice (client and
/// admin) refuses to start.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A running gateway, killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub admin_port: u16,
}

impl Gateway {
    /// Starts the binary with a config file holding `config` (a JSON object), plus flags.
    pub fn start_with_config(config: &Value, extra: &[&str]) -> Gateway {
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("gateway-test-{}-{n}.json", std::process::id()));
        std::fs::write(&path, config.to_string()).unwrap();
        let mut args = vec!["--config", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let gateway = Gateway::start(&args);
        // Read once at start; not needed any more.
        let _ = std::fs::remove_file(path);
        gateway
    }

    /// Starts the binary with extra flags and waits until /ready answers 200.
    pub fn start(extra: &[&str]) -> Gateway {
        Gateway::launch(Command::new(env!("CARGO_BIN_EXE_gateway")), None, extra)
    }

    /// Starts the binary on these ports with extra flags and waits until /ready answers 200.
    pub fn start_on(port: u16, admin_port: u16, extra: &[&str]) -> Gateway {
        let command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        Gateway::launch(command, Some((port, admin_port)), extra)
    }

    /// Like `start`, with the process's open-files limit (soft and hard) set to `limit`.
    pub fn start_with_fd_limit(limit: u64, extra: &[&str]) -> Gateway {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        // SAFETY: runs in the forked child before exec. For NOFILE, which Linux has, rlimit's
        // setrlimit is one async-signal-safe setrlimit call and allocates nothing.
        unsafe {
            command.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, limit, limit));
        }
        Gateway::launch(command, None, extra)
    }

    /// Runs the binary on the given ports, or on ports the kernel picks (learnt from the ports
    /// file the gateway writes once they are open, so no other process can take them between).
    fn launch(mut command: Command, ports: Option<(u16, u16)>, extra: &[&str]) -> Gateway {
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ports_file =
            std::env::temp_dir().join(format!("gateway-ports-{}-{n}.json", std::process::id()));
        let (port, admin_port) = ports.map_or(("any".into(), "any".into()), |(port, admin)| {
            (port.to_string(), admin.to_string())
        });
        let mut args = vec![
            "--bind".to_string(),
            "127.0.0.1".into(),
            "--port".into(),
            port,
            "--admin-port".into(),
            admin_port,
            "--ports-file".into(),
            ports_file.to_str().unwrap().into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = command
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gateway binary starts");
        let mut gateway = Gateway {
            child,
            port: 0,
            admin_port: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if gateway.admin_port == 0 {
                gateway.read_ports(&ports_file);
            } else if let Ok((200, _)) = http_get(gateway.admin_port, "/ready") {
                return gateway;
            }
            // Its own message is on stderr; no use waiting for /ready.
            if let Some(status) = gateway.child.try_wait().unwrap() {
                panic!("gateway exited ({status}) before it was ready");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not become ready");
    }

    /// Takes the ports from the gateway's ports file once it is there.
    fn read_ports(&mut self, ports_file: &std::path::Path) {
        let Ok(text) = std::fs::read_to_string(ports_file) else {
            return;
        };
        let ports: Value = serde_json::from_str(&text).expect("the ports file is JSON");
        self.port = ports["port"].as_u64().unwrap_or(0) as u16;
        self.admin_port = ports["admin_port"].as_u64().expect("an admin port") as u16;
        let _ = std::fs::remove_file(ports_file);
    }

    /// Waits up to `timeout` for the process to exit; returns how it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "gateway did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn url(&self, key: &str) -> String {
        format!(
            "ws://127.0.0.1:{}/app/{key}?protocol=7&client=js&version=8.4.0",
            self.port
        )
    }

    /// A connected Pusher client that has read its connection_established.
    pub fn client(&self) -> Client {
        self.client_for(KEY)
    }

    /// A connected client of the app with this key.
    pub fn client_for(&self, key: &str) -> Client {
        let (socket, _) = tungstenite::connect(self.url(key)).expect("websocket connects");
        Client::established(socket)
    }

    /// Opens a WebSocket to an app, with an Origin header when given; returns the socket.
    pub fn socket_for(
        &self,
        key: &str,
        origin: Option<&str>,
    ) -> WebSocket<MaybeTlsStream<TcpStream>> {
        let mut request = self.url(key).into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", origin.parse().unwrap());
        }
        tungstenite::connect(request).expect("websocket connects").0
    }

    /// Expects a connection refused with `pusher:error` and this close code.
    pub fn refused_with(&self, key: &str, origin: Option<&str>, code: u16) {
        let mut socket = self.socket_for(key, origin);
        let error = match socket.read().unwrap() {
            Message::Text(text) => serde_json::from_str::<Value>(&text).unwrap(),
            other => panic!("expected pusher:error, got {other:?}"),
        };
        assert_eq!(
            (error["event"].as_str(), error["data"]["code"].as_u64()),
            (Some("pusher:error"), Some(u64::from(code))),
            "{error}"
        );
        let mut client = Client {
            socket,
            socket_id: String::new(),
        };
        assert_eq!(client.wait_close(), Ended::Closed(Some(code)));
    }

    /// Clients of the default app, one on each of `shards` shards (the kernel picks the shard of
    /// each connection, so some are opened and dropped until every shard has one).
    pub fn client_per_shard(&self, shards: u32) -> Vec<Client> {
        let mut found: Vec<Option<Client>> = (0..shards).map(|_| None).collect();
        for _ in 0..200 {
            let client = self.client();
            let shard = client.shard() as usize;
            if found[shard].is_none() {
                found[shard] = Some(client);
            }
            if found.iter().all(Option::is_some) {
                return found.into_iter().flatten().collect();
            }
        }
        panic!("connections did not reach every shard");
    }

    /// The sum of every sample of a metric whose name and labels start with `prefix`.
    pub fn metric(&self, prefix: &str) -> f64 {
        let (status, body) = http_get(self.admin_port, "/metrics").expect("metrics answer");
        assert_eq!(status, 200);
        body.lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `metric(prefix)` reaches `at_least`, for counters that other threads update.
    pub fn wait_metric(&self, prefix: &str, at_least: f64) -> f64 {
        // Long enough for the certificate watcher's two polls on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.metric(prefix);
            if value >= at_least || Instant::now() > deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The /health answer of the admin port.
    pub fn health(&self) -> Value {
        let (status, body) = http_get(self.admin_port, "/health").expect("health answers");
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }

    /// Sends a signed HTTP API request; returns status and body.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let request = signed_request(method, path, query, body, now_secs());
        raw_http(self.port, &request)
    }

    /// Publishes an event through the HTTP API and expects 200.
    /// A subscriber on a public channel that must keep receiving while a test misbehaves.
    pub fn bystander(&self) -> Client {
        let mut client = self.client();
        let answer = client.subscribe("bystanders");
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded");
        client
    }

    /// Checks that a bystander still gets what is published.
    pub fn assert_still_serves(&self, bystander: &mut Client) {
        self.publish("bystanders", "still-here", "yes");
        assert_eq!(bystander.next_event()["event"], "still-here");
    }

    pub fn publish(&self, channel: &str, event: &str, data: &str) {
        let body = json!({"name": event, "channel": channel, "data": data}).to_string();
        let (status, answer) = self.api("POST", &format!("/apps/{APP_ID}/events"), &[], &body);
        assert_eq!(status, 200, "{answer}");
    }

    /// Publishes a marker event on `channel`. By publish order it reaches each subscriber after
    /// everything queued to it before, on any shard: an event that must not have come, caused
    /// by something the test knows was handled, would arrive first.
    pub fn publish_marker(&self, channel: &str) -> Marker {
        static MARKERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MARKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = Marker(json!({"event": "marker", "channel": channel, "data": n.to_string()}));
        self.publish(channel, "marker", &n.to_string());
        marker
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: kill takes no pointers; the pid is our own child's.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `done` every 20 ms until it holds or `timeout` passes; says whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HTTP request signed as the Pusher server SDKs sign them.
pub fn signed_request(
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: &str,
    timestamp: u64,
) -> String {
    let timestamp = timestamp.to_string();
    let md5 = signature::body_md5(body.as_bytes());
    let mut params: Vec<(&str, &str)> = vec![
        ("auth_key", KEY),
        ("auth_timestamp", &timestamp),
        ("auth_version", "1.0"),
    ];
    if !body.is_empty() {
        params.push(("body_md5", &md5));
    }
    params.extend_from_slice(query);
    let to_sign = signature::api_string_to_sign(method, path, params.iter().copied());
    let auth_signature = signature::sign(SECRET, &to_sign);
    let mut query_string: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    query_string.push(format!("auth_signature={auth_signature}"));
    format!(
        "{method} {path}?{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        query_string.join("&"),
        body.len()
    )
}

/// Sends raw bytes and reads the whole response (the request asks for Connection: close).
pub fn raw_http(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    parse_response(&response)
}

pub fn parse_response(response: &str) -> (u16, String) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    BufReader::new(stream).read_to_string(&mut response)?;
    Ok(parse_response(&response))
}

/// Reads one line of a child's output, for scripts that report as they go.
pub fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line
}

/// An event published by `Gateway::publish_marker`, as its subscribers receive it.
pub struct Marker(Value);

impl Marker {
    /// Whether a received event is this marker.
    pub fn is(&self, event: &Value) -> bool {
        *event == self.0
    }
}

/// A Pusher client over tungstenite.
pub struct Client {
    pub socket: WebSocket<MaybeTlsStream<TcpStream>>,
    pub socket_id: String,
}

/// How a client's connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(Option<u16>),
    TimedOut,
}

/// The auth string an app server signs for a subscription with the default app's secret.
pub fn channel_auth(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    let to_sign = signature::channel_auth_message(socket_id, channel, channel_data);
    format!("{KEY}:{}", signature::sign(SECRET, &to_sign))
}

/// The auth string an app server signs for a sign-in with the default app's secret.
pub fn user_auth(socket_id: &str, user_data: &str) -> String {
    let signed = signature::sign(SECRET, &format!("{socket_id}::user::{user_data}"));
    format!("{KEY}:{signed}")
}

impl Client {
    /// Reads the connection_established a new connection starts with.
    pub fn established(socket: WebSocket<MaybeTlsStream<TcpStream>>) -> Client {
        let mut client = Client {
            socket,
            socket_id: String::new(),
        };
        client.set_timeout(Duration::from_secs(5));
        let established = client.next_event();
        assert_eq!(established["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
        client.socket_id = data["socket_id"].as_str().unwrap().to_string();
        client
    }

    /// The shard that holds this connection, from its socket id.
    pub fn shard(&self) -> u32 {
        let head: u64 = self.socket_id.split('.').next().unwrap().parse().unwrap();
        (head % 1000) as u32
    }

    /// Next events until one named `name`, skipping others (such as subscription counts).
    pub fn next_named(&mut self, name: &str) -> Value {
        loop {
            let event = self.next_event();
            if event["event"] == name {
                return event;
            }
        }
    }

    /// Subscribes to a presence channel as `user_id`; returns the answer.
    pub fn join(&mut self, channel: &str, user_id: &str, user_info: Value) -> Value {
        let channel_data = json!({"user_id": user_id, "user_info": user_info}).to_string();
        let auth = channel_auth(&self.socket_id, channel, Some(&channel_data));
        self.send(json!({"event": "pusher:subscribe", "data": {
            "channel": channel, "auth": auth, "channel_data": channel_data}}));
        self.next_event()
    }

    /// Signs in with this user data; returns the answer.
    pub fn signin(&mut self, user_data: &Value) -> Value {
        let user_data = user_data.to_string();
        let auth = user_auth(&self.socket_id, &user_data);
        self.send(
            json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}),
        );
        self.next_event()
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        if let MaybeTlsStream::Plain(stream) = self.socket.get_mut() {
            stream.set_read_timeout(Some(timeout)).unwrap();
        }
    }

    pub fn send(&mut self, event: Value) {
        self.socket.send(Message::text(event.to_string())).unwrap();
    }

    /// The next Pusher event; panics on close or timeout.
    pub fn next_event(&mut self) -> Value {
        loop {
            match self.socket.read().expect("an event arrives") {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The `data` of the next `count` events, each a string.
    pub fn next_data(&mut self, count: usize) -> Vec<String> {
        (0..count)
            .map(|_| self.next_event()["data"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Checks that the next event is `marker`: `what` (something that must not reach this
    /// client) did not come before it.
    pub fn expect_next_is_marker(&mut self, marker: &Marker, what: &str) {
        let event = self.next_event();
        assert_eq!(
            event, marker.0,
            "{what}: nothing should arrive before the marker"
        );
    }

    /// Sends `pusher:ping` and reads up to the pong, which comes after everything this client's
    /// shard had queued to it: checks that `what` (something that must not reach this client)
    /// was not among it.
    pub fn ping_barrier(&mut self, what: &str) {
        self.send(json!({"event": "pusher:ping", "data": {}}));
        let event = self.next_event();
        assert_eq!(
            event["event"], "pusher:pong",
            "{what}: nothing should arrive before the pong, got {event}"
        );
    }

    /// Reads until the server closes; returns the close code.
    pub fn wait_close(&mut self) -> Ended {
        loop {
            match self.socket.read() {
                Ok(Message::Close(frame)) => {
                    return Ended::Closed(frame.map(|f| u16::from(f.code)));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ended::TimedOut
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Ended::TimedOut
                }
                Err(_) => return Ended::Closed(None),
            }
        }
    }

    pub fn subscribe(&mut self, channel: &str) -> Value {
        let auth = if gateway::protocol::ChannelKind::of(channel).needs_auth() {
            json!(channel_auth(&self.socket_id, channel, None))
        } else {
            Value::Null
        };
        self.send(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}}));
        self.next_event()
    }

    pub fn close(mut self) {
        let _ = self.socket.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
    }
}

/// The next watchlist event, as (name, user ids) pairs.
pub fn watch_events(client: &mut Client) -> Vec<(String, Vec<String>)> {
    let event = client.next_event();
    assert_eq!(
        event["event"], "pusher_internal:watchlist_events",
        "{event}"
    );
    event["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let ids = e["user_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_str().unwrap().to_string())
                .collect();
            (e["name"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}
