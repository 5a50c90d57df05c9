//! Latency histograms that survive the trip from a worker process to the coordinator.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Anything slower than an hour is recorded as an hour.
const HIGHEST_MICROS: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Latencies in microseconds, three significant digits.
///
/// Serialized as `[[value, count], ...]` over the recorded buckets, which is exact at the
/// histogram's precision and needs none of hdrhistogram's optional serialization dependencies.
#[derive(Debug, Clone)]
pub struct LatencyHistogram(Histogram<u64>);

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self(
            Histogram::new_with_bounds(1, HIGHEST_MICROS, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
        )
    }
}

impl LatencyHistogram {
    pub fn record(&mut self, latency: Duration) {
        self.record_micros(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_micros(&mut self, micros: u64) {
        self.0.saturating_record(micros);
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for bucket in other.0.iter_recorded() {
            self.0
                .saturating_record_n(bucket.value_iterated_to(), bucket.count_at_value());
        }
    }

    pub fn summary(&self) -> LatencySummary {
        let millis = |micros: u64| round3(micros as f64 / 1000.0);
        if self.0.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.0.len(),
            mean: round3(self.0.mean() / 1000.0),
            p50: millis(self.0.value_at_quantile(0.50)),
            p90: millis(self.0.value_at_quantile(0.90)),
            p99: millis(self.0.value_at_quantile(0.99)),
            p99_9: millis(self.0.value_at_quantile(0.999)),
            max: millis(self.0.max()),
        }
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Percentiles in milliseconds; all zero when nothing was recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Serialize for LatencyHistogram {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let buckets: Vec<[u64; 2]> = self
            .0
            .iter_recorded()
            .map(|bucket| [bucket.value_iterated_to(), bucket.count_at_value()])
            .collect();
        buckets.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LatencyHistogram {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let buckets = Vec::<[u64; 2]>::deserialize(deserializer)?;
        let mut histogram = LatencyHistogram::default();
        for [value, count] in buckets {
            histogram.0.saturating_record_n(value, count);
        }
        Ok(histogram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_serialization_and_merging() {
        let mut first = LatencyHistogram::default();
        let mut second = LatencyHistogram::default();
        for micros in 1..=1000 {
            first.record_micros(micros);
            second.record_micros(micros * 10);
        }
        let text = serde_json::to_string(&second).expect("serializes");
        let decoded: LatencyHistogram = serde_json::from_str(&text).expect("parses");
        assert_eq!(decoded.summary(), second.summary());
        first.merge(&decoded);
        let summary = first.summary();
        assert_eq!(summary.count, 2000);
        assert!((summary.max - 10.0).abs() < 0.02, "{summary:?}");
        // 1.1 x values lie at or below x microseconds, so the median sits near 909.
        assert!((summary.p50 - 0.909).abs() < 0.005, "{summary:?}");
    }
}
