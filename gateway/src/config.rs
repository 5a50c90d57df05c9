//! Configuration: a JSON file, overridden by `GATEWAY_*` environment variables, overridden by
//! command-line flags. Every setting is declared once, as a field (of [`Config`], or of the first
//! app's credentials) whose attributes give its flag (`--kebab-case`), variable
//! (`GATEWAY_UPPER_CASE`), default and help; its file key is the field's name. Settings are
//! validated at start with an error that names them.

use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command, CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;
use serde_json::Value;

use crate::proxy::Networks;
use crate::webhooks::{Endpoint, WebhookKind};

/// The development app's secret; its use is warned about loudly.
pub const DEFAULT_SECRET: &str = "app-secret";

/// One Pusher app: the credentials clients and servers use, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub client_events: bool,
    /// WebSocket connections the app may hold, across the cluster when clustering is on (each
    /// node counts the others' from their heartbeats); 0 means only the node's limit.
    #[serde(default)]
    pub max_connections: usize,
    /// Client events per second per connection; the global `client_event_rate` when absent.
    #[serde(default)]
    pub client_event_rate: Option<u32>,
    /// Browser origins allowed to connect (`https://app.example.com`, `https://*.example.com`,
    /// `*`); empty means any origin, or none at all.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// The app's webhook endpoints, each with its event types, headers and channel filter.
    #[serde(default)]
    pub webhooks: Vec<Endpoint>,
    /// One more endpoint, the short way: its URL. Moved into `webhooks` at load.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// That endpoint's event types; every kind but `subscription_count` when absent.
    #[serde(default)]
    pub webhook_events: Option<Vec<WebhookKind>>,
    /// Whether subscribers get `pusher_internal:subscription_count` events.
    #[serde(default)]
    pub subscription_count_events: bool,
    /// HTTP API requests per second, node-wide; the global `api_request_rate` when absent.
    #[serde(default)]
    pub api_request_rate: Option<u32>,
    /// Pusher's "authorized connections": a connection that has not signed in
    /// (`pusher:signin`) within `signin_timeout` seconds is closed with 4009.
    #[serde(default)]
    pub authorized_connections: bool,
}

fn yes() -> bool {
    true
}

/// Whether an origin matches one `allowed_origins` entry.
fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let origin = origin.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    match pattern.split_once("*.") {
        Some((scheme, domain)) => origin
            .strip_prefix(scheme)
            .and_then(|host| host.strip_suffix(domain))
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.') && !sub.contains('/')),
        None => pattern == origin,
    }
}

impl App {
    /// An enabled app with these credentials and every option at its default.
    pub fn new(id: &str, key: &str, secret: &str) -> App {
        App {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enabled: true,
            client_events: false,
            max_connections: 0,
            client_event_rate: None,
            allowed_origins: Vec::new(),
            webhooks: Vec::new(),
            webhook_url: None,
            webhook_events: None,
            subscription_count_events: false,
            api_request_rate: None,
            authorized_connections: false,
        }
    }

    /// Whether a connection with this `Origin` header may open.
    pub fn allows_origin(&self, origin: Option<&str>) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        origin.is_some_and(|origin| {
            self.allowed_origins
                .iter()
                .any(|pattern| origin_matches(pattern, origin.trim()))
        })
    }

    /// Whether some endpoint gets webhooks of this kind.
    pub fn wants_webhook(&self, kind: WebhookKind) -> bool {
        self.webhooks
            .iter()
            .any(|endpoint| endpoint.wants_kind(kind))
    }

    /// Moves `webhook_url` and `webhook_events` into `webhooks`, so that endpoints have one
    /// form from then on.
    fn fold_webhook_url(&mut self) {
        if let Some(url) = self.webhook_url.take() {
            let kinds = self.webhook_events.take();
            self.webhooks.insert(0, Endpoint::new(&url, kinds));
        }
    }

    /// Whether node-wide subscription counts must be kept for this app: for subscription_count
    /// events, or for the webhooks that report a channel filling or emptying.
    pub fn counts_subscriptions(&self) -> bool {
        self.subscription_count_events
            || [
                WebhookKind::ChannelOccupied,
                WebhookKind::ChannelVacated,
                WebhookKind::SubscriptionCount,
            ]
            .into_iter()
            .any(|kind| self.wants_webhook(kind))
    }
}

/// A listening port: a number; 0 for none (that listener is off); or `any` for a free one
/// the kernel picks, which the start-up log line and `ports_file` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Off,
    Fixed(u16),
    Any,
}

impl Port {
    /// Whether two settings name the same fixed port.
    fn clashes(self, other: Port) -> bool {
        matches!((self, other), (Port::Fixed(a), Port::Fixed(b)) if a == b)
    }
}

impl std::str::FromStr for Port {
    type Err = String;

    fn from_str(value: &str) -> Result<Port, String> {
        match value {
            "any" => Ok(Port::Any),
            "0" => Ok(Port::Off),
            number => number
                .parse()
                .map(Port::Fixed)
                .map_err(|_| "expected a port number, 0 (off) or any".to_owned()),
        }
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Port::Off => f.write_str("0"),
            Port::Fixed(port) => write!(f, "{port}"),
            Port::Any => f.write_str("any"),
        }
    }
}

/// Which listeners expect a PROXY protocol header before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyProtocol {
    Off,
    Plain,
    Tls,
    Both,
}

