//! Redis Cluster's hash slots as sharded pub/sub uses them: which slot a channel name falls in,
//! which master serves each slot (from `CLUSTER SLOTS`), and which channels each master's
//! subscriber connection must hold, kept right as channels come and go and slots move. No IO
//! lives here: the caller runs the connections and carries out the changes this returns.

use std::collections::{BTreeMap, BTreeSet};

use redis::Value;

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// A master's address, `host:port`, as `CLUSTER SLOTS` gives it.
pub type Addr = String;

/// The slot of a key or sharded channel: CRC16 (XMODEM) of the name, or of the part inside
/// its first non-empty `{...}` (a hash tag), modulo 16384.
pub fn slot(name: &[u8]) -> u16 {
    let hashed = hash_tag(name).unwrap_or(name);
    crc16(hashed) % SLOTS
}

fn hash_tag(name: &[u8]) -> Option<&[u8]> {
    let open = name.iter().position(|&b| b == b'{')?;
    let rest = &name[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

/// CRC16-CCITT as Redis Cluster uses it: polynomial 0x1021, initial value 0, no reflection.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Which master serves each slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMap {
    /// Disjoint ranges, sorted by their first slot: (first, last, master).
    ranges: Vec<(u16, u16, Addr)>,
}

/// A `CLUSTER SLOTS` reply that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected CLUSTER SLOTS reply: {0}")]
pub struct BadSlots(&'static str);

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply: `[[first, last, [host, port, id, ...], replicas...], ...]`.
    pub fn from_cluster_slots(reply: &Value) -> Result<SlotMap, BadSlots> {
        let Value::Array(entries) = reply else {
            return Err(BadSlots("not an array"));
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else {
                return Err(BadSlots("an entry is not an array"));
            };
            let [first, last, master, ..] = fields.as_slice() else {
                return Err(BadSlots("an entry has fewer than 3 fields"));
            };
            let (first, last) = (slot_number(first)?, slot_number(last)?);
            if first > last {
                return Err(BadSlots("a range ends before it starts"));
            }
            ranges.push((first, last, address(master)?));
        }
        ranges.sort_unstable_by_key(|range| range.0);
        if ranges.windows(2).any(|pair| pair[0].1 >= pair[1].0) {
            return Err(BadSlots("ranges overlap"));
        }
        Ok(SlotMap { ranges })
    }

    /// The master serving a slot, if any does.
    pub fn master_of(&self, slot: u16) -> Option<&Addr> {
        let at = self.ranges.partition_point(|range| range.0 <= slot);
        let (_, last, master) = self.ranges.get(at.checked_sub(1)?)?;
        (slot <= *last).then_some(master)
    }

    /// Whether every slot has a master.
    pub fn is_complete(&self) -> bool {
        let served: u32 = self
            .ranges
            .iter()
            .map(|(first, last, _)| u32::from(last - first) + 1)
            .sum();
        served == u32::from(SLOTS)
    }

    /// The masters, each once.
    pub fn masters(&self) -> BTreeSet<&Addr> {
        self.ranges.iter().map(|(_, _, master)| master).collect()
    }
}

fn slot_number(value: &Value) -> Result<u16, BadSlots> {
    match value {
        Value::Int(n) if (0..i64::from(SLOTS)).contains(n) => Ok(*n as u16),
        _ => Err(BadSlots("a slot is not a number below 16384")),
    }
}

fn address(node: &Value) -> Result<Addr, BadSlots> {
    let Value::Array(fields) = node else {
        return Err(BadSlots("a node is not an array"));
    };
    match fields.as_slice() {
        [host, Value::Int(port), ..] => {
            let host = match host {
                Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Value::SimpleString(text) => text.clone(),
                _ => return Err(BadSlots("a node's host is not a string")),
            };
            Ok(format!("{host}:{port}"))
        }
        _ => Err(BadSlots("a node has no host and port")),
    }
}

/// A change to one master's subscriber connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Subscribe { node: Addr, channel: String },
    Unsubscribe { node: Addr, channel: String },
}

/// The channels wanted, and where each is subscribed now.
#[derive(Debug, Default)]
pub struct Placement {
    map: SlotMap,
    /// Wanted channels, with the master holding each (none until a master serves its slot and
    /// that master's connection is up).
    wanted: BTreeMap<String, Option<Addr>>,
    /// Masters whose subscriber connection is up.
    up: BTreeSet<Addr>,
}

impl Placement {
    pub fn map(&self) -> &SlotMap {
        &self.map
    }

    /// Channels wanted and not held by any master now: their messages are lost until placed.
    pub fn unplaced(&self) -> usize {
        self.wanted.values().filter(|at| at.is_none()).count()
    }

    /// Each master with whether its connection is up and how many channels it holds.
    pub fn masters(&self) -> Vec<(Addr, bool, usize)> {
        let masters = self.map.masters();
        masters
            .into_iter()
            .map(|master| {
                let held = (self.wanted.values())
                    .filter(|at| at.as_ref() == Some(master))
                    .count();
                (master.clone(), self.up.contains(master), held)
            })
            .collect()
    }

