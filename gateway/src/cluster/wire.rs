//! What nodes say to each other through Redis: the names of the Redis pub/sub channels, the
//! binary envelope of a broadcast, and the JSON control messages. No IO lives here.
//!
//! # Redis channels
//!
//! | Redis channel | carries | subscribed by |
//! |---|---|---|
//! | `{prefix}:{app_id}:{channel}` | broadcasts to one Pusher channel (binary envelope) | nodes with a local subscriber of that channel, only while they have one |
//! | `{prefix}#cluster` | heartbeats and queries (JSON); with one Redis also what lanes carry | every node |
//! | `{prefix}#lane:{n}` (Redis Cluster only, n < 16) | roster and count changes and snapshots of the names in lane n (JSON) | every node |
//! | `{prefix}#node:{node_id}` | answers to one node's queries (JSON) | that node |
//!
//! Pusher channel names cannot hold `:` or `#`, so the three kinds never collide, and several
//! clusters share one Redis when their prefixes differ.
//!
//! # Broadcast envelope
//!
//! Big-endian integers; the frame is the WebSocket text frame exactly as clients receive it, so a
//! receiving node queues it without encoding anything.
//!
//! | bytes | field |
//! |---|---|
//! | 1 | magic `0x47` (`G`) |
//! | 1 | version, 1 |
//! | 4 | origin node id (a node drops its own messages when Redis echoes them back) |
//! | 8 | sent at, microseconds since the Unix epoch (for the lag metric) |
//! | 1 | flags: bit 0 set when a socket is excluded, bit 1 when a cache channel keeps the event |
//! | 16 | only with bit 0: the excluded socket's node (4), shard (4) and number (8) |
//! | 2 + n | app id: length, then UTF-8 |
//! | 2 + n | Pusher channel: length, then UTF-8 |
//! | rest | the frame |
//!
//! # Control messages
//!
//! JSON objects tagged by `type`: `{"type":"heartbeat","node":N,"nonce":X}` once a second from
//! every node, with `"connections":{"2":3,...}` (the node's open WebSocket sessions of each app
//! that has a `max_connections` quota, by app id) when some app has one; a node reads a heartbeat
//! without it as no sessions, so nodes from before it and after it mix; `{"type":"query","node":N,"id":I,"query":{...}}` asking every node for its share of
//! an HTTP API answer; `{"type":"answer","node":N,"id":I,"counts":[["channel",3],...]}` sent back
//! on the asker's own channel. Presence members and signed-in users travel as `roster` messages
//! (changes as they happen) and `snapshot` messages (everything a node holds, when another node
//! asks with `sync`); `terminate` closes a user's sockets on every node. For the apps that keep
//! cluster-wide subscriber counts, each node's count of a channel travels in `counts` messages
//! when it changes, `{"type":"counts","node":N,"counts":[{"app":"1","channel":"room","count":3}]}`,
//! and in the `counts` field of its snapshot.
//!
//! A roster entry is one user present on one shard of one node, in a presence channel (`channel`
//! set) or among an app's signed-in users (`channel` absent):
//! `{"app":"1","channel":"presence-room","user":"u1","shard":0,"joined":true,"info":{...}}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::protocol::SocketId;

const MAGIC: u8 = b'G';
const VERSION: u8 = 1;
const FLAG_EXCEPT: u8 = 1;
const FLAG_CACHE: u8 = 2;
/// Magic, version, origin, sent at, flags.
const FIXED_HEAD: usize = 1 + 1 + 4 + 8 + 1;
const EXCEPT_LEN: usize = 4 + 4 + 8;

/// The Redis channel that carries broadcasts to one Pusher channel of one app.
pub fn data_channel(prefix: &str, app_id: &str, channel: &str) -> String {
    format!("{prefix}:{app_id}:{channel}")
}

/// The key of a cache channel's last event: its data channel as a hash tag, so that on a Redis
/// Cluster both live on one master and go in one pipeline.
pub fn cache_key(prefix: &str, app_id: &str, channel: &str) -> String {
    format!("{{{}}}#last", data_channel(prefix, app_id, channel))
}

/// The Redis channel every node listens on for heartbeats and queries.
pub fn control_channel(prefix: &str) -> String {
    format!("{prefix}#cluster")
}