impl ProxyProtocol {
    /// Whether the TLS listener (`tls`) or the plaintext one expects the header.
    pub fn on(self, tls: bool) -> bool {
        matches!(
            (self, tls),
            (ProxyProtocol::Both, _) | (ProxyProtocol::Plain, false) | (ProxyProtocol::Tls, true)
        )
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the gateway is told at start.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Config {
    /// Address the client port listens on.
    #[arg(long, env = "GATEWAY_BIND", default_value_t = IpAddr::from([0, 0, 0, 0]))]
    pub bind: IpAddr,
    /// WebSocket and HTTP API port; 0 turns it off, `any` takes a free one.
    #[arg(long, env = "GATEWAY_PORT", default_value_t = Port::Fixed(6001))]
    pub port: Port,
    /// Address of the admin port (/metrics, /ready, /health).
    #[arg(long, env = "GATEWAY_ADMIN_BIND", default_value_t = IpAddr::from([127, 0, 0, 1]))]
    pub admin_bind: IpAddr,
    /// Admin port: /metrics, /ready, /health, POST /drain; `any` takes a free one.
    #[arg(long, env = "GATEWAY_ADMIN_PORT", default_value_t = Port::Fixed(9601))]
    pub admin_port: Port,
    /// Where to write the ports the gateway listens on, as JSON, once they are open (for
    /// `any`); none means nowhere.
    #[arg(long, env = "GATEWAY_PORTS_FILE", value_parser = path)]
    pub ports_file: Option<PathBuf>,
    /// Shards to run; 0 means one per available core.
    #[arg(long, env = "GATEWAY_SHARDS", default_value_t = 0)]
    pub shards: usize,
    /// Whether each shard's thread is pinned to a core of its own. Off where the gateway shares
    /// its cores with other busy processes: a pinned shard then waits for them on its core while
    /// another core idles (TLS handshakes with a load generator on the same two cores: 1.4 times
    /// as many a second unpinned).
    #[arg(long, env = "GATEWAY_PIN_SHARDS", default_value_t = true, action = clap::ArgAction::Set)]
    pub pin_shards: bool,
    /// WebSocket sessions the node holds; 0 means as many as the open-files limit allows, less
    /// 64 sockets kept for HTTP API requests.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// Seconds of silence after which clients ping (told to them on connect).
    #[arg(long, env = "GATEWAY_ACTIVITY_TIMEOUT", default_value_t = 120)]
    pub activity_timeout: u64,
    /// Seconds of silence after which the server closes a connection with 4201.
    #[arg(long, env = "GATEWAY_INACTIVITY_TIMEOUT", default_value_t = 300)]
    pub inactivity_timeout: u64,
    /// Largest WebSocket frame or message a client may send (bigger closes with 1009): room
    /// for a client event with Pusher's 10 KB of data, and what one connection holds at most of
    /// a message that has not arrived whole.
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_BYTES", default_value_t = 15 * 1024)]
    pub max_message_bytes: usize,
    /// Bytes the whole node holds for client input not complete yet (WebSocket messages cut by
    /// a read, HTTP request bodies being read); past it new ones are refused (close 1013, 503).
    #[arg(long, env = "GATEWAY_INPUT_BUDGET_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub input_budget_bytes: usize,
    /// Channels one connection may subscribe to (more are refused with a subscription_error).
    #[arg(
        long,
        env = "GATEWAY_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        default_value_t = 100
    )]
    pub max_subscriptions_per_connection: usize,
    /// Presence channels one connection may be a member of (more are refused likewise).
    #[arg(
        long,
        env = "GATEWAY_MAX_PRESENCE_PER_CONNECTION",
        default_value_t = 10
    )]
    pub max_presence_per_connection: usize,
    /// Bytes queued to one connection (each frame plus its 32-byte handle in the queue) before
    /// it is closed as a slow consumer (4100).
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub outbound_queue_bytes: usize,
    /// Kernel send buffer of each client socket (SO_SNDBUF; the kernel doubles it), so that a
    /// client that stops reading pins little kernel memory and `outbound_queue_bytes` decides
    /// when it is slow; 0 leaves the kernel's autotuning (up to `net.ipv4.tcp_wmem`'s maximum).
    #[arg(long, env = "GATEWAY_SEND_BUFFER_BYTES", default_value_t = 32 * 1024)]
    pub send_buffer_bytes: usize,
    /// Messages a shard's inbox holds before further ones are dropped and counted.
    #[arg(long, env = "GATEWAY_INBOX_CAPACITY", default_value_t = 65_536)]
    pub inbox_capacity: usize,
    /// Seconds over which a drain spreads the closing of clients.
    #[arg(long, env = "GATEWAY_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    /// Seconds a client has to send a complete request head.
    #[arg(long, env = "GATEWAY_HEAD_TIMEOUT", default_value_t = 10)]
    pub head_timeout: u64,
    /// Largest `data` of a published event (bigger answers 413).
    #[arg(long, env = "GATEWAY_MAX_EVENT_DATA_BYTES", default_value_t = 10 * 1024)]
    pub max_event_data_bytes: usize,
    /// Largest HTTP request body (bigger answers 413).
    #[arg(long, env = "GATEWAY_MAX_REQUEST_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_request_body_bytes: usize,
    /// Seconds a connection to an app with `authorized_connections` has to sign in.
    #[arg(long, env = "GATEWAY_SIGNIN_TIMEOUT", default_value_t = 30)]
    pub signin_timeout: u64,
    /// Client events one connection may send per second (more closes with 4301).
    #[arg(long, env = "GATEWAY_CLIENT_EVENT_RATE", default_value_t = 10)]
    pub client_event_rate: u32,
    /// Users one presence channel holds (more are refused with a subscription_error).
    #[arg(long, env = "GATEWAY_MAX_PRESENCE_MEMBERS", default_value_t = 100)]
    pub max_presence_members: usize,
    /// Writes (an event's, or a group of them, to one subscriber) that may wait on a shard
    /// before HTTP API publishes wait for them to drain; past twice that, client events are
    /// refused with 4301.
    #[arg(long, env = "GATEWAY_FANOUT_BACKLOG", default_value_t = 10_000)]
    pub fanout_backlog: u64,
    /// Milliseconds an HTTP API publish waits for a shard's backlog to drain before it is
    /// answered 503; 0 answers at once.
    #[arg(long, env = "GATEWAY_FANOUT_WAIT_MS", default_value_t = 2_000)]
    pub fanout_wait_ms: u64,
    /// Webhook events waiting for the sender thread (more are dropped and counted).
    #[arg(long, env = "GATEWAY_WEBHOOK_QUEUE_CAPACITY", default_value_t = 10_000)]
    pub webhook_queue_capacity: usize,
    /// Format of log lines.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// TLS port on every shard beside the plaintext one; 0 means no TLS, `any` takes a free one.
    #[arg(long, env = "GATEWAY_TLS_PORT", default_value_t = Port::Off)]
    pub tls_port: Port,
    /// PEM certificate chain, leaf first.
    #[arg(long, env = "GATEWAY_TLS_CERT", value_parser = path)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "GATEWAY_TLS_KEY", value_parser = path)]
    pub tls_key: Option<PathBuf>,
    /// Seconds a client has to finish the TLS handshake.
    #[arg(long, env = "GATEWAY_TLS_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub tls_handshake_timeout: u64,
    /// TLS handshakes each shard starts per second, one second's worth at once; past it new TLS
    /// connections are closed before their handshake. 0 means no limit.
    #[arg(long, env = "GATEWAY_TLS_HANDSHAKE_RATE", default_value_t = 1000)]
    pub tls_handshake_rate: u32,
    /// Listeners that expect a PROXY protocol header (v1 or v2) before anything else: off,
    /// plain, tls or both.
    #[arg(long, env = "GATEWAY_PROXY_PROTOCOL", value_enum, default_value_t = ProxyProtocol::Off)]
    pub proxy_protocol: ProxyProtocol,
    /// Source networks allowed to send a PROXY header (`10.0.0.0/8,2001:db8::/32`); a
    /// connection from elsewhere to a listener that expects one is closed.
    #[arg(long, env = "GATEWAY_PROXY_TRUSTED")]
    pub proxy_trusted: Option<Networks>,
    /// Connections one client address (IPv6: its /64) may hold at once, node-wide; 0 means no
    /// limit.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: u32,
    /// New connections one client address (IPv6: its /64) may open per second, node-wide; 0
    /// means no limit.
    #[arg(long, env = "GATEWAY_CONNECTION_RATE_PER_IP", default_value_t = 0)]
    pub connection_rate_per_ip: u32,
    /// HTTP API requests per second of each app, node-wide (more answer 429); 0 means no limit.
    #[arg(long, env = "GATEWAY_API_REQUEST_RATE", default_value_t = 0)]
    pub api_request_rate: u32,
    /// Redis to cluster through: one server (`redis://host:port/`) or a Redis Cluster's seed
    /// nodes (`redis-cluster://host:port,host:port/`); none or empty means a single node.
    #[arg(long, env = "GATEWAY_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Start of every Redis channel name this cluster uses, so clusters can share a Redis.
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = "gateway")]
    pub redis_prefix: String,
    /// The apps, from the file; without one, the development app.
    #[arg(skip)]
    pub apps: Vec<App>,
}

