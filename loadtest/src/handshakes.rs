//! `handshakes`: TLS connections opened back to back on a few loops, each closed right after its
//! handshake, to find what full and resumed handshakes cost the server. With `--server-pid` the
//! count is divided by the CPU time the server used meanwhile, so the client's share of a shared
//! machine does not count against the server.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::cause::FailureCause;
use crate::cli::TlsVersion;
use crate::histogram::LatencyHistogram;
use crate::metrics::cpu_seconds;
use crate::net::ClientStream;
use crate::plan::HandshakesPlan;
use crate::pusher::EndpointError;
use crate::report::{per_second, round3, HandshakesReport, Report};
use crate::run::{base_report, unix_millis, RunError};
use crate::tally::{count_cause, CauseCounts};
use crate::tls::{client_config_offering, TlsSetupError};

/// Servers one loop's session store remembers: one, with up to 8 TLS 1.3 tickets (rustls counts
/// its store in tickets, 8 a server). Each connection uses a ticket and is given another.
const SESSIONS_PER_LOOP: usize = 1;

/// What the loops counted.
#[derive(Default)]
struct HandshakeTally {
    completed: u64,
    resumed: u64,
    failures: CauseCounts,
    latency: LatencyHistogram,
}

/// Where the loops connect to, and how.
struct Target {
    address: SocketAddr,
    server_name: ServerName<'static>,
    source_ips: Vec<IpAddr>,
    step_timeout: Duration,
}

fn versions(version: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
    static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match version {
        TlsVersion::Tls12 => &TLS12,
        TlsVersion::Tls13 => &TLS13,
        TlsVersion::Any => rustls::DEFAULT_VERSIONS,
    }
}

pub async fn run_handshakes(plan: HandshakesPlan) -> Result<Report, RunError> {
    let started_unix_ms = unix_millis();
    let started = Instant::now();
    let common = &plan.common;
    let url = &common.url;
    let setup = |error: TlsSetupError| RunError::Setup(EndpointError::Tls(error));
    let config = client_config_offering(
        common.target.ca.as_deref(),
        common.target.insecure,
        versions(plan.tls_version),
    )
    .map_err(setup)?;
    let target = Target {
        address: url
            .resolve()
            .map_err(|error| RunError::Setup(error.into()))?,
        server_name: ServerName::try_from(url.host.clone())
            .map_err(|_| setup(TlsSetupError::ServerName(url.host.clone())))?,
        source_ips: common.source_ips.clone(),
        step_timeout: common.step_timeout,
    };
    let tally = RefCell::new(HandshakeTally::default());
    let cpu_before = common.server_pid.map(cpu_seconds).transpose()?;
    let loops_started = Instant::now();
    let deadline = loops_started + plan.duration;
    let loops = (0..plan.concurrency).map(|index| {
        // Each loop its own session store, so that every loop resumes its own sessions.
        let mut config: ClientConfig = config.clone();
        config.resumption = if plan.resume {
            Resumption::in_memory_sessions(SESSIONS_PER_LOOP)
        } else {
            Resumption::disabled()
        };
        handshake_loop(
            &target,
            TlsConnector::from(Arc::new(config)),
            index,
            plan.concurrency,
            deadline,
            &tally,
        )
    });
    futures_util::future::join_all(loops).await;
    let seconds = loops_started.elapsed().as_secs_f64();
    let server_cpu = match (common.server_pid, cpu_before) {
        (Some(pid), Some(before)) => Some(cpu_seconds(pid)? - before),
        _ => None,
    };
    let tally = tally.into_inner();
    // Each loop's first connection has no session to resume.
    let every_later_one_resumed = tally.resumed + plan.concurrency as u64 >= tally.completed;
    let mut report = base_report(common, "handshakes", started_unix_ms, started);
    report.clean = tally.failures.is_empty()
        && tally.completed > 0
        && (!plan.resume || every_later_one_resumed);
    report.handshakes = Some(HandshakesReport {
        duration_seconds: round3(seconds),
        concurrency: plan.concurrency,
        resume: plan.resume,
        tls_version: plan.tls_version,
        completed: tally.completed,
        resumed: tally.resumed,
        failures: tally.failures,
        handshakes_per_second: per_second(tally.completed, seconds),
        latency_ms: tally.latency.summary(),
        server_cpu_seconds: server_cpu.map(round3),
        handshakes_per_server_cpu_second: server_cpu.map(|cpu| per_second(tally.completed, cpu)),
    });
    Ok(report)
}

/// Handshakes one connection after another until `deadline`. Loop `index` of `loops` takes
/// every `loops`-th source address in turn.
async fn handshake_loop(
    target: &Target,
    connector: TlsConnector,
    index: usize,
    loops: usize,
    deadline: Instant,
    tally: &RefCell<HandshakeTally>,
) {
    let mut next_source = index;
    while Instant::now() < deadline {
        let source = (!target.source_ips.is_empty())
            .then(|| target.source_ips[next_source % target.source_ips.len()]);
        next_source += loops;
        let outcome = handshake(target, &connector, source).await;
        let mut tally = tally.borrow_mut();
        match outcome {
            Ok((latency, resumed)) => {
                tally.completed += 1;
                tally.resumed += u64::from(resumed);
                tally.latency.record(latency);
            }
            Err(cause) => count_cause(&mut tally.failures, &cause),
        }
    }
}

/// One connection: TCP connect, TLS handshake, close_notify, then reading until the server
/// closes, which takes in the session tickets a TLS 1.3 server sends after the handshake.
/// Returns the time from connect to the end of the handshake, and whether it resumed.
async fn handshake(
    target: &Target,
    connector: &TlsConnector,
    source: Option<IpAddr>,
) -> Result<(Duration, bool), FailureCause> {
    let started = Instant::now();
    let tcp = ClientStream::connect_tcp(target.address, source, target.step_timeout).await?;
    let mut tls = timeout(
        target.step_timeout,
        connector.connect(target.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| FailureCause::Timeout)?
    .map_err(|error| FailureCause::from_io(&error))?;
    let latency = started.elapsed();
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    // How the server ends the connection is not what is measured here.
    let _ = timeout(target.step_timeout, async {
        tls.shutdown().await?;
        let mut sink = [0u8; 512];
        while tls.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
    Ok((latency, resumed))
}
