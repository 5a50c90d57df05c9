//! The bridge's share of cluster-wide channel counts: it records this node's count of each
//! channel (from the channel's owner shard) and the other nodes' (from their `counts` messages
//! and snapshots), and, for the channels this node decides about, tells the owner shard what to
//! send. See `cluster::occupancy`.

use std::time::{Duration, Instant};

use super::{Bridge, RECENT};
use crate::admin::stats;
use crate::bus::ShardMessage;
use crate::channels::counts::{owner, Change, Decision};
use crate::cluster::occupancy::{decider, Changed, NodeCount};
use crate::cluster::wire::ChannelCount;

/// A node decides about channels only once it has been in the cluster this long, so that the
/// others' snapshots (asked for when it connects) have arrived.
const SETTLE: Duration = Duration::from_secs(2);
/// How often changed counts are told: a burst of subscriptions makes one event, not one each.
pub(super) const COUNT_INTERVAL: Duration = Duration::from_secs(1);

impl Bridge {
    /// Records this node's new count of a channel; the change goes to the other nodes in
    /// `outgoing` when online.
    pub(super) fn own_count(
        &mut self,
        app: usize,
        channel: Box<str>,
        count: u64,
        outgoing: Option<&mut Vec<ChannelCount>>,
    ) {
        let change = self.counts.record(self.node.id, app, &channel, count);
        if let Some(outgoing) = outgoing {
            if let Some(wire) = self.wire_count(app, &channel, count) {
                outgoing.push(wire);
            }
            self.decide_change(app, &channel, change, Instant::now());
        }
    }

    /// Another node's new counts.
    pub(super) fn on_counts(&mut self, node: u32, counts: Vec<ChannelCount>) {
        let now = Instant::now();
        for count in counts {
            if let Some(count) = self.read_count(count) {
                let change = self
                    .counts
                    .record(node, count.app, &count.channel, count.count);
                self.decide_change(count.app, &count.channel, change, now);
            }
        }
    }

    /// A part of another node's snapshot of its counts in a lane.
    pub(super) fn on_count_snapshot(
        &mut self,
        node: u32,
        lane: u16,
        part: u32,
        last: bool,
        counts: Vec<ChannelCount>,
    ) {
        let counts = counts
            .into_iter()
            .filter_map(|c| self.read_count(c))
            .collect();
        let changes = self.counts.snapshot(node, lane, part, last, counts);
        self.decide_all(changes);
    }

    /// This node's counts, for its snapshot.
    pub(super) fn count_snapshot(&self) -> Vec<ChannelCount> {
        let held = self.counts.held(self.node.id).into_iter();
        held.filter_map(|c| self.wire_count(c.app, &c.channel, c.count))
            .collect()
    }

    /// Online, at every tick: drops the counts of nodes no longer heard from (only online: a
    /// node cut off from Redis hears nobody, and keeps what it knew until their snapshots come
    /// back), and tells the counts that changed, once a second.
    pub(super) fn tick_counts(&mut self, now: Instant) {
        let own = self.node.id;
        let gone: Vec<u32> = (self.counts.nodes())
            .filter(|&node| node != own && !self.nodes.knows(node))
            .collect();
        for node in gone {
            let changes = self.counts.forget(node);
            self.decide_all(changes);
        }
        if now.saturating_duration_since(self.last_count_flush) < COUNT_INTERVAL {
            return;
        }
        self.last_count_flush = now;
        for ((app, channel), count) in self.counts.take_changed() {
            self.decide(app, &channel, Decision::Count(count), now);
        }
    }

    fn decide_all(&self, changes: Vec<Changed>) {
        let now = Instant::now();
        for changed in changes {
            self.decide_change(changed.app, &changed.channel, changed.change, now);
        }
    }

    fn decide_change(&self, app: usize, channel: &str, change: Change, now: Instant) {
        let decision = match change {
            Change::Occupied => Decision::Occupied,
            Change::Vacated => Decision::Vacated,
            // Told once a second, by `tick_counts`.
            Change::Counted | Change::Unchanged => return,
        };
        self.decide(app, channel, decision, now);
    }

    /// Hands a decision to the channel's owner shard, if this node is the one that decides
    /// about the channel. Only while connected: a node cut off from Redis knows too little.
    fn decide(&self, app: usize, channel: &str, decision: Decision, now: Instant) {
        let Some(settings) = self.node.config.apps.get(app) else {
            return;
        };
        if !self.stats.is_up() {
            return;
        }
        let deciders = self.nodes.deciders(now, RECENT, SETTLE, self.online_since);
        if decider(&deciders, &settings.id, channel) != Some(self.node.id) {
            return;
        }
        let shard = owner(app, channel, self.node.shards.len());
        let Some(link) = self.node.shards.get(shard) else {
            return;
        };
        let message = ShardMessage::Decided {
            app,
            channel: channel.into(),
            decision,
        };
        if link.inbox.send(message).is_err() {
            stats::add(&link.stats.inbox_drops, 1);
        }
    }

    fn wire_count(&self, app: usize, channel: &str, count: u64) -> Option<ChannelCount> {
        let settings = self.node.config.apps.get(app)?;
        Some(ChannelCount {
            app: settings.id.clone(),
            channel: channel.to_string(),
            count,
        })
    }

    /// A count of an app this node serves; others are ignored.
    fn read_count(&self, count: ChannelCount) -> Option<NodeCount> {
        let (app, _) = self.node.config.app_by_id(&count.app)?;
        Some(NodeCount {
            app,
            channel: count.channel.into(),
            count: count.count,
        })
    }
}