/// Unlike clap's own path parser, takes an empty value, as a template's blank variable gives.
fn path(value: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(value))
}

/// The first app's credentials as settings of their own, so that one app needs no file.
#[derive(clap::Args)]
struct FirstApp {
    /// Id of the first app.
    #[arg(long, env = "GATEWAY_APP_ID", default_value = "1")]
    app_id: String,
    /// Key of the first app.
    #[arg(long, env = "GATEWAY_APP_KEY", default_value = "app-key")]
    app_key: String,
    /// Secret of the first app.
    #[arg(long, env = "GATEWAY_APP_SECRET", default_value = DEFAULT_SECRET)]
    app_secret: String,
}

impl FirstApp {
    /// The file's apps with the credentials `given` here set on the first; without any (or
    /// with an empty list and credentials given), the development app made of them.
    fn apply(self, apps: Option<Vec<App>>, given: impl Fn(&str) -> bool) -> Vec<App> {
        let any_given = ["app_id", "app_key", "app_secret"].into_iter().any(&given);
        let mut apps = match apps {
            Some(apps) if !apps.is_empty() || !any_given => apps,
            _ => {
                let app = App::new(&self.app_id, &self.app_key, &self.app_secret);
                return vec![App {
                    client_events: true,
                    ..app
                }];
            }
        };
        if let Some(first) = apps.first_mut() {
            if given("app_id") {
                first.id = self.app_id;
            }
            if given("app_key") {
                first.key = self.app_key;
            }
            if given("app_secret") {
                first.secret = self.app_secret;
            }
        }
        apps
    }
}

const AFTER_HELP: &str = "Every setting can also be given in the JSON config file (the \
snake_case name as key) or as the environment variable shown. Flags override the environment, \
which overrides the file. Several apps go in the file's \"apps\" list.";

#[derive(Parser)]
#[command(
    name = "gateway",
    about = "A WebSocket gateway speaking the Pusher Channels protocol",
    override_usage = "gateway [--config FILE] [--SETTING VALUE]...\n       \
                      gateway cert [--dir DIR] [NAME...]   (a development CA and certificate)",
    after_help = AFTER_HELP,
    // The file's and the environment's values come as flags ahead of the command line's.
    args_override_self = true
)]
struct Cli {
    /// JSON file of settings and apps.
    #[arg(long, env = "GATEWAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Config,
    #[command(flatten)]
    first_app: FirstApp,
}

/// The settings among the declared arguments: those with a variable, but for the file's path.
fn settings(command: &Command) -> impl Iterator<Item = &Arg> {
    command
        .get_arguments()
        .filter(|arg| arg.get_env().is_some() && arg.get_id() != "config")
}

/// `--name=value` for the `wanted` argument; `--name=` keeps values that start with `-`.
fn flag<'a>(
    mut args: impl Iterator<Item = &'a Arg>,
    wanted: impl Fn(&Arg) -> bool,
    value: &str,
) -> Option<String> {
    let long = args.find(|arg| wanted(arg))?.get_long()?;
    Some(format!("--{long}={value}"))
}

/// `GATEWAY_ADMIN_PORT=9` becomes `--admin-port=9`; an unknown `GATEWAY_` variable is an error,
/// as an unknown flag is.
fn env_flags(
    command: &Command,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    env.into_iter()
        .filter(|(name, _)| name.starts_with("GATEWAY_"))
        .map(|(name, value)| {
            let named = |arg: &Arg| arg.get_env() == Some(OsStr::new(&name));
            flag(command.get_arguments(), named, &value).ok_or(ConfigError::Unknown(name))
        })
        .collect()
}

/// What the config file holds: apps, and settings under their names.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object of settings and apps")]
struct File {
    apps: Option<Vec<App>>,
    #[serde(flatten)]
    settings: serde_json::Map<String, Value>,
}