/// Lanes on a Redis Cluster: control channels that carry roster and count changes and
/// snapshots, spread over the masters by their hash slots, so that presence traffic does not all
/// pass through the one master of the control channel. With one Redis there is one lane: the
/// control channel itself.
pub const CLUSTER_LANES: u16 = 16;

/// The Redis channel of lane `lane` of `lanes`.
pub fn lane_channel(prefix: &str, lanes: u16, lane: u16) -> String {
    match lanes {
        0 | 1 => control_channel(prefix),
        _ => format!("{prefix}#lane:{lane}"),
    }
}

/// The lane of a roster or count: by the name of its channel (or of its user, for an app's
/// signed-in users), so each one's changes and snapshots travel in order on one lane.
pub fn lane_of(lanes: u16, name: &str) -> u16 {
    match lanes {
        0 | 1 => 0,
        _ => crate::cluster::slots::slot(name.as_bytes()) % lanes,
    }
}

/// Whether a Redis channel is one of the control channels (the control channel, a lane, a
/// node's own channel) rather than a Pusher channel's: theirs go `{prefix}:`, these `{prefix}#`.
pub fn is_control(prefix: &str, channel: &str) -> bool {
    channel
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('#'))
}

/// The Redis channel one node listens on for answers to its queries.
pub fn node_channel(prefix: &str, node: u32) -> String {
    format!("{prefix}#node:{node}")
}

/// A broadcast as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub origin: u32,
    pub sent_micros: u64,
    pub except: Option<SocketId>,
    /// Whether a cache channel keeps it for later subscribers.
    pub cache: bool,
    pub app_id: &'a str,
    pub channel: &'a str,
    pub frame: &'a [u8],
}

/// Why bytes from Redis are not an envelope, or an envelope cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a broadcast envelope")]
    BadMagic,
    #[error("envelope version {0} is not understood")]
    Version(u8),
    #[error("envelope ends early")]
    Truncated,
    #[error("envelope text is not UTF-8")]
    NotUtf8,
    #[error("{0} is longer than an envelope holds")]
    TooLong(&'static str),
}

fn length(field: &'static str, text: &str) -> Result<u16, EnvelopeError> {
    u16::try_from(text.len()).map_err(|_| EnvelopeError::TooLong(field))
}

impl<'a> Envelope<'a> {
    /// The bytes published to Redis.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let app_len = length("app id", self.app_id)?;
        let channel_len = length("channel", self.channel)?;
        let mut out = Vec::with_capacity(
            FIXED_HEAD + EXCEPT_LEN + 4 + self.app_id.len() + self.channel.len() + self.frame.len(),
        );
        out.extend_from_slice(&[MAGIC, VERSION]);
        out.extend_from_slice(&self.origin.to_be_bytes());
        out.extend_from_slice(&self.sent_micros.to_be_bytes());
        let cache = if self.cache { FLAG_CACHE } else { 0 };
        match self.except {
            Some(except) => {
                out.push(FLAG_EXCEPT | cache);
                out.extend_from_slice(&except.node.to_be_bytes());
                out.extend_from_slice(&except.shard.to_be_bytes());
                out.extend_from_slice(&except.local.to_be_bytes());
            }
            None => out.push(cache),
        }
        out.extend_from_slice(&app_len.to_be_bytes());
        out.extend_from_slice(self.app_id.as_bytes());
        out.extend_from_slice(&channel_len.to_be_bytes());
        out.extend_from_slice(self.channel.as_bytes());
        out.extend_from_slice(self.frame);
        Ok(out)
    }

    /// Reads an envelope; the frame borrows from `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<Envelope<'a>, EnvelopeError> {
        let mut reader = Reader { bytes };
        if reader.take(1)? != [MAGIC] {
            return Err(EnvelopeError::BadMagic);
        }
        let version = reader.take(1)?[0];
        if version != VERSION {
            return Err(EnvelopeError::Version(version));
        }
        let origin = reader.u32()?;
        let sent_micros = reader.u64()?;
        let flags = reader.take(1)?[0];
        let except = if flags & FLAG_EXCEPT != 0 {
            Some(SocketId {
                node: reader.u32()?,
                shard: reader.u32()?,
                local: reader.u64()?,
            })
        } else {
            None
        };
        let app_id = reader.text()?;
        let channel = reader.text()?;
        Ok(Envelope {
            origin,
            sent_micros,
            except,
            cache: flags & FLAG_CACHE != 0,
            app_id,
            channel,
            frame: reader.bytes,
        })
    }
}

