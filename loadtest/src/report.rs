//! The final report: one structure, printed as a table and written as JSON (`--json`). Every key
//! is documented in README.md.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cli::TlsVersion;
use crate::histogram::LatencySummary;
use crate::hostile::HostileReport;
use crate::tally::{AffectedSubscriber, CauseCounts};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub command: String,
    pub url: String,
    pub workers: u32,
    pub source_ips: usize,
    pub started_unix_ms: u64,
    pub elapsed_seconds: f64,
    pub clean: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanout: Option<FanoutReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshakes: Option<HandshakesReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostile: Option<HostileReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_memory: Option<ServerMemory>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectReport {
    pub requested: u64,
    pub rate_target: f64,
    pub hold_seconds: f64,
    pub attempted: u64,
    pub established: u64,
    pub reached: u64,
    pub held: u64,
    pub failures: CauseCounts,
    pub drops: CauseCounts,
    pub ramp_seconds: f64,
    pub connects_per_second: f64,
    pub connect_latency_ms: LatencySummary,
    pub handshake_latency_ms: LatencySummary,
    pub server_gauge_during_hold: Option<u64>,
    pub gauge_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutReport {
    pub subscribers_requested: u64,
    pub subscribed: u64,
    pub channels: usize,
    pub subscribe_failures: CauseCounts,
    pub drops: CauseCounts,
    pub publish_rate_target: f64,
    pub publish_seconds: f64,
    pub publishes_attempted: u64,
    pub publishes_accepted: u64,
    pub publish_failures: CauseCounts,
    pub publishes_per_second: f64,
    pub publish_latency_ms: LatencySummary,
    /// Request to the kernel's receipt of the response, leaving out the time this tool waited
    /// for a CPU to read it; absent over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_answer_ms: Option<LatencySummary>,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub delivery_window_seconds: f64,
    pub deliveries_per_second: f64,
    /// With `--server-pid`: the server's CPU (user and system) from the first publish to the
    /// last delivery, and per million deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_seconds_per_million: Option<f64>,
    pub latency_ms: LatencySummary,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub malformed: u64,
    pub subscribers_with_loss: u64,
    pub subscribers_with_duplicates: u64,
    pub subscribers_out_of_order: u64,
    pub affected_subscribers: Vec<AffectedSubscriber>,
    pub connect_latency_ms: LatencySummary,
    pub handshake_latency_ms: LatencySummary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnReport {
    pub concurrency: u64,
    pub rate_target: f64,
    pub duration_seconds: f64,
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub success_rate: f64,
    pub throttled: u64,
    pub failures: CauseCounts,
    pub cycles_per_second: f64,
    pub cycle_latency_ms: LatencySummary,
    pub connect_latency_ms: LatencySummary,
    pub handshake_latency_ms: LatencySummary,
    pub gauge: Option<GaugeReport>,
    pub gauge_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GaugeReport {
    pub metric: String,
    pub baseline: u64,
    pub peak: u64,
    pub after_churn: u64,
    pub settled: u64,
    pub returned_to_baseline: bool,
    pub settle_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandshakesReport {
    pub duration_seconds: f64,
    pub concurrency: usize,
    pub resume: bool,
    pub tls_version: TlsVersion,
    pub completed: u64,
    pub resumed: u64,
    pub failures: CauseCounts,
    pub handshakes_per_second: f64,
    pub latency_ms: LatencySummary,
    pub server_cpu_seconds: Option<f64>,
    pub handshakes_per_server_cpu_second: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerMemory {
    pub pid: u32,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub connections: u64,
    pub bytes_per_connection: Option<f64>,
}

impl ServerMemory {
    pub fn new(
        pid: u32,
        rss_before_kib: u64,
        rss_after_kib: u64,
        connections: Option<u64>,
    ) -> Self {
        let bytes_per_connection = connections.filter(|count| *count > 0).map(|count| {
            let growth = rss_after_kib.saturating_sub(rss_before_kib) as f64 * 1024.0;
            (growth / count as f64).round()
        });
        ServerMemory {
            pid,
            rss_before_kib,
            rss_after_kib,
            connections: connections.unwrap_or(0),
            bytes_per_connection,
        }
    }
}

/// Per second, or zero over an empty window.
pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        (count as f64 / seconds * 10.0).round() / 10.0
    } else {
        0.0
    }
}

pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

pub fn causes(counts: &CauseCounts) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(key, count)| format!("{key} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn latency_header(text: &mut String) {
    let _ = writeln!(
        text,
        "  {:<24}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "latency (ms)", "p50", "p90", "p99", "p99.9", "max", "count"
    );
}

pub fn latency_row(text: &mut String, name: &str, summary: &LatencySummary) {
    let _ = writeln!(
        text,
        "    {:<22}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10}",
        name, summary.p50, summary.p90, summary.p99, summary.p99_9, summary.max, summary.count
    );
}

pub fn row(text: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = writeln!(text, "  {name:<24}{value}");
}

impl Report {
    /// The human summary table.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "loadtest {}  {}  ({} worker{}, {:.1} s)",
            self.command,
            self.url,
            self.workers,
            if self.workers == 1 { "" } else { "s" },
            self.elapsed_seconds
        );
        if let Some(connect) = &self.connect {
            row(
                &mut text,
                "connections",
                format!(
                    "requested {}  reached {}  held {}",
                    connect.requested, connect.reached, connect.held
                ),
            );
            row(
                &mut text,
                "ramp",
                format!(
                    "{:.2} s  ({} connects/s, target {})",
                    connect.ramp_seconds, connect.connects_per_second, connect.rate_target
                ),
            );
            row(&mut text, "failures", causes(&connect.failures));
            row(&mut text, "dropped while held", causes(&connect.drops));
            if let Some(gauge) = connect.server_gauge_during_hold {
                row(&mut text, "server gauge (hold)", gauge);
            }
            if let Some(error) = &connect.gauge_error {
                row(&mut text, "server gauge", error);
            }
            latency_header(&mut text);
            latency_row(&mut text, "tcp connect", &connect.connect_latency_ms);
            latency_row(&mut text, "handshake", &connect.handshake_latency_ms);
        }
        if let Some(fanout) = &self.fanout {
            row(
                &mut text,
                "subscribers",
                format!(
                    "requested {}  subscribed {}  over {} channel{}",
                    fanout.subscribers_requested,
                    fanout.subscribed,
                    fanout.channels,
                    if fanout.channels == 1 { "" } else { "s" }
                ),
            );
            row(
                &mut text,
                "subscribe failures",
                causes(&fanout.subscribe_failures),
            );
            row(&mut text, "dropped", causes(&fanout.drops));
            row(
                &mut text,
                "published",
                format!(
                    "{} accepted of {}  ({}/s, target {})",
                    fanout.publishes_accepted,
                    fanout.publishes_attempted,
                    fanout.publishes_per_second,
                    fanout.publish_rate_target
                ),
            );
            row(
                &mut text,
                "publish failures",
                causes(&fanout.publish_failures),
            );
            row(
                &mut text,
                "delivered",
                format!(
                    "{} of {} expected  ({}/s over {:.2} s)",
                    fanout.deliveries,
                    fanout.expected_deliveries,
                    fanout.deliveries_per_second,
                    fanout.delivery_window_seconds
                ),
            );
            if let (Some(cpu), Some(per_million)) = (
                fanout.server_cpu_seconds,
                fanout.server_cpu_seconds_per_million,
            ) {
                row(
                    &mut text,
                    "server CPU",
                    format!("{cpu:.2} s while delivering, {per_million:.2} s per million"),
                );
            }
            row(
                &mut text,
                "lost / dup / reordered",
                format!(
                    "{} / {} / {}  (subscribers affected: {} / {} / {}; malformed {})",
                    fanout.lost,
                    fanout.duplicated,
                    fanout.out_of_order,
                    fanout.subscribers_with_loss,
                    fanout.subscribers_with_duplicates,
                    fanout.subscribers_out_of_order,
                    fanout.malformed
                ),
            );
            for affected in &fanout.affected_subscribers {
                let _ = writeln!(
                    text,
                    "    subscriber {} on {}: lost {}, duplicated {}, out of order {}",
                    affected.subscriber,
                    affected.channel,
                    affected.lost,
                    affected.duplicated,
                    affected.out_of_order
                );
            }
            latency_header(&mut text);
            latency_row(&mut text, "end to end", &fanout.latency_ms);
            latency_row(&mut text, "publish request", &fanout.publish_latency_ms);
            if let Some(answer) = &fanout.publish_answer_ms {
                latency_row(&mut text, "publish answer (kernel)", answer);
            }
            latency_row(&mut text, "tcp connect", &fanout.connect_latency_ms);
            latency_row(&mut text, "handshake", &fanout.handshake_latency_ms);
        }
        if let Some(handshakes) = &self.handshakes {
            let offered = match handshakes.tls_version {
                TlsVersion::Tls12 => "TLS 1.2",
                TlsVersion::Tls13 => "TLS 1.3",
                TlsVersion::Any => "TLS 1.2 and 1.3",
            };
            row(
                &mut text,
                "handshakes",
                format!(
                    "{} completed, {} resumed  ({}/s over {:.2} s; {} offered, {} at once, {})",
                    handshakes.completed,
                    handshakes.resumed,
                    handshakes.handshakes_per_second,
                    handshakes.duration_seconds,
                    offered,
                    handshakes.concurrency,
                    if handshakes.resume {
                        "resuming"
                    } else {
                        "no resumption"
                    }
                ),
            );
            row(&mut text, "failures", causes(&handshakes.failures));
            if let (Some(cpu), Some(rate)) = (
                handshakes.server_cpu_seconds,
                handshakes.handshakes_per_server_cpu_second,
            ) {
                row(
                    &mut text,
                    "server cpu",
                    format!("{cpu:.2} s  ({rate} handshakes per CPU second)"),
                );
            }
            latency_header(&mut text);
            latency_row(&mut text, "connect + handshake", &handshakes.latency_ms);
        }
        if let Some(churn) = &self.churn {
            row(
                &mut text,
                "cycles",
                format!(
                    "{} succeeded of {}  ({:.2} %, {}/s; {} throttled)",
                    churn.succeeded,
                    churn.attempted,
                    churn.success_rate * 100.0,
                    churn.cycles_per_second,
                    churn.throttled
                ),
            );
            row(&mut text, "failures", causes(&churn.failures));
            match (&churn.gauge, &churn.gauge_error) {
                (Some(gauge), _) => row(
                    &mut text,
                    "server gauge",
                    format!(
                        "baseline {}  peak {}  after churn {}  settled {} after {:.2} s: {}",
                        gauge.baseline,
                        gauge.peak,
                        gauge.after_churn,
                        gauge.settled,
                        gauge.settle_seconds,
                        if gauge.returned_to_baseline {
                            "back to baseline"
                        } else {
                            "NOT back to baseline"
                        }
                    ),
                ),
                (None, Some(error)) => row(&mut text, "server gauge", error),
                (None, None) => {}
            }
            latency_header(&mut text);
            latency_row(&mut text, "cycle", &churn.cycle_latency_ms);
            latency_row(&mut text, "tcp connect", &churn.connect_latency_ms);
            latency_row(&mut text, "handshake", &churn.handshake_latency_ms);
        }
        if let Some(hostile) = &self.hostile {
            hostile.render(&mut text);
        }
        if let Some(memory) = &self.server_memory {
            let per_connection = memory.bytes_per_connection.map_or(String::new(), |bytes| {
                format!(
                    "  ({bytes:.0} B per connection over {})",
                    memory.connections
                )
            });
            row(
                &mut text,
                "server rss",
                format!(
                    "before {:.1} MiB  after {:.1} MiB{per_connection}",
                    memory.rss_before_kib as f64 / 1024.0,
                    memory.rss_after_kib as f64 / 1024.0
                ),
            );
        }
        row(
            &mut text,
            "verdict",
            if self.clean {
                "clean"
            } else {
                "FAILURES (see above)"
            },
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_connection_is_growth_over_connections() {
        let memory = ServerMemory::new(1, 10_000, 20_000, Some(10_240));
        assert_eq!(memory.bytes_per_connection, Some(1000.0));
        assert_eq!(
            ServerMemory::new(1, 10, 20, Some(0)).bytes_per_connection,
            None
        );
        assert_eq!(
            ServerMemory::new(1, 10, 20, None).bytes_per_connection,
            None
        );
    }
}