impl File {
    /// The file's settings as flags, and its apps.
    fn read(
        path: &Path,
        command: &Command,
    ) -> Result<(Vec<String>, Option<Vec<App>>), ConfigError> {
        let error = |reason: String| ConfigError::File {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let file: File = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
        let flags = file
            .settings
            .into_iter()
            .map(|(key, value)| {
                let value = match value {
                    Value::String(s) => s,
                    v @ (Value::Number(_) | Value::Bool(_)) => v.to_string(),
                    // A list (`proxy_trusted`) is the comma-separated value a flag takes.
                    Value::Array(items) => list(&key, items)?,
                    other => return Err(invalid(&key, &other.to_string(), "expected a scalar")),
                };
                let named = |arg: &Arg| arg.get_id() == key.as_str();
                flag(settings(command), named, &value).ok_or(ConfigError::Unknown(key))
            })
            .collect::<Result<_, _>>()?;
        Ok((flags, file.apps))
    }
}

/// A list of strings from the file as one comma-separated value.
fn list(key: &str, items: Vec<Value>) -> Result<String, ConfigError> {
    let strings = items.into_iter().map(|item| match item {
        Value::String(s) if !s.contains(',') => Ok(s),
        other => Err(invalid(
            key,
            &other.to_string(),
            "expected a list of strings",
        )),
    });
    Ok(strings.collect::<Result<Vec<_>, _>>()?.join(","))
}

/// Parses flags as the program's arguments; the environment is not read here but passed in
/// (as flags), so that the caller decides what it holds.
fn parse<'a>(
    command: &Command,
    flags: impl Iterator<Item = &'a String>,
) -> Result<(Cli, ArgMatches), ConfigError> {
    let argv = std::iter::once("gateway").chain(flags.map(String::as_str));
    let matches = command
        .clone()
        .try_get_matches_from(argv)
        .map_err(|e| from_clap(command, e))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| from_clap(command, e))?;
    Ok((cli, matches))
}

/// clap's error as a `ConfigError`, naming the setting by its file key as the others do.
fn from_clap(command: &Command, error: clap::Error) -> ConfigError {
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let (arg, value) = (
        context(ContextKind::InvalidArg),
        context(ContextKind::InvalidValue),
    );
    // clap shows the argument as `--port <PORT>`.
    let long = arg.split(' ').next().and_then(|a| a.strip_prefix("--"));
    let setting = command
        .get_arguments()
        .find(|a| long.is_some() && a.get_long() == long)
        .map_or_else(|| arg.clone(), |a| a.get_id().to_string());
    let valid = match error.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => valid.join(" or "),
        _ => String::new(),
    };
    match (error.kind(), std::error::Error::source(&error)) {
        (ErrorKind::UnknownArgument, _) => ConfigError::Unknown(arg),
        (ErrorKind::ValueValidation, Some(reason)) => invalid(&setting, &value, reason),
        (ErrorKind::InvalidValue, _) if !valid.is_empty() => {
            invalid(&setting, &value, format!("expected {valid}"))
        }
        (ErrorKind::InvalidValue, _) => {
            ConfigError::MissingValue(format!("--{}", long.unwrap_or_default()))
        }
        _ => ConfigError::Usage(error.render().to_string()),
    }
}

/// A setting that could not be used, named as the user wrote it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown setting {0}")]
    Unknown(String),
    #[error("setting {setting}: {value:?} is not valid: {reason}")]
    Invalid {
        setting: String,
        value: String,
        reason: String,
    },
    #[error("flag {0} needs a value")]
    MissingValue(String),
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Inconsistent(String),
    /// Any other misuse of the command line, in clap's words.
    #[error("{0}")]
    Usage(String),
}

