//! Node-wide subscriber counts, kept by one shard per channel: its owner. Every shard reports
//! its own count of a channel to the owner whenever it changes; the owner alone decides "first
//! subscriber on any shard" (occupied), "last on all shards" (vacated) and which counts changed
//! since they were last told to subscribers. No IO lives here.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

/// The shard that decides node-wide things about a channel (its occupied / vacated and member
/// webhooks, its subscription count) among `shards`: one per channel, so each is decided once.
pub fn owner(app: usize, channel: &str, shards: usize) -> usize {
    // SipHash with fixed keys: every shard computes the same owner.
    let mut hasher = std::hash::DefaultHasher::new();
    (app, channel).hash(&mut hasher);
    (hasher.finish() % shards.max(1) as u64) as usize
}

/// What one shard's new count changed in a channel's node-wide count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    /// From no subscriber on any shard to some.
    Occupied,
    /// From some to none on every shard.
    Vacated,
    /// Some before and after, but not as many.
    Counted,
}

/// What a count going from `before` to `after` changed.
pub fn change(before: u64, after: u64) -> Change {
    match (before, after) {
        _ if before == after => Change::Unchanged,
        (0, _) => Change::Occupied,
        (_, 0) => Change::Vacated,
        _ => Change::Counted,
    }
}

/// What the node that decides about a channel across the cluster tells the channel's owner
/// shard to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Occupied,
    Vacated,
    /// The channel's subscribers on every node, changed since last told.
    Count(u64),
}

/// The counts of the channels one shard owns, by app.
#[derive(Debug)]
pub struct OwnedCounts {
    shards: usize,
    /// Each occupied channel's subscribers on each shard, as last reported.
    channels: Vec<HashMap<Box<str>, Box<[u64]>>>,
    /// Channels whose node-wide count changed since `take_changed`, by app.
    changed: Vec<HashSet<Box<str>>>,
}

impl OwnedCounts {
    pub fn new(apps: usize, shards: usize) -> OwnedCounts {
        OwnedCounts {
            shards,
            channels: (0..apps).map(|_| HashMap::new()).collect(),
            changed: (0..apps).map(|_| HashSet::new()).collect(),
        }
    }

    /// Records `shard`'s count of a channel. `remember` says whether the change is kept for
    /// `take_changed` (not for presence channels, whose subscribers are told user counts).
    pub fn record(
        &mut self,
        app: usize,
        channel: &str,
        shard: usize,
        count: u64,
        remember: bool,
    ) -> Change {
        let channels = &mut self.channels[app];
        if count == 0 && !channels.contains_key(channel) {
            return Change::Unchanged;
        }
        let per_shard = channels
            .entry(channel.into())
            .or_insert_with(|| vec![0; self.shards].into());
        let before: u64 = per_shard.iter().sum();
        per_shard[shard] = count;
        let after: u64 = per_shard.iter().sum();
        if after == 0 {
            channels.remove(channel);
        }
        if before == after {
            return Change::Unchanged;
        }
        if remember {
            self.changed[app].insert(channel.into());
        }
        change(before, after)
    }

    /// A channel's subscribers on every shard.
    pub fn total(&self, app: usize, channel: &str) -> u64 {
        self.channels[app]
            .get(channel)
            .map_or(0, |per_shard| per_shard.iter().sum())
    }

    /// The channels of an app whose count changed since the last call, each once, with their
    /// count now.
    pub fn take_changed(&mut self, app: usize) -> Vec<(Box<str>, u64)> {
        std::mem::take(&mut self.changed[app])
            .into_iter()
            .map(|channel| {
                let count = self.total(app, &channel);
                (channel, count)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three shards' counts of one channel, reported to its owner in the order they changed.
    #[test]
    fn the_owner_decides_occupied_and_vacated_once_across_shards() {
        let mut counts = OwnedCounts::new(1, 3);
        let mut report = |shard, count| counts.record(0, "room", shard, count, true);
        assert_eq!(report(1, 1), Change::Occupied);
        assert_eq!(report(2, 2), Change::Counted);
        assert_eq!(report(1, 0), Change::Counted);
        assert_eq!(report(2, 2), Change::Unchanged);
        assert_eq!(report(2, 0), Change::Vacated);
        assert_eq!(report(0, 0), Change::Unchanged, "nothing to vacate twice");
        assert_eq!(report(0, 1), Change::Occupied);
    }

    #[test]
    fn changed_counts_are_told_once_with_their_latest_value() {
        let mut counts = OwnedCounts::new(2, 2);
        counts.record(0, "a", 0, 1, true);
        counts.record(0, "a", 1, 3, true);
        counts.record(0, "b", 1, 1, true);
        counts.record(0, "presence-c", 1, 1, false);
        counts.record(1, "a", 0, 5, true);
        let mut changed = counts.take_changed(0);
        changed.sort();
        assert_eq!(changed, [("a".into(), 4), ("b".into(), 1)]);
        assert_eq!(counts.take_changed(0), []);
        assert_eq!(counts.take_changed(1), [("a".into(), 5)]);
        counts.record(0, "b", 1, 0, true);
        assert_eq!(
            counts.take_changed(0),
            [("b".into(), 0)],
            "a vacated channel is told as 0"
        );
        assert_eq!(counts.total(0, "b"), 0);
    }

    #[test]
    fn owners_are_the_same_everywhere_and_spread_over_shards() {
        let mut owned = [0usize; 4];
        for n in 0..400 {
            let channel = format!("channel-{n}");
            let shard = owner(0, &channel, 4);
            assert_eq!(shard, owner(0, &channel, 4));
            owned[shard] += 1;
        }
        assert!(owned.iter().all(|&n| n > 50), "{owned:?}");
        assert_eq!(owner(0, "any", 1), 0);
    }
}