/// Reads fields off the front of a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        if self.bytes.len() < n {
            return Err(EnvelopeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u32(&mut self) -> Result<u32, EnvelopeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, EnvelopeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn text(&mut self) -> Result<&'a str, EnvelopeError> {
        let len = u16::from_be_bytes(self.array()?);
        std::str::from_utf8(self.take(usize::from(len))?).map_err(|_| EnvelopeError::NotUtf8)
    }
}

/// A question one node asks every other node, for the HTTP API. Presence member lists need none:
/// every node keeps every node's members (see `rosters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Query {
    /// Subscription counts of every occupied channel of an app whose name starts with `prefix`.
    Channels { app: String, prefix: String },
    /// Subscription counts of these channels.
    Named { app: String, channels: Vec<String> },
}

/// One shard's change to a roster, as nodes tell each other: the user's first socket on the
/// shard arrived (`joined`) or its last one left.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RosterChange {
    pub app: String,
    /// The presence channel; `None` for the app's signed-in users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    pub user: String,
    pub shard: u32,
    pub joined: bool,
    /// The user's info when it joined a presence channel.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub info: serde_json::Value,
}

/// One node's subscribers of one channel, for the apps that keep cluster-wide counts (see
/// `occupancy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelCount {
    pub app: String,
    pub channel: String,
    pub count: u64,
}

/// A message on the control channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// "I am alive." `nonce` is random per process: it tells a node's own heartbeat apart from
    /// another node's that drew the same id. `connections`: the node's sessions of each app
    /// with a quota, by app id, so every node enforces the quota for the whole cluster; absent
    /// when no app has one (and from nodes that predate it).
    Heartbeat {
        node: u32,
        nonce: u64,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        connections: BTreeMap<String, u64>,
        /// How long the node has been connected to Redis this time, in milliseconds: every
        /// node then agrees on when it joined (see `NodeTable::deciders`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        online_ms: Option<u64>,
    },
    /// Sent by `node`; answered on `node_channel(prefix, node)`.
    Query { node: u32, id: u64, query: Query },
    /// `node`'s share of the answer to query `id`: subscription counts by channel.
    Answer {
        node: u32,
        id: u64,
        counts: Vec<(String, u64)>,
    },
    /// Changes to `node`'s own roster entries, in the order they happened.
    Roster {
        node: u32,
        changes: Vec<RosterChange>,
    },
    /// Part `part` (from 0) of every roster entry and channel count `node` holds in `lane`;
    /// the receivers replace what they knew of `node` in that lane once the `last` part has
    /// arrived. Nodes from before cluster-wide counts send no `counts`; with one Redis there is
    /// only lane 0, left out.
    Snapshot {
        node: u32,
        #[serde(default, skip_serializing_if = "is_zero")]
        lane: u16,
        part: u32,
        last: bool,
        entries: Vec<RosterChange>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        counts: Vec<ChannelCount>,
    },
    /// `node`'s new counts of channels, in the order they changed.
    Counts {
        node: u32,
        counts: Vec<ChannelCount>,
    },
    /// `node` has just connected and asks every other node for its snapshot.
    Sync { node: u32 },
    /// Close the user's sockets with 4009, as `POST .../terminate_connections` asked on `node`.
    Terminate {
        node: u32,
        app: String,
        user: String,
    },
}

fn is_zero(lane: &u16) -> bool {
    *lane == 0
}

impl RosterChange {
    /// Its lane: by its presence channel, or by its user among signed-in users.
    pub fn lane(&self, lanes: u16) -> u16 {
        lane_of(lanes, self.channel.as_deref().unwrap_or(&self.user))
    }
}

impl Control {
    pub fn encode(&self) -> String {
        // Plain structs, strings and integers: serializing them cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Control, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(except: Option<SocketId>) -> Envelope<'static> {
        Envelope {
            origin: 4_000_000_000,
            sent_micros: 1_700_000_000_000_000,
            except,
            cache: except.is_none(),
            app_id: "1",
            channel: "private-room",
            frame: b"\x81\x05hello",
        }
    }