fn invalid(setting: &str, value: &str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_owned(),
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

impl Default for Config {
    /// Every setting at its default, with the development app.
    fn default() -> Config {
        Config::load(&[], []).expect("the defaults are a valid configuration")
    }
}

impl Config {
    /// Builds the configuration from flags (without the program name) and the environment.
    pub fn load(
        args: &[String],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let declared = Cli::command();
        let env = env_flags(&declared, env)?;
        // Values clap read from this process's environment are dropped: `env` stands for it.
        // A value may start with `-`: `--port -1` is a bad port, not an unknown flag.
        let command = declared
            .clone()
            .mut_args(|arg| arg.env(None::<&str>).allow_hyphen_values(true));
        let (file, apps) = match parse(&command, env.iter().chain(args))?.0.config {
            Some(path) => File::read(&path, &declared)?,
            None => (Vec::new(), None),
        };
        let (cli, matches) = parse(&command, file.iter().chain(&env).chain(args))?;
        let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        let mut config = cli.settings;
        // Empty turns clustering off, so a deployment template can leave the variable blank.
        config.redis_url = config
            .redis_url
            .map(|url| url.trim().to_owned())
            .filter(|url| !url.is_empty());
        config.apps = cli.first_app.apply(apps, given);
        config.apps.iter_mut().for_each(App::fold_webhook_url);
        config.validate()?;
        Ok(config)
    }

    /// The `--help` text: every setting with its flag, variable and default.
    pub fn help() -> String {
        // The variables' values stay out of it: one may hold the app secret.
        let mut command = Cli::command().mut_args(|arg| arg.hide_env_values(true));
        command.render_help().to_string()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.check_limits()?;
        self.check_ports()?;
        if let Some(url) = &self.redis_url {
            check_redis_url(url)?;
        }
        check_redis_prefix(&self.redis_prefix)?;
        self.check_proxy()?;
        self.check_apps()
    }

    fn check_proxy(&self) -> Result<(), ConfigError> {
        let protocol = self.proxy_protocol;
        let trusted = self.proxy_trusted.as_ref().is_some_and(|n| !n.0.is_empty());
        if protocol != ProxyProtocol::Off && !trusted {
            return Err(invalid(
                "proxy_trusted",
                "",
                "proxy_protocol is on: name the networks of the load balancers that send it",
            ));
        }
        let missing = [(false, self.port), (true, self.tls_port)]
            .into_iter()
            .find(|&(tls, port)| {
                protocol.on(tls) && protocol != ProxyProtocol::Both && port == Port::Off
            });
        if missing.is_some() {
            let value = format!("{protocol:?}").to_lowercase();
            return Err(invalid("proxy_protocol", &value, "that listener is off"));
        }
        let rate = self.connection_rate_per_ip;
        if rate > crate::limits::MAX_RATE_PER_IP {
            let most = format!("at most {}", crate::limits::MAX_RATE_PER_IP);
            return Err(invalid("connection_rate_per_ip", &rate.to_string(), most));
        }
        Ok(())
    }

    /// Whether the client at `ip` may send a PROXY header.
    pub fn trusts_proxy(&self, ip: IpAddr) -> bool {
        self.proxy_trusted
            .as_ref()
            .is_some_and(|trusted| trusted.contains(ip))
    }

    /// HTTP API requests per second of the app; 0 for no limit.
    pub fn api_request_rate(&self, app: &App) -> u32 {
        app.api_request_rate.unwrap_or(self.api_request_rate)
    }

    fn check_limits(&self) -> Result<(), ConfigError> {
        let positive = [
            ("activity_timeout", self.activity_timeout as usize),
            ("inactivity_timeout", self.inactivity_timeout as usize),
            ("max_message_bytes", self.max_message_bytes),
            ("input_budget_bytes", self.input_budget_bytes),
            (
                "max_subscriptions_per_connection",
                self.max_subscriptions_per_connection,
            ),
            (
                "max_presence_per_connection",
                self.max_presence_per_connection,
            ),
            ("outbound_queue_bytes", self.outbound_queue_bytes),
            ("inbox_capacity", self.inbox_capacity),
            ("head_timeout", self.head_timeout as usize),
            ("signin_timeout", self.signin_timeout as usize),
            ("tls_handshake_timeout", self.tls_handshake_timeout as usize),
            ("max_event_data_bytes", self.max_event_data_bytes),
            ("max_request_body_bytes", self.max_request_body_bytes),
            ("webhook_queue_capacity", self.webhook_queue_capacity),
            ("fanout_backlog", self.fanout_backlog as usize),
            ("max_presence_members", self.max_presence_members),
        ];
        if let Some((setting, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(invalid(setting, "0", "must be greater than 0"));
        }
        if self.shards > crate::protocol::socket_id::MAX_SHARDS as usize {
            return Err(invalid("shards", &self.shards.to_string(), "at most 1000"));
        }
        if self.inactivity_timeout <= self.activity_timeout {
            return Err(invalid(
                "inactivity_timeout",
                &self.inactivity_timeout.to_string(),
                "must be longer than activity_timeout, or clients that ping on time are closed",
            ));
        }
        Ok(())
    }

    fn check_ports(&self) -> Result<(), ConfigError> {
        let admin_port = self.admin_port.to_string();
        if self.admin_port == Port::Off {
            return Err(invalid(
                "admin_port",
                &admin_port,
                "the admin port cannot be off",
            ));
        }
        if self.port.clashes(self.admin_port) {
            return Err(invalid("admin_port", &admin_port, "same as port"));
        }
        let tls_port = self.tls_port.to_string();
        if self.tls_port.clashes(self.port) || self.tls_port.clashes(self.admin_port) {
            return Err(invalid("tls_port", &tls_port, "same as port or admin_port"));
        }
        if self.tls_port != Port::Off && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err(invalid("tls_port", &tls_port, "needs tls_cert and tls_key"));
        }
        if self.port == Port::Off && self.tls_port == Port::Off {
            return Err(invalid(
                "port",
                "0",
                "with tls_port 0 too, nothing would listen",
            ));
        }
        Ok(())
    }

    fn check_apps(&self) -> Result<(), ConfigError> {
        if self.apps.is_empty() {
            return Err(ConfigError::Inconsistent(
                "apps: at least one app is needed".into(),
            ));
        }
        for (i, app) in self.apps.iter().enumerate() {
            check_app(i, app).map_err(ConfigError::Inconsistent)?;
            if self.apps[..i]
                .iter()
                .any(|a| a.id == app.id || a.key == app.key)
            {
                return Err(ConfigError::Inconsistent(format!(
                    "apps[{i}]: id {} or key {} is used by another app",
                    app.id, app.key
                )));
            }
        }
        Ok(())
    }

    /// Whether an app still runs on the published development secret.
    pub fn uses_default_secret(&self) -> bool {
        self.apps.iter().any(|a| a.secret == DEFAULT_SECRET)
    }

    /// The app with this key, as clients name it.
    pub fn app_by_key(&self, key: &str) -> Option<(usize, &App)> {
        self.apps.iter().enumerate().find(|(_, a)| a.key == key)
    }

    /// The app with this id, as the HTTP API names it.
    pub fn app_by_id(&self, id: &str) -> Option<(usize, &App)> {
        self.apps.iter().enumerate().find(|(_, a)| a.id == id)
    }
}

/// What is wrong with the app at `i` in the list, if anything.
fn check_app(i: usize, app: &App) -> Result<(), String> {
    for (field, value) in [("id", &app.id), ("key", &app.key), ("secret", &app.secret)] {
        if value.is_empty() {
            return Err(format!("apps[{i}].{field} is empty"));
        }
    }
    if app.webhook_events.is_some() {
        return Err(format!("apps[{i}].webhook_events needs a webhook_url"));
    }
    for (n, endpoint) in app.webhooks.iter().enumerate() {
        endpoint
            .check()
            .map_err(|error| format!("apps[{i}].webhooks[{n}]: {error}"))?;
    }
    if app.allowed_origins.iter().any(|o| o.trim().is_empty()) {
        return Err(format!("apps[{i}].allowed_origins has an empty entry"));
    }
    if app.client_event_rate == Some(0) && app.client_events {
        return Err(format!(
            "apps[{i}].client_event_rate is 0: turn client_events off instead"
        ));
    }
    Ok(())
}

/// Only plain TCP and Unix sockets: TLS to Redis is not built in.
fn check_redis_url(url: &str) -> Result<(), ConfigError> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    if !matches!(scheme, "redis" | "unix" | "redis+unix" | "redis-cluster") {
        return Err(invalid(
            "redis_url",
            url,
            "expected redis://host:port/ (or unix:///path), or redis-cluster://host:port,host:port/",
        ));
    }
    crate::cluster::link::Target::from_url(url)
        .map(|_| ())
        .map_err(|e| invalid("redis_url", url, e))
}

