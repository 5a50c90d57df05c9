//! The URLs the tool aims at, and the rule that keeps it on loopback unless told otherwise.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Ws,
    Wss,
    Http,
    Https,
}

impl Scheme {
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Wss | Scheme::Https)
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Ws | Scheme::Http => 80,
            Scheme::Wss | Scheme::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("`{0}` has no scheme (expected {1})")]
    MissingScheme(String, &'static str),
    #[error("`{0}` has the wrong scheme (expected {1})")]
    WrongScheme(String, &'static str),
    #[error("`{0}` has no host")]
    MissingHost(String),
    #[error("`{0}` has an invalid port")]
    InvalidPort(String),
    #[error("`{0}` is not a loopback address (127.0.0.0/8, ::1, localhost); pass --allow-remote to load a remote server")]
    NotLoopback(String),
    #[error("cannot resolve `{0}`: {1}")]
    Unresolvable(String, String),
}

/// Which schemes a flag accepts.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    WebSocket,
    Http,
}

impl Expect {
    fn accepts(self, scheme: Scheme) -> bool {
        match self {
            Expect::WebSocket => matches!(scheme, Scheme::Ws | Scheme::Wss),
            Expect::Http => matches!(scheme, Scheme::Http | Scheme::Https),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Expect::WebSocket => "ws:// or wss://",
            Expect::Http => "http:// or https://",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// Without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// Starts with `/`.
    pub path_and_query: String,
}

impl Url {
    pub fn parse(text: &str, expect: Expect) -> Result<Url, UrlError> {
        let (scheme_text, rest) = text
            .split_once("://")
            .ok_or_else(|| UrlError::MissingScheme(text.into(), expect.describe()))?;
        let scheme = match scheme_text.to_ascii_lowercase().as_str() {
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(UrlError::WrongScheme(text.into(), expect.describe())),
        };
        if !expect.accepts(scheme) {
            return Err(UrlError::WrongScheme(text.into(), expect.describe()));
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(authority_end);
        let path_and_query = match path_and_query.chars().next() {
            None => "/".to_string(),
            Some('?') => format!("/{path_and_query}"),
            Some(_) => path_and_query.to_string(),
        };
        let (host, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| UrlError::MissingHost(text.into()))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(UrlError::InvalidPort(text.into())),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::MissingHost(text.into()));
        }
        let port = match port_text {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| UrlError::InvalidPort(text.into()))?,
            None => scheme.default_port(),
        };
        Ok(Url {
            scheme,
            host: host.to_string(),
            port,
            path_and_query,
        })
    }

    /// `host:port` as the Host header and TLS server name want it (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn require_loopback(&self, allow_remote: bool) -> Result<(), UrlError> {
        if allow_remote || host_is_loopback(&self.host) {
            Ok(())
        } else {
            Err(UrlError::NotLoopback(self.host.clone()))
        }
    }

    /// The first address the host resolves to; names other than `localhost` only resolve
    /// when remote targets are allowed, which `require_loopback` checked before.
    pub fn resolve(&self) -> Result<SocketAddr, UrlError> {
        let unresolvable = |reason: String| UrlError::Unresolvable(self.host.clone(), reason);
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|error| unresolvable(error.to_string()))?
            .next()
            .ok_or_else(|| unresolvable("no addresses".into()))
    }

    /// The HTTP API's base URL on the server this URL points at: the same host and port (Pusher
    /// servers answer WebSockets and the API on one port), https when the URL is TLS.
    pub fn api_base(&self) -> Url {
        Url {
            scheme: if self.scheme.is_tls() {
                Scheme::Https
            } else {
                Scheme::Http
            },
            host: self.host.clone(),
            port: self.port,
            path_and_query: "/".into(),
        }
    }

    /// The WebSocket URL with the Pusher protocol version added when the URL has no query.
    pub fn with_protocol_query(&self) -> Url {
        let mut url = self.clone();
        if !url.path_and_query.contains('?') {
            url.path_and_query.push_str(concat!(
                "?protocol=7&client=loadtest&version=",
                env!("CARGO_PKG_VERSION")
            ));
        }
        url
    }
}

impl fmt::Display for Url {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority(),
            self.path_and_query
        )
    }
}

/// 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) and the name `localhost`.
pub fn host_is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognized() {
        for host in [
            "127.0.0.1",
            "127.255.0.9",
            "::1",
            "localhost",
            "LocalHost",
            "::ffff:127.0.0.1",
        ] {
            assert!(host_is_loopback(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "example.com",
            "localhost.example.com",
            "128.0.0.1",
        ] {
            assert!(!host_is_loopback(host), "{host}");
        }
    }

    #[test]
    fn remote_targets_need_permission() {
        let remote = Url::parse("ws://192.0.2.7:6001/app/k", Expect::WebSocket).expect("parses");
        assert_eq!(
            remote.require_loopback(false),
            Err(UrlError::NotLoopback("192.0.2.7".into()))
        );
        assert_eq!(remote.require_loopback(true), Ok(()));
        let local = Url::parse("http://[::1]:6001", Expect::Http).expect("parses");
        assert_eq!(local.require_loopback(false), Ok(()));
    }

    #[test]
    fn urls_parse_into_parts() {
        let url = Url::parse("wss://localhost/app/app-key", Expect::WebSocket).expect("parses");
        assert_eq!((url.scheme, url.port), (Scheme::Wss, 443));
        assert_eq!(url.path_and_query, "/app/app-key");
        let url = Url::parse("http://[::1]:9601?x=1", Expect::Http).expect("parses");
        assert_eq!((url.host.as_str(), url.port), ("::1", 9601));
        assert_eq!(url.path_and_query, "/?x=1");
        assert_eq!(url.authority(), "[::1]:9601");
        assert!(matches!(
            Url::parse("http://127.0.0.1:6001", Expect::WebSocket),
            Err(UrlError::WrongScheme(..))
        ));
        assert!(matches!(
            Url::parse("ws://127.0.0.1:99999/", Expect::WebSocket),
            Err(UrlError::InvalidPort(_))
        ));
        assert!(matches!(
            Url::parse("127.0.0.1:6001", Expect::WebSocket),
            Err(UrlError::MissingScheme(..))
        ));
    }

    #[test]
    fn the_api_base_is_the_websocket_server() {
        let base = |text: &str| {
            Url::parse(text, Expect::WebSocket)
                .expect("parses")
                .api_base()
                .to_string()
        };
        assert_eq!(
            base("ws://127.0.0.1:7201/app/k?protocol=7"),
            "http://127.0.0.1:7201/"
        );
        assert_eq!(
            base("wss://localhost:7443/app/k"),
            "https://localhost:7443/"
        );
        assert_eq!(base("ws://[::1]/app/k"), "http://[::1]:80/");
        assert_eq!(base("wss://localhost/app/k"), "https://localhost:443/");
    }

    #[test]
    fn protocol_query_is_added_only_when_missing() {
        let url = Url::parse("ws://127.0.0.1:6001/app/k", Expect::WebSocket).expect("parses");
        assert!(url
            .with_protocol_query()
            .path_and_query
            .starts_with("/app/k?protocol=7&"));
        let url =
            Url::parse("ws://127.0.0.1:6001/app/k?protocol=5", Expect::WebSocket).expect("parses");
        assert_eq!(
            url.with_protocol_query().path_and_query,
            "/app/k?protocol=5"
        );
    }
}