    #[test]
    fn a_roster_crosses_nodes_unchanged_even_with_a_number_longer_than_a_double() {
        // The member's info as its app server wrote it, with more digits than a double holds:
        // read, written for the other nodes and read there, it must be what this node read.
        let text = r#"{"type":"roster","node":1,"changes":[{"app":"1","user":"u1","shard":0,"joined":true,"info":{"score":1.53333333333333000000000000003490916022004188117}}]}"#;
        let read = Control::decode(text.as_bytes()).expect("a roster");
        assert_eq!(Control::decode(read.encode().as_bytes()).ok(), Some(read));
    }

    #[test]
    fn names_keep_data_and_control_apart() {
        assert_eq!(data_channel("gw", "1", "news"), "gw:1:news");
        assert_eq!(control_channel("gw"), "gw#cluster");
        assert_eq!(node_channel("gw", 42), "gw#node:42");
        assert_eq!(lane_channel("gw", 16, 3), "gw#lane:3");
        assert_eq!(
            lane_channel("gw", 1, 0),
            "gw#cluster",
            "one lane: the control channel"
        );
        for control in [
            control_channel("gw"),
            node_channel("gw", 42),
            lane_channel("gw", 16, 3),
        ] {
            assert!(is_control("gw", &control), "{control}");
        }
        assert!(!is_control("gw", &data_channel("gw", "1", "news")));
        assert!(
            !is_control("gw", &data_channel("gw", "#1", "news")),
            "an app id with a #"
        );
    }

    #[test]
    fn lanes_spread_over_a_clusters_masters() {
        assert_eq!(lane_of(1, "presence-room"), 0);
        let lanes: std::collections::BTreeSet<u16> = (0..200)
            .map(|n| lane_of(CLUSTER_LANES, &format!("room-{n}")))
            .collect();
        assert_eq!(
            lanes.len(),
            usize::from(CLUSTER_LANES),
            "every lane is used"
        );
        // The lanes' names hash to slots all over the slot space, so that the masters of a
        // cluster share them.
        let slots: Vec<u16> = (0..CLUSTER_LANES)
            .map(|lane| {
                crate::cluster::slots::slot(lane_channel("gateway", CLUSTER_LANES, lane).as_bytes())
            })
            .collect();
        for third in 0..3u16 {
            let range = third * 5462..(third + 1) * 5462;
            assert!(slots.iter().any(|slot| range.contains(slot)), "{slots:?}");
        }
    }

    #[test]
    fn envelopes_round_trip_with_and_without_an_excluded_socket() {
        for except in [
            None,
            Some(SocketId {
                node: 7,
                shard: 3,
                local: u64::MAX,
            }),
        ] {
            let bytes = envelope(except).encode().unwrap();
            assert_eq!(Envelope::decode(&bytes), Ok(envelope(except)));
        }
        let bytes = envelope(None).encode().unwrap();
        assert_eq!(bytes.len(), FIXED_HEAD + 2 + 1 + 2 + 12 + 7, "compact");
    }

