//! What each worker counted, in a form that crosses process boundaries and adds up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cause::FailureCause;
use crate::histogram::LatencyHistogram;

/// Failures by cause key (`refused`, `close_4004`, ...).
pub type CauseCounts = BTreeMap<String, u64>;

/// How many subscribers with losses, duplicates or reordering a report names individually.
pub const MAX_AFFECTED_LISTED: usize = 20;

pub fn count_cause(counts: &mut CauseCounts, cause: &FailureCause) {
    count_key(counts, cause.key());
}

pub fn count_key(counts: &mut CauseCounts, key: String) {
    *counts.entry(key).or_default() += 1;
}

pub fn merge_causes(into: &mut CauseCounts, from: &CauseCounts) {
    for (key, count) in from {
        *into.entry(key.clone()).or_default() += count;
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectTally {
    pub attempted: u64,
    pub established: u64,
    /// Connections open at once at the worker's peak; every worker peaks during the common hold.
    pub peak_open: u64,
    /// Connections still open when the hold ended.
    pub held: u64,
    pub failures: CauseCounts,
    /// Connections that were established and then ended before the hold did.
    pub drops: CauseCounts,
    /// From the first attempt until every attempt had succeeded or failed.
    pub ramp_micros: u64,
    pub connect_latency: LatencyHistogram,
    pub handshake_latency: LatencyHistogram,
}

impl ConnectTally {
    pub fn merge(&mut self, other: &ConnectTally) {
        self.attempted += other.attempted;
        self.established += other.established;
        self.peak_open += other.peak_open;
        self.held += other.held;
        merge_causes(&mut self.failures, &other.failures);
        merge_causes(&mut self.drops, &other.drops);
        self.ramp_micros = self.ramp_micros.max(other.ramp_micros);
        self.connect_latency.merge(&other.connect_latency);
        self.handshake_latency.merge(&other.handshake_latency);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffectedSubscriber {
    pub subscriber: u64,
    pub channel: String,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FanoutTally {
    pub attempted: u64,
    pub subscribed: u64,
    pub failures: CauseCounts,
    pub drops: CauseCounts,
    /// Every test event received, duplicates included.
    pub deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Test events whose payload could not be read, or that came on the wrong channel.
    pub malformed: u64,
    pub subscribers_with_loss: u64,
    pub subscribers_with_duplicates: u64,
    pub subscribers_out_of_order: u64,
    pub affected: Vec<AffectedSubscriber>,
    pub latency: LatencyHistogram,
    pub connect_latency: LatencyHistogram,
    pub handshake_latency: LatencyHistogram,
    pub last_delivery_unix_micros: u64,
}

impl FanoutTally {
    pub fn merge(&mut self, other: &FanoutTally) {
        self.attempted += other.attempted;
        self.subscribed += other.subscribed;
        merge_causes(&mut self.failures, &other.failures);
        merge_causes(&mut self.drops, &other.drops);
        self.deliveries += other.deliveries;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.malformed += other.malformed;
        self.subscribers_with_loss += other.subscribers_with_loss;
        self.subscribers_with_duplicates += other.subscribers_with_duplicates;
        self.subscribers_out_of_order += other.subscribers_out_of_order;
        let room = MAX_AFFECTED_LISTED.saturating_sub(self.affected.len());
        self.affected
            .extend(other.affected.iter().take(room).cloned());
        self.latency.merge(&other.latency);
        self.connect_latency.merge(&other.connect_latency);
        self.handshake_latency.merge(&other.handshake_latency);
        self.last_delivery_unix_micros = self
            .last_delivery_unix_micros
            .max(other.last_delivery_unix_micros);
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChurnTally {
    pub attempted: u64,
    pub succeeded: u64,
    /// Cycles not started because `--connections` were already in progress.
    pub throttled: u64,
    pub failures: CauseCounts,
    /// Connect, subscribe and close, for successful cycles.
    pub cycle_latency: LatencyHistogram,
    pub connect_latency: LatencyHistogram,
    pub handshake_latency: LatencyHistogram,
}

impl ChurnTally {
    pub fn merge(&mut self, other: &ChurnTally) {
        self.attempted += other.attempted;
        self.succeeded += other.succeeded;
        self.throttled += other.throttled;
        merge_causes(&mut self.failures, &other.failures);
        self.cycle_latency.merge(&other.cycle_latency);
        self.connect_latency.merge(&other.connect_latency);
        self.handshake_latency.merge(&other.handshake_latency);
    }
}

/// A worker's final figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WorkerTally {
    Connect(ConnectTally),
    Fanout(FanoutTally),
    Churn(ChurnTally),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(pairs: &[(&str, u64)]) -> CauseCounts {
        pairs
            .iter()
            .map(|(key, count)| (key.to_string(), *count))
            .collect()
    }

    #[test]
    fn connect_tallies_add_up() {
        let mut first = ConnectTally {
            attempted: 10,
            established: 9,
            peak_open: 9,
            held: 8,
            failures: causes(&[("refused", 1)]),
            drops: causes(&[("close_4200", 1)]),
            ramp_micros: 2_000_000,
            ..ConnectTally::default()
        };
        first.connect_latency.record_micros(100);
        let mut second = ConnectTally {
            attempted: 10,
            established: 10,
            peak_open: 10,
            held: 10,
            failures: causes(&[("refused", 2), ("timeout", 1)]),
            ramp_micros: 3_000_000,
            ..ConnectTally::default()
        };
        second.connect_latency.record_micros(300);
        // Through JSON, as results come back from worker processes.
        let second: ConnectTally =
            serde_json::from_str(&serde_json::to_string(&second).expect("serializes"))
                .expect("parses");
        first.merge(&second);
        assert_eq!(
            (
                first.attempted,
                first.established,
                first.peak_open,
                first.held
            ),
            (20, 19, 19, 18)
        );
        assert_eq!(first.failures, causes(&[("refused", 3), ("timeout", 1)]));
        assert_eq!(first.drops, causes(&[("close_4200", 1)]));
        assert_eq!(first.ramp_micros, 3_000_000);
        assert_eq!(first.connect_latency.summary().count, 2);
    }

    #[test]
    fn fanout_tallies_add_up_and_bound_the_affected_list() {
        let affected = |subscriber| AffectedSubscriber {
            subscriber,
            channel: "c".into(),
            lost: 1,
            duplicated: 0,
            out_of_order: 0,
        };
        let mut first = FanoutTally {
            deliveries: 100,
            lost: 15,
            subscribers_with_loss: 15,
            affected: (0..15).map(affected).collect(),
            last_delivery_unix_micros: 5,
            ..FanoutTally::default()
        };
        let second = FanoutTally {
            deliveries: 50,
            duplicated: 2,
            lost: 10,
            subscribers_with_loss: 10,
            subscribers_with_duplicates: 1,
            affected: (100..110).map(affected).collect(),
            last_delivery_unix_micros: 9,
            ..FanoutTally::default()
        };
        first.merge(&second);
        assert_eq!(
            (first.deliveries, first.lost, first.duplicated),
            (150, 25, 2)
        );
        assert_eq!(
            (
                first.subscribers_with_loss,
                first.subscribers_with_duplicates
            ),
            (25, 1)
        );
        assert_eq!(first.affected.len(), MAX_AFFECTED_LISTED);
        assert_eq!(first.last_delivery_unix_micros, 9);
    }

    #[test]
    fn churn_tallies_add_up() {
        let mut first = ChurnTally {
            attempted: 5,
            succeeded: 4,
            throttled: 1,
            failures: causes(&[("http_503", 1)]),
            ..ChurnTally::default()
        };
        let second = ChurnTally {
            attempted: 5,
            succeeded: 5,
            ..ChurnTally::default()
        };
        first.merge(&second);
        assert_eq!(
            (first.attempted, first.succeeded, first.throttled),
            (10, 9, 1)
        );
        assert_eq!(first.failures, causes(&[("http_503", 1)]));
    }
}
