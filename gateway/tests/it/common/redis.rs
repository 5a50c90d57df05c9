//! A real `redis-server` for the cluster tests: on a free loopback port, with no persistence,
//! stopped when dropped. `scripts/test` installs it when it is missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, wait_until, Gateway};

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts a gateway with two shards clustered through this server, and waits until it is
    /// connected.
    pub fn gateway(&self) -> Gateway {
        clustered(&self.url(), None)
    }

    /// The same, with a config file holding `config`.
    pub fn gateway_with_config(&self, config: &serde_json::Value) -> Gateway {
        clustered(&self.url(), Some(config))
    }

    /// Waits until `nodes` gateways receive a Pusher channel's traffic (app 1, default prefix).
    pub fn wait_subscribers(&self, channel: &str, nodes: u64) {
        let name = format!("gateway:1:{channel}");
        assert!(
            wait_until(Duration::from_secs(5), || self.subscribers(&name) == nodes),
            "{nodes} nodes subscribe to {name} (now {})",
            self.subscribers(&name)
        );
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server runs (scripts/test installs it: apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    /// Kills the server at once, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// Runs a command with `redis-cli --raw`; returns its output lines.
    pub fn cli(&self, args: &[&str]) -> Vec<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli runs");
        assert!(output.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Subscribers of a Redis channel: one per node that wants its traffic.
    pub fn subscribers(&self, channel: &str) -> u64 {
        let lines = self.cli(&["PUBSUB", "NUMSUB", channel]);
        lines.get(1).and_then(|n| n.parse().ok()).unwrap_or(0)
    }
}

/// Waits until a gateway is connected to Redis.
/// A gateway with two shards clustered through `redis_url` (one server or a cluster), with a
/// config file holding `config` if given, once it is connected.
pub fn clustered(redis_url: &str, config: Option<&serde_json::Value>) -> Gateway {
    let extra = ["--shards", "2", "--redis-url", redis_url];
    connected(match config {
        Some(config) => Gateway::start_with_config(config, &extra),
        None => Gateway::start(&extra),
    })
}

fn connected(gateway: Gateway) -> Gateway {
    assert!(
        wait_until(Duration::from_secs(10), || gateway.health()["cluster"]
            == "ok"),
        "gateway connects to redis"
    );
    gateway
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