    /// Whether `node` is where the wanted channel is held.
    pub fn holds(&self, node: &str, channel: &str) -> bool {
        self.wanted
            .get(channel)
            .is_some_and(|at| at.as_deref() == Some(node))
    }

    /// A channel is wanted: subscribe it on its master, if that master is known and up.
    pub fn want(&mut self, channel: &str) -> Vec<Change> {
        if self.wanted.contains_key(channel) {
            return Vec::new();
        }
        let node = self.live_master(channel);
        self.wanted.insert(channel.to_owned(), node.clone());
        node.map(|node| Change::Subscribe {
            node,
            channel: channel.to_owned(),
        })
        .into_iter()
        .collect()
    }

    /// A channel is no longer wanted: unsubscribe it where it is held.
    pub fn unwant(&mut self, channel: &str) -> Vec<Change> {
        let held = self.wanted.remove(channel).flatten();
        held.map(|node| Change::Unsubscribe {
            node,
            channel: channel.to_owned(),
        })
        .into_iter()
        .collect()
    }

    /// A master's connection is up (again): it takes every wanted channel of its slots that no
    /// one holds.
    pub fn node_up(&mut self, node: &str) -> Vec<Change> {
        self.up.insert(node.to_owned());
        self.place_unplaced()
    }

    /// A master's connection is gone: its channels wait for it or for their slots' next master.
    pub fn node_down(&mut self, node: &str) {
        self.up.remove(node);
        for at in self.wanted.values_mut() {
            if at.as_deref() == Some(node) {
                *at = None;
            }
        }
    }

    /// A new slot map: channels whose slot moved go to the new master (unsubscribed from the
    /// old one if it still serves other slots), and unplaced ones are placed where they can be.
    pub fn set_map(&mut self, map: SlotMap) -> Vec<Change> {
        self.map = map;
        let mut changes = Vec::new();
        for (channel, at) in &mut self.wanted {
            let Some(old) = at.as_ref() else {
                continue;
            };
            let master = self.map.master_of(slot(channel.as_bytes()));
            if master == Some(old) {
                continue;
            }
            changes.push(Change::Unsubscribe {
                node: old.clone(),
                channel: channel.clone(),
            });
            *at = None;
        }
        changes.extend(self.place_unplaced());
        changes
    }

    /// Masters that no longer serve any slot: their connections can close.
    pub fn retired(&self) -> Vec<Addr> {
        let masters = self.map.masters();
        let held: BTreeSet<&Addr> = self.wanted.values().flatten().collect();
        self.up
            .iter()
            .filter(|node| !masters.contains(node) && !held.contains(node))
            .cloned()
            .collect()
    }

    fn place_unplaced(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        let unplaced: Vec<String> = (self.wanted.iter())
            .filter(|(_, at)| at.is_none())
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in unplaced {
            if let Some(node) = self.live_master(&channel) {
                self.wanted.insert(channel.clone(), Some(node.clone()));
                changes.push(Change::Subscribe { node, channel });
            }
        }
        changes
    }

