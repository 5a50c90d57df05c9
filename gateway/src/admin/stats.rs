//! Counters: one set per shard, written only by that shard (plain relaxed atomics, no locks)
//! and summed when /metrics is scraped.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// A reason a counter is kept for, as a Prometheus label.
pub trait Labelled: Copy + 'static {
    const ALL: &'static [Self];
    /// The Prometheus label value.
    fn label(self) -> &'static str;
    /// The slot of its counter.
    fn index(self) -> usize;
}

macro_rules! labelled {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl Labelled for $name {
            const ALL: &'static [$name] = &[$($name::$variant),+];

            fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

labelled! {
    /// Why a WebSocket session ended.
    Disconnect {
        ClientClose => "client_close",
        ClientGone => "client_gone",
        ProtocolError => "protocol_error",
        SlowConsumer => "slow_consumer",
        ActivityTimeout => "activity_timeout",
        Drain => "drain",
        Refused => "refused",
        Terminated => "terminated",
        SigninTimeout => "signin_timeout",
    }
}

labelled! {
    /// Bad input or a limit that was answered with an error.
    Rejection {
        HeadTooLarge => "head_too_large",
        HeadTimeout => "head_timeout",
        BadRequest => "bad_request",
        BadUpgrade => "bad_upgrade",
        NotFound => "not_found",
        UnknownApp => "unknown_app",
        AppDisabled => "app_disabled",
        UnsupportedProtocol => "unsupported_protocol",
        OverCapacity => "over_capacity",
        FileLimit => "file_limit",
        Unauthorized => "unauthorized",
        BodyTooLarge => "body_too_large",
        FrameTooBig => "frame_too_big",
        InvalidUtf8 => "invalid_utf8",
        ProtocolError => "ws_protocol_error",
        BinaryFrame => "binary_frame",
        BadMessage => "bad_message",
        BadChannel => "bad_channel",
        SubscriptionAuth => "subscription_auth",
        BadChannelData => "bad_channel_data",
        PresenceFull => "presence_members_limit",
        UserIdTooLong => "user_id_too_long",
        UserInfoTooLarge => "user_info_too_large",
        ServerToUser => "server_to_user_channel",
        SigninAuth => "signin_auth",
        BadUserData => "bad_user_data",
        AlreadySignedIn => "already_signed_in",
        WatchlistTooLong => "watchlist_too_long",
        AppOverQuota => "app_over_quota",
        OriginNotAllowed => "origin_not_allowed",
        ClientEventRefused => "client_event_refused",
        ClientEventRate => "client_event_rate",
        ClientEventNameTooLong => "client_event_name_too_long",
        ClientEventTooLarge => "client_event_too_large",
        FanoutBacklog => "fanout_backlog",
        SigninTimeout => "signin_timeout",
        UnsupportedEvent => "unsupported_event",
        Unavailable => "unavailable",
        ResponseTimeout => "response_timeout",
        MessageTimeout => "message_timeout",
        BodyTimeout => "body_timeout",
        InputBudget => "input_budget",
        TooManySubscriptions => "subscriptions_per_connection",
        ProxyUntrusted => "proxy_untrusted",
        ProxyBadHeader => "proxy_bad_header",
        ProxyTimeout => "proxy_timeout",
        IpConnections => "ip_connections",
        IpConnectionRate => "ip_connection_rate",
        TlsHandshakeRate => "tls_handshake_rate",
        ApiRate => "api_rate",
    }
}

labelled! {
    /// Why a TLS handshake did not complete.
    TlsFailure {
        Timeout => "timeout",
        PlainHttp => "plain_http",
        Protocol => "protocol",
        Closed => "closed",
    }
}

labelled! {
    /// Why a broadcast did not go to the other nodes of a cluster.
    PublishFailure {
        QueueFull => "queue_full",
        Disconnected => "disconnected",
        Error => "error",
    }
}

/// HTTP statuses counted one by one; anything else is counted as "other".
pub const HTTP_STATUSES: [u16; 14] = [
    101, 200, 400, 401, 403, 404, 405, 411, 413, 426, 429, 431, 500, 503,
];

/// One shard's counters.
#[derive(Debug)]
pub struct ShardStats {
    /// Open WebSocket sessions, by app number.
    pub connections: Box<[AtomicI64]>,
    pub connects: AtomicU64,
    pub disconnects: Box<[AtomicU64]>,
    pub rejected: Box<[AtomicU64]>,
    /// By index in `HTTP_STATUSES`, then "other".
    pub http_requests: Box<[AtomicU64]>,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    /// Messages other threads could not put in this shard's full inbox.
    pub inbox_drops: AtomicU64,
    /// Messages for the Redis bridge that wait in this shard because its queue was full.
    pub cluster_backlog: AtomicU64,
    /// Deliveries waiting on this shard to be made in slices (see `pusher::fanout`): the
    /// subscribers each waiting broadcast had when it was queued.
    pub fanout_waiting: AtomicU64,
    pub tls_handshakes: AtomicU64,
    /// TLS connections closed for a record that failed authentication or broke the protocol.
    pub tls_record_errors: AtomicU64,
    pub tls_failures: Box<[AtomicU64]>,
    /// Webhook events this shard could not put in the sender thread's full queue.
    pub webhook_drops: AtomicU64,
}

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl ShardStats {
    pub fn new(apps: usize) -> ShardStats {
        ShardStats {
            connections: (0..apps).map(|_| AtomicI64::new(0)).collect(),
            connects: AtomicU64::new(0),
            disconnects: counters(Disconnect::ALL.len()),
            rejected: counters(Rejection::ALL.len()),
            http_requests: counters(HTTP_STATUSES.len() + 1),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            slow_consumer_disconnects: AtomicU64::new(0),
            inbox_drops: AtomicU64::new(0),
            cluster_backlog: AtomicU64::new(0),
            fanout_waiting: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_record_errors: AtomicU64::new(0),
            tls_failures: counters(TlsFailure::ALL.len()),
            webhook_drops: AtomicU64::new(0),
        }
    }

    pub fn reject(&self, reason: Rejection) {
        self.rejected[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn tls_failure(&self, reason: TlsFailure) {
        self.tls_failures[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn disconnect(&self, app: usize, reason: Disconnect) {
        self.connections[app].fetch_sub(1, Relaxed);
        self.disconnects[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn connect(&self, app: usize) {
        self.connections[app].fetch_add(1, Relaxed);
        self.connects.fetch_add(1, Relaxed);
    }

    pub fn http_status(&self, status: u16) {
        let index = HTTP_STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(HTTP_STATUSES.len());
        self.http_requests[index].fetch_add(1, Relaxed);
    }

    /// Open sessions on this shard, all apps together.
    pub fn open_connections(&self) -> i64 {
        self.connections.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// Adds to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

/// An empty latency histogram in microseconds, from 1 µs to a minute at 3 significant digits:
/// the one shape every shard and the cluster bridge record into, so that they merge.
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds")
}
