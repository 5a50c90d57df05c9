//! Subscriber counts of channels across the cluster, for the apps that need them
//! (`subscription_count` events, occupied / vacated / subscription_count webhooks): every node
//! keeps every node's count of each such channel, as the nodes report them, and sums them. Each
//! channel's changes are acted on by one node only, its `decider`, so that the whole cluster sends
//! one `channel_occupied` and one `channel_vacated` per change. No IO lives here.

use std::collections::{HashMap, HashSet};

use super::parts::Parts;
use super::wire::lane_of;
use crate::channels::counts::{change, Change};
use crate::protocol::ChannelKind;

/// A channel of an app, by the app's index in this node's configuration.
pub type ChannelKey = (usize, Box<str>);

/// One node's count of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCount {
    pub app: usize,
    pub channel: Box<str>,
    pub count: u64,
}

/// What one report changed in a channel's cluster-wide count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub app: usize,
    pub channel: Box<str>,
    pub change: Change,
}

/// Every node's counts, and their sums.
#[derive(Debug)]
pub struct ClusterCounts {
    /// The lanes snapshots come in (see `wire::lane_of`).
    lanes: u16,
    by_node: HashMap<u32, HashMap<ChannelKey, u64>>,
    totals: HashMap<ChannelKey, u64>,
    /// Snapshots arriving, by node and lane.
    incoming: HashMap<(u32, u16), Parts<NodeCount>>,
    /// Channels whose total changed since `take_changed`; presence channels are not among them
    /// (their subscribers are told user counts, not subscription counts).
    changed: HashSet<ChannelKey>,
}

impl Default for ClusterCounts {
    fn default() -> ClusterCounts {
        ClusterCounts::new(1)
    }
}

impl ClusterCounts {
    pub fn new(lanes: u16) -> ClusterCounts {
        ClusterCounts {
            lanes,
            by_node: HashMap::new(),
            totals: HashMap::new(),
            incoming: HashMap::new(),
            changed: HashSet::new(),
        }
    }

    /// Records `node`'s count of a channel now.
    pub fn record(&mut self, node: u32, app: usize, channel: &str, count: u64) -> Change {
        let key: ChannelKey = (app, channel.into());
        let counts = self.by_node.entry(node).or_default();
        let was = match count {
            0 => counts.remove(&key),
            _ => counts.insert(key.clone(), count),
        }
        .unwrap_or(0);
        if counts.is_empty() {
            self.by_node.remove(&node);
        }
        let before = self.totals.get(&key).copied().unwrap_or(0);
        let after = before.saturating_sub(was).saturating_add(count);
        match after {
            0 => self.totals.remove(&key),
            _ => self.totals.insert(key.clone(), after),
        };
        if before != after && !ChannelKind::of(channel).is_presence() {
            self.changed.insert(key);
        }
        change(before, after)
    }

    /// Takes part `part` of a snapshot of `node`'s counts in `lane`. Once the last part is in,
    /// it replaces what was known of `node` in that lane, and the changes that makes are
    /// returned.
    pub fn snapshot(
        &mut self,
        node: u32,
        lane: u16,
        part: u32,
        last: bool,
        counts: Vec<NodeCount>,
    ) -> Vec<Changed> {
        let parts = self.incoming.entry((node, lane)).or_default();
        let Some(fresh) = parts.take(part, last, counts) else {
            return Vec::new();
        };
        let lanes = self.lanes;
        let in_lane = |channel: &str| lane_of(lanes, channel) == lane;
        let mut gone: HashSet<ChannelKey> = (self.channels_of(node))
            .filter(|(_, channel)| in_lane(channel))
            .collect();
        let mut changes = Vec::new();
        for NodeCount {
            app,
            channel,
            count,
        } in fresh.into_iter().filter(|count| in_lane(&count.channel))
        {
            gone.remove(&(app, channel.clone()));
            changes.push(self.changed_by(node, app, channel, count));
        }
        for (app, channel) in gone {
            changes.push(self.changed_by(node, app, channel, 0));
        }
        changes.retain(|changed| changed.change != Change::Unchanged);
        changes
    }

