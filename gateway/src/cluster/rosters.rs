//! Presence members and signed-in users across nodes, as the bridge keeps them: every roster
//! entry (one user on one shard of one node, in a presence channel or among an app's signed-in
//! users) of every node, this one included. No IO lives here.
//!
//! The shards keep the rosters themselves (see `channels::presence`); the bridge keeps this
//! table only to tell them what changed. Its own node's entries are what it sends as a snapshot
//! when another node asks. Another node's entries turn a snapshot from that node into the changes
//! that matter, and become departures when that node dies, so that its users do not stay behind
//! as ghost members.

use std::collections::HashMap;

use serde_json::Value;

use super::parts::Parts;
use super::wire::{lane_of, RosterChange};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    app: String,
    channel: Option<String>,
    user: String,
    shard: u32,
}

impl Key {
    fn of(change: &RosterChange) -> Key {
        Key {
            app: change.app.clone(),
            channel: change.channel.clone(),
            user: change.user.clone(),
            shard: change.shard,
        }
    }

    fn lane(&self, lanes: u16) -> u16 {
        lane_of(lanes, self.channel.as_deref().unwrap_or(&self.user))
    }

    fn change(&self, joined: bool, info: Value) -> RosterChange {
        RosterChange {
            app: self.app.clone(),
            channel: self.channel.clone(),
            user: self.user.clone(),
            shard: self.shard,
            joined,
            info,
        }
    }
}

/// One node's entries, with the info each user joined with.
#[derive(Debug, Default)]
struct Held {
    entries: HashMap<Key, Value>,
    /// Snapshots arriving, by lane.
    incoming: HashMap<u16, Parts<RosterChange>>,
}

/// Roster entries by node.
#[derive(Debug)]
pub struct Rosters {
    /// The lanes snapshots come in (see `wire::lane_of`).
    lanes: u16,
    nodes: HashMap<u32, Held>,
}

impl Default for Rosters {
    fn default() -> Rosters {
        Rosters::new(1)
    }
}

impl Rosters {
    pub fn new(lanes: u16) -> Rosters {
        Rosters {
            lanes,
            nodes: HashMap::new(),
        }
    }

    /// Applies a change `node` made to its own entries; false when it changes nothing known.
    pub fn apply(&mut self, node: u32, change: &RosterChange) -> bool {
        let held = self.nodes.entry(node).or_default();
        let key = Key::of(change);
        if !change.joined {
            return held.entries.remove(&key).is_some();
        }
        if held.entries.contains_key(&key) {
            return false;
        }
        held.entries.insert(key, change.info.clone());
        true
    }

    /// Takes part `part` of a snapshot of `node`'s entries in `lane`. Once the last part is in,
    /// what was known of `node` in that lane is replaced, and the changes that makes are
    /// returned: arrivals first, so that a user who only moved between shards is never briefly
    /// absent. A part out of order (one was lost with a connection) drops the snapshot; the next
    /// sync sends a whole one.
    pub fn snapshot(
        &mut self,
        node: u32,
        lane: u16,
        part: u32,
        last: bool,
        entries: Vec<RosterChange>,
    ) -> Vec<RosterChange> {
        let lanes = self.lanes;
        let held = self.nodes.entry(node).or_default();
        let parts = held.incoming.entry(lane).or_default();
        let Some(entries) = parts.take(part, last, entries) else {
            return Vec::new();
        };
        let mut fresh = HashMap::new();
        for entry in entries.into_iter().filter(|e| e.joined) {
            let key = Key::of(&entry);
            if key.lane(lanes) == lane {
                fresh.entry(key).or_insert(entry.info);
            }
        }
        let mut changes: Vec<RosterChange> = fresh
            .iter()
            .filter(|(key, _)| !held.entries.contains_key(key))
            .map(|(key, info)| key.change(true, info.clone()))
            .collect();
        changes.extend(
            (held.entries.keys())
                .filter(|key| key.lane(lanes) == lane && !fresh.contains_key(key))
                .map(|key| key.change(false, Value::Null)),
        );
        held.entries.retain(|key, _| key.lane(lanes) != lane);
        held.entries.extend(fresh);
        changes
    }

    /// Forgets a node; returns its entries as departures.
    pub fn forget(&mut self, node: u32) -> Vec<RosterChange> {
        self.nodes.remove(&node).map_or_else(Vec::new, |held| {
            held.entries
                .into_keys()
                .map(|key| key.change(false, Value::Null))
                .collect()
        })
    }

