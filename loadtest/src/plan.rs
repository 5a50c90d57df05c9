//! Turns flags into a run that is valid, aimed at loopback (unless allowed otherwise), and
//! bounded in count and time.

use std::net::IpAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use crate::cli::{
    ChurnArgs, CommonArgs, ConnectArgs, FanoutArgs, HandshakesArgs, HostileArgs, HostileMode,
    TlsVersion,
};
use crate::hostile::{AFTER_CLOSE_WAIT, DRAIN_WAIT, MIN_QUIET, QUIET_MARGIN};
use crate::http::HttpEndpoint;
use crate::link::{WorkerSpec, WorkerTask};
use crate::pusher::{EndpointError, TargetSettings};
use crate::signing::ApiCredentials;
use crate::source_ips::{parse_source_ips, SourceIpError};
use crate::target::{Expect, Url, UrlError};
use crate::worker::CLOSE_WAIT;

pub const MAX_CONNECTIONS: u64 = 200_000;
pub const MAX_WORKERS: u32 = 64;
pub const MAX_CONNECT_RATE: f64 = 100_000.0;
pub const MAX_PUBLISH_RATE: f64 = 100_000.0;
pub const MAX_CHANNELS: u64 = 10_000;
pub const MAX_PUBLISHERS: usize = 64;
pub const MAX_RUN_SECONDS: f64 = 4.0 * 3600.0;
/// Keeps every event's data under the protocol's 10 KiB limit, stamp included.
pub const MAX_PAYLOAD_BYTES: usize = 9 * 1024;
/// Channels a `hostile` run occupies at most: listing them all stays well under the 16 MiB a
/// response may have here.
pub const MAX_HOSTILE_CHANNELS: u64 = 200_000;
/// Size of an unfinished message or body: room for a JSON envelope, up to what no server takes.
pub const MIN_UNFINISHED_BYTES: u64 = 64;
pub const MAX_UNFINISHED_BYTES: u64 = 16 << 20;
/// Descriptors a process needs besides its connections: stdio, pipes, the event loop, the
/// HTTP API and metrics connections.
pub const RESERVED_DESCRIPTORS: u64 = 64;
/// Time for starting workers, reading results and closing, on top of the planned phases.
const OVERHEAD_SECONDS: f64 = 10.0;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--{flag} must be {requirement} (got {value})")]
    OutOfRange {
        flag: &'static str,
        requirement: String,
        value: String,
    },
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("--source-ips: {0}")]
    SourceIps(#[from] SourceIpError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("handshakes needs a wss:// URL (got {0})")]
    NotTls(String),
    #[error("the run needs up to {needed:.0} s, over --max-duration {limit:.0} s")]
    TooLong { needed: f64, limit: f64 },
}

/// What every kind of run has.
pub struct Common {
    pub target: TargetSettings,
    pub url: Url,
    pub workers: u32,
    pub source_ips: Vec<IpAddr>,
    pub json: Option<PathBuf>,
    pub max_duration: Duration,
    pub server_pid: Option<u32>,
    pub step_timeout: Duration,
    pub max_in_flight: usize,
    pub show_progress: bool,
    /// Said on stderr before the run starts.
    pub warnings: Vec<String>,
}

/// A Prometheus gauge to watch.
pub struct Gauge {
    pub endpoint: HttpEndpoint,
    pub metric: String,
}

pub struct ConnectPlan {
    pub common: Common,
    pub connections: u64,
    pub rate: f64,
    pub hold: Duration,
    pub gauge: Option<Gauge>,
}

pub struct FanoutPlan {
    pub common: Common,
    pub subscribers: u64,
    pub channels: Vec<String>,
    pub publish_rate: f64,
    pub duration: Duration,
    pub rate: f64,
    pub api: HttpEndpoint,
    pub credentials: ApiCredentials,
    pub publishers: usize,
    pub payload_bytes: usize,
    pub event: String,
    pub drain_timeout: Duration,
}