    #[test]
    fn bad_envelopes_are_refused_not_trusted() {
        let bytes = envelope(None).encode().unwrap();
        for cut in 0..FIXED_HEAD + 2 + 1 + 2 + 12 {
            assert!(Envelope::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = bytes.clone();
        other[0] = b'{';
        assert_eq!(Envelope::decode(&other), Err(EnvelopeError::BadMagic));
        let mut newer = bytes.clone();
        newer[1] = 2;
        assert_eq!(Envelope::decode(&newer), Err(EnvelopeError::Version(2)));
        let mut not_utf8 = bytes;
        not_utf8[FIXED_HEAD + 2] = 0xff;
        assert_eq!(Envelope::decode(&not_utf8), Err(EnvelopeError::NotUtf8));
        let long = "x".repeat(70_000);
        let too_long = Envelope {
            channel: &long,
            ..envelope(None)
        };
        assert_eq!(too_long.encode(), Err(EnvelopeError::TooLong("channel")));
    }

    #[test]
    fn control_messages_are_tagged_json() {
        let heartbeat = Control::Heartbeat {
            node: 9,
            nonce: u64::MAX,
            connections: BTreeMap::new(),
            online_ms: None,
        };
        assert_eq!(
            heartbeat.encode(),
            r#"{"type":"heartbeat","node":9,"nonce":18446744073709551615}"#
        );
        let query = Control::Query {
            node: 9,
            id: 1,
            query: Query::Channels {
                app: "1".into(),
                prefix: "presence-".into(),
            },
        };
        assert_eq!(
            query.encode(),
            r#"{"type":"query","node":9,"id":1,"query":{"kind":"channels","app":"1","prefix":"presence-"}}"#
        );
        let answer = Control::Answer {
            node: 2,
            id: 1,
            counts: vec![("news".into(), 3)],
        };
        assert_eq!(
            answer.encode(),
            r#"{"type":"answer","node":2,"id":1,"counts":[["news",3]]}"#
        );
        let change = RosterChange {
            app: "1".into(),
            channel: Some("presence-room".into()),
            user: "u1".into(),
            shard: 1,
            joined: true,
            info: serde_json::json!({"name": "Ann"}),
        };
        let roster = Control::Roster {
            node: 2,
            changes: vec![change.clone()],
        };
        assert_eq!(
            roster.encode(),
            r#"{"type":"roster","node":2,"changes":[{"app":"1","channel":"presence-room","user":"u1","shard":1,"joined":true,"info":{"name":"Ann"}}]}"#
        );
        let signed_out = RosterChange {
            channel: None,
            joined: false,
            info: serde_json::Value::Null,
            ..change.clone()
        };
        let snapshot = Control::Snapshot {
            node: 2,
            lane: 0,
            part: 0,
            last: true,
            entries: vec![signed_out],
            counts: Vec::new(),
        };
        assert_eq!(
            snapshot.encode(),
            r#"{"type":"snapshot","node":2,"part":0,"last":true,"entries":[{"app":"1","user":"u1","shard":1,"joined":false}]}"#
        );
        let room = ChannelCount {
            app: "1".into(),
            channel: "room".into(),
            count: 3,
        };
        let counts = Control::Counts {
            node: 2,
            counts: vec![room.clone()],
        };
        assert_eq!(
            counts.encode(),
            r#"{"type":"counts","node":2,"counts":[{"app":"1","channel":"room","count":3}]}"#
        );
        let counted_snapshot = Control::Snapshot {
            node: 2,
            lane: 7,
            part: 1,
            last: false,
            entries: Vec::new(),
            counts: vec![room],
        };
        let sync = Control::Sync { node: 2 };
        let terminate = Control::Terminate {
            node: 2,
            app: "1".into(),
            user: "u1".into(),
        };
        let counted = Control::Heartbeat {
            node: 9,
            nonce: 1,
            connections: BTreeMap::from([("2".into(), 3), ("10".into(), 0)]),
            online_ms: Some(2500),
        };
        assert_eq!(
            counted.encode(),
            r#"{"type":"heartbeat","node":9,"nonce":1,"connections":{"10":0,"2":3},"online_ms":2500}"#
        );
        let messages = [
            heartbeat,
            counted,
            query,
            answer,
            roster,
            snapshot,
            counted_snapshot,
            counts,
            sync,
            terminate,
        ];
        for message in messages {
            assert_eq!(
                Control::decode(message.encode().as_bytes()).unwrap(),
                message
            );
        }
        assert!(Control::decode(br#"{"type":"reboot"}"#).is_err());
    }

    #[test]
    fn a_heartbeat_without_connections_reads_as_none() {
        // As nodes that predate quotas across the cluster send it.
        let old = br#"{"type":"heartbeat","node":9,"nonce":1}"#;
        assert_eq!(
            Control::decode(old).unwrap(),
            Control::Heartbeat {
                node: 9,
                nonce: 1,
                connections: BTreeMap::new(),
                online_ms: None,
            }
        );
        let negative = br#"{"type":"heartbeat","node":9,"nonce":1,"connections":{"2":-1}}"#;
        assert!(
            Control::decode(negative).is_err(),
            "counts are not negative"
        );
    }
}
