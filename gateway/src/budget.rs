//! The node-wide budget of bytes held for client input that is not complete yet: WebSocket
//! messages cut by the end of a read and HTTP API bodies being read. Every shard reserves from
//! it before it holds such bytes and gives them back when the input completes or the connection
//! ends, so that however many clients send half a message, together they hold at most the
//! budget. One atomic, shared by the shards; no lock.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

#[derive(Debug)]
pub struct InputBudget {
    limit: usize,
    used: AtomicUsize,
}

impl InputBudget {
    pub fn new(limit: usize) -> InputBudget {
        InputBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `bytes` from the budget; false, taking nothing, when they would pass its limit.
    pub fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Relaxed, Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back bytes taken with `reserve`.
    pub fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Relaxed);
    }

    /// Moves a holding of `from` bytes to `to`; false, leaving it at `from`, when growing it
    /// would pass the limit.
    pub fn resize(&self, from: usize, to: usize) -> bool {
        if to > from {
            return self.reserve(to - from);
        }
        self.release(from - to);
        true
    }

    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit_and_come_back() {
        let budget = InputBudget::new(100);
        assert!(budget.reserve(60));
        assert!(!budget.reserve(41), "61 + 41 would pass 100");
        assert!(budget.resize(60, 100));
        assert!(!budget.resize(100, 101));
        assert_eq!(budget.used(), 100);
        assert!(budget.resize(100, 10));
        budget.release(10);
        assert_eq!(budget.used(), 0);
        assert!(!budget.reserve(usize::MAX), "no overflow");
    }
}
