//! Command line flags. `plan` turns them into a validated, bounded run.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load generator for Pusher Channels compatible WebSocket servers",
    after_help = "Exit status: 0 when the run was clean, 2 when it completed with failures, \
                  1 when it could not run."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ramp to N connections, hold them, close them: the connection ceiling, connect and
    /// handshake latency, and the server's memory per connection.
    Connect(ConnectArgs),
    /// Subscribe N connections over C channels and publish through the signed HTTP API:
    /// deliveries per second, end-to-end latency, and lost, duplicated or reordered messages.
    Fanout(FanoutArgs),
    /// Connect, subscribe and disconnect in a loop, then check that the server's connection
    /// gauge returns to where it started.
    Churn(ChurnArgs),
    /// Open TLS connections back to back, each closed right after its handshake: full or
    /// resumed handshakes per second, and per second of the server's CPU time.
    Handshakes(HandshakesArgs),
    /// Clients that hold input unfinished or occupy many channels: what each costs the server,
    /// and whether and when it answers them.
    Hostile(HostileArgs),
    /// Runs one share of a run for the process that started it (stdin/stdout JSON lines).
    #[command(hide = true)]
    Worker,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// WebSocket URL of the app; `?protocol=7` is added when the URL has no query.
    #[arg(long, default_value = "ws://127.0.0.1:6001/app/app-key")]
    pub url: String,
    /// PEM file of the certificate authorities that TLS servers are verified against.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Accept any server certificate (self-signed test servers).
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// Split the connections over K processes (this binary, re-executed).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub workers: u32,
    /// Local addresses to spread client sockets over: `127.0.0.2-127.0.0.30`, `a,b,c`, or both.
    #[arg(long, value_name = "RANGE")]
    pub source_ips: Option<String>,
    /// Also write the report to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Hard cap on the run's wall time; a plan that cannot fit is refused.
    #[arg(long, default_value_t = 600.0, value_name = "SECONDS")]
    pub max_duration: f64,
    /// Allow targets outside loopback (127.0.0.0/8, ::1, localhost).
    #[arg(long)]
    pub allow_remote: bool,
    /// The server's process id, to read its resident memory (VmRSS) before and after.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Longest wait for each step: TCP connect, handshake, subscription, HTTP request.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// Handshakes in progress at once, per worker.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_in_flight: usize,
    /// No progress line every second.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections to open.
    #[arg(long, value_name = "N")]
    pub connections: u64,
    /// New connections per second.
    #[arg(long, default_value_t = 1000.0, value_name = "R")]
    pub rate: f64,
    /// Seconds to hold the connections once every attempt has settled.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub hold: f64,
    /// Prometheus page to read the server's connection gauge from during the hold.
    #[arg(long, value_name = "URL")]
    pub metrics_url: Option<String>,
    /// Gauge summed from the metrics page.
    #[arg(long, default_value = "gateway_connections", value_name = "NAME")]
    pub gauge: String,
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Subscribing connections.
    #[arg(long, value_name = "N")]
    pub subscribers: u64,
    /// Channels the subscribers are spread over (subscriber i joins channel i mod C).
    #[arg(long, default_value_t = 1, value_name = "C")]
    pub channels: u64,
    /// Events published per second, over all channels.
    #[arg(long, default_value_t = 10.0, value_name = "R")]
    pub publish_rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub duration: f64,
    /// New subscriber connections per second.
    #[arg(long, default_value_t = 1000.0, value_name = "R")]
    pub rate: f64,
    /// HTTP API base URL [default: the host and port of --url, over http for ws:// and https
    /// for wss://].
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    #[arg(long, default_value = "1")]
    pub app_id: String,
    /// App key the API requests are signed with.
    #[arg(long, default_value = "app-key")]
    pub key: String,
    /// App secret the API requests are signed with.
    #[arg(long, default_value = "app-secret")]
    pub secret: String,
    /// Concurrent publishing connections (each owns a subset of the channels).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub publishers: usize,
    /// Filler bytes added to every event's data.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub payload_bytes: usize,
    /// Event name of the test events.
    #[arg(long, default_value = "loadtest")]
    pub event: String,
    /// Longest wait after publishing for the remaining deliveries.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub drain_timeout: f64,
}

