//! Who is present node-wide, as one shard sees it: the members of presence channels and the
//! signed-in users. No IO lives here.
//!
//! How members span shards. Every shard keeps a replica of each roster (a presence channel's
//! members, or an app's signed-in users): user id → the *sources* the user is present on, where a
//! source is one shard of one node. A shard changes its own source only: when a user's first
//! socket on the shard arrives it adds itself, when the user's last socket on the shard leaves it
//! removes itself, and in both cases it sends a `RosterDelta` to every other shard's inbox, which
//! applies it to its replica. A user is a member while any source holds it, so a user on shard 0
//! and shard 1 is one member, and each shard tells its own subscribers `member_added` when its
//! replica goes from no source to one and `member_removed` when it goes back to none. Deltas
//! from one shard arrive in order (one FIFO inbox each) and adding or removing one source
//! commutes with the others, so every replica ends up the same; while deltas are in flight two
//! shards may briefly disagree, which only means a subscriber can see a member a moment before or
//! after another shard's subscriber does.
//!
//! Across nodes, the Redis bridge (`cluster`) forwards the deltas a shard shares to the other
//! nodes, and sends the deltas it hears from them into each shard's inbox exactly as shards send
//! theirs to one another: `RosterDelta` with a `Source` naming another node. When a node dies the
//! bridge sends the departures of everything that node held.

use std::collections::HashMap;

use indexmap::IndexMap;
use serde_json::Value;

/// Where a user's sockets are: a shard of this node, or (fed in by a cluster layer) a shard of
/// another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    pub node: u32,
    pub shard: u32,
}

/// How a roster changed as this shard sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The user was nowhere and is now present.
    Added,
    /// The user was present and is now nowhere.
    Removed,
    Unchanged,
}

/// Which roster a delta is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosterKey {
    /// The members of a presence channel.
    Channel(Box<str>),
    /// The app's signed-in users, for watchlists.
    SignedIn,
}

/// One source's change to one roster: the user's first socket there arrived, or its last left.
#[derive(Debug, Clone, PartialEq)]
pub struct RosterDelta {
    pub app: usize,
    pub roster: RosterKey,
    pub user_id: Box<str>,
    pub source: Source,
    /// The user's info when it arrived on `source`; `None` when it left.
    pub joined: Option<Value>,
    /// Whether the member webhooks this change causes are sent from this node: true for the
    /// node's own changes; false for another node's (that node sends them), except on the one
    /// node that speaks for a node that died.
    pub webhooks: bool,
}

/// What one local socket's arrival or departure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalChange {
    /// Whether this shard's own source changed, so the other shards must hear of it.
    pub share: bool,
    pub transition: Transition,
}

#[derive(Debug)]
struct Entry {
    info: Value,
    /// Sources holding the user; nearly always one, so a plain vector.
    sources: Vec<Source>,
    /// This shard's sockets of the user.
    local: u32,
}

/// Users present node-wide, in the order they arrived, each with its info and sources.
#[derive(Debug, Default)]
pub struct Roster {
    entries: IndexMap<Box<str>, Entry>,
}

impl Roster {
    /// One more local socket of `user_id`. The first one adds `me` to the user's sources. A user
    /// already present keeps the info it arrived with.
    pub fn add_local(&mut self, user_id: &str, info: &Value, me: Source) -> LocalChange {
        let entry = match self.entries.get_mut(user_id) {
            Some(entry) => entry,
            None => self.entries.entry(user_id.into()).or_insert(Entry {
                info: info.clone(),
                sources: Vec::new(),
                local: 0,
            }),
        };
        entry.local += 1;
        if entry.local > 1 {
            return LocalChange {
                share: false,
                transition: Transition::Unchanged,
            };
        }
        let was_present = !entry.sources.is_empty();
        entry.sources.push(me);
        LocalChange {
            share: true,
            transition: if was_present {
                Transition::Unchanged
            } else {
                Transition::Added
            },
        }
    }

