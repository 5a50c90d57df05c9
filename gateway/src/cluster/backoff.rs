//! How long to wait before connecting to Redis again: doubling from a short first wait up to a
//! cap, with jitter so that a fleet whose Redis came back does not reconnect in one burst. No IO
//! lives here.

use std::time::Duration;

/// Spread of each wait: a wait of `d` becomes a duration between `d * (1 - JITTER)` and `d`.
const JITTER: f64 = 0.25;

#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            next: first,
        }
    }

    /// The next wait; `random` in [0, 1) picks where within the jitter it falls.
    pub fn next_wait(&mut self, random: f64) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.cap);
        wait.mul_f64(1.0 - JITTER * random.clamp(0.0, 1.0))
    }

    /// After a connection that worked: start again from the first wait.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(2000));
        let waits: Vec<Duration> = (0..7).map(|_| backoff.next_wait(0.0)).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 2000, 2000].map(ms).to_vec()
        );
        assert_eq!(backoff.next_wait(1.0), ms(1500), "jitter shortens a wait");
        backoff.reset();
        assert_eq!(backoff.next_wait(0.5), ms(87) + Duration::from_micros(500));
    }
}