#[derive(Debug, Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Cycles (connect, subscribe, disconnect) in progress at most at once.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub connections: u64,
    /// Cycles started per second.
    #[arg(long, default_value_t = 100.0, value_name = "R")]
    pub rate: f64,
    /// Seconds of churning.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub duration: f64,
    /// Channels the cycles subscribe to, in turn.
    #[arg(long, default_value_t = 10, value_name = "C")]
    pub channels: u64,
    /// Prometheus page with the server's connection gauge.
    #[arg(
        long,
        default_value = "http://127.0.0.1:9601/metrics",
        value_name = "URL"
    )]
    pub metrics_url: String,
    /// Gauge summed from the metrics page.
    #[arg(long, default_value = "gateway_connections", value_name = "NAME")]
    pub gauge: String,
    /// Longest wait after the churn for the gauge to return to its baseline.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub settle_timeout: f64,
}

#[derive(Debug, Args)]
pub struct HandshakesArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Seconds of handshaking.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub duration: f64,
    /// Connections handshaking at once; each loop opens the next when its last one closed.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub concurrency: usize,
    /// Resume sessions with the tickets the server hands out (each loop keeps its own).
    #[arg(long)]
    pub resume: bool,
    /// TLS version to offer.
    #[arg(long, value_enum, default_value_t = TlsVersion::Any)]
    pub tls_version: TlsVersion,
}

#[derive(Debug, Args)]
pub struct HostileArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// What the clients do.
    #[arg(long, value_enum)]
    pub mode: HostileMode,
    /// Connections that each hold one unfinished message or request body.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub connections: u64,
    /// New connections per second.
    #[arg(long, default_value_t = 1000.0, value_name = "R")]
    pub rate: f64,
    /// Seconds to hold the unfinished input once every connection has sent it.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub hold: f64,
    /// Payload of the unfinished WebSocket message (partial-message, trickle).
    #[arg(long, default_value_t = 15_000, value_name = "BYTES")]
    pub message_bytes: u64,
    /// Time between two bytes of a trickled message.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub interval_ms: u64,
    /// Content-Length of the unfinished request body (partial-body).
    #[arg(long, default_value_t = 262_144, value_name = "BYTES")]
    pub body_bytes: u64,
    /// Public channels to occupy (many-channels).
    #[arg(long, default_value_t = 1000, value_name = "C")]
    pub channels: u64,
    /// Channels each occupying connection subscribes to (many-channels).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub per_connection: u64,
    /// Connections subscribed to one channel that receive the published events (many-channels).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub bystanders: u64,
    /// Events published per second to the bystanders' channel (many-channels).
    #[arg(long, default_value_t = 100.0, value_name = "R")]
    pub publish_rate: f64,
    /// Channel list queries, one after the other (many-channels).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub queries: u64,
    /// HTTP API base URL [default: the host and port of --url, over http for ws:// and https
    /// for wss://].
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    #[arg(long, default_value = "1")]
    pub app_id: String,
    /// App key the API requests are signed with.
    #[arg(long, default_value = "app-key")]
    pub key: String,
    /// App secret the API requests are signed with.
    #[arg(long, default_value = "app-secret")]
    pub secret: String,
}

/// What the clients of a `hostile` run do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostileMode {
    /// Send all of one WebSocket message but its last byte, and hold.
    PartialMessage,
    /// Send one WebSocket message a byte at a time, never its last.
    Trickle,
    /// Send an API request with all of its body but the last byte, and hold.
    PartialBody,
    /// Occupy many channels, then list them while bystanders receive events.
    ManyChannels,
}

/// The TLS versions a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum TlsVersion {
    #[value(name = "1.2")]
    #[serde(rename = "1.2")]
    Tls12,
    #[value(name = "1.3")]
    #[serde(rename = "1.3")]
    Tls13,
    /// Both, as browsers do; the server chooses.
    #[serde(rename = "any")]
    Any,
}
