//! What the tool reads from the server's side: resident memory and CPU time from /proc, and a
//! connection gauge from its Prometheus page.

use std::time::Duration;

use crate::http::{self, HttpEndpoint, HttpError};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot read /proc/{pid}/status: {source}")]
    ProcStatus { pid: u32, source: std::io::Error },
    #[error("/proc/{0}/status has no VmRSS line")]
    NoRss(u32),
    #[error("cannot read /proc/{pid}/stat: {source}")]
    ProcStat { pid: u32, source: std::io::Error },
    #[error("/proc/{0}/stat has no CPU times")]
    NoCpuTimes(u32),
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

/// The CPU time a process has used so far, user and system, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, MetricsError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| MetricsError::ProcStat { pid, source })?;
    let ticks = parse_cpu_ticks(&stat).ok_or(MetricsError::NoCpuTimes(pid))?;
    // SAFETY: sysconf takes a plain integer and reads or writes no memory of ours.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / per_second.max(1) as f64)
}

/// utime + stime, fields 14 and 15 of /proc/PID/stat, in clock ticks. The command name in field
/// 2 may hold spaces and parentheses, so fields are counted from its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
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
    fn cpu_time_is_user_plus_system() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 500 0 0 0 731 95 0 0 20 0 3 0 1";
        assert_eq!(parse_cpu_ticks(stat), Some(731 + 95));
        assert_eq!(parse_cpu_ticks("4242 (short) S 1"), None);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(0);
        }
        assert!(cpu_seconds(std::process::id()).expect("own stat") > 0.0);
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tgateway\nVmPeak:\t  9000 kB\nVmRSS:\t   5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(5120));
        assert!(resident_kib(std::process::id()).expect("own status") > 0);
    }
}
