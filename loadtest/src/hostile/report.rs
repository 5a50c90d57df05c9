//! The `hostile` part of the report, its keys documented in README.md like the rest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::histogram::{LatencyHistogram, LatencySummary};
use crate::report::{causes, latency_header, latency_row, row};
use crate::tally::CauseCounts;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum HostileReport {
    PartialMessage(UnfinishedReport),
    Trickle(UnfinishedReport),
    PartialBody(UnfinishedReport),
    /// Boxed: it is much the largest.
    ManyChannels(Box<ManyChannelsReport>),
}

/// How the server ended some of the connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ending {
    pub count: u64,
    /// From the first byte of the unfinished input.
    pub after_ms: LatencySummary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnfinishedReport {
    pub connections: u64,
    /// The message's payload or the body's length.
    pub bytes: u64,
    /// How much of it each connection sent at once.
    pub sent_bytes: u64,
    pub interval_ms: Option<u64>,
    pub hold_seconds: f64,
    pub opened: u64,
    pub failures: CauseCounts,
    pub endings: BTreeMap<String, Ending>,
    pub closed_by_server: u64,
    pub held: u64,
    pub rss_after_close_kib: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManyChannelsReport {
    pub channels: u64,
    pub per_connection: u64,
    pub connections: u64,
    pub connected: u64,
    pub subscribed: u64,
    pub refused: CauseCounts,
    pub failures: CauseCounts,
    pub drops: CauseCounts,
    pub bystanders: u64,
    pub bystanders_subscribed: u64,
    pub publish_rate_target: f64,
    pub publishes_attempted: u64,
    pub publishes_accepted: u64,
    pub publish_failures: CauseCounts,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub probe_ms: f64,
    pub queries: u64,
    pub query_statuses: CauseCounts,
    pub query_latency_ms: LatencySummary,
    pub response_bytes: u64,
    pub channels_listed: Option<u64>,
    pub quiet_seconds: f64,
    pub query_seconds: f64,
    pub quiet_latency_ms: LatencySummary,
    pub during_queries_latency_ms: LatencySummary,
}

/// Each way connections ended, with how many and how soon.
pub fn endings(histograms: &BTreeMap<String, LatencyHistogram>) -> BTreeMap<String, Ending> {
    histograms
        .iter()
        .map(|(key, histogram)| {
            let after_ms = histogram.summary();
            let ending = Ending {
                count: after_ms.count,
                after_ms,
            };
            (key.clone(), ending)
        })
        .collect()
}

impl HostileReport {
    pub fn render(&self, text: &mut String) {
        match self {
            HostileReport::PartialMessage(report) => report.render(text, "message"),
            HostileReport::Trickle(report) => report.render(text, "trickled message"),
            HostileReport::PartialBody(report) => report.render(text, "request body"),
            HostileReport::ManyChannels(report) => report.render(text),
        }
    }
}

impl UnfinishedReport {
    fn render(&self, text: &mut String, what: &str) {
        row(
            text,
            "connections",
            format!(
                "requested {}  opened {}  held at the end of the hold {}",
                self.connections, self.opened, self.held
            ),
        );
        let trickle = self
            .interval_ms
            .map_or(String::new(), |ms| format!(", then 1 B every {ms} ms"));
        row(
            text,
            "unfinished",
            format!(
                "{what} of {} B, {} B sent at once{trickle}; held {} s",
                self.bytes, self.sent_bytes, self.hold_seconds
            ),
        );
        row(text, "failures", causes(&self.failures));
        if self.endings.is_empty() {
            row(
                text,
                "closed by the server",
                "none: never closed within the hold",
            );
        } else {
            self.render_endings(text);
        }
        if let Some(kib) = self.rss_after_close_kib {
            row(
                text,
                "server rss after close",
                format!("{:.1} MiB", kib as f64 / 1024.0),
            );
        }
    }

    fn render_endings(&self, text: &mut String) {
        let how: Vec<String> = self
            .endings
            .iter()
            .map(|(key, ending)| format!("{key} {}", ending.count))
            .collect();
        row(
            text,
            "closed by the server",
            format!("{}: {}", self.closed_by_server, how.join(", ")),
        );
        latency_header(text);
        for (key, ending) in &self.endings {
            latency_row(text, &format!("{key} after"), &ending.after_ms);
        }
    }
}

impl ManyChannelsReport {
    fn render(&self, text: &mut String) {
        row(
            text,
            "channels",
            format!(
                "{} subscribed of {} over {} connections ({} connected, {} a connection)",
                self.subscribed,
                self.channels,
                self.connections,
                self.connected,
                self.per_connection
            ),
        );
        row(text, "refused (by type)", causes(&self.refused));
        row(text, "failures", causes(&self.failures));
        row(text, "dropped", causes(&self.drops));
        let listed = self
            .channels_listed
            .map_or("?".to_string(), |count| count.to_string());
        row(
            text,
            "queries",
            format!(
                "{}: {}  (listing {listed} channels in {} B; probe {:.1} ms)",
                self.queries,
                causes(&self.query_statuses),
                self.response_bytes,
                self.probe_ms
            ),
        );
        row(
            text,
            "bystanders",
            format!(
                "{} subscribed of {}; {} of {} deliveries  ({} published of {}/s target, \
                 failures: {})",
                self.bystanders_subscribed,
                self.bystanders,
                self.deliveries,
                self.expected_deliveries,
                self.publishes_accepted,
                self.publish_rate_target,
                causes(&self.publish_failures)
            ),
        );
        row(
            text,
            "periods",
            format!(
                "quiet {:.2} s, then queries {:.2} s",
                self.quiet_seconds, self.query_seconds
            ),
        );
        latency_header(text);
        latency_row(text, "query", &self.query_latency_ms);
        latency_row(text, "delivery, quiet", &self.quiet_latency_ms);
        latency_row(text, "delivery, queries", &self.during_queries_latency_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn unfinished(endings: BTreeMap<String, Ending>) -> UnfinishedReport {
        UnfinishedReport {
            connections: 3,
            bytes: 15_000,
            sent_bytes: 14_999,
            interval_ms: None,
            hold_seconds: 2.0,
            opened: 3,
            failures: CauseCounts::new(),
            closed_by_server: endings.values().map(|ending| ending.count).sum(),
            endings,
            held: 0,
            rss_after_close_kib: Some(2048),
        }
    }

    #[test]
    fn endings_count_and_time_each_way_separately() {
        let mut histograms = BTreeMap::new();
        let late: &mut LatencyHistogram = histograms.entry("close_1008".into()).or_default();
        late.record(Duration::from_millis(1000));
        late.record(Duration::from_millis(1100));
        histograms
            .entry("close_1013".into())
            .or_default()
            .record(Duration::from_millis(2));
        let endings = endings(&histograms);
        assert_eq!(endings["close_1008"].count, 2);
        assert!((endings["close_1008"].after_ms.max - 1100.0).abs() < 2.0);
        assert_eq!(endings["close_1013"].count, 1);
        let mut text = String::new();
        HostileReport::PartialMessage(unfinished(endings)).render(&mut text);
        assert!(text.contains("3: close_1008 2, close_1013 1"), "{text}");
        assert!(text.contains("close_1008 after"), "{text}");
        assert!(text.contains("server rss after close  2.0 MiB"), "{text}");
    }

    #[test]
    fn a_server_that_never_closes_is_said_to() {
        let mut text = String::new();
        let mut report = unfinished(BTreeMap::new());
        report.held = 3;
        HostileReport::Trickle(report).render(&mut text);
        assert!(text.contains("never closed within the hold"), "{text}");
        assert!(text.contains("server rss after close  2.0 MiB"), "{text}");
    }

    #[test]
    fn the_mode_tags_the_json() {
        let report = HostileReport::PartialBody(unfinished(BTreeMap::new()));
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["mode"], "partial-body");
        assert_eq!(json["sent_bytes"], 14_999);
        assert_eq!(json["endings"], serde_json::json!({}));
    }
}