    /// One local socket of `user_id` fewer. The last one removes `me` from its sources.
    pub fn remove_local(&mut self, user_id: &str, me: Source) -> LocalChange {
        let unchanged = LocalChange {
            share: false,
            transition: Transition::Unchanged,
        };
        let Some(entry) = self.entries.get_mut(user_id) else {
            return unchanged;
        };
        entry.local = entry.local.saturating_sub(1);
        if entry.local > 0 {
            return unchanged;
        }
        entry.sources.retain(|s| *s != me);
        let transition = if entry.sources.is_empty() {
            self.entries.swap_remove(user_id);
            Transition::Removed
        } else {
            Transition::Unchanged
        };
        LocalChange {
            share: true,
            transition,
        }
    }

    /// Applies another source's change.
    pub fn apply(&mut self, user_id: &str, source: Source, joined: Option<&Value>) -> Transition {
        match joined {
            Some(info) => match self.entries.get_mut(user_id) {
                Some(entry) => {
                    if !entry.sources.contains(&source) {
                        entry.sources.push(source);
                    }
                    Transition::Unchanged
                }
                None => {
                    self.entries.insert(
                        user_id.into(),
                        Entry {
                            info: info.clone(),
                            sources: vec![source],
                            local: 0,
                        },
                    );
                    Transition::Added
                }
            },
            None => {
                let Some(entry) = self.entries.get_mut(user_id) else {
                    return Transition::Unchanged;
                };
                let before = entry.sources.len();
                entry.sources.retain(|s| *s != source);
                if entry.sources.is_empty() && before > 0 {
                    self.entries.swap_remove(user_id);
                    Transition::Removed
                } else {
                    Transition::Unchanged
                }
            }
        }
    }

    /// Users present node-wide.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, user_id: &str) -> bool {
        self.entries.contains_key(user_id)
    }

    /// The info a present user arrived with.
    pub fn info(&self, user_id: &str) -> Option<&Value> {
        self.entries.get(user_id).map(|e| &e.info)
    }

    /// Every present user with its info, in arrival order (reordered by departures).
    pub fn members(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(id, e)| (&**id, &e.info))
    }
}

/// A presence channel on one shard: its node-wide members, and which user each local socket is.
#[derive(Debug, Default)]
pub struct PresenceChannel {
    pub roster: Roster,
    sockets: HashMap<u64, Box<str>>,
}

/// A presence subscription refused because the channel is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("presence channel is full ({0} members)")]
pub struct ChannelFull(pub usize);

impl PresenceChannel {
    /// A local socket joins as `user_id`. `None` when the socket is already a member (a
    /// repeated subscribe changes nothing). A new user is refused once `max_members` are present.
    pub fn join(
        &mut self,
        socket: u64,
        user_id: &str,
        info: &Value,
        max_members: usize,
        me: Source,
    ) -> Result<Option<LocalChange>, ChannelFull> {
        if self.sockets.contains_key(&socket) {
            return Ok(None);
        }
        if !self.roster.contains(user_id) && self.roster.len() >= max_members {
            return Err(ChannelFull(max_members));
        }
        self.sockets.insert(socket, user_id.into());
        Ok(Some(self.roster.add_local(user_id, info, me)))
    }

    /// A local socket leaves; returns its user and what its departure did.
    pub fn leave(&mut self, socket: u64, me: Source) -> Option<(Box<str>, LocalChange)> {
        let user_id = self.sockets.remove(&socket)?;
        let change = self.roster.remove_local(&user_id, me);
        Some((user_id, change))
    }

    /// The user a local socket joined as.
    pub fn user_of(&self, socket: u64) -> Option<&str> {
        self.sockets.get(&socket).map(|id| &**id)
    }