/// Prefixes end up in Redis channel names next to `:` and `#` separators: keep them plain.
fn check_redis_prefix(prefix: &str) -> Result<(), ConfigError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    if prefix.is_empty() || prefix.len() > 64 || !prefix.chars().all(plain) {
        return Err(invalid(
            "redis_prefix",
            prefix,
            "1 to 64 characters of A-Z a-z 0-9 _ - . :",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn env(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_development_app() {
        let config = Config::load(&[], []).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(
            (config.port, config.admin_port),
            (Port::Fixed(6001), Port::Fixed(9601))
        );
        assert!(config.uses_default_secret());
        assert_eq!(config.app_by_key("app-key").unwrap().1.id, "1");
        let development = App {
            client_events: true,
            ..App::new("1", "app-key", DEFAULT_SECRET)
        };
        assert_eq!(config.apps, vec![development]);
    }

    /// README.md's table of settings: each row's names with their defaults (none when the cell
    /// is empty or says so); a row of several names has one default for each, or one for all.
    fn readme_defaults() -> BTreeMap<String, Option<String>> {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .expect("README.md has a Configuration section");
        let rows = section
            .lines()
            .skip_while(|line| !line.starts_with("| setting | default |"))
            .skip(2)
            .take_while(|line| line.starts_with('|'));
        let mut defaults = BTreeMap::new();
        for row in rows {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let values: Vec<&str> = cells[2].split(", ").collect();
            for (i, name) in cells[1].split(", ").enumerate() {
                let value = values.get(i).unwrap_or(&values[0]).trim_matches('`');
                let value = Some(value.to_owned()).filter(|v| !v.is_empty() && v != "empty");
                defaults.insert(name.trim_matches('`').to_owned(), value);
            }
        }
        defaults
    }

    #[test]
    fn the_readme_lists_every_setting_with_its_default() {
        let mut readme = readme_defaults();
        for arg in settings(&Cli::command()) {
            let name = arg.get_id().as_str();
            let default = arg.get_default_values().first().and_then(|v| v.to_str());
            let listed = readme.remove(name);
            assert!(
                listed.is_some(),
                "README.md's configuration table lacks {name}"
            );
            assert_eq!(
                listed.flatten().as_deref(),
                default,
                "README.md's default for {name}"
            );
        }
        let unknown: Vec<_> = readme.keys().collect();
        assert!(
            unknown.is_empty(),
            "README.md lists unknown settings {unknown:?}"
        );
    }

    #[test]
    fn every_setting_has_one_name_in_every_form() {
        let help = Config::help();
        for arg in settings(&Cli::command()) {
            let name = arg.get_id().as_str();
            let flag = name.replace('_', "-");
            let variable = format!("GATEWAY_{}", name.to_uppercase());
            assert_eq!(arg.get_long(), Some(flag.as_str()));
            assert_eq!(arg.get_env(), Some(OsStr::new(&variable)));
            assert!(help.contains(&format!("--{flag} ")), "--help lacks {flag}");
        }
    }

    #[test]
    fn the_environment_overrides_the_file_and_must_name_settings() {
        let dir = std::env::temp_dir().join(format!("gateway-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.json");
        std::fs::write(
            &path,
            r#"{"redis_url": "redis://10.0.0.5:6379/", "port": "7000"}"#,
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let config = Config::load(
            &[],
            env(&[("GATEWAY_CONFIG", file), ("GATEWAY_REDIS_URL", "")]),
        )
        .unwrap();
        assert_eq!((config.port, config.redis_url), (Port::Fixed(7000), None));
        let error = Config::load(&[], env(&[("GATEWAY_PROT", "1")])).unwrap_err();
        assert!(error.to_string().contains("GATEWAY_PROT"), "{error}");
        std::fs::write(&path, r#"{"config": "other.json"}"#).unwrap();
        let error = Config::load(&args(&["--config", file]), []).unwrap_err();
        assert!(
            error.to_string().contains("unknown setting config"),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn flags_override_environment_override_file() {
        let dir = std::env::temp_dir().join(format!("gateway-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.json");
        std::fs::write(
            &path,
            r#"{"port": 7000, "admin_port": 7001, "shards": 3, "apps": [{"id": "a", "key": "k", "secret": "s"}]}"#,
        )
        .unwrap();
        let config = Config::load(
            &args(&["--config", path.to_str().unwrap(), "--port=7100"]),
            env(&[
                ("GATEWAY_PORT", "7050"),
                ("GATEWAY_SHARDS", "2"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (config.port, config.admin_port, config.shards),
            (Port::Fixed(7100), Port::Fixed(7001), 2)
        );
        assert!(config.pin_shards, "pinned unless told otherwise");
        let unpinned = Config::load(&args(&["--pin-shards", "false"]), []).unwrap();
        assert!(!unpinned.pin_shards);
        let unpinned = Config::load(&[], env(&[("GATEWAY_PIN_SHARDS", "false")])).unwrap();
        assert!(!unpinned.pin_shards);
        assert_eq!(config.apps[0].key, "k");
        assert!(!config.apps[0].client_events);
        assert!(!config.uses_default_secret());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ports_are_numbers_off_or_any() {
        let config = Config::load(
            &args(&[
                "--port",
                "any",
                "--admin-port",
                "7001",
                "--ports-file",
                "p.json",
            ]),
            env(&[
                ("GATEWAY_TLS_PORT", "any"),
                ("GATEWAY_TLS_CERT", "c"),
                ("GATEWAY_TLS_KEY", "k"),
            ]),
        );
        let config = config.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (config.port, config.admin_port, config.tls_port),
            (Port::Any, Port::Fixed(7001), Port::Any)
        );
        assert_eq!(config.ports_file, Some(PathBuf::from("p.json")));
        assert_eq!(Port::Any.to_string(), "any");
        let error = Config::load(&args(&["--admin-port", "0"]), []).unwrap_err();
        assert!(error.to_string().contains("cannot be off"), "{error}");
        let error = Config::load(&args(&["--port", "-1"]), []).unwrap_err();
        assert!(error.to_string().contains("0 (off) or any"), "{error}");
        let both_any = Config::load(&args(&["--port", "any", "--admin-port", "any"]), []);
        assert!(both_any.is_ok(), "two free ports never clash");
    }

    #[test]
    fn errors_name_the_setting() {
        let error = Config::load(&args(&["--port", "seventy"]), []).unwrap_err();
        assert!(error.to_string().starts_with("setting port:"), "{error}");
        let error = Config::load(&[], env(&[("GATEWAY_LOG_FORMAT", "xml")])).unwrap_err();
        assert!(error.to_string().contains("log_format"), "{error}");
        let error = Config::load(&args(&["--nope", "1"]), []).unwrap_err();
        assert!(error.to_string().contains("--nope"), "{error}");
        let error = Config::load(&args(&["--port"]), []).unwrap_err();
        assert!(matches!(error, ConfigError::MissingValue(_)));
        let error = Config::load(&args(&["--admin-port", "6001"]), []).unwrap_err();
        assert!(error.to_string().contains("admin_port"), "{error}");
        let error = Config::load(&args(&["--inactivity-timeout", "60"]), []).unwrap_err();
        assert!(error.to_string().contains("inactivity_timeout"), "{error}");
        let error =
            Config::load(&args(&["--config", "/nonexistent/gateway.json"]), []).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/gateway.json"),
            "{error}"
        );
    }

    #[test]
    fn tls_needs_its_files_and_a_port_of_its_own() {
        let error = Config::load(&args(&["--tls-port", "6443"]), []).unwrap_err();
        assert!(error.to_string().contains("needs tls_cert"), "{error}");
        let error = Config::load(
            &args(&["--tls-port", "6001", "--tls-cert", "c", "--tls-key", "k"]),
            [],
        )
        .unwrap_err();
        assert!(error.to_string().contains("tls_port"), "{error}");
        let error = Config::load(&args(&["--port", "0"]), []).unwrap_err();
        assert!(
            error.to_string().contains("nothing would listen"),
            "{error}"
        );
        let config = Config::load(
            &args(&["--port", "0", "--tls-port", "443"]),
            env(&[
                ("GATEWAY_TLS_CERT", "/c.pem"),
                ("GATEWAY_TLS_KEY", "/k.pem"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (config.port, config.tls_port),
            (Port::Off, Port::Fixed(443))
        );
        assert_eq!(config.tls_cert, Some(PathBuf::from("/c.pem")));
    }

    #[test]
    fn per_app_settings_from_the_file() {
        let dir = std::env::temp_dir().join(format!("gateway-apps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.json");
        std::fs::write(
            &path,
            r#"{"apps": [
                {"id": "1", "key": "k1", "secret": "s1", "max_connections": 5,
                 "client_event_rate": 3, "allowed_origins": ["https://a.example"],
                 "webhook_url": "http://127.0.0.1:9/hooks",
                 "webhook_events": ["channel_occupied", "member_added"],
                 "subscription_count_events": true},
                {"id": "2", "key": "k2", "secret": "s2"}
            ]}"#,
        )
        .unwrap();
        let config = Config::load(&args(&["--config", path.to_str().unwrap()]), []).unwrap();
        let (one, two) = (&config.apps[0], &config.apps[1]);
        assert_eq!((one.max_connections, one.client_event_rate), (5, Some(3)));
        assert!(one.wants_webhook(WebhookKind::ChannelOccupied));
        assert!(!one.wants_webhook(WebhookKind::ChannelVacated));
        assert!(one.counts_subscriptions());
        assert!(!two.wants_webhook(WebhookKind::ChannelOccupied), "no url");
        assert!(!two.counts_subscriptions());
        assert_eq!(two, &App::new("2", "k2", "s2"));

        std::fs::write(
            &path,
            r#"{"apps": [{"id": "1", "key": "k", "secret": "s", "webhook_url": "ftp://x"}]}"#,
        )
        .unwrap();
        let error = Config::load(&args(&["--config", path.to_str().unwrap()]), []).unwrap_err();
        assert!(
            error.to_string().contains("webhooks[0]: url \"ftp://x\""),
            "{error}"
        );
        std::fs::write(
            &path,
            r#"{"apps": [{"id": "1", "key": "k", "secret": "s", "webhook_events": ["nope"]}]}"#,
        )
        .unwrap();
        let error = Config::load(&args(&["--config", path.to_str().unwrap()]), []).unwrap_err();
        assert!(error.to_string().contains("nope"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_app_may_have_several_webhook_endpoints_beside_its_webhook_url() {
        let file = r#"{"id": "1", "key": "k", "secret": "s", "webhook_url": "http://a/",
            "webhooks": [{"url": "https://b/", "event_types": ["client_event"],
                          "headers": {"X-Team": "realtime"},
                          "filter": {"channel_name_starts_with": "private-"}}]}"#;
        let mut app: App = serde_json::from_str(file).unwrap();
        app.fold_webhook_url();
        let urls: Vec<&str> = app.webhooks.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(urls, ["http://a/", "https://b/"]);
        assert_eq!(app.webhooks[1].headers["X-Team"], "realtime");
        assert_eq!(check_app(0, &app), Ok(()));
        app.webhooks[1]
            .headers
            .insert("X-Pusher-Key".into(), "other".into());
        let error = check_app(0, &app).unwrap_err();
        assert!(error.starts_with("apps[0].webhooks[1]: header"), "{error}");
    }

    #[test]
    fn webhook_events_default_to_all_but_subscription_count() {
        let app = App {
            webhook_url: Some("http://127.0.0.1:9/".into()),
            ..App::new("1", "k", "s")
        };
        let mut app = app;
        app.fold_webhook_url();
        assert!(app.wants_webhook(WebhookKind::ChannelVacated));
        assert!(app.wants_webhook(WebhookKind::CacheMiss));
        assert!(!app.wants_webhook(WebhookKind::SubscriptionCount));
    }

    #[test]
    fn origins() {
        let app = App {
            allowed_origins: vec![
                "https://app.example.com".into(),
                "https://*.example.org".into(),
            ],
            ..App::new("1", "k", "s")
        };
        assert!(app.allows_origin(Some("https://app.example.com")));
        assert!(app.allows_origin(Some("HTTPS://APP.example.com")));
        assert!(app.allows_origin(Some("https://a.example.org")));
        assert!(app.allows_origin(Some("https://a.b.example.org")));
        assert!(!app.allows_origin(Some("https://example.org")));
        assert!(!app.allows_origin(Some("https://evilexample.org")));
        assert!(!app.allows_origin(Some("http://a.example.org")));
        assert!(!app.allows_origin(Some("https://app.example.com.evil")));
        assert!(
            !app.allows_origin(None),
            "a list set means an Origin is needed"
        );
        assert!(App::new("1", "k", "s").allows_origin(None));
        let any = App {
            allowed_origins: vec!["*".into()],
            ..App::new("1", "k", "s")
        };
        assert!(any.allows_origin(Some("https://whatever")));
    }

    #[test]
    fn clustering_is_off_unless_a_redis_url_is_given() {
        let config = Config::load(&[], []).unwrap();
        assert_eq!(
            (config.redis_url, config.redis_prefix.as_str()),
            (None, "gateway")
        );
        let config = Config::load(
            &args(&[
                "--redis-url",
                "redis://127.0.0.1:6379/",
                "--redis-prefix",
                "eu:gw",
            ]),
            [],
        )
        .unwrap();
        assert_eq!(config.redis_url.as_deref(), Some("redis://127.0.0.1:6379/"));
        assert_eq!(config.redis_prefix, "eu:gw");
        let config = Config::load(&[], env(&[("GATEWAY_REDIS_URL", "")])).unwrap();
        assert_eq!(config.redis_url, None, "empty means off");
        let dir = std::env::temp_dir().join(format!("gateway-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.json");
        std::fs::write(
            &path,
            r#"{"redis_url": "redis://10.0.0.5:6379/", "redis_prefix": "gw"}"#,
        )
        .unwrap();
        let config = Config::load(&args(&["--config", path.to_str().unwrap()]), []).unwrap();
        assert_eq!(
            (config.redis_url.as_deref(), config.redis_prefix.as_str()),
            (Some("redis://10.0.0.5:6379/"), "gw")
        );
        std::fs::remove_dir_all(dir).unwrap();
        for bad in [
            "127.0.0.1:6379",
            "http://x/",
            "rediss://x/",
            "redis://x:port/",
        ] {
            let error = Config::load(&args(&["--redis-url", bad]), []).unwrap_err();
            assert!(error.to_string().contains("redis_url"), "{bad}: {error}");
        }
        for bad in ["", "a b", "a#b", &"x".repeat(65)] {
            let error = Config::load(&args(&["--redis-prefix", bad]), []).unwrap_err();
            assert!(error.to_string().contains("redis_prefix"), "{bad}: {error}");
        }
    }

    #[test]
    fn proxy_protocol_needs_trusted_networks_and_its_listener() {
        let config = Config::load(&[], []).unwrap();
        assert_eq!(
            (config.proxy_protocol, &config.proxy_trusted),
            (ProxyProtocol::Off, &None)
        );
        assert!(!config.trusts_proxy("127.0.0.1".parse().unwrap()));
        let config = Config::load(
            &args(&["--proxy-protocol", "plain"]),
            env(&[("GATEWAY_PROXY_TRUSTED", "10.0.0.0/8, ::1")]),
        )
        .unwrap();
        assert!(config.proxy_protocol.on(false) && !config.proxy_protocol.on(true));
        assert!(config.trusts_proxy("10.2.3.4".parse().unwrap()));
        assert!(config.trusts_proxy("::1".parse().unwrap()));
        assert!(!config.trusts_proxy("11.2.3.4".parse().unwrap()));

        let error = Config::load(&args(&["--proxy-protocol", "both"]), []).unwrap_err();
        assert!(error.to_string().contains("proxy_trusted"), "{error}");
        let error = Config::load(
            &args(&["--proxy-protocol", "tls", "--proxy-trusted", "10.0.0.1"]),
            [],
        )
        .unwrap_err();
        assert!(error.to_string().contains("listener is off"), "{error}");
        let error = Config::load(&args(&["--proxy-trusted", "10.0.0.0/40"]), []).unwrap_err();
        assert!(error.to_string().contains("proxy_trusted"), "{error}");
        let error = Config::load(&args(&["--proxy-protocol", "sometimes"]), []).unwrap_err();
        assert!(error.to_string().contains("proxy_protocol"), "{error}");
    }

    #[test]
    fn lists_and_per_client_limits_from_the_file() {
        let dir = std::env::temp_dir().join(format!("gateway-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.json");
        std::fs::write(
            &path,
            r#"{"proxy_protocol": "both", "proxy_trusted": ["10.0.0.0/8", "2001:db8::/32"],
                "max_connections_per_ip": 100, "connection_rate_per_ip": 20,
                "tls_handshake_rate": 500, "api_request_rate": 50,
                "apps": [{"id": "1", "key": "k", "secret": "s", "api_request_rate": 5},
                         {"id": "2", "key": "k2", "secret": "s2"}]}"#,
        )
        .unwrap();
        let file = args(&["--config", path.to_str().unwrap()]);
        let config = Config::load(&file, []).unwrap();
        assert!(config.trusts_proxy("2001:db8::7".parse().unwrap()));
        assert_eq!(
            (
                config.max_connections_per_ip,
                config.connection_rate_per_ip,
                config.tls_handshake_rate
            ),
            (100, 20, 500)
        );
        let rates: Vec<u32> = config
            .apps
            .iter()
            .map(|a| config.api_request_rate(a))
            .collect();
        assert_eq!(rates, [5, 50]);

        std::fs::write(&path, r#"{"proxy_trusted": ["10.0.0.0/8", 7]}"#).unwrap();
        let error = Config::load(&file, []).unwrap_err();
        assert!(error.to_string().contains("proxy_trusted"), "{error}");
        std::fs::write(&path, r#"{"connection_rate_per_ip": 70000}"#).unwrap();
        let error = Config::load(&file, []).unwrap_err();
        assert!(error.to_string().contains("at most 65534"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn app_settings_edit_the_first_app() {
        let config =
            Config::load(&args(&["--app-secret", "s3cret", "--app-id", "42"]), []).unwrap();
        assert_eq!(
            (config.apps[0].id.as_str(), config.apps[0].secret.as_str()),
            ("42", "s3cret")
        );
        assert!(!config.uses_default_secret());
    }
}