    /// Forgets a node: its counts drop out of every total.
    pub fn forget(&mut self, node: u32) -> Vec<Changed> {
        self.incoming.retain(|&(from, _), _| from != node);
        let channels: Vec<ChannelKey> = self.channels_of(node).collect();
        channels
            .into_iter()
            .map(|(app, channel)| self.changed_by(node, app, channel, 0))
            .filter(|changed| changed.change != Change::Unchanged)
            .collect()
    }

    /// The nodes with a count of some channel.
    pub fn nodes(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_node.keys().copied()
    }

    /// Every count `node` holds: its snapshot (sent lane by lane).
    pub fn held(&self, node: u32) -> Vec<NodeCount> {
        self.by_node.get(&node).map_or_else(Vec::new, |counts| {
            (counts.iter())
                .map(|((app, channel), &count)| NodeCount {
                    app: *app,
                    channel: channel.clone(),
                    count,
                })
                .collect()
        })
    }

    /// A channel's subscribers on every node.
    pub fn total(&self, app: usize, channel: &str) -> u64 {
        let key: ChannelKey = (app, channel.into());
        self.totals.get(&key).copied().unwrap_or(0)
    }

    /// The channels whose total changed since the last call, each once, with their total now.
    pub fn take_changed(&mut self) -> Vec<(ChannelKey, u64)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|key| {
                let total = self.totals.get(&key).copied().unwrap_or(0);
                (key, total)
            })
            .collect()
    }

    fn channels_of(&self, node: u32) -> impl Iterator<Item = ChannelKey> + '_ {
        self.by_node
            .get(&node)
            .into_iter()
            .flat_map(|counts| counts.keys().cloned())
    }

    fn changed_by(&mut self, node: u32, app: usize, channel: Box<str>, count: u64) -> Changed {
        let change = self.record(node, app, &channel, count);
        Changed {
            app,
            channel,
            change,
        }
    }
}