    /// Every entry `node` holds, as arrivals: its snapshot (sent lane by lane).
    pub fn held(&self, node: u32) -> Vec<RosterChange> {
        self.nodes.get(&node).map_or_else(Vec::new, |held| {
            held.entries
                .iter()
                .map(|(key, info)| key.change(true, info.clone()))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn change(user: &str, shard: u32, joined: bool) -> RosterChange {
        RosterChange {
            app: "1".into(),
            channel: Some("presence-room".into()),
            user: user.into(),
            shard,
            joined,
            info: if joined {
                json!({"name": user})
            } else {
                Value::Null
            },
        }
    }

    fn sorted(mut changes: Vec<RosterChange>) -> Vec<(String, u32, bool)> {
        let mut list: Vec<_> = changes
            .drain(..)
            .map(|c| (c.user, c.shard, c.joined))
            .collect();
        list.sort();
        list
    }

    #[test]
    fn changes_are_applied_once() {
        let mut rosters = Rosters::default();
        assert!(rosters.apply(7, &change("u1", 0, true)));
        assert!(!rosters.apply(7, &change("u1", 0, true)), "repeated");
        assert!(rosters.apply(7, &change("u1", 1, true)), "another shard");
        assert!(rosters.apply(7, &change("u1", 0, false)));
        assert!(!rosters.apply(7, &change("u1", 0, false)), "repeated");
        let signed_in = RosterChange {
            channel: None,
            info: Value::Null,
            ..change("u1", 1, true)
        };
        assert!(rosters.apply(7, &signed_in), "signed-in users are apart");
        assert_eq!(rosters.held(7).len(), 2);
        assert_eq!(rosters.held(8), Vec::new());
    }

    #[test]
    fn a_snapshot_replaces_what_was_known_and_says_what_changed() {
        let mut rosters = Rosters::default();
        rosters.apply(7, &change("stays", 0, true));
        rosters.apply(7, &change("leaves", 0, true));
        let none = rosters.snapshot(7, 0, 0, false, vec![change("stays", 0, true)]);
        assert!(none.is_empty(), "nothing changes before the last part");
        let changes = rosters.snapshot(7, 0, 1, true, vec![change("arrives", 1, true)]);
        assert_eq!(
            changes.first().map(|c| c.joined),
            Some(true),
            "arrivals come first"
        );
        assert_eq!(
            sorted(changes),
            vec![("arrives".into(), 1, true), ("leaves".into(), 0, false)]
        );
        let again = rosters.snapshot(7, 0, 0, true, rosters.held(7));
        assert!(again.is_empty(), "an unchanged snapshot changes nothing");
        let arrived = rosters.held(7).into_iter().find(|c| c.user == "arrives");
        assert_eq!(arrived.map(|c| c.info), Some(json!({"name": "arrives"})));
    }

    #[test]
    fn a_snapshot_with_a_missing_part_is_dropped() {
        let mut rosters = Rosters::default();
        rosters.apply(7, &change("u1", 0, true));
        rosters.snapshot(7, 0, 0, false, vec![]);
        assert!(rosters.snapshot(7, 0, 2, true, vec![]).is_empty());
        assert_eq!(rosters.held(7).len(), 1, "what was known stands");
        assert!(
            rosters.snapshot(7, 0, 1, true, vec![]).is_empty(),
            "the rest of a dropped snapshot is ignored"
        );
        assert_eq!(rosters.held(7).len(), 1);
    }

    #[test]
    fn a_snapshot_replaces_only_its_own_lane() {
        let lanes = 16;
        let mut rosters = Rosters::new(lanes);
        let in_lane = |name: &str| lane_of(lanes, name);
        let (a, b) = ("presence-a", "presence-b");
        let b = if in_lane(a) == in_lane(b) {
            "presence-c"
        } else {
            b
        };
        assert_ne!(in_lane(a), in_lane(b));
        let on = |channel: &str, user: &str| RosterChange {
            channel: Some(channel.into()),
            ..change(user, 0, true)
        };
        rosters.apply(7, &on(a, "u1"));
        rosters.apply(7, &on(b, "u2"));
        let changes = rosters.snapshot(7, in_lane(a), 0, true, vec![on(a, "u3")]);
        assert_eq!(
            sorted(changes),
            vec![("u1".into(), 0, false), ("u3".into(), 0, true)]
        );
        let held = rosters.held(7).into_iter();
        let in_b: Vec<RosterChange> = held.filter(|c| c.lane(lanes) == in_lane(b)).collect();
        assert_eq!(in_b, vec![on(b, "u2")], "untouched");
        let stray = rosters.snapshot(7, in_lane(b), 0, true, vec![on(b, "u2"), on(a, "u4")]);
        assert!(stray.is_empty(), "an entry of another lane is not taken");
    }

    #[test]
    fn a_forgotten_node_leaves_with_all_its_entries() {
        let mut rosters = Rosters::default();
        rosters.apply(7, &change("u1", 0, true));
        rosters.apply(7, &change("u2", 1, true));
        rosters.apply(8, &change("u3", 0, true));
        assert_eq!(
            sorted(rosters.forget(7)),
            vec![("u1".into(), 0, false), ("u2".into(), 1, false)]
        );
        assert!(rosters.forget(7).is_empty());
        assert_eq!(rosters.held(8).len(), 1, "other nodes stay");
    }
}