pub struct ChurnPlan {
    pub common: Common,
    pub concurrency: u64,
    pub rate: f64,
    pub duration: Duration,
    pub channels: Vec<String>,
    pub gauge: Gauge,
    pub settle_timeout: Duration,
}

pub struct HandshakesPlan {
    pub common: Common,
    pub duration: Duration,
    pub concurrency: usize,
    pub resume: bool,
    pub tls_version: TlsVersion,
}

/// Where and as whom HTTP API requests go.
pub struct ApiTarget {
    pub endpoint: Rc<HttpEndpoint>,
    pub credentials: Rc<ApiCredentials>,
}

pub struct HostilePlan {
    pub common: Common,
    /// New connections per second.
    pub rate: f64,
    pub work: HostileWork,
}

pub enum HostileWork {
    Unfinished(UnfinishedPlan),
    ManyChannels(ManyChannelsPlan),
}

/// `partial-message`, `trickle`, `partial-body`.
pub struct UnfinishedPlan {
    pub connections: u64,
    pub hold: Duration,
    pub input: UnfinishedInput,
}

pub enum UnfinishedInput {
    /// A text frame of `bytes` of payload; all but its last byte at once, or with `trickle` its
    /// first byte and then one more every interval.
    Message {
        bytes: u64,
        trickle: Option<Duration>,
    },
    /// `POST /apps/{id}/events` with a body of `bytes`, all but its last byte sent.
    Body { bytes: u64, api: ApiTarget },
}

pub struct ManyChannelsPlan {
    pub channels: u64,
    pub per_connection: u64,
    /// Channel `n` is `{prefix}-{n}`; the bystanders' is `{prefix}-bystanders`.
    pub prefix: String,
    pub bystanders: u64,
    pub publish_rate: f64,
    pub queries: u64,
    pub api: ApiTarget,
}

impl ManyChannelsPlan {
    /// Connections needed to occupy every channel.
    pub fn occupiers(&self) -> u64 {
        self.channels.div_ceil(self.per_connection)
    }
}

pub enum Plan {
    Connect(ConnectPlan),
    Fanout(FanoutPlan),
    Churn(ChurnPlan),
    Handshakes(HandshakesPlan),
    Hostile(HostilePlan),
}

fn out_of_range(flag: &'static str, requirement: String, value: impl ToString) -> PlanError {
    PlanError::OutOfRange {
        flag,
        requirement,
        value: value.to_string(),
    }
}

/// A finite number in (0, max].
fn positive(flag: &'static str, value: f64, max: f64) -> Result<f64, PlanError> {
    if value.is_finite() && value > 0.0 && value <= max {
        Ok(value)
    } else {
        Err(out_of_range(
            flag,
            format!("above 0 and at most {max}"),
            value,
        ))
    }
}

/// A finite number in [0, max].
fn non_negative(flag: &'static str, value: f64, max: f64) -> Result<f64, PlanError> {
    if value.is_finite() && (0.0..=max).contains(&value) {
        Ok(value)
    } else {
        Err(out_of_range(flag, format!("between 0 and {max}"), value))
    }
}

