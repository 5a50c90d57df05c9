//! Spreads work evenly over time at a fixed rate, however coarse the timer is.

use std::time::{Duration, Instant};

/// Item `k` (from zero) is due `k / rate` seconds after the start. Rates above the timer's
/// resolution are met by handing out every item that has come due in one batch.
pub struct Pacer {
    start: Instant,
    rate_per_second: f64,
    issued: u64,
}

impl Pacer {
    pub fn new(rate_per_second: f64) -> Self {
        Pacer {
            start: Instant::now(),
            rate_per_second,
            issued: 0,
        }
    }

    /// Waits until the next item is due and returns how many are due now (at least one).
    pub async fn next_batch(&mut self) -> u64 {
        let next_due =
            self.start + Duration::from_secs_f64(self.issued as f64 / self.rate_per_second);
        tokio::time::sleep_until(next_due.into()).await;
        let due_total =
            (self.start.elapsed().as_secs_f64() * self.rate_per_second).floor() as u64 + 1;
        let batch = due_total.saturating_sub(self.issued).max(1);
        self.issued += batch;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn keeps_the_rate_even_above_timer_resolution() {
        let mut pacer = Pacer::new(20_000.0);
        let started = Instant::now();
        let mut issued = 0;
        while issued < 2_000 {
            issued += pacer.next_batch().await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        // 2,000 items at 20,000 per second take about 100 ms.
        assert!((0.09..0.2).contains(&elapsed), "{elapsed}");
    }
}
