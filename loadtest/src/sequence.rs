//! Per-subscriber bookkeeping of the sequence numbers one channel's events carry: which arrived
//! twice, which arrived after a later one, and (once the publisher says how many it sent) which
//! never arrived.

use std::collections::BTreeSet;

/// Sequence numbers start at 1. Memory stays small on a healthy run: only numbers that arrive
/// ahead of a gap are kept individually.
#[derive(Debug, Clone)]
pub struct SequenceTracker {
    /// Every number below this one has arrived.
    next_contiguous: u64,
    /// Numbers that arrived while an earlier one was still missing.
    ahead: BTreeSet<u64>,
    highest: u64,
    pub unique: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl Default for SequenceTracker {
    fn default() -> Self {
        SequenceTracker {
            next_contiguous: 1,
            ahead: BTreeSet::new(),
            highest: 0,
            unique: 0,
            duplicated: 0,
            out_of_order: 0,
        }
    }
}

impl SequenceTracker {
    pub fn record(&mut self, sequence: u64) {
        if self.has_seen(sequence) {
            self.duplicated += 1;
            return;
        }
        self.unique += 1;
        if sequence < self.highest {
            self.out_of_order += 1;
        }
        self.highest = self.highest.max(sequence);
        if sequence == self.next_contiguous {
            self.next_contiguous += 1;
            while self.ahead.remove(&self.next_contiguous) {
                self.next_contiguous += 1;
            }
        } else {
            self.ahead.insert(sequence);
        }
    }

    fn has_seen(&self, sequence: u64) -> bool {
        sequence < self.next_contiguous || self.ahead.contains(&sequence)
    }

    /// Numbers 1..=published that never arrived, not counting those whose publish failed
    /// (listed in `failed`): the server may or may not have delivered those.
    pub fn lost(&self, published: u64, failed: &[u64]) -> u64 {
        let seen_within = if self.highest <= published {
            self.unique
        } else {
            (1..=published)
                .filter(|sequence| self.has_seen(*sequence))
                .count() as u64
        };
        let failed_unseen = failed
            .iter()
            .filter(|sequence| **sequence <= published && !self.has_seen(**sequence))
            .count() as u64;
        published.saturating_sub(seen_within + failed_unseen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_delivery_is_clean() {
        let mut tracker = SequenceTracker::default();
        (1..=100).for_each(|sequence| tracker.record(sequence));
        assert_eq!((tracker.duplicated, tracker.out_of_order), (0, 0));
        assert_eq!(tracker.lost(100, &[]), 0);
        assert!(tracker.ahead.is_empty());
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_counted() {
        let mut tracker = SequenceTracker::default();
        for sequence in [1, 2, 4, 3, 3, 6, 1] {
            tracker.record(sequence);
        }
        assert_eq!(tracker.unique, 5);
        assert_eq!(tracker.duplicated, 2);
        assert_eq!(tracker.out_of_order, 1);
        // 5 and 7 never arrived.
        assert_eq!(tracker.lost(7, &[]), 2);
        // A failed publish of 5 is not a loss.
        assert_eq!(tracker.lost(7, &[5]), 1);
    }
}
