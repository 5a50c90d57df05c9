//! What the tool reads from the server's side: resident memory from /proc, and a connection
//! gauge from its Prometheus page.

use std::time::Duration;

use crate::http::{self, HttpEndpoint, HttpError};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot read /proc/{pid}/status: {source}")]
    ProcStatus { pid: u32, source: std::io::Error },
    #[error("/proc/{0}/status has no VmRSS line")]
    NoRss(u32),
    #[error("metrics request failed: {0}")]
    Http(#[from] HttpError),
    #[error("metrics answered HTTP {0}")]
    Status(u16),
    #[error("metrics page has no `{0}` samples")]
    NoSamples(String),
}

/// The resident set size of a process, in KiB.
pub fn resident_kib(pid: u32) -> Result<u64, MetricsError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| MetricsError::ProcStatus { pid, source })?;
    parse_vm_rss(&status).ok_or(MetricsError::NoRss(pid))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The sum of every sample of `metric` (all label sets) on the page.
pub fn sum_samples(page: &str, metric: &str) -> Option<f64> {
    let mut total = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        // Label values may hold spaces, so the value is what follows the closing brace.
        let after_labels = match rest.chars().next() {
            Some('{') => rest.rfind('}').map(|end| &rest[end + 1..]),
            Some(' ') => Some(rest),
            _ => None,
        };
        let value = after_labels
            .and_then(|text| text.split_whitespace().next())
            .and_then(|text| text.parse::<f64>().ok());
        if let Some(value) = value {
            total = Some(total.unwrap_or(0.0) + value);
        }
    }
    total
}

/// Fetches the page and sums `metric`.
pub async fn fetch_gauge(
    endpoint: &HttpEndpoint,
    metric: &str,
    step_timeout: Duration,
) -> Result<u64, MetricsError> {
    let response = http::get(endpoint, step_timeout).await?;
    if response.status != 200 {
        return Err(MetricsError::Status(response.status));
    }
    let page = String::from_utf8_lossy(&response.body);
    sum_samples(&page, metric)
        .map(|sum| sum.max(0.0).round() as u64)
        .ok_or_else(|| MetricsError::NoSamples(metric.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_summed_over_label_sets_only_for_the_exact_name() {
        let page = "# HELP gateway_connections open connections\n\
                    # TYPE gateway_connections gauge\n\
                    gateway_connections{shard=\"0\",app=\"1\"} 120\n\
                    gateway_connections{shard=\"1\",app=\"a b\"} 80 1700000000\n\
                    gateway_connections_total{shard=\"0\"} 999\n\
                    gateway_connects_total 7\n";
        assert_eq!(sum_samples(page, "gateway_connections"), Some(200.0));
        assert_eq!(sum_samples(page, "gateway_connects_total"), Some(7.0));
        assert_eq!(sum_samples(page, "missing"), None);
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tgateway\nVmPeak:\t  9000 kB\nVmRSS:\t   5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(5120));
        assert!(resident_kib(std::process::id()).expect("own status") > 0);
    }
}
