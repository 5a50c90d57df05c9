//! A real Redis Cluster for the sharded pub/sub tests: six `redis-server`s on free loopback
//! ports (three masters, three replicas), made a cluster by `redis-cli --cluster create`, each
//! with its own directory for its `nodes.conf`; stopped and removed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::redis::clustered;
use super::{free_port, wait_until, Gateway};

/// Milliseconds a master may be unreachable before its replica takes over.
pub const NODE_TIMEOUT_MS: u64 = 2000;

pub struct RedisCluster {
    pub ports: Vec<u16>,
    servers: Vec<Option<Child>>,
    dir: PathBuf,
}

/// One master and the slot ranges it serves.
#[derive(Debug, Clone)]
pub struct Master {
    pub port: u16,
    pub slots: Vec<(u16, u16)>,
}

impl Master {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(first, last)| (first..=last).contains(&slot))
    }
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("gateway-redis-cluster-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let servers = ports.iter().map(|&port| Some(server(&dir, port))).collect();
        let cluster = RedisCluster {
            ports,
            servers,
            dir,
        };
        for &port in &cluster.ports {
            assert!(
                wait_until(Duration::from_secs(10), || cli(port, &["PING"]).first()
                    == Some(&"PONG".to_owned())),
                "redis-server on {port} answers"
            );
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create");
        assert!(
            wait_until(Duration::from_secs(20), || cluster.is_ok()),
            "the cluster's state becomes ok on every node"
        );
        // A replica that has not synchronized with its master yet will not take over from it.
        assert!(
            wait_until(Duration::from_secs(30), || cluster.replicas_in_sync() == 3),
            "every replica synchronizes with its master"
        );
        cluster
    }

    /// Replicas whose link to their master is up.
    fn replicas_in_sync(&self) -> usize {
        let in_sync = |port: u16| {
            let info = cli(port, &["INFO", "replication"]);
            info.iter()
                .any(|line| line.trim() == "master_link_status:up")
        };
        self.live_ports().filter(|&port| in_sync(port)).count()
    }

    /// `redis-cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-cluster://{}/", seeds.join(","))
    }

    /// A gateway with two shards clustered through this Redis Cluster, connected.
    pub fn gateway(&self) -> Gateway {
        clustered(&self.url(), None)
    }

    /// Like `gateway`, with this configuration.
    pub fn gateway_with_config(&self, config: &serde_json::Value) -> Gateway {
        clustered(&self.url(), Some(config))
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        (self.ports.iter().zip(&self.servers))
            .filter(|(_, server)| server.is_some())
            .map(|(&port, _)| port)
    }

    /// Whether every live node says the cluster is ok.
    pub fn is_ok(&self) -> bool {
        self.live_ports().all(|port| {
            cli(port, &["CLUSTER", "INFO"])
                .iter()
                .any(|line| line.trim() == "cluster_state:ok")
        })
    }

    /// The masters and their slots, as a live node sees them.
    pub fn masters(&self) -> Vec<Master> {
        let port = self.live_ports().next().expect("a live node");
        let mut masters = Vec::new();
        for line in cli(port, &["CLUSTER", "NODES"]) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok());
            let slots = fields[8..]
                .iter()
                .filter_map(|range| {
                    let (first, last) = range.split_once('-').unwrap_or((range, range));
                    Some((first.parse().ok()?, last.parse().ok()?))
                })
                .collect();
            masters.push(Master {
                port: port.expect("a node's port"),
                slots,
            });
        }
        masters
    }

    /// The sharded channels a node's clients are subscribed to.
    pub fn shard_channels(&self, port: u16) -> Vec<String> {
        cli(port, &["PUBSUB", "SHARDCHANNELS"])
    }

    /// Subscribers of a sharded channel on the node serving it: one per gateway that wants it.
    pub fn shard_subscribers(&self, channel: &str) -> u64 {
        let slot = gateway::cluster::slots::slot(channel.as_bytes());
        let Some(master) = self.masters().into_iter().find(|m| m.serves(slot)) else {
            return 0;
        };
        let lines = cli(master.port, &["PUBSUB", "SHARDNUMSUB", channel]);
        lines.get(1).and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    /// Moves a hash slot, with its keys, from one master to another, as `redis-cli --cluster
    /// reshard` does: importing and migrating states, `MIGRATE` of every key, then the new
    /// owner told to every master.
    pub fn move_slot(&self, slot: u16, from: u16, to: u16) {
        let id = |port: u16| cli(port, &["CLUSTER", "MYID"]).concat();
        let (from_id, to_id) = (id(from), id(to));
        let slot = slot.to_string();
        let ok = |port: u16, args: &[&str]| {
            assert_eq!(cli(port, args), ["OK"], "{port}: {args:?}");
        };
        ok(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        loop {
            let mut keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            keys.retain(|key| !key.is_empty());
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            ok(from, &args);
        }
        ok(to, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        for master in self.masters() {
            cli(master.port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
    }

    /// Kills a node at once, as a crash would.
    pub fn kill(&mut self, port: u16) {
        let at = self
            .ports
            .iter()
            .position(|&p| p == port)
            .expect("a node of the cluster");
        if let Some(mut child) = self.servers[at].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn server(dir: &std::path::Path, port: u16) -> Child {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout"])
        .arg(NODE_TIMEOUT_MS.to_string())
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&node_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("redis-server runs (scripts/test installs it: apt-get install redis-server)")
}

/// Runs a command with `redis-cli --raw` against one node; its output lines (none if it fails).
pub fn cli(port: u16, args: &[&str]) -> Vec<String> {
    let Ok(output) = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for server in self.servers.iter_mut().flatten() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
