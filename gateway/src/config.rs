//! Configuration: a JSON file, overridden by `GATEWAY_*` environment variables, overridden by
//! command-line flags. Every setting has one name (`snake_case` in the file, `GATEWAY_UPPER_CASE`
//! in the environment, `--kebab-case` as a flag) and is validated at start with an error that
//! names it.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::webhooks::WebhookKind;

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
    /// WebSocket connections the app may hold on this node; 0 means only the node's limit.
    #[serde(default)]
    pub max_connections: usize,
    /// Client events per second per connection; the global `client_event_rate` when absent.
    #[serde(default)]
    pub client_event_rate: Option<u32>,
    /// Browser origins allowed to connect (`https://app.example.com`, `https://*.example.com`,
    /// `*`); empty means any origin, or none at all.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Where webhooks are POSTed; none are sent without it.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Which webhook events are sent; every kind but `subscription_count` when absent.
    #[serde(default)]
    pub webhook_events: Option<Vec<WebhookKind>>,
    /// Whether subscribers get `pusher_internal:subscription_count` events.
    #[serde(default)]
    pub subscription_count_events: bool,
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
            webhook_url: None,
            webhook_events: None,
            subscription_count_events: false,
        }
    }

    fn development() -> App {
        App {
            client_events: true,
            ..App::new("1", "app-key", DEFAULT_SECRET)
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

    /// Whether webhooks of this kind are sent.
    pub fn wants_webhook(&self, kind: WebhookKind) -> bool {
        self.webhook_url.is_some()
            && match &self.webhook_events {
                Some(kinds) => kinds.contains(&kind),
                None => kind != WebhookKind::SubscriptionCount,
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

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the gateway is told at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address the client port listens on.
    pub bind: IpAddr,
    /// WebSocket and HTTP API port.
    pub port: u16,
    /// Address of the admin port (/metrics, /ready, /health).
    pub admin_bind: IpAddr,
    pub admin_port: u16,
    /// Shards to run; 0 means one per available core.
    pub shards: usize,
    /// Connections the node accepts; 0 means as many as the open-files limit allows.
    pub max_connections: usize,
    /// Seconds of silence after which clients ping (told to them on connect).
    pub activity_timeout: u64,
    /// Seconds of silence after which the server closes a connection with 4201.
    pub inactivity_timeout: u64,
    /// Largest WebSocket frame or message a client may send (bigger closes with 1009).
    pub max_message_bytes: usize,
    /// Bytes queued to one connection before it is closed as a slow consumer (4100).
    pub outbound_queue_bytes: usize,
    /// Kernel send buffer of each client socket (SO_SNDBUF; the kernel doubles it), so that a
    /// client that stops reading pins little kernel memory and `outbound_queue_bytes` decides
    /// when it is slow; 0 leaves the kernel's autotuning (up to `net.ipv4.tcp_wmem`'s maximum).
    pub send_buffer_bytes: usize,
    /// Messages a shard's inbox holds before further ones are dropped and counted.
    pub inbox_capacity: usize,
    /// Seconds over which a drain spreads the closing of clients.
    pub drain_seconds: u64,
    /// Seconds a client has to send a complete request head.
    pub head_timeout: u64,
    /// Largest `data` of a published event (bigger answers 413).
    pub max_event_data_bytes: usize,
    /// Largest HTTP request body (bigger answers 413).
    pub max_request_body_bytes: usize,
    /// Client events one connection may send per second (more closes with 4301).
    pub client_event_rate: u32,
    /// Users one presence channel holds (more are refused with a subscription_error).
    pub max_presence_members: usize,
    /// Webhook events waiting for the sender thread (more are dropped and counted).
    pub webhook_queue_capacity: usize,
    pub log_format: LogFormat,
    /// TLS port on every shard beside the plaintext one; 0 means no TLS.
    pub tls_port: u16,
    /// PEM certificate chain, leaf first.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Seconds a client has to finish the TLS handshake.
    pub tls_handshake_timeout: u64,
    /// Redis to cluster through (`redis://host:port/`); none means a single node.
    pub redis_url: Option<String>,
    /// Start of every Redis channel name this cluster uses, so clusters can share a Redis.
    pub redis_prefix: String,
    pub apps: Vec<App>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 6001,
            admin_bind: IpAddr::from([127, 0, 0, 1]),
            admin_port: 9601,
            shards: 0,
            max_connections: 0,
            activity_timeout: 120,
            inactivity_timeout: 300,
            max_message_bytes: 64 * 1024,
            outbound_queue_bytes: 1024 * 1024,
            send_buffer_bytes: 32 * 1024,
            inbox_capacity: 65_536,
            drain_seconds: 10,
            head_timeout: 10,
            max_event_data_bytes: 10 * 1024,
            max_request_body_bytes: 256 * 1024,
            client_event_rate: 10,
            max_presence_members: 100,
            webhook_queue_capacity: 10_000,
            log_format: LogFormat::Text,
            tls_port: 0,
            tls_cert: None,
            tls_key: None,
            tls_handshake_timeout: 10,
            redis_url: None,
            redis_prefix: "gateway".into(),
            apps: vec![App::development()],
        }
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
}

/// The settings that take one scalar value, in the order `--help` lists them.
pub const SETTINGS: [(&str, &str); 29] = [
    ("bind", "address the client port listens on (0.0.0.0)"),
    ("port", "WebSocket and HTTP API port (6001)"),
    ("admin_bind", "address of the admin port (127.0.0.1)"),
    ("admin_port", "admin port: /metrics, /ready, /health (9601)"),
    ("shards", "shards, one per core when 0 (0)"),
    (
        "max_connections",
        "node connection limit, from the open-files limit when 0 (0)",
    ),
    (
        "activity_timeout",
        "seconds of silence before clients ping (120)",
    ),
    (
        "inactivity_timeout",
        "seconds of silence before the server closes with 4201 (300)",
    ),
    (
        "max_message_bytes",
        "largest client frame or message, else close 1009 (65536)",
    ),
    (
        "outbound_queue_bytes",
        "bytes queued per connection before close 4100 (1048576)",
    ),
    (
        "send_buffer_bytes",
        "kernel send buffer per client socket, doubled by the kernel; 0: autotuned (32768)",
    ),
    ("inbox_capacity", "messages a shard inbox holds (65536)"),
    (
        "drain_seconds",
        "seconds a drain spreads client closes over (10)",
    ),
    (
        "head_timeout",
        "seconds to send a complete request head (10)",
    ),
    (
        "max_event_data_bytes",
        "largest published event data, else 413 (10240)",
    ),
    (
        "max_request_body_bytes",
        "largest HTTP request body, else 413 (262144)",
    ),
    (
        "client_event_rate",
        "client events per second per connection, else 4301 (10)",
    ),
    (
        "max_presence_members",
        "users one presence channel holds (100)",
    ),
    (
        "webhook_queue_capacity",
        "webhook events waiting to be sent, else dropped (10000)",
    ),
    ("log_format", "text or json (text)"),
    (
        "tls_port",
        "TLS port beside the plaintext one, off when 0 (0)",
    ),
    ("tls_cert", "PEM certificate chain for the TLS port"),
    ("tls_key", "PEM private key for the TLS port"),
    (
        "tls_handshake_timeout",
        "seconds to finish a TLS handshake (10)",
    ),
    (
        "redis_url",
        "redis://host:port/ to cluster through; empty for a single node (empty)",
    ),
    (
        "redis_prefix",
        "start of this cluster's Redis channel names (gateway)",
    ),
    ("app_id", "id of the first app (1)"),
    ("app_key", "key of the first app (app-key)"),
    ("app_secret", "secret of the first app (app-secret)"),
];

fn invalid(setting: &str, value: &str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_owned(),
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

fn parse<T: std::str::FromStr>(setting: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e| invalid(setting, value, e))
}

impl Config {
    /// Builds the configuration from flags (without the program name) and the environment.
    pub fn load(
        args: &[String],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let flags = parse_flags(args)?;
        let env = env_settings(env);
        let mut config = Config::default();
        let file = flags
            .iter()
            .rev()
            .chain(env.iter().rev())
            .find(|(k, _)| k == "config");
        if let Some((_, path)) = file {
            config.apply_file(&PathBuf::from(path))?;
        }
        for (key, value) in env.iter().chain(&flags) {
            if key != "config" {
                config.set(key, value)?;
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn apply_file(&mut self, path: &PathBuf) -> Result<(), ConfigError> {
        let file_error = |reason: String| ConfigError::File {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let Value::Object(map) =
            serde_json::from_str::<Value>(&text).map_err(|e| file_error(e.to_string()))?
        else {
            return Err(file_error("the top level must be a JSON object".into()));
        };
        for (key, value) in map {
            match (key.as_str(), value) {
                ("apps", apps) => {
                    self.apps = serde_json::from_value(apps)
                        .map_err(|e| file_error(format!("apps: {e}")))?;
                }
                (_, Value::String(s)) => self.set(&key, &s)?,
                (_, v @ (Value::Number(_) | Value::Bool(_))) => self.set(&key, &v.to_string())?,
                (_, other) => return Err(invalid(&key, &other.to_string(), "expected a scalar")),
            }
        }
        Ok(())
    }

    /// Sets one scalar setting from its text form.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "bind" => self.bind = parse(key, value)?,
            "port" => self.port = parse(key, value)?,
            "admin_bind" => self.admin_bind = parse(key, value)?,
            "admin_port" => self.admin_port = parse(key, value)?,
            "shards" => self.shards = parse(key, value)?,
            "max_connections" => self.max_connections = parse(key, value)?,
            "activity_timeout" => self.activity_timeout = parse(key, value)?,
            "inactivity_timeout" => self.inactivity_timeout = parse(key, value)?,
            "max_message_bytes" => self.max_message_bytes = parse(key, value)?,
            "outbound_queue_bytes" => self.outbound_queue_bytes = parse(key, value)?,
            "send_buffer_bytes" => self.send_buffer_bytes = parse(key, value)?,
            "inbox_capacity" => self.inbox_capacity = parse(key, value)?,
            "drain_seconds" => self.drain_seconds = parse(key, value)?,
            "head_timeout" => self.head_timeout = parse(key, value)?,
            "max_event_data_bytes" => self.max_event_data_bytes = parse(key, value)?,
            "max_request_body_bytes" => self.max_request_body_bytes = parse(key, value)?,
            "client_event_rate" => self.client_event_rate = parse(key, value)?,
            "max_presence_members" => self.max_presence_members = parse(key, value)?,
            "webhook_queue_capacity" => self.webhook_queue_capacity = parse(key, value)?,
            "log_format" => {
                self.log_format = match value {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(invalid(key, value, "expected text or json")),
                }
            }
            "tls_port" => self.tls_port = parse(key, value)?,
            "tls_cert" => self.tls_cert = Some(PathBuf::from(value)),
            "tls_key" => self.tls_key = Some(PathBuf::from(value)),
            "tls_handshake_timeout" => self.tls_handshake_timeout = parse(key, value)?,
            // Empty turns clustering off, so a deployment template can leave the variable blank.
            "redis_url" => self.redis_url = Some(value.trim().to_owned()).filter(|u| !u.is_empty()),
            "redis_prefix" => self.redis_prefix = value.to_owned(),
            "app_id" => self.first_app().id = value.to_owned(),
            "app_key" => self.first_app().key = value.to_owned(),
            "app_secret" => self.first_app().secret = value.to_owned(),
            _ => return Err(ConfigError::Unknown(key.to_owned())),
        }
        Ok(())
    }

    fn first_app(&mut self) -> &mut App {
        if self.apps.is_empty() {
            self.apps.push(App::development());
        }
        &mut self.apps[0]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("activity_timeout", self.activity_timeout as usize),
            ("inactivity_timeout", self.inactivity_timeout as usize),
            ("max_message_bytes", self.max_message_bytes),
            ("outbound_queue_bytes", self.outbound_queue_bytes),
            ("inbox_capacity", self.inbox_capacity),
            ("head_timeout", self.head_timeout as usize),
            ("tls_handshake_timeout", self.tls_handshake_timeout as usize),
            ("max_event_data_bytes", self.max_event_data_bytes),
            ("max_request_body_bytes", self.max_request_body_bytes),
            ("webhook_queue_capacity", self.webhook_queue_capacity),
            ("max_presence_members", self.max_presence_members),
        ];
        for (setting, value) in positive {
            if value == 0 {
                return Err(invalid(setting, "0", "must be greater than 0"));
            }
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
        if self.port != 0 && self.port == self.admin_port {
            return Err(invalid(
                "admin_port",
                &self.admin_port.to_string(),
                "same as port",
            ));
        }
        if self.tls_port != 0 && [self.port, self.admin_port].contains(&self.tls_port) {
            return Err(invalid(
                "tls_port",
                &self.tls_port.to_string(),
                "same as port or admin_port",
            ));
        }
        if self.tls_port != 0 && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err(invalid(
                "tls_port",
                &self.tls_port.to_string(),
                "needs tls_cert and tls_key",
            ));
        }
        if self.port == 0 && self.tls_port == 0 {
            return Err(invalid(
                "port",
                "0",
                "with tls_port 0 too, nothing would listen",
            ));
        }
        if let Some(url) = &self.redis_url {
            check_redis_url(url)?;
        }
        check_redis_prefix(&self.redis_prefix)?;
        if self.apps.is_empty() {
            return Err(ConfigError::Inconsistent(
                "apps: at least one app is needed".into(),
            ));
        }
        for (i, app) in self.apps.iter().enumerate() {
            for (field, value) in [("id", &app.id), ("key", &app.key), ("secret", &app.secret)] {
                if value.is_empty() {
                    return Err(ConfigError::Inconsistent(format!(
                        "apps[{i}].{field} is empty"
                    )));
                }
            }
            if self.apps[..i]
                .iter()
                .any(|a| a.id == app.id || a.key == app.key)
            {
                return Err(ConfigError::Inconsistent(format!(
                    "apps[{i}]: id {} or key {} is used by another app",
                    app.id, app.key
                )));
            }
            if let Some(url) = &app.webhook_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError::Inconsistent(format!(
                        "apps[{i}].webhook_url {url:?} must start with http:// or https://"
                    )));
                }
            }
            if app.allowed_origins.iter().any(|o| o.trim().is_empty()) {
                return Err(ConfigError::Inconsistent(format!(
                    "apps[{i}].allowed_origins has an empty entry"
                )));
            }
            if app.client_event_rate == Some(0) && app.client_events {
                return Err(ConfigError::Inconsistent(format!(
                    "apps[{i}].client_event_rate is 0: turn client_events off instead"
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

/// Only plain TCP and Unix sockets: TLS to Redis is not built in.
fn check_redis_url(url: &str) -> Result<(), ConfigError> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    if !matches!(scheme, "redis" | "unix" | "redis+unix") {
        return Err(invalid(
            "redis_url",
            url,
            "expected redis://host:port/ (or unix:///path)",
        ));
    }
    redis::IntoConnectionInfo::into_connection_info(url)
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

/// `GATEWAY_ADMIN_PORT=9` becomes `("admin_port", "9")`; other variables are ignored.
fn env_settings(env: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    env.into_iter()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix("GATEWAY_")?.to_ascii_lowercase();
            Some((key, value))
        })
        .collect()
}

/// `--admin-port 9` and `--admin-port=9` become `("admin_port", "9")`.
fn parse_flags(args: &[String]) -> Result<Vec<(String, String)>, ConfigError> {
    let mut flags = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let Some(name) = arg.strip_prefix("--") else {
            return Err(ConfigError::Unknown(arg.clone()));
        };
        let (name, value) = match name.split_once('=') {
            Some((name, value)) => (name, value.to_owned()),
            None => (
                name,
                args.next()
                    .ok_or_else(|| ConfigError::MissingValue(arg.clone()))?
                    .clone(),
            ),
        };
        let key = name.replace('-', "_");
        if key != "config" && !SETTINGS.iter().any(|(k, _)| *k == key) {
            return Err(ConfigError::Unknown(arg.clone()));
        }
        flags.push((key, value));
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
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
        assert!(config.uses_default_secret());
        assert_eq!(config.app_by_key("app-key").unwrap().1.id, "1");
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
            (7100, 7001, 2)
        );
        assert_eq!(config.apps[0].key, "k");
        assert!(!config.apps[0].client_events);
        assert!(!config.uses_default_secret());
        std::fs::remove_dir_all(dir).unwrap();
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
        assert_eq!((config.port, config.tls_port), (0, 443));
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
        assert!(error.to_string().contains("webhook_url"), "{error}");
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
    fn webhook_events_default_to_all_but_subscription_count() {
        let app = App {
            webhook_url: Some("http://127.0.0.1:9/".into()),
            ..App::new("1", "k", "s")
        };
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