    /// Whether nothing is left to remember: no members anywhere, no local sockets.
    pub fn is_unused(&self) -> bool {
        self.roster.is_empty() && self.sockets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S0: Source = Source { node: 1, shard: 0 };
    const S1: Source = Source { node: 1, shard: 1 };

    fn change(share: bool, transition: Transition) -> LocalChange {
        LocalChange { share, transition }
    }

    #[test]
    fn a_user_is_one_member_however_many_sockets_and_shards() {
        // Two replicas, as shard 0 and shard 1 keep them, fed each other's deltas.
        let (mut zero, mut one) = (Roster::default(), Roster::default());
        let info = json!({"name": "Ann"});
        assert_eq!(
            zero.add_local("u1", &info, S0),
            change(true, Transition::Added)
        );
        assert_eq!(
            zero.add_local("u1", &info, S0),
            change(false, Transition::Unchanged),
            "a second socket on the same shard is not shared"
        );
        assert_eq!(one.apply("u1", S0, Some(&info)), Transition::Added);
        assert_eq!(
            one.add_local("u1", &json!("other"), S1),
            change(true, Transition::Unchanged),
            "present elsewhere already: no member_added"
        );
        assert_eq!(
            zero.apply("u1", S1, Some(&json!("other"))),
            Transition::Unchanged
        );
        assert_eq!(zero.info("u1"), Some(&info));
        assert_eq!(one.info("u1"), Some(&info), "the first info is kept");
        assert_eq!((zero.len(), one.len()), (1, 1));

        // Shard 0's sockets leave: only the last one is shared, and u1 stays (on shard 1).
        assert_eq!(
            zero.remove_local("u1", S0),
            change(false, Transition::Unchanged)
        );
        assert_eq!(
            zero.remove_local("u1", S0),
            change(true, Transition::Unchanged)
        );
        assert_eq!(one.apply("u1", S0, None), Transition::Unchanged);
        // Shard 1's socket leaves: gone everywhere, once.
        assert_eq!(
            one.remove_local("u1", S1),
            change(true, Transition::Removed)
        );
        assert_eq!(zero.apply("u1", S1, None), Transition::Removed);
        assert!(zero.is_empty() && one.is_empty());
        assert_eq!(zero.apply("u1", S1, None), Transition::Unchanged);
    }

    #[test]
    fn simultaneous_joins_on_two_shards_each_announce_once() {
        let (mut zero, mut one) = (Roster::default(), Roster::default());
        let info = Value::Null;
        // Both shards see their own socket first, then the other's delta.
        assert_eq!(
            zero.add_local("u1", &info, S0).transition,
            Transition::Added
        );
        assert_eq!(one.add_local("u1", &info, S1).transition, Transition::Added);
        assert_eq!(zero.apply("u1", S1, Some(&info)), Transition::Unchanged);
        assert_eq!(one.apply("u1", S0, Some(&info)), Transition::Unchanged);
        // Then both leave at once: each shard announces the removal once.
        assert_eq!(
            zero.remove_local("u1", S0).transition,
            Transition::Unchanged
        );
        assert_eq!(one.remove_local("u1", S1).transition, Transition::Unchanged);
        assert_eq!(zero.apply("u1", S1, None), Transition::Removed);
        assert_eq!(one.apply("u1", S0, None), Transition::Removed);
    }

    #[test]
    fn a_repeated_delta_changes_nothing() {
        let mut roster = Roster::default();
        assert_eq!(
            roster.apply("u1", S1, Some(&Value::Null)),
            Transition::Added
        );
        assert_eq!(
            roster.apply("u1", S1, Some(&Value::Null)),
            Transition::Unchanged
        );
        assert_eq!(roster.apply("u1", S1, None), Transition::Removed);
    }

    #[test]
    fn presence_channel_sockets_and_limit() {
        let mut channel = PresenceChannel::default();
        let info = Value::Null;
        assert_eq!(
            channel.join(1, "u1", &info, 2, S0),
            Ok(Some(change(true, Transition::Added)))
        );
        assert_eq!(channel.join(1, "u1", &info, 2, S0), Ok(None), "repeated");
        assert_eq!(
            channel.join(2, "u1", &info, 1, S0),
            Ok(Some(change(false, Transition::Unchanged))),
            "a present user's second socket fits even at the limit"
        );
        channel.roster.apply("u2", S1, Some(&info));
        assert_eq!(channel.join(3, "u3", &info, 2, S0), Err(ChannelFull(2)));
        assert_eq!(channel.user_of(2), Some("u1"));
        assert_eq!(
            channel.leave(1, S0),
            Some(("u1".into(), change(false, Transition::Unchanged)))
        );
        assert_eq!(
            channel.leave(2, S0),
            Some(("u1".into(), change(true, Transition::Removed)))
        );
        assert_eq!(channel.leave(2, S0), None);
        assert!(!channel.is_unused(), "u2 is still present on shard 1");
        channel.roster.apply("u2", S1, None);
        assert!(channel.is_unused());
        let ids: Vec<&str> = channel.roster.members().map(|(id, _)| id).collect();
        assert!(ids.is_empty());
    }
}