    fn live_master(&self, channel: &str) -> Option<Addr> {
        let master = self.map.master_of(slot(channel.as_bytes()))?;
        self.up.contains(master).then(|| master.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(n: i64) -> Value {
        Value::Int(n)
    }

    fn node(port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(b"127.0.0.1".to_vec()),
            int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    /// Three masters over the whole slot space, as `redis-cli --cluster create` splits it.
    fn three(ports: [i64; 3]) -> SlotMap {
        let reply = Value::Array(vec![
            Value::Array(vec![int(0), int(5460), node(ports[0]), node(ports[0] + 10)]),
            Value::Array(vec![int(5461), int(10922), node(ports[1])]),
            Value::Array(vec![int(10923), int(16383), node(ports[2])]),
        ]);
        SlotMap::from_cluster_slots(&reply).unwrap()
    }

    #[test]
    fn slots_follow_the_cluster_specification() {
        // The specification's test vector, and hash tags.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(
            slot(b"foo{}{bar}"),
            slot(b"foo{}{bar}"),
            "an empty tag hashes it all"
        );
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn a_slot_map_names_each_slots_master() {
        let map = three([7001, 7002, 7003]);
        assert!(map.is_complete());
        assert_eq!(map.master_of(0).unwrap(), "127.0.0.1:7001");
        assert_eq!(map.master_of(5461).unwrap(), "127.0.0.1:7002");
        assert_eq!(map.master_of(16383).unwrap(), "127.0.0.1:7003");
        assert_eq!(map.masters().len(), 3);
        let partial = Value::Array(vec![Value::Array(vec![int(0), int(99), node(7001)])]);
        let partial = SlotMap::from_cluster_slots(&partial).unwrap();
        assert!(!partial.is_complete());
        assert_eq!(partial.master_of(100), None);
        for bad in [
            Value::Int(1),
            Value::Array(vec![Value::Array(vec![int(5), int(4), node(1)])]),
            Value::Array(vec![Value::Array(vec![int(0), int(16384), node(1)])]),
            Value::Array(vec![
                Value::Array(vec![int(0), int(10), node(1)]),
                Value::Array(vec![int(10), int(20), node(2)]),
            ]),
        ] {
            assert!(SlotMap::from_cluster_slots(&bad).is_err(), "{bad:?}");
        }
    }

    /// Channels on each of the three masters of `three`.
    fn channels_by_master(map: &SlotMap) -> BTreeMap<Addr, Vec<String>> {
        let mut by_master: BTreeMap<Addr, Vec<String>> = BTreeMap::new();
        for n in 0..30 {
            let channel = format!("gateway:c:{n}");
            let master = map.master_of(slot(channel.as_bytes())).unwrap().clone();
            by_master.entry(master).or_default().push(channel);
        }
        by_master
    }

    #[test]
    fn channels_are_placed_on_their_masters_once_those_are_up() {
        let map = three([7001, 7002, 7003]);
        let by_master = channels_by_master(&map);
        let mut placement = Placement::default();
        assert!(placement.set_map(map).is_empty());
        for channels in by_master.values() {
            for channel in channels {
                assert!(placement.want(channel).is_empty(), "no connection yet");
            }
        }
        assert_eq!(placement.unplaced(), 30);
        let first = "127.0.0.1:7001";
        let changes = placement.node_up(first);
        let mut expected: Vec<Change> = (by_master[first].iter())
            .map(|channel| Change::Subscribe {
                node: first.into(),
                channel: channel.clone(),
            })
            .collect();
        expected.sort_by_key(|change| format!("{change:?}"));
        assert_eq!(changes, expected);
        assert_eq!(placement.unplaced(), 30 - expected.len());
        placement.node_up("127.0.0.1:7002");
        placement.node_up("127.0.0.1:7003");
        assert_eq!(placement.unplaced(), 0);
        // Wanting twice changes nothing; unwanting unsubscribes where it is held.
        let channel = &by_master[first][0];
        assert!(placement.want(channel).is_empty());
        let gone = placement.unwant(channel);
        let unsubscribe = Change::Unsubscribe {
            node: first.into(),
            channel: channel.clone(),
        };
        assert_eq!(gone, [unsubscribe]);
        assert!(placement.unwant(channel).is_empty());
    }

    /// Three live masters holding 30 wanted channels between them.
    fn placed() -> (Placement, BTreeMap<Addr, Vec<String>>) {
        let map = three([7001, 7002, 7003]);
        let by_master = channels_by_master(&map);
        let mut placement = Placement::default();
        placement.set_map(map);
        for node in ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"] {
            placement.node_up(node);
        }
        for channel in by_master.values().flatten() {
            placement.want(channel);
        }
        (placement, by_master)
    }

    #[test]
    fn a_failover_moves_the_dead_masters_channels_to_its_replica() {
        let (mut placement, by_master) = placed();
        // 7002 dies: its channels wait, nothing is sent to it.
        placement.node_down("127.0.0.1:7002");
        let lost = by_master["127.0.0.1:7002"].len();
        assert_eq!(placement.unplaced(), lost);
        // Its replica 7005 is promoted: the new map names it; its connection comes up.
        let promoted = three([7001, 7005, 7003]);
        assert!(placement.set_map(promoted).is_empty(), "7005 is not up yet");
        assert_eq!(
            placement.retired(),
            Vec::<Addr>::new(),
            "7002 is down already"
        );
        let changes = placement.node_up("127.0.0.1:7005");
        assert_eq!(changes.len(), lost);
        assert!(changes.iter().all(|change| matches!(change,
            Change::Subscribe { node, .. } if node == "127.0.0.1:7005")));
        assert_eq!(placement.unplaced(), 0);
    }

    #[test]
    fn slots_moved_between_live_masters_move_their_channels() {
        let (mut placement, by_master) = placed();
        // Every slot of 7003 goes to 7001 (a resharding): 7003 keeps nothing.
        let reply = Value::Array(vec![
            Value::Array(vec![int(0), int(5460), node(7001)]),
            Value::Array(vec![int(5461), int(10922), node(7002)]),
            Value::Array(vec![int(10923), int(16383), node(7001)]),
        ]);
        let changes = placement.set_map(SlotMap::from_cluster_slots(&reply).unwrap());
        let moved = by_master["127.0.0.1:7003"].len();
        assert_eq!(
            changes.len(),
            2 * moved,
            "one unsubscribe and one subscribe each"
        );
        for channel in &by_master["127.0.0.1:7003"] {
            assert!(changes.contains(&Change::Unsubscribe {
                node: "127.0.0.1:7003".into(),
                channel: channel.clone()
            }));
            assert!(changes.contains(&Change::Subscribe {
                node: "127.0.0.1:7001".into(),
                channel: channel.clone()
            }));
        }
        assert_eq!(placement.retired(), ["127.0.0.1:7003".to_owned()]);
    }
}