/// The node that acts on a channel's changes among `candidates`: the one whose hash with the
/// channel is highest (rendezvous hashing), so the work spreads over the nodes and moves only
/// for the channels of a node that comes or goes. Every node computes the same answer from the
/// same candidates, whatever its build: the hash is SHA-256.
pub fn decider(candidates: &[u32], app_id: &str, channel: &str) -> Option<u32> {
    candidates.iter().copied().max_by_key(|&node| {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(&node.to_be_bytes());
        context.update(app_id.as_bytes());
        context.update(b"\0");
        context.update(channel.as_bytes());
        let digest = context.finish();
        let mut weight = [0u8; 8];
        weight.copy_from_slice(&digest.as_ref()[..8]);
        (u64::from_be_bytes(weight), node)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(app: usize, channel: &str, count: u64) -> NodeCount {
        NodeCount {
            app,
            channel: channel.into(),
            count,
        }
    }

    fn changes(mut list: Vec<Changed>) -> Vec<(String, Change)> {
        list.sort_by(|a, b| a.channel.cmp(&b.channel));
        list.into_iter()
            .map(|c| (c.channel.to_string(), c.change))
            .collect()
    }

    #[test]
    fn a_channel_on_two_nodes_is_occupied_and_vacated_once() {
        let mut counts = ClusterCounts::default();
        assert_eq!(counts.record(1, 0, "room", 2), Change::Occupied);
        assert_eq!(counts.record(2, 0, "room", 1), Change::Counted);
        assert_eq!(counts.total(0, "room"), 3);
        assert_eq!(counts.record(1, 0, "room", 0), Change::Counted);
        assert_eq!(counts.record(2, 0, "room", 1), Change::Unchanged);
        assert_eq!(counts.record(2, 0, "room", 0), Change::Vacated);
        assert_eq!(counts.record(2, 0, "room", 0), Change::Unchanged);
        assert_eq!(
            counts.nodes().count(),
            0,
            "nothing is kept for empty channels"
        );
        assert_eq!(
            counts.record(1, 1, "room", 1),
            Change::Occupied,
            "another app"
        );
    }

    #[test]
    fn changed_totals_are_told_once_and_presence_channels_not_at_all() {
        let mut counts = ClusterCounts::default();
        counts.record(1, 0, "a", 1);
        counts.record(2, 0, "a", 4);
        counts.record(2, 0, "b", 1);
        counts.record(2, 0, "presence-c", 1);
        let mut changed = counts.take_changed();
        changed.sort();
        assert_eq!(changed, [((0, "a".into()), 5), ((0, "b".into()), 1)]);
        assert_eq!(counts.take_changed(), []);
        counts.record(2, 0, "b", 0);
        assert_eq!(counts.take_changed(), [((0, "b".into()), 0)], "told as 0");
    }

    #[test]
    fn a_snapshot_replaces_what_was_known_of_a_node() {
        let mut counts = ClusterCounts::default();
        counts.record(7, 0, "stays", 1);
        counts.record(7, 0, "leaves", 1);
        counts.record(8, 0, "shared", 1);
        assert!(counts
            .snapshot(7, 0, 0, false, vec![count(0, "stays", 1)])
            .is_empty());
        let fresh = vec![count(0, "arrives", 2), count(0, "shared", 3)];
        assert_eq!(
            changes(counts.snapshot(7, 0, 1, true, fresh)),
            [
                ("arrives".into(), Change::Occupied),
                ("leaves".into(), Change::Vacated),
                ("shared".into(), Change::Counted),
            ]
        );
        let mut held = counts.held(7);
        held.sort_by(|a, b| a.channel.cmp(&b.channel));
        assert_eq!(
            held,
            [
                count(0, "arrives", 2),
                count(0, "shared", 3),
                count(0, "stays", 1)
            ]
        );
        assert!(
            counts.snapshot(7, 0, 0, true, counts.held(7)).is_empty(),
            "an unchanged snapshot changes nothing"
        );
        assert!(
            counts.snapshot(7, 0, 1, true, vec![]).is_empty(),
            "no part 0"
        );
        assert_eq!(counts.total(0, "arrives"), 2);
    }

    #[test]
    fn a_snapshot_replaces_only_its_own_lane() {
        let lanes = 16;
        let mut counts = ClusterCounts::new(lanes);
        let (a, b) = ("room-1", "room-2");
        let b = if lane_of(lanes, a) == lane_of(lanes, b) {
            "room-3"
        } else {
            b
        };
        assert_ne!(lane_of(lanes, a), lane_of(lanes, b));
        counts.record(7, 0, a, 1);
        counts.record(7, 0, b, 1);
        let lane = lane_of(lanes, a);
        let stray = vec![count(0, b, 5)];
        assert_eq!(
            changes(counts.snapshot(7, lane, 0, true, stray)),
            [(a.to_string(), Change::Vacated)],
            "the lane's own channel left; another lane's is not taken"
        );
        assert_eq!(counts.total(0, b), 1);
        let mut held = counts.held(7);
        held.sort_by(|x, y| x.channel.cmp(&y.channel));
        assert_eq!(held, [count(0, b, 1)]);
    }

    #[test]
    fn a_forgotten_node_leaves_its_channels() {
        let mut counts = ClusterCounts::default();
        counts.record(7, 0, "alone", 1);
        counts.record(7, 0, "shared", 1);
        counts.record(8, 0, "shared", 1);
        assert_eq!(
            changes(counts.forget(7)),
            [
                ("alone".into(), Change::Vacated),
                ("shared".into(), Change::Counted)
            ]
        );
        assert!(counts.forget(7).is_empty());
        assert_eq!(counts.nodes().collect::<Vec<_>>(), [8]);
    }

    #[test]
    fn deciders_agree_spread_and_move_only_with_their_node() {
        let nodes = [11, 22, 33];
        let mut decided = HashMap::new();
        for n in 0..300 {
            let channel = format!("channel-{n}");
            let chosen = decider(&nodes, "1", &channel).unwrap();
            assert_eq!(decider(&[33, 11, 22], "1", &channel), Some(chosen));
            *decided.entry(chosen).or_insert(0) += 1;
            let without_22 = decider(&[11, 33], "1", &channel).unwrap();
            if chosen != 22 {
                assert_eq!(without_22, chosen, "only 22's channels move");
            }
        }
        assert!(decided.values().all(|&n| n > 60), "{decided:?}");
        assert_eq!(decider(&[], "1", "a"), None);
    }
}