fn count_in<T: PartialOrd + ToString + Copy>(
    flag: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, PlanError> {
    if value >= min && value <= max {
        Ok(value)
    } else {
        Err(out_of_range(
            flag,
            format!("between {} and {}", min.to_string(), max.to_string()),
            value,
        ))
    }
}

fn common(args: CommonArgs, per_process: u64, open_file_limit: u64) -> Result<Common, PlanError> {
    let url = Url::parse(&args.url, Expect::WebSocket)?.with_protocol_query();
    url.require_loopback(args.allow_remote)?;
    let workers = count_in("workers", args.workers, 1, MAX_WORKERS)?;
    let max_duration = positive("max-duration", args.max_duration, MAX_RUN_SECONDS)?;
    let timeout = positive("timeout", args.timeout, 600.0)?;
    let max_in_flight = count_in("max-in-flight", args.max_in_flight, 1, 100_000)?;
    let source_ips = match &args.source_ips {
        Some(spec) => parse_source_ips(spec)?,
        None => Vec::new(),
    };
    let target = TargetSettings {
        url: url.to_string(),
        ca: args.ca,
        insecure: args.insecure,
    };
    // Fails here, before anything starts, when the URL does not resolve or TLS is misconfigured.
    crate::pusher::Endpoint::new(&target)?;
    let mut warnings = Vec::new();
    let needed = per_process + RESERVED_DESCRIPTORS;
    if needed > open_file_limit {
        warnings.push(format!(
            "each process may hold {open_file_limit} files but this plan needs about {needed} per \
             process; expect `emfile` failures (raise --workers)"
        ));
    }
    Ok(Common {
        target,
        url,
        workers,
        source_ips,
        json: args.json,
        max_duration: Duration::from_secs_f64(max_duration),
        server_pid: args.server_pid,
        step_timeout: Duration::from_secs_f64(timeout),
        max_in_flight,
        show_progress: !args.quiet,
        warnings,
    })
}

fn ensure_fits(common: &Common, needed_seconds: f64) -> Result<(), PlanError> {
    let limit = common.max_duration.as_secs_f64();
    if needed_seconds > limit {
        return Err(PlanError::TooLong {
            needed: needed_seconds,
            limit,
        });
    }
    Ok(())
}

fn gauge(
    url: &str,
    metric: String,
    common: &Common,
    allow_remote: bool,
) -> Result<Gauge, PlanError> {
    let url = Url::parse(url, Expect::Http)?;
    url.require_loopback(allow_remote)?;
    Ok(Gauge {
        endpoint: HttpEndpoint::new(&url, common.target.ca.as_deref(), common.target.insecure)?,
        metric,
    })
}

/// `prefix` and a random run id, so that earlier runs and cache channels cannot interfere.
fn run_prefix(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

fn channel_names(prefix: &str, count: u64) -> Vec<String> {
    let prefix = run_prefix(prefix);
    (0..count)
        .map(|channel| format!("{prefix}-{channel}"))
        .collect()
}

/// The API base URL given, or the one derived from the WebSocket URL, on loopback unless allowed.
fn api_url(given: Option<&str>, common: &Common, allow_remote: bool) -> Result<Url, PlanError> {
    let url = match given {
        Some(text) => Url::parse(text, Expect::Http)?,
        None => common.url.api_base(),
    };
    url.require_loopback(allow_remote)?;
    Ok(url)
}

fn per_process(total: u64, workers: u32) -> u64 {
    total.div_ceil(u64::from(workers.max(1)))
}

impl Plan {
    pub fn connect(args: ConnectArgs, open_file_limit: u64) -> Result<Plan, PlanError> {
        let allow_remote = args.common.allow_remote;
        let connections = count_in("connections", args.connections, 1, MAX_CONNECTIONS)?;
        let share = per_process(connections, args.common.workers);
        let common = common(args.common, share, open_file_limit)?;
        count_in("workers", u64::from(common.workers), 1, connections)?;
        let rate = positive("rate", args.rate, MAX_CONNECT_RATE)?;
        let hold = non_negative("hold", args.hold, MAX_RUN_SECONDS)?;
        let timeout = common.step_timeout.as_secs_f64();
        ensure_fits(
            &common,
            connections as f64 / rate
                + 2.0 * timeout
                + hold
                + CLOSE_WAIT.as_secs_f64()
                + OVERHEAD_SECONDS,
        )?;
        let gauge = match args.metrics_url {
            Some(url) => Some(gauge(&url, args.gauge, &common, allow_remote)?),
            None => None,
        };
        Ok(Plan::Connect(ConnectPlan {
            common,
            connections,
            rate,
            hold: Duration::from_secs_f64(hold),
            gauge,
        }))
    }

    pub fn fanout(args: FanoutArgs, open_file_limit: u64) -> Result<Plan, PlanError> {
        let allow_remote = args.common.allow_remote;
        let subscribers = count_in("subscribers", args.subscribers, 1, MAX_CONNECTIONS)?;
        let publishers = count_in("publishers", args.publishers, 1, MAX_PUBLISHERS)?;
        let mut share = per_process(subscribers, args.common.workers);
        if args.common.workers == 1 {
            // The publishers run in the same process as the subscribers.
            share += publishers as u64;
        }
        let common = common(args.common, share, open_file_limit)?;
        count_in("workers", u64::from(common.workers), 1, subscribers)?;
        let channels = count_in("channels", args.channels, 1, MAX_CHANNELS)?;
        let publish_rate = positive("publish-rate", args.publish_rate, MAX_PUBLISH_RATE)?;
        let duration = positive("duration", args.duration, MAX_RUN_SECONDS)?;
        let rate = positive("rate", args.rate, MAX_CONNECT_RATE)?;
        let payload_bytes = count_in("payload-bytes", args.payload_bytes, 0, MAX_PAYLOAD_BYTES)?;
        let drain_timeout = non_negative("drain-timeout", args.drain_timeout, 600.0)?;
        let timeout = common.step_timeout.as_secs_f64();
        ensure_fits(
            &common,
            subscribers as f64 / rate
                + 3.0 * timeout
                + duration
                + drain_timeout
                + CLOSE_WAIT.as_secs_f64()
                + OVERHEAD_SECONDS,
        )?;
        let api_url = api_url(args.api_url.as_deref(), &common, allow_remote)?;
        let api = HttpEndpoint::new(
            &api_url,
            common.target.ca.as_deref(),
            common.target.insecure,
        )?;
        Ok(Plan::Fanout(FanoutPlan {
            common,
            subscribers,
            channels: channel_names("loadtest", channels),
            publish_rate,
            duration: Duration::from_secs_f64(duration),
            rate,
            api,
            credentials: ApiCredentials {
                app_id: args.app_id,
                key: args.key,
                secret: args.secret,
            },
            publishers,
            payload_bytes,
            event: args.event,
            drain_timeout: Duration::from_secs_f64(drain_timeout),
        }))
    }

    pub fn churn(args: ChurnArgs, open_file_limit: u64) -> Result<Plan, PlanError> {
        let allow_remote = args.common.allow_remote;
        let concurrency = count_in("connections", args.connections, 1, MAX_CONNECTIONS)?;
        let share = per_process(concurrency, args.common.workers);
        let common = common(args.common, share, open_file_limit)?;
        count_in("workers", u64::from(common.workers), 1, concurrency)?;
        let rate = positive("rate", args.rate, MAX_CONNECT_RATE)?;
        let duration = positive("duration", args.duration, MAX_RUN_SECONDS)?;
        let channels = count_in("channels", args.channels, 1, MAX_CHANNELS)?;
        let settle_timeout = non_negative("settle-timeout", args.settle_timeout, 600.0)?;
        let timeout = common.step_timeout.as_secs_f64();
        ensure_fits(
            &common,
            duration + 3.0 * timeout + CLOSE_WAIT.as_secs_f64() + settle_timeout + OVERHEAD_SECONDS,
        )?;
        let gauge = gauge(&args.metrics_url, args.gauge, &common, allow_remote)?;
        Ok(Plan::Churn(ChurnPlan {
            common,
            concurrency,
            rate,
            duration: Duration::from_secs_f64(duration),
            channels: channel_names("loadtest-churn", channels),
            gauge,
            settle_timeout: Duration::from_secs_f64(settle_timeout),
        }))
    }

    pub fn handshakes(args: HandshakesArgs, open_file_limit: u64) -> Result<Plan, PlanError> {
        let concurrency = count_in("concurrency", args.concurrency, 1, 10_000)?;
        let common = common(args.common, concurrency as u64, open_file_limit)?;
        if common.workers != 1 {
            return Err(out_of_range(
                "workers",
                "1: handshakes runs in one process".into(),
                common.workers,
            ));
        }
        if !common.url.scheme.is_tls() {
            return Err(PlanError::NotTls(common.url.to_string()));
        }
        let duration = positive("duration", args.duration, MAX_RUN_SECONDS)?;
        ensure_fits(
            &common,
            duration + 2.0 * common.step_timeout.as_secs_f64() + OVERHEAD_SECONDS,
        )?;
        Ok(Plan::Handshakes(HandshakesPlan {
            common,
            duration: Duration::from_secs_f64(duration),
            concurrency,
            resume: args.resume,
            tls_version: args.tls_version,
        }))
    }

    pub fn hostile(args: HostileArgs, open_file_limit: u64) -> Result<Plan, PlanError> {
        let allow_remote = args.common.allow_remote;
        let connections = match args.mode {
            HostileMode::ManyChannels => {
                let channels = count_in("channels", args.channels, 1, MAX_HOSTILE_CHANNELS)?;
                let per_connection = count_in("per-connection", args.per_connection, 1, 10_000)?;
                let bystanders = count_in("bystanders", args.bystanders, 1, 1000)?;
                // The publisher and the query connection.
                channels.div_ceil(per_connection) + bystanders + 2
            }
            _ => count_in("connections", args.connections, 1, MAX_CONNECTIONS)?,
        };
        let common = common(args.common, connections, open_file_limit)?;
        if common.workers != 1 {
            return Err(out_of_range(
                "workers",
                "1: hostile runs in one process".into(),
                common.workers,
            ));
        }
        let rate = positive("rate", args.rate, MAX_CONNECT_RATE)?;
        let timeout = common.step_timeout.as_secs_f64();
        let ramp_seconds = connections as f64 / rate + 2.0 * timeout;
        let api = |common: &Common| -> Result<ApiTarget, PlanError> {
            let url = api_url(args.api_url.as_deref(), common, allow_remote)?;
            Ok(ApiTarget {
                endpoint: Rc::new(HttpEndpoint::new(
                    &url,
                    common.target.ca.as_deref(),
                    common.target.insecure,
                )?),
                credentials: Rc::new(ApiCredentials {
                    app_id: args.app_id.clone(),
                    key: args.key.clone(),
                    secret: args.secret.clone(),
                }),
            })
        };
        let unfinished_bytes =
            |flag, bytes| count_in(flag, bytes, MIN_UNFINISHED_BYTES, MAX_UNFINISHED_BYTES);
        let input = match args.mode {
            HostileMode::PartialMessage => UnfinishedInput::Message {
                bytes: unfinished_bytes("message-bytes", args.message_bytes)?,
                trickle: None,
            },
            HostileMode::Trickle => UnfinishedInput::Message {
                bytes: unfinished_bytes("message-bytes", args.message_bytes)?,
                trickle: Some(Duration::from_millis(count_in(
                    "interval-ms",
                    args.interval_ms,
                    1,
                    60_000,
                )?)),
            },
            HostileMode::PartialBody => UnfinishedInput::Body {
                bytes: unfinished_bytes("body-bytes", args.body_bytes)?,
                api: api(&common)?,
            },
            HostileMode::ManyChannels => {
                let plan = ManyChannelsPlan {
                    channels: args.channels,
                    per_connection: args.per_connection,
                    prefix: run_prefix("hostile"),
                    bystanders: args.bystanders,
                    publish_rate: positive("publish-rate", args.publish_rate, MAX_PUBLISH_RATE)?,
                    queries: count_in("queries", args.queries, 1, 10_000)?,
                    api: api(&common)?,
                };
                // The probe and each query take at most a timeout; the quiet period is sized
                // on the probe.
                let query_seconds = plan.queries as f64 * timeout;
                ensure_fits(
                    &common,
                    ramp_seconds
                        + timeout
                        + MIN_QUIET.as_secs_f64()
                        + (1.0 + QUIET_MARGIN) * query_seconds
                        + DRAIN_WAIT.as_secs_f64()
                        + CLOSE_WAIT.as_secs_f64()
                        + OVERHEAD_SECONDS,
                )?;
                return Ok(Plan::Hostile(HostilePlan {
                    common,
                    rate,
                    work: HostileWork::ManyChannels(plan),
                }));
            }
        };
        let hold = non_negative("hold", args.hold, MAX_RUN_SECONDS)?;
        ensure_fits(
            &common,
            ramp_seconds + hold + AFTER_CLOSE_WAIT.as_secs_f64() + OVERHEAD_SECONDS,
        )?;
        Ok(Plan::Hostile(HostilePlan {
            common,
            rate,
            work: HostileWork::Unfinished(UnfinishedPlan {
                connections,
                hold: Duration::from_secs_f64(hold),
                input,
            }),
        }))
    }

    pub fn common(&self) -> &Common {
        match self {
            Plan::Connect(plan) => &plan.common,
            Plan::Fanout(plan) => &plan.common,
            Plan::Churn(plan) => &plan.common,
            Plan::Handshakes(plan) => &plan.common,
            Plan::Hostile(plan) => &plan.common,
        }
    }
}

impl Common {
    /// The spec of worker `index`, with the task it is given.
    pub fn worker_spec(&self, index: u32, task: WorkerTask) -> WorkerSpec {
        WorkerSpec {
            index,
            target: self.target.clone(),
            source_ips: self.source_ips.clone(),
            step_timeout_ms: duration_millis(self.step_timeout),
            max_in_flight: self.max_in_flight,
            // A little past the coordinator's own cap, which normally ends the run first.
            lifetime_ms: duration_millis(self.max_duration) + 15_000,
            task,
        }
    }

    /// Splits `total` connections over the workers: (first index, count) for each.
    pub fn shares(&self, total: u64) -> Vec<(u64, u64)> {
        split(total, self.workers)
    }
}

fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn split(total: u64, parts: u32) -> Vec<(u64, u64)> {
    let parts = u64::from(parts.max(1));
    let base = total / parts;
    let remainder = total % parts;
    let mut first = 0;
    (0..parts)
        .map(|part| {
            let count = base + u64::from(part < remainder);
            let share = (first, count);
            first += count;
            share
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(line: &str) -> Result<Plan, PlanError> {
        let cli = crate::cli::Cli::try_parse_from(line.split_whitespace()).expect("flags parse");
        match cli.command {
            crate::cli::Command::Connect(args) => Plan::connect(args, 20_000),
            crate::cli::Command::Fanout(args) => Plan::fanout(args, 20_000),
            crate::cli::Command::Churn(args) => Plan::churn(args, 20_000),
            crate::cli::Command::Handshakes(args) => Plan::handshakes(args, 20_000),
            crate::cli::Command::Hostile(args) => Plan::hostile(args, 20_000),
            crate::cli::Command::Worker => panic!("not a plan"),
        }
    }

    #[test]
    fn shares_cover_every_connection_once() {
        assert_eq!(split(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(split(2, 2), vec![(0, 1), (1, 1)]);
    }

    #[test]
    fn remote_targets_are_refused_unless_allowed() {
        let refused = parse("loadtest connect --url ws://192.0.2.1:6001/app/k --connections 1");
        assert!(matches!(
            refused,
            Err(PlanError::Url(UrlError::NotLoopback(_)))
        ));
        let api = parse("loadtest fanout --subscribers 1 --api-url http://192.0.2.1:6001");
        assert!(matches!(api, Err(PlanError::Url(UrlError::NotLoopback(_)))));
        let metrics = parse("loadtest churn --metrics-url http://192.0.2.1:9601/metrics");
        assert!(matches!(
            metrics,
            Err(PlanError::Url(UrlError::NotLoopback(_)))
        ));
        let allowed = parse(
            "loadtest connect --url ws://192.0.2.1:6001/app/k --connections 1 --allow-remote",
        );
        assert!(allowed.is_ok());
    }

    #[test]
    fn fanout_publishes_to_the_server_of_url_unless_told_otherwise() {
        let api_address = |line: &str| match parse(line) {
            Ok(Plan::Fanout(plan)) => plan.api.address,
            _ => panic!("a fanout plan"),
        };
        let derived =
            api_address("loadtest fanout --subscribers 1 --url ws://127.0.0.1:7201/app/k");
        assert_eq!(derived, "127.0.0.1:7201".parse().expect("an address"));
        let given = api_address(
            "loadtest fanout --subscribers 1 --url ws://127.0.0.1:7201/app/k \
             --api-url http://127.0.0.1:7301",
        );
        assert_eq!(given, "127.0.0.1:7301".parse().expect("an address"));
    }

    #[test]
    fn runs_are_bounded() {
        assert!(matches!(
            parse("loadtest connect --connections 1000000"),
            Err(PlanError::OutOfRange {
                flag: "connections",
                ..
            })
        ));
        assert!(matches!(
            parse("loadtest connect --connections 1000 --rate 1 --max-duration 60"),
            Err(PlanError::TooLong { .. })
        ));
        assert!(matches!(
            parse("loadtest connect --connections 1 --rate NaN"),
            Err(PlanError::OutOfRange { flag: "rate", .. })
        ));
        assert!(matches!(
            parse("loadtest connect --connections 2 --workers 3"),
            Err(PlanError::OutOfRange {
                flag: "workers",
                ..
            })
        ));
    }

    #[test]
    fn handshakes_need_tls_and_one_process() {
        assert!(matches!(
            parse("loadtest handshakes --url ws://127.0.0.1:6001/app/k"),
            Err(PlanError::NotTls(_))
        ));
        assert!(matches!(
            parse("loadtest handshakes --url wss://localhost:6443/app/k --insecure --workers 2"),
            Err(PlanError::OutOfRange {
                flag: "workers",
                ..
            })
        ));
        let Ok(Plan::Handshakes(plan)) = parse(
            "loadtest handshakes --url wss://localhost:6443/app/k --insecure --resume \
             --tls-version 1.3 --concurrency 4 --duration 2",
        ) else {
            panic!("plan expected");
        };
        assert!(plan.resume);
        assert_eq!(plan.tls_version, TlsVersion::Tls13);
        assert_eq!(plan.concurrency, 4);
        assert_eq!(plan.duration, Duration::from_secs(2));
    }

    #[test]
    fn hostile_runs_are_bounded_and_aimed_at_loopback() {
        let Ok(Plan::Hostile(plan)) =
            parse("loadtest hostile --mode many-channels --channels 1001 --per-connection 100")
        else {
            panic!("plan expected");
        };
        let HostileWork::ManyChannels(channels) = &plan.work else {
            panic!("a many-channels plan");
        };
        assert_eq!(channels.occupiers(), 11);
        assert!(matches!(
            parse("loadtest hostile --mode many-channels --channels 200001"),
            Err(PlanError::OutOfRange {
                flag: "channels",
                ..
            })
        ));
        assert!(matches!(
            parse("loadtest hostile --mode partial-message --message-bytes 10"),
            Err(PlanError::OutOfRange {
                flag: "message-bytes",
                ..
            })
        ));
        assert!(matches!(
            parse("loadtest hostile --mode trickle --workers 2"),
            Err(PlanError::OutOfRange {
                flag: "workers",
                ..
            })
        ));
        assert!(matches!(
            parse("loadtest hostile --mode partial-body --api-url http://192.0.2.1:6001"),
            Err(PlanError::Url(UrlError::NotLoopback(_)))
        ));
        assert!(matches!(
            parse("loadtest hostile --mode partial-message --hold 700 --max-duration 600"),
            Err(PlanError::TooLong { .. })
        ));
    }

    #[test]
    fn descriptor_shortfall_is_a_warning() {
        let Ok(Plan::Connect(plan)) = parse("loadtest connect --connections 30000 --rate 10000")
        else {
            panic!("plan expected");
        };
        assert_eq!(plan.common.warnings.len(), 1);
        let Ok(Plan::Connect(plan)) =
            parse("loadtest connect --connections 30000 --rate 10000 --workers 2")
        else {
            panic!("plan expected");
        };
        assert!(plan.common.warnings.is_empty());
    }
}
